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
CATALOG = os.pathsep.join([str(REPO / "addons" / "catalog"), str(REPO / "tests" / "data" / "flow-catalog.yaml")])
os.environ["STASHFLOW_CATALOG"] = CATALOG


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: The Prefect server's database: ``sqlite`` (its default) or ``postgres`` (Debian's PostgreSQL, started
#: here), from $STASHFLOW_PREFECT_DB; a module can ask for one with
#: ``pytest.mark.parametrize("prefect_server", ["postgres"], indirect=True)``.
PREFECT_DB = os.environ.get("STASHFLOW_PREFECT_DB", "sqlite")


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
                   ) -> Iterator[dict[str, str]]:
    """`prefect server start` on a free port with its own database (SQLite, or a PostgreSQL of its own);
    yields the env that reaches it."""
    db = getattr(request, "param", PREFECT_DB)
    if db not in ("sqlite", "postgres"):
        raise ValueError(f"STASHFLOW_PREFECT_DB must be sqlite or postgres, not {db!r}")
    postgres = _prefect_postgres() if db == "postgres" else None
    try:
        yield from _prefect_server(tmp_path_factory, postgres)
    finally:
        if postgres is not None:
            postgres.close()


def _prefect_postgres():  # type: ignore[no-untyped-def]
    """Debian's PostgreSQL with a ``prefect`` database (Prefect needs pg_trgm, which Debian's has)."""
    from runs.databases.servers import Postgres

    server = Postgres("prefect-pw")
    try:
        server.init()
        server.start()
        server.psql("CREATE DATABASE prefect")
    except BaseException:
        server.close()
        raise
    return server


def _prefect_server(tmp_path_factory: pytest.TempPathFactory, postgres) -> Iterator[dict[str, str]]:  # type: ignore[no-untyped-def]
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    database = {"PREFECT_API_DATABASE_CONNECTION_URL":
                f"postgresql+asyncpg://postgres:{postgres.password}@127.0.0.1:{postgres.port}/prefect"} \
        if postgres is not None else {}
    env = {**os.environ, **database, "PREFECT_HOME": str(home), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
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
