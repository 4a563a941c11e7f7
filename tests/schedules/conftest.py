"""A real `prefect server` for deployment and schedule tests, and `stashflow serve` as a process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
CATALOG = os.pathsep.join([str(REPO / "addons" / "catalog"), str(REPO / "tests" / "data" / "flow-catalog.yaml"),
                           str(REPO / "tests" / "data" / "session-catalog.yaml")])
os.environ["STASHFLOW_CATALOG"] = CATALOG


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def prefect_database(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """The Prefect server's database: its own SQLite file, or a real PostgreSQL (Debian's, started here
    on a free port and stopped by pid), as production runs it (README: Prefect on PostgreSQL)."""
    if request.param == "sqlite":
        yield {}
        return
    from runs.databases.servers import Postgres

    server = Postgres(password="prefect-test")
    try:
        server.init()
        server.start()
        yield {"PREFECT_API_DATABASE_CONNECTION_URL":
               f"postgresql+asyncpg://postgres:prefect-test@127.0.0.1:{server.port}/postgres"}
    finally:
        server.close()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every Prefect-server test runs on SQLite and on PostgreSQL (one server each, in turn)."""
    if "prefect_database" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker
        databases = ["sqlite"] if marker("sqlite_only") else ["postgresql"] if marker("postgres_only") \
            else ["sqlite", "postgresql"]
        metafunc.parametrize("prefect_database", databases, indirect=True, scope="session")


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory, prefect_database: dict[str, str]
                   ) -> Iterator[dict[str, str]]:
    """`prefect server start` on a free port with its own database; yields the env that reaches it."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    env = {**os.environ, **prefect_database, "PREFECT_HOME": str(home),
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "STASHFLOW_CATALOG": CATALOG,
           "PREFECT_SERVER_LOGGING_LEVEL": "WARNING", "PREFECT_RUNNER_POLL_FREQUENCY": "1",
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
           "PREFECT_SERVER_SERVICES_LATE_RUNS_LOOP_SECONDS": "2",
           "PREFECT_SERVER_SERVICES_LATE_RUNS_AFTER_SECONDS": "0:00:01"}
    log = open(home / "server.log", "w")
    server = subprocess.Popen([str(REPO / ".venv" / "bin" / "prefect"), "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        end = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > end:
                    raise RuntimeError(f"prefect server did not start: {(home / 'server.log').read_text()[-2000:]}")
                time.sleep(0.5)
        previous = {k: os.environ.get(k) for k in ("PREFECT_API_URL", "PREFECT_HOME")}
        os.environ.update(PREFECT_API_URL=env["PREFECT_API_URL"], PREFECT_HOME=env["PREFECT_HOME"])
        from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

        with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"], PREFECT_HOME: env["PREFECT_HOME"]}):
            yield env
        for k, v in previous.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


class Served:
    """`stashflow serve PLAN` running in a subprocess; stopped (by pid) at the end of the test."""

    def __init__(self, plan: Path, env: dict[str, str], log: Path, *extra: str) -> None:
        self.log = log
        self.process = subprocess.Popen([str(REPO / ".venv" / "bin" / "stashflow"), "serve", str(plan), *extra],
                                        env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture
def serve(prefect_server, tmp_path):  # type: ignore[no-untyped-def]
    started: list[Served] = []

    def start(plan: Path, *extra: str) -> Served:
        served = Served(plan, prefect_server, tmp_path / f"serve-{len(started)}.log", *extra)
        started.append(served)
        return served
    yield start
    for served in started:
        served.stop()


@pytest.fixture(autouse=True)
def plan_secret(request: pytest.FixtureRequest) -> None:
    """The Secret the test plans name as their repository's encryptionSecret (``pw``): the run's
    pre-flight check finds every Secret the Job refers to, as a real cluster would need it."""
    if "namespace" not in request.fixturenames:
        return
    import asyncio
    import base64

    from kubernetes_asyncio import client

    cluster, namespace = request.getfixturevalue("kube_cluster"), request.getfixturevalue("namespace")

    async def create() -> None:
        async with cluster.api_client() as api:
            await client.CoreV1Api(api).create_namespaced_secret(namespace, {
                "metadata": {"name": "pw"}, "data": {"RESTIC_PASSWORD": base64.b64encode(b"pw").decode()}})
    asyncio.run(create())
