"""The main job on the local defaults: a real backup and restore through the Prefect flows.

1. the local control plane (localkube/up.sh) and the node agent, which runs containers for
   real (restic from Debian); 2. a Prefect server on 127.0.0.1:4200 (its UI shows the runs);
3. namespace ``demo`` with a PVC ``data`` holding some files, and the restic password Secret;
4. ``stashflow run stashflow-pvc logical-backup`` into a local BackupStorage, then
   ``stashflow run stashflow-pvc logical-backup-restore --snapshot latest`` into an empty PVC;
5. the restored files compared with the originals, the Snapshot shown; 6. everything stopped
   by pid (``KEEP=1`` leaves it running to look around).
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

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from localkube.cluster import Cluster  # noqa: E402
from localkube.helpers import apt_install, create_pvc, pvc_host_path, wait_until  # noqa: E402

RUN = REPO / "run" / "demo"
BIN = REPO / ".venv" / "bin"
NAMESPACE = "demo"
PREFECT_PORT = int(os.environ.get("STASHFLOW_DEMO_PREFECT_PORT", "4200"))


def say(message: str) -> None:
    print(f"[main] {message}", file=sys.stderr, flush=True)


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


async def prepare(cluster: Cluster) -> tuple[Path, Path]:
    async with cluster.api_client() as api:
        core = client.CoreV1Api(api)
        try:
            await core.delete_namespace(NAMESPACE)
            say(f"removing the namespace {NAMESPACE} of an earlier run")

            async def gone() -> bool | None:
                try:
                    await core.read_namespace(NAMESPACE)
                    return None
                except ApiException as exc:
                    return True if exc.status == 404 else None
            await wait_until(gone, 120, what="the old namespace to go")
        except ApiException as exc:
            if exc.status != 404:
                raise
        await core.create_namespace({"metadata": {"name": NAMESPACE}})
        await create_pvc(api, NAMESPACE, "data")
        await create_pvc(api, NAMESPACE, "restored")
        password = base64.b64encode(os.urandom(24)).decode()
        await core.create_namespaced_secret(NAMESPACE, {
            "metadata": {"name": "restic-password"},
            "data": {"RESTIC_PASSWORD": base64.b64encode(password.encode()).decode()}})
        return await pvc_host_path(api, NAMESPACE, "data"), await pvc_host_path(api, NAMESPACE, "restored")


def start(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=REPO, env=env,
                            start_new_session=True)


def wait_http(url: str, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"[main] {url} did not answer within {timeout:.0f}s")


def stashflow(*args: str, env: dict[str, str]) -> None:
    say("stashflow " + " ".join(args))
    subprocess.run([str(BIN / "stashflow"), *args], env=env, check=True)


def main() -> int:
    RUN.mkdir(parents=True, exist_ok=True)
    say("the local control plane (first run: builds kube-apiserver and kube-controller-manager, ~3-5 min)")
    subprocess.run(["bash", str(REPO / "localkube" / "up.sh")], check=True)
    apt_install("restic")
    cluster = Cluster()
    kubeconfig = str(cluster.kubeconfig)
    processes: list[subprocess.Popen] = []
    keep = os.environ.get("KEEP") == "1"
    try:
        say("the node agent (runs each Job's container for real, here)")
        processes.append(start([str(BIN / "python"), "-m", "localkube.nodeagent", "--kubeconfig", kubeconfig,
                                "--default", "run", "--pidfile", str(cluster.settings.run_dir / "pids" / "node-agent.pid")],
                               RUN / "node-agent.log"))
        say(f"a Prefect server on http://127.0.0.1:{PREFECT_PORT} (its UI shows the flow runs)")
        env = {**os.environ, "PREFECT_HOME": str(RUN / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "DO_NOT_TRACK": "1", "PREFECT_API_URL": f"http://127.0.0.1:{PREFECT_PORT}/api",
               "PREFECT_SERVER_LOGGING_LEVEL": "WARNING"}
        processes.append(start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                                str(PREFECT_PORT)], RUN / "prefect-server.log", env))
        wait_http(f"http://127.0.0.1:{PREFECT_PORT}/api/health", 180)

        data, restored = asyncio.run(prepare(cluster))
        (data / "docs").mkdir()
        (data / "docs" / "readme.txt").write_text("stashflow backs this up with restic\n")
        (data / "docs" / "notes with spaces.md").write_text("# notes\n\nnames with spaces survive\n")
        (data / "blob.bin").write_bytes(os.urandom(1 << 20))
        repository = RUN / "repository"  # fresh each time: the demo makes a new password each time
        shutil.rmtree(repository, ignore_errors=True)
        repository.mkdir()
        storage = RUN / "storage.yaml"
        storage.write_text(
            "apiVersion: storage.kubestash.com/v1alpha1\nkind: BackupStorage\n"
            f"metadata: {{name: local, namespace: {NAMESPACE}}}\n"
            "spec:\n  storage:\n    provider: local\n    local:\n      mountPath: /stashflow-repo\n"
            f"      hostPath: {{path: {repository}}}\n")
        common = ["--namespace", NAMESPACE, "--kubeconfig", kubeconfig, "--catalog", str(REPO / "addons" / "catalog"),
                  str(storage)]
        stashflow("run", "stashflow-pvc", "logical-backup", "--target", "PersistentVolumeClaim/data",
                  "--storage", "local", "--directory", "demo/data", "--encryption-secret", "restic-password",
                  *common, env=env)
        stashflow("run", "stashflow-pvc", "logical-backup-restore", "--target", "PersistentVolumeClaim/restored",
                  "--snapshot", "latest", "--repository", "data", *common, env=env)
        same = tree(data) == tree(restored)
        say(f"restored files {'are byte-identical to' if same else 'DIFFER from'} the originals "
            f"({len(tree(data))} files)")
        stashflow("snapshots", "--namespace", NAMESPACE, "--kubeconfig", kubeconfig, env=env)
        return 0 if same else 1
    except subprocess.CalledProcessError as exc:
        say(f"failed: {' '.join(exc.cmd[:4])} ... exited {exc.returncode} (its error is above)")
        return 1
    finally:
        if keep:
            say(f"KEEP=1: left running; Prefect UI http://127.0.0.1:{PREFECT_PORT}, KUBECONFIG={kubeconfig}; "
                "stop with: bash localkube/down.sh and kill " + " ".join(str(p.pid) for p in processes))
        else:
            say("stopping the Prefect server, the node agent and the control plane")
            for process in processes:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGTERM)
            for process in processes:
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
            subprocess.run(["bash", str(REPO / "localkube" / "down.sh")], check=False)


if __name__ == "__main__":
    sys.exit(main())
