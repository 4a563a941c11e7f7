"""The local stack the scripts run against: control plane, node agent, Prefect server, a demo namespace.

Shared by ``scripts/demo.py`` (the main job) and ``scripts/screenshots.py`` (the browser check), so
both bring it up and stop it the same way: the control plane through ``localkube`` (stopped at the
end only if this process started it), the node agent and the Prefect server as our own children,
stopped by pid. ``KEEP=1`` leaves everything running and says how to stop it; a later run finds a
node agent and a Prefect server still up and reuses them (and leaves them up).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from localkube.cluster import Cluster  # noqa: E402
from localkube.helpers import apt_install, create_pvc, pvc_host_path, wait_until  # noqa: E402

BIN = REPO / ".venv" / "bin"
CATALOG = REPO / "addons" / "catalog"


def say(message: str, who: str = "main") -> None:
    print(f"[{who}] {message}", file=sys.stderr, flush=True)


def tree(root: Path) -> dict[str, str]:
    """Relative path → sha256 of every file under ``root`` (to compare a restore with its source)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def wait_http(url: str, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{url} did not answer within {timeout:.0f}s")


class LocalStack:
    """``with LocalStack(run_dir, prefect_port) as stack:`` everything up; on exit, what we started stopped."""

    def __init__(self, run_dir: Path, prefect_port: int, *, who: str = "main") -> None:
        self.run_dir = run_dir
        self.prefect_port = prefect_port
        self.who = who
        self.keep = os.environ.get("KEEP") == "1"
        self.cluster = Cluster()
        self.kubeconfig = str(self.cluster.kubeconfig)
        self.prefect_url = f"http://127.0.0.1:{prefect_port}"
        self.env = {**os.environ, "PREFECT_HOME": str(run_dir / "prefect"),
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
                    "PREFECT_API_URL": f"{self.prefect_url}/api", "PREFECT_SERVER_LOGGING_LEVEL": "WARNING"}
        self.processes: list[subprocess.Popen] = []

    def say(self, message: str) -> None:
        say(message, self.who)

    def prefect_running(self) -> bool:
        """Does a Prefect server answer on our port already (one a ``KEEP=1`` run left)?"""
        try:
            with urllib.request.urlopen(f"{self.prefect_url}/api/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def start(self, cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
        process = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=REPO, env=env,
                                   start_new_session=True)
        self.processes.append(process)
        return process

    def __enter__(self) -> LocalStack:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.say("the local control plane (first run: builds kube-apiserver and kube-controller-manager, ~3-5 min)")
        self.cluster.up(fresh=False)
        apt_install("restic")
        try:
            if "node-agent" in self.cluster.pids():
                self.say(f"reusing the running node agent (pid {self.cluster.pids()['node-agent']})")
            else:
                self.say("the node agent (runs each Job's container for real, here)")
                self.start([str(BIN / "python"), "-m", "localkube.nodeagent", "--kubeconfig", self.kubeconfig,
                            "--default", "run", "--pidfile",
                            str(self.cluster.settings.run_dir / "pids" / "node-agent.pid")],
                           self.run_dir / "node-agent.log")
            if self.prefect_running():
                self.say(f"reusing the Prefect server on {self.prefect_url} (left by KEEP=1)")
            else:
                self.say(f"a Prefect server on {self.prefect_url} (its UI shows the flow runs)")
                self.start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                            str(self.prefect_port)], self.run_dir / "prefect-server.log", self.env)
                wait_http(f"{self.prefect_url}/api/health", 180)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.keep:
            self.say(f"KEEP=1: left running; Prefect UI {self.prefect_url}, KUBECONFIG={self.kubeconfig}; "
                     "stop with: bash localkube/down.sh" + "".join(f" and kill -- -{p.pid}" for p in self.processes))
        else:
            self.stop()

    def stop(self) -> None:
        self.say("stopping the Prefect server, the node agent" + (" and the control plane" if self.cluster.started_here else ""))
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self.cluster.started_here:
            self.cluster.down()

    # ------------------------------------------------------------------ the demo namespace

    def prepare(self, namespace: str) -> tuple[Path, Path]:
        """A fresh ``namespace`` with PVCs ``data`` (some files) and ``restored`` (empty) and the Secret
        ``restic-password``; a fresh local repository and its BackupStorage file (``self.storage``).
        Returns the host paths of the two PVCs."""
        data, restored = asyncio.run(self._namespace(namespace))
        (data / "docs").mkdir()
        (data / "docs" / "readme.txt").write_text("stashflow backs this up with restic\n")
        (data / "docs" / "notes with spaces.md").write_text("# notes\n\nnames with spaces survive\n")
        (data / "blob.bin").write_bytes(os.urandom(1 << 20))
        repository = self.run_dir / "repository"  # fresh each time: each run makes a new password
        shutil.rmtree(repository, ignore_errors=True)
        repository.mkdir()
        self.storage = self.run_dir / "storage.yaml"
        self.storage.write_text(
            "apiVersion: storage.kubestash.com/v1alpha1\nkind: BackupStorage\n"
            f"metadata: {{name: local, namespace: {namespace}}}\n"
            "spec:\n  storage:\n    provider: local\n    local:\n      mountPath: /stashflow-repo\n"
            f"      hostPath: {{path: {repository}}}\n")
        return data, restored

    async def _namespace(self, namespace: str) -> tuple[Path, Path]:
        async with self.cluster.api_client() as api:
            core = client.CoreV1Api(api)
            try:
                await core.delete_namespace(namespace)
                self.say(f"removing the namespace {namespace} of an earlier run")

                async def gone() -> bool | None:
                    try:
                        await core.read_namespace(namespace)
                        return None
                    except ApiException as exc:
                        return True if exc.status == 404 else None
                await wait_until(gone, 120, what="the old namespace to go")
            except ApiException as exc:
                if exc.status != 404:
                    raise
            await core.create_namespace({"metadata": {"name": namespace}})
            await create_pvc(api, namespace, "data")
            await create_pvc(api, namespace, "restored")
            password = base64.b64encode(os.urandom(24)).decode()
            await core.create_namespaced_secret(namespace, {
                "metadata": {"name": "restic-password"},
                "data": {"RESTIC_PASSWORD": base64.b64encode(password.encode()).decode()}})
            return await pvc_host_path(api, namespace, "data"), await pvc_host_path(api, namespace, "restored")

    def secret(self, namespace: str, name: str, data: dict[str, str]) -> None:
        """A Secret in the demo namespace (e.g. a database password for a Function's authSecret)."""
        async def create() -> None:
            async with self.cluster.api_client() as api:
                await client.CoreV1Api(api).create_namespaced_secret(namespace, {
                    "metadata": {"name": name},
                    "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})
        asyncio.run(create())

    # ------------------------------------------------------------------ stashflow

    def stashflow(self, *args: str, check: bool = True) -> int:
        """``stashflow ARGS`` against this stack's Prefect server; its output goes to our stderr/stdout."""
        self.say("stashflow " + " ".join(args))
        return subprocess.run([str(BIN / "stashflow"), *args], env=self.env, check=check).returncode

    def run_args(self, namespace: str) -> list[str]:
        """The options every ``stashflow run`` of the demo takes: namespace, kubeconfig, catalog, storage."""
        return ["--namespace", namespace, "--kubeconfig", self.kubeconfig, "--catalog", str(CATALOG),
                "--catalog", str(self.storage)]
