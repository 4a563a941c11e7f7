"""Start, stop and restart the test control plane from Python (the pytest fixtures use this).

The shell scripts beside this file do the work (``up.sh``, ``down.sh``); this module runs them,
reads their settings (``lib.sh`` is the single place for paths and ports), and gives tests a
kubernetes_asyncio client and a node agent wired to the cluster's PKI.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client, config

HERE = Path(__file__).resolve().parent
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager")


@dataclass(frozen=True)
class Settings:
    """Paths and ports, as ``lib.sh`` computes them from the STASHFLOW_KUBE_* environment."""

    run_dir: Path
    cache: Path
    api_port: int
    etcd_port: int

    @classmethod
    def from_env(cls) -> Settings:
        out = subprocess.run(
            ["bash", "-c", f'. "{HERE}/lib.sh"; trap - ERR; printf "%s\\n" "$KUBE_RUN" "$KUBE_CACHE" "$API_PORT" "$ETCD_PORT"'],
            check=True, capture_output=True, text=True).stdout.split("\n")
        return cls(Path(out[0]), Path(out[1]), int(out[2]), int(out[3]))

    @property
    def kubeconfig(self) -> Path:
        return self.run_dir / "kubeconfig"

    @property
    def pki(self) -> Path:
        return self.run_dir / "pki"

    @property
    def api_url(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is not running.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Cluster:
    """One control plane (etcd, kube-apiserver, kube-controller-manager) on 127.0.0.1."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self.started_here = False
        """True when :meth:`up` started processes: then :meth:`down` at the end is ours to do."""

    @property
    def kubeconfig(self) -> Path:
        return self.settings.kubeconfig

    @property
    def api_url(self) -> str:
        return self.settings.api_url

    # ------------------------------------------------------------------ state

    def pids(self) -> dict[str, int]:
        """Recorded pids of the running components (all pid files in the run dir: includes a CLI node agent)."""
        out = {}
        d = self.settings.run_dir / "pids"
        for f in sorted(d.glob("*.pid")) if d.is_dir() else []:
            with contextlib.suppress(ValueError, OSError):
                pid = int(f.read_text().strip())
                if _alive(pid):
                    out[f.stem] = pid
        return out

    def ready(self) -> bool:
        """Is the apiserver answering /readyz with our admin credentials?"""
        pki = self.settings.pki
        try:
            ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
            ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
            with urllib.request.urlopen(f"{self.api_url}/readyz", context=ctx, timeout=2) as r:
                return r.status == 200
        except (OSError, ssl.SSLError):
            return False

    def is_running(self) -> bool:
        return all(c in self.pids() for c in COMPONENTS) and self.ready()

    # ------------------------------------------------------------------ control

    def up(self, *, fresh: bool = True) -> bool:
        """Build if needed and start what is not running; True if this call started anything.

        ``fresh``: when etcd is not running, start from an empty etcd (so each test session sees a
        clean cluster). Output goes straight to this process's stderr: the first build takes minutes.
        """
        if self.is_running():
            return False
        before = set(self.pids())
        env = {**os.environ, "FRESH": "1" if fresh else "0"}
        subprocess.run(["bash", str(HERE / "up.sh")], check=True, env=env, stdin=subprocess.DEVNULL,
                       stdout=2)  # the script's progress lines belong on stderr
        started = set(self.pids()) - before
        self.started_here = self.started_here or bool(started)
        return bool(started)

    def down(self, *components: str, purge: bool = False) -> None:
        """Stop components by their recorded pids (all of them when none are named)."""
        env = {**os.environ, "PURGE": "1" if purge else "0"}
        if components:
            env["ONLY"] = " ".join(components)
        subprocess.run(["bash", str(HERE / "down.sh")], check=True, env=env, stdin=subprocess.DEVNULL, stdout=2)

    def restart_apiserver(self, *, downtime: float = 0.0) -> None:
        """Stop kube-apiserver (SIGTERM, then SIGKILL) and start it again on the same etcd.

        Watches break; a watch resumed from an old resourceVersion then gets 410 Gone.
        """
        self.down("kube-apiserver")
        if downtime:
            time.sleep(downtime)
        subprocess.run(["bash", str(HERE / "up.sh")], check=True, stdin=subprocess.DEVNULL, stdout=2,
                       env={**os.environ, "FRESH": "0"})

    # ------------------------------------------------------------------ clients

    async def load_config(self) -> client.Configuration:
        cfg = client.Configuration()
        await config.load_kube_config(config_file=str(self.kubeconfig), client_configuration=cfg)
        return cfg

    @contextlib.asynccontextmanager
    async def api_client(self) -> AsyncIterator[client.ApiClient]:
        """A kubernetes_asyncio ApiClient for the admin user (system:masters)."""
        api = client.ApiClient(await self.load_config())
        try:
            yield api
        finally:
            await api.close()

    def node_agent(self, **kwargs: Any) -> Any:
        """A :class:`~localkube.nodeagent.NodeAgent` for this cluster, with mutual TLS to the apiserver."""
        from localkube.nodeagent import NodeAgent

        pki = self.settings.pki
        kwargs.setdefault("tls_cert", pki / "node-agent.crt")
        kwargs.setdefault("tls_key", pki / "node-agent.key")
        kwargs.setdefault("client_ca", pki / "ca.crt")
        state_dir = kwargs.pop("state_dir", self.settings.run_dir / "agent")
        return NodeAgent(self.kubeconfig, state_dir, **kwargs)
