"""Database servers (one per session and engine), the executor on this machine, and the flow's
repository: what every real-data database test needs."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
from kubernetes_asyncio import client

from localkube.helpers import apt_install
from localkube.nodeagent import run as run_for_real

from ..conftest import run_flow
from ..observe import api, eventually, nothing_left, snapshots
from .servers import MariaDB, Postgres, Redis, serving

EXECUTOR = Path("/usr/local/bin/stashflow-executor")
RESTIC_PASSWORD = "restic: 'quoted' $HOME \\ pw"
DB_PASSWORD = "pg pw with 'quotes', $(HOME), \\ and ü"


@pytest.fixture(scope="session")
def executor_on_host() -> Path:
    """The node agent runs the Function's command on this machine, so the executor must be here, as
    the images install it: the zipapp at /usr/local/bin/stashflow-executor. restic from Debian."""
    from stashflow.executor.bundle import build

    apt_install("restic")
    return build(EXECUTOR)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    yield from serving(Postgres(DB_PASSWORD))


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDB]:
    yield from serving(MariaDB(DB_PASSWORD))


@pytest.fixture(scope="session")
def redis() -> Iterator[Redis]:
    server = Redis(DB_PASSWORD)
    try:
        yield server
    finally:
        server.close()


class Flows:
    """Runs the database flows of one test: namespace, storage (a host repository), Secrets."""

    def __init__(self, cluster: Any, namespace: str, repo: Path) -> None:
        self.cluster, self.namespace = cluster, namespace
        self.storage = {"apiVersion": "storage.kubestash.com/v1alpha1", "kind": "BackupStorage",
                        "metadata": {"name": "local", "namespace": namespace},
                        "spec": {"storage": {"provider": "local",
                                             "local": {"mountPath": "/stashflow-repo", "hostPath": {"path": str(repo)}}}}}
        self.repo = repo

    def secret(self, name: str, data: dict[str, str]) -> None:
        body = {"metadata": {"name": name},
                "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}
        api(self.cluster, lambda c: client.CoreV1Api(c).create_namespaced_secret(self.namespace, body))

    def backup(self, addon: str, target: str, **params: Any):  # type: ignore[no-untyped-def]
        options = {k: params.pop(k) for k in ("session", "history_limit", "repository") if k in params}
        return run_flow(addon, "logical-backup", target=target, namespace=self.namespace,
                        kubeconfig=str(self.cluster.kubeconfig), storage=self.storage, directory="db",
                        encryption_secret="restic-password", **options, **params)

    def restore(self, addon: str, target: str, repository: str, **params: Any):  # type: ignore[no-untyped-def]
        return run_flow(addon, "logical-backup-restore", target=target, namespace=self.namespace,
                        kubeconfig=str(self.cluster.kubeconfig), snapshot="latest", repository=repository,
                        **params)

    def restic_snapshots(self) -> list[dict]:
        """Every restic snapshot in the repository, read with restic itself."""
        found = []
        for config in self.repo.rglob("config"):
            listed = subprocess.run(["restic", "-r", str(config.parent), "snapshots", "--json", "--no-lock"],
                                    env={**os.environ, "RESTIC_PASSWORD": RESTIC_PASSWORD}, capture_output=True,
                                    text=True, check=True)
            found += json.loads(listed.stdout)
        return found

    def fails_with(self, state: Any, line: str) -> None:
        """A Failed run, code job-exit-code, the tool's own error line in its error, the Snapshot Failed
        with that line, no restic snapshot, and no Job or PVC left."""
        assert state.is_failed()
        error = str(state.result(raise_on_failure=False))  # the whole line; the state message is its short form
        assert state.message.startswith("job-exit-code: ") and line in error, (state.message, error)
        (snap,) = snapshots(self.cluster, self.namespace)
        assert snap["status"]["phase"] == "Failed" and line in snap["status"]["components"]["dump"]["error"]
        assert self.restic_snapshots() == []
        eventually(lambda: nothing_left(self.cluster, self.namespace), timeout=60)


@pytest.fixture
def flows(kube_cluster, namespace, node_agent, prefect_api, host_tmp, executor_on_host) -> Flows:  # type: ignore[no-untyped-def]
    node_agent.default = run_for_real()
    repo = host_tmp / "repository"
    repo.mkdir()
    found = Flows(kube_cluster, namespace, repo)
    found.secret("restic-password", {"RESTIC_PASSWORD": RESTIC_PASSWORD})
    return found
