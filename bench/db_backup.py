"""Benchmark: a PostgreSQL database of >= 1 GB backed up and restored through stashflow's flows vs the
same tools run by hand (``pg_dumpall | restic backup --stdin``, ``restic dump | psql``), in one run.

Backups: by hand, the executor alone run here (its own cost, no Pod and no flow), and the flow.
For each it prints the wall time and the peak memory of the pipeline's processes (the executor,
pg_dumpall/pg_dump or psql, restic; sampled from /proc every 50 ms, summed per sample), and for
stashflow also the pipeline's own duration as the executor reported it (the flow's wall time adds
the Pod's start, the repository check after the backup and the Snapshot), and for all four how long
the pipeline's processes were alive. It also records the
largest regular file any pipeline process had open outside the restic repository: a full copy of
the dump on disk would show there. Goal: stashflow's pipeline within 10% of the hand-run pipe.

Run: .venv/bin/python bench/db_backup.py [--gb 1.0]   (starts and stops the local control plane,
a PostgreSQL server, and a Prefect test server; needs ~4 GB of free disk)
"""

from __future__ import annotations

import argparse
import base64
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")

from localkube.cluster import Cluster  # noqa: E402
from localkube.helpers import apt_install  # noqa: E402
from localkube.nodeagent import run as run_for_real  # noqa: E402
from runs.databases.servers import Postgres  # noqa: E402

PASSWORD = "bench pw"
RESTIC_PASSWORD = "bench restic pw"
ROW_BYTES = 270  # id + 8 md5 hex strings per row in the dump


class Sampler:
    """Peak summed RSS of the pipeline's processes, and the largest non-repository file they hold."""

    def __init__(self, repo_markers: tuple[str, ...], mine: Path, port: int) -> None:
        self.repo_markers = repo_markers
        self.mine, self.port = str(mine), str(port)
        self.peak_rss = 0
        self.largest_file = (0, "")
        self.first_seen: float | None = None
        self.last_seen: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _ours(self, pid: str, cmdline: list[str]) -> bool:
        """This run's pipeline only: the machine is shared, other restic and psql processes run too."""
        if not cmdline:
            return False
        joined = " ".join(cmdline)
        name = os.path.basename(cmdline[0])
        if not ("stashflow-executor" in joined or name in ("pg_dumpall", "pg_dump", "psql") or (
                name == "restic" and any(a in ("backup", "dump") for a in cmdline[1:3]))):
            return False
        if self.mine in os.readlink(f"/proc/{pid}/root"):  # a Pod of this run's node agent
            return True
        with open(f"/proc/{pid}/environ", "rb") as f:
            if self.mine.encode() in f.read():  # run by hand here (RESTIC_REPOSITORY, RESTIC_CACHE_DIR)
                return True
        return name in ("pg_dumpall", "pg_dump", "psql") and self.port in joined

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        cmdline = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
                    if not self._ours(pid, cmdline):
                        continue
                    with open(f"/proc/{pid}/status") as f:
                        rss = next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
                    total += rss * 1024
                    for fd in os.listdir(f"/proc/{pid}/fd"):
                        target = os.readlink(f"/proc/{pid}/fd/{fd}")
                        if not target.startswith("/") or any(m in target for m in self.repo_markers):
                            continue
                        st = os.stat(f"/proc/{pid}/fd/{fd}")
                        if st.st_size > self.largest_file[0] and (st.st_mode & 0o170000) == 0o100000:
                            self.largest_file = (st.st_size, target)
                except (OSError, StopIteration):
                    continue
            self.peak_rss = max(self.peak_rss, total)
            if total:
                now = time.monotonic()
                self.first_seen = self.first_seen or now
                self.last_seen = now
            time.sleep(0.05)

    @property
    def alive(self) -> float:
        """Seconds between the first and the last sample that saw a pipeline process."""
        return (self.last_seen or 0) - (self.first_seen or 0)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def timed(fn):  # type: ignore[no-untyped-def]
    start = time.monotonic()
    value = fn()
    return value, time.monotonic() - start


def seconds(go: str) -> float:
    """Go's duration form (``1m5.5s``) → seconds."""
    import re

    h, m, sec = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:([\d.]+)s)?", go).groups()  # type: ignore[union-attr]
    return int(h or 0) * 3600 + int(m or 0) * 60 + float(sec or 0)


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def fill(server: Postgres, gigabytes: float) -> tuple[int, str]:
    rows = int(gigabytes * 2**30 / ROW_BYTES)
    server.psql("CREATE DATABASE bench;")
    server.psql("CREATE TABLE big (id bigint, a text, b text);", "bench")
    step = 500_000
    for start in range(1, rows + 1, step):
        server.psql(f"INSERT INTO big SELECT g, md5(g::text) || md5((g + 1)::text) || md5((g + 2)::text) "
                    f"|| md5((g + 3)::text), md5((g + 4)::text) || md5((g + 5)::text) || md5((g + 6)::text) "
                    f"|| md5((g + 7)::text) FROM generate_series({start}, {min(start + step - 1, rows)}) g;", "bench")
    return rows, checksum(server)


def checksum(server: Postgres) -> str:
    return server.psql("SELECT count(*), sum(hashtext(a || b)::numeric) FROM big", "bench").strip()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gb", type=float, default=1.0, help="size of the dump to make (default 1.0)")
    args = parser.parse_args()
    apt_install("restic")
    from prefect.testing.utilities import prefect_test_harness

    from stashflow.executor.bundle import build

    build("/usr/local/bin/stashflow-executor")
    work = Path(tempfile.mkdtemp(prefix="bench-db-"))
    server = Postgres(PASSWORD)
    server.init()
    server.start()
    cluster = Cluster()
    cluster.up()
    agent = cluster.node_agent(state_dir=work / "agent", default=run_for_real()).start()
    rows_checksum_before = ""
    report: list[str] = []
    try:
        (rows, rows_checksum_before), fill_s = timed(lambda: fill(server, args.gb))
        db_size = server.psql("SELECT pg_database_size('bench')", "postgres").strip()
        report.append(f"database: {rows:,} rows, {mib(int(db_size))} on disk, filled in {fill_s:.0f}s")
        pg_env = {**os.environ, "PGPASSWORD": PASSWORD}
        pg_args = ["-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres", "--no-password"]

        # by hand: pg_dumpall | restic backup --stdin (a shell pipe, as people run it)
        hand_repo = work / "hand-repo"
        restic_env = {**pg_env, "RESTIC_REPOSITORY": str(hand_repo), "RESTIC_PASSWORD": RESTIC_PASSWORD,
                      "RESTIC_CACHE_DIR": str(work / "hand-cache")}
        subprocess.run(["restic", "init"], env=restic_env, check=True, capture_output=True)
        with Sampler(("hand-repo",), work, server.port) as hand_sample:
            _, hand_s = timed(lambda: subprocess.run(
                ["bash", "-o", "pipefail", "-c", 'pg_dumpall "$@" | restic backup --stdin --stdin-filename '
                 'dumpfile.sql --json --quiet > /dev/null', "bench", *pg_args], env=restic_env, check=True))
        # the executor alone, run here as the Function runs it (no Pod, no flow): its own cost
        exec_repo = work / "exec-repo"
        exec_env = {**restic_env, "RESTIC_REPOSITORY": str(exec_repo), "RESTIC_CACHE_DIR": str(work / "exec-cache")}
        subprocess.run(["restic", "init"], env=exec_env, check=True, capture_output=True)
        (work / "pw").write_text(PASSWORD)
        with Sampler(("exec-repo",), work, server.port) as exec_sample:
            _, exec_s = timed(lambda: subprocess.run(
                ["/usr/local/bin/stashflow-executor", "backup", "--filename=dumpfile.sql",
                 f"--env-from-file=PGPASSWORD={work / 'pw'}", "--", "pg_dumpall", *pg_args],
                env={k: v for k, v in exec_env.items() if k != "PGPASSWORD"}, check=True, capture_output=True))
        # through the flow
        import asyncio

        from kubernetes_asyncio import client

        from stashflow.flows.addon_flows import flow_for

        namespace = f"bench-{int(time.time())}"

        async def setup() -> None:
            async with cluster.api_client() as c:
                core = client.CoreV1Api(c)
                await core.create_namespace({"metadata": {"name": namespace}})
                for name, data in (("restic-pw", {"RESTIC_PASSWORD": RESTIC_PASSWORD}), ("pg-auth", {"password": PASSWORD})):
                    await core.create_namespaced_secret(namespace, {"metadata": {"name": name}, "data": {
                        k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})
        asyncio.run(setup())
        flow_repo = work / "flow-repo"
        flow_repo.mkdir()
        storage = {"apiVersion": "storage.kubestash.com/v1alpha1", "kind": "BackupStorage", "metadata": {"name": "s"},
                   "spec": {"storage": {"provider": "local", "local": {"mountPath": "/stashflow-repo",
                                                                        "hostPath": {"path": str(flow_repo)}}}}}
        common = dict(namespace=namespace, cluster={"kubeconfig": str(cluster.kubeconfig)}, host="127.0.0.1",
                      port=str(server.port), authSecret="pg-auth")
        with prefect_test_harness(server_startup_timeout=180):
            with Sampler(("flow-repo", "/stashflow-repo"), work, server.port) as flow_sample:
                state, flow_s = timed(lambda: asyncio.run(flow_for("stashflow-postgres", "logical-backup")(
                    target="Postgres.kubedb.com/pg", limits={"timeout": "2h"},
                    repository={"storage": {"name": "s", "spec": storage["spec"]}, "encryption_secret": "restic-pw"},
                    return_state=True, **common)))
            assert state.is_completed(), state.message
            result = state.result()
            pipeline = result["components"]["dump"]["duration"]
            executor_s = seconds(pipeline)
            report.append(f"{'backup':8} {'wall time':>12} {'pipeline':>10} {'peak memory':>12}   largest other file open")
            report.append(f"{'by hand':8} {hand_s:>11.1f}s {hand_sample.alive:>9.1f}s {mib(hand_sample.peak_rss):>12}   "
                          f"{mib(hand_sample.largest_file[0])} {hand_sample.largest_file[1]}")
            report.append(f"{'executor':8} {exec_s:>11.1f}s {exec_sample.alive:>9.1f}s {mib(exec_sample.peak_rss):>12}   "
                          f"{mib(exec_sample.largest_file[0])} {exec_sample.largest_file[1]}")
            report.append(f"{'flow':8} {flow_s:>11.1f}s {flow_sample.alive:>9.1f}s {mib(flow_sample.peak_rss):>12}   "
                          f"{mib(flow_sample.largest_file[0])} {flow_sample.largest_file[1]}")
            report.append(f"  the executor's pipeline inside the flow: {executor_s:.1f}s "
                          f"({(executor_s / hand_s - 1) * 100:+.1f}% vs by hand)")

            # restores, each into a new, empty server
            server.recreate()
            with Sampler(("hand-repo",), work, server.port) as hand_restore:
                _, hand_r = timed(lambda: subprocess.run(
                    ["bash", "-o", "pipefail", "-c", 'restic dump latest /dumpfile.sql | psql "$@" -q -X -d postgres '
                     '> /dev/null 2>&1', "bench", *pg_args], env=restic_env, check=True))
            assert checksum(server) == rows_checksum_before
            server.recreate()
            with Sampler(("flow-repo", "/stashflow-repo"), work, server.port) as flow_restore:
                state, flow_r = timed(lambda: asyncio.run(flow_for("stashflow-postgres", "logical-backup-restore")(
                    target="Postgres.kubedb.com/pg", snapshot="latest", repository={"name": "pg"},
                    limits={"timeout": "2h"}, return_state=True, **common)))
            assert state.is_completed(), state.message
            assert checksum(server) == rows_checksum_before
            report.append(f"{'restore':8} {'wall time':>12} {'pipeline':>10} {'peak memory':>12}   largest other file open")
            report.append(f"{'by hand':8} {hand_r:>11.1f}s {hand_restore.alive:>9.1f}s {mib(hand_restore.peak_rss):>12}   "
                          f"{mib(hand_restore.largest_file[0])}")
            report.append(f"{'flow':8} {flow_r:>11.1f}s {flow_restore.alive:>9.1f}s {mib(flow_restore.peak_rss):>12}   "
                          f"{mib(flow_restore.largest_file[0])}")
            report.append(f"restored data equal (rows, checksum): {rows_checksum_before}")
    finally:
        agent.stop()
        if cluster.started_here:
            cluster.down()
        server.close()
        subprocess.run(["rm", "-rf", str(work)])
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
