"""Benchmark: N targets (PVCs) backed up at the same instant, by the stashflow worker and by Prefect's
process worker (unlimited, stopped at a memory bound; and --limit L). Figures, not pass/fail.

Each target is its own BackupConfiguration and so its own deployment (`stashflow deploy`); one flow
run per deployment is scheduled for the same instant (T0, ``--lead`` seconds after the runs are made:
75 by default, more than the stashflow worker claims ahead, as Prefect's scheduler makes them hours ahead);
the node agent scripts every backup Job to take S seconds. For each worker it reports: peak total
RSS of the worker and all its children (sampled every second), seconds from T0 until all N Jobs
exist and until all runs are final, the final states (Completed, Failed, Crashed, Late, ...),
Kubernetes and Prefect API requests and events per run, counted inside every process the worker
starts (``_count_requests/sitecustomize.py``: kubernetes_asyncio's REST client, httpx to the Prefect
API, the events client), and the CPU seconds per run of the worker (with its children) and of the
Prefect server. ``--breakdown`` lists the requests by method and path shape and the events by name;
``--callers`` also names the code that made each Prefect request (slower: for finding, not timing).
The runs log at INFO, Prefect's default, so their log lines reach the server as in production.

The Prefect server runs on PostgreSQL (Debian's postgresql, started here) unless ``--db sqlite``.

Run: .venv/bin/python bench/fanout.py [--targets 200] [--seconds 60] [--modes stashflow,process,process-limit]
     [--limit 20] [--memory-bound-mb 6000] [--db-pool 20+20] [--breakdown [--callers]]
     (starts the local control plane if it is not up)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
CATALOG = os.pathsep.join([str(REPO / "addons" / "catalog"), str(REPO / "tests" / "data" / "flow-catalog.yaml")])
os.environ["STASHFLOW_CATALOG"] = CATALOG
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from kubernetes_asyncio import client  # noqa: E402

from localkube.cluster import Cluster  # noqa: E402
from localkube.nodeagent import succeed  # noqa: E402

VENV = REPO / ".venv" / "bin"
REPORT = '{"components": {"backup": {"phase": "Succeeded", "size": "1 MiB", "integrity": true}}}'
COUNTER = REPO / "bench" / "_count_requests"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, what: str = "") -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if (proc is not None and proc.poll() is not None) or time.monotonic() > end:
                raise SystemExit(f"{what or url} did not start")
            time.sleep(0.5)


class Postgres:
    """Debian's PostgreSQL in a temporary directory (initdb refuses root: run as the postgres user)."""

    def __init__(self, base: Path) -> None:
        self.dir = base / "pg"
        self.port = free_port()
        bindir = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]
        self.dir.mkdir(parents=True)
        shutil.chown(self.dir, "postgres", "postgres")
        subprocess.run(["runuser", "-u", "postgres", "--", str(bindir / "initdb"), "-A", "trust", "-D",
                        str(self.dir / "data")], check=True, capture_output=True)
        subprocess.run(["runuser", "-u", "postgres", "--", str(bindir / "pg_ctl"), "-D", str(self.dir / "data"),
                        "-l", str(self.dir / "log"), "-w", "-o",
                        f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c max_connections=300",
                        "start"], check=True, capture_output=True)
        subprocess.run(["runuser", "-u", "postgres", "--", str(bindir / "createdb"), "-h", "127.0.0.1", "-p",
                        str(self.port), "prefect"], check=True, capture_output=True)
        self.bindir = bindir
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/prefect"

    def stop(self) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", str(self.bindir / "pg_ctl"), "-D",
                        str(self.dir / "data"), "-m", "fast", "stop"], capture_output=True)


class PrefectServer:
    def __init__(self, base: Path, db_url: str | None, pool: tuple[int, int] | None = None) -> None:
        self.home = base / "prefect-home"
        self.home.mkdir()
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/api"
        self.env = {**os.environ, "PREFECT_HOME": str(self.home), "PREFECT_API_URL": self.url,
                    "PREFECT_SERVER_LOGGING_LEVEL": "WARNING", "STASHFLOW_CATALOG": CATALOG}
        if db_url:
            self.env["PREFECT_API_DATABASE_CONNECTION_URL"] = db_url
        if db_url and pool:  # the server's connection pool (Prefect's default 5 + 10 overflow)
            self.env["PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE"] = str(pool[0])
            self.env["PREFECT_SERVER_DATABASE_SQLALCHEMY_MAX_OVERFLOW"] = str(pool[1])
        self.log = open(self.home / "server.log", "w")
        self.proc = subprocess.Popen([str(VENV / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                                      str(port)], env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_http(f"{self.url}/health", 240, self.proc, "prefect server")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


def plan_docs(namespace: str, n: int) -> list[dict]:
    quiet = datetime.now(timezone.utc) + timedelta(hours=12)  # each deployment's own cron: it never adds a run
    cron = f"{quiet.minute} {quiet.hour} * * *"
    docs: list[dict] = [{"apiVersion": "storage.kubestash.com/v1alpha1", "kind": "BackupStorage",
                         "metadata": {"name": "local", "namespace": namespace},
                         "spec": {"storage": {"provider": "local",
                                              "local": {"mountPath": "/repo", "hostPath": {"path": "/tmp"}}}}}]
    for i in range(n):
        t = f"t{i:03d}"
        docs.append({"apiVersion": "core.kubestash.com/v1alpha1", "kind": "BackupConfiguration",
                     "metadata": {"name": f"fan-{t}", "namespace": namespace},
                     "spec": {"target": {"kind": "PersistentVolumeClaim", "name": t},
                              "backends": [{"name": "local", "storageRef": {"name": "local", "namespace": namespace}}],
                              "sessions": [{"name": "nightly", "scheduler": {"schedule": cron},
                                            "repositories": [{"name": f"repo-{t}", "backend": "local",
                                                              "directory": f"/fan/{t}",
                                                              "encryptionSecret": {"name": "pw"}}],
                                            "addon": {"name": "scripted", "tasks": [{"name": "backup"}]}}]}})
    return docs


def cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and of its children it has waited for (user + system), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def tree_rss_mb(pid: int) -> tuple[float, int]:
    """RSS of ``pid`` and all its descendants (MB), and how many processes that is."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            parents[int(entry.name)] = int(stat[1])
            rss[int(entry.name)] = int(stat[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    tree, frontier = {pid}, [pid]
    while frontier:
        p = frontier.pop()
        for child, parent in parents.items():
            if parent == p and child not in tree:
                tree.add(child)
                frontier.append(child)
    return sum(rss.get(p, 0) for p in tree) / 2**20, len(tree)


@dataclass
class Result:
    mode: str
    targets: int
    peak_rss_mb: float = 0.0
    peak_processes: int = 0
    all_jobs_s: float | None = None
    all_final_s: float | None = None
    states: dict[str, int] = field(default_factory=dict)
    late: int = 0
    kube_per_run: float = 0.0
    prefect_per_run: float = 0.0
    events_per_run: float = 0.0
    worker_cpu_s: float = 0.0  # CPU seconds of the worker (and the children it waited for) over the round
    server_cpu_s: float = 0.0  # CPU seconds of the Prefect server from the runs' creation to the end
    stopped_at: str = ""
    pace_s: tuple[float, float] = (0.0, 0.0)  # the machine's pace before the worker started and after the round
    breakdown: dict[str, dict[str, float]] = field(default_factory=dict)  # per run, by request shape / event


def pace() -> float:
    """The machine's pace: the median of three runs of one pure-Python loop, in seconds (this machine
    took 1.08-1.48 s for it on one day). The same code's times scale with it; print it beside them."""
    code = "import time; t = time.perf_counter(); s = 0\nfor i in range(20_000_000): s += i\nprint(time.perf_counter() - t)"
    times = sorted(float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                        check=True).stdout) for _ in range(3))
    return times[1]


async def prefect_call(fn):  # type: ignore[no-untyped-def]
    from prefect.client.orchestration import get_client

    async with get_client() as c:
        return await fn(c)


def run_mode(mode: str, args: argparse.Namespace, cluster: Cluster, server: PrefectServer, base: Path) -> Result:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterTags, FlowRunFilter, \
        FlowRunFilterId, FlowRunFilterState, FlowRunFilterStateName, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.states import Scheduled

    n = args.targets
    result = Result(mode, n)
    namespace = f"fan-{mode}-{int(time.time())}"
    pool = f"fan-{mode}-{int(time.time())}"
    counts = base / f"counts-{mode}"
    counts.mkdir()

    async def setup_ns() -> None:
        async with cluster.api_client() as api:
            core = client.CoreV1Api(api)
            await core.create_namespace({"metadata": {"name": namespace}})
            for _ in range(100):
                try:
                    await core.read_namespaced_service_account("default", namespace)
                    break
                except client.exceptions.ApiException:
                    await asyncio.sleep(0.2)
            await core.create_namespaced_secret(namespace, {"metadata": {"name": "pw"},
                                                            "data": {"RESTIC_PASSWORD": base64.b64encode(b"pw").decode()}})
    asyncio.run(setup_ns())
    plan = base / f"plan-{mode}.yaml"
    plan.write_text(yaml.safe_dump_all(plan_docs(namespace, n), sort_keys=False))
    env = {**server.env}
    done = subprocess.run([str(VENV / "stashflow"), "deploy", str(plan), "--work-pool", pool, "--pool-type",
                           "stashflow" if mode == "stashflow" else "process", "--kubeconfig",
                           str(cluster.kubeconfig)], env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise SystemExit(f"deploy failed: {done.stderr[-2000:]}")
    deployments = asyncio.run(prefect_call(lambda c: c.read_deployments(
        deployment_filter=DeploymentFilter(tags=DeploymentFilterTags(any_=[f"plan:{namespace}.fan-t{i:03d}"
                                                                         for i in range(n)])))))
    assert len(deployments) == n, len(deployments)

    # the runs log at Prefect's default level, INFO, as in production: their log lines reach the server
    worker_env = {**env, "PREFECT_LOGGING_LEVEL": "INFO", "PYTHONPATH": str(COUNTER),
                  "STASHFLOW_BENCH_COUNTS": str(counts),
                  "PREFECT_WORKER_QUERY_SECONDS": "5", "STASHFLOW_BENCH_CALLERS": "1" if args.callers else "0"}
    if mode == "stashflow":
        command = [str(VENV / "stashflow"), "worker", "--pool", pool]
    else:
        command = [str(VENV / "prefect"), "worker", "start", "--pool", pool, "--type", "process"]
        if mode == "process-limit":
            command += ["--limit", str(args.limit)]
    before = pace()
    log = open(base / f"worker-{mode}.log", "w")
    worker = subprocess.Popen(command, env=worker_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    time.sleep(8)  # the worker is up and polling before the instant
    t0 = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=args.lead)
    server_cpu_before = cpu_seconds(server.proc.pid)
    runs = asyncio.run(prefect_call(lambda c: asyncio.gather(*[
        c.create_flow_run_from_deployment(d.id, state=Scheduled(scheduled_time=t0)) for d in deployments])))
    ids = [r.id for r in runs]
    agent_start = time.monotonic() + (t0 - datetime.now(timezone.utc)).total_seconds()

    async def count_jobs() -> int:
        """How many Jobs exist, read as one Job and the apiserver's count of the rest (a full list of
        200 Jobs every second would load the apiserver the bench is measuring)."""
        async with cluster.api_client() as api:
            page = await client.BatchV1Api(api).list_namespaced_job(namespace, limit=1)
            return len(page.items) + (page.metadata.remaining_item_count or 0)

    def count_runs(**state: list) -> int:  # type: ignore[type-arg]
        """Flow runs of this round in these states, counted by the server (not read: reading 200 runs
        every second would load the server the bench is measuring)."""
        return asyncio.run(prefect_call(lambda c: c.count_flow_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=ids), state=FlowRunFilterState(**state)))))

    def final_states() -> dict[str, int]:
        found = asyncio.run(prefect_call(lambda c: c.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=len(ids))))
        states: dict[str, int] = {}
        for r in found:
            states[r.state.name if r.state else "?"] = states.get(r.state.name if r.state else "?", 0) + 1
        return states

    deadline = time.monotonic() + args.seconds + args.timeout
    while time.monotonic() < deadline:
        rss, procs = tree_rss_mb(worker.pid)
        result.peak_rss_mb, result.peak_processes = max(result.peak_rss_mb, rss), max(result.peak_processes, procs)
        if mode == "process" and rss > args.memory_bound_mb and not result.stopped_at:
            states = final_states()
            result.stopped_at = (f"stopped at {rss:.0f} MB total RSS, {procs} processes, "
                                 f"{time.monotonic() - agent_start:.0f}s after T0; states then {states}")
            break
        if result.all_jobs_s is None and asyncio.run(count_jobs()) >= n:
            result.all_jobs_s = time.monotonic() - agent_start
        result.late = max(result.late, count_runs(name=FlowRunFilterStateName(any_=["Late"])))
        finals = count_runs(type=FlowRunFilterStateType(any_=[StateType.COMPLETED, StateType.FAILED,
                                                             StateType.CRASHED, StateType.CANCELLED]))
        if finals >= n:
            result.all_final_s = time.monotonic() - agent_start
            break
        time.sleep(1)
    result.states = final_states()
    result.worker_cpu_s = cpu_seconds(worker.pid)
    result.server_cpu_s = cpu_seconds(server.proc.pid) - server_cpu_before
    try:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(180)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    time.sleep(1)
    result.pace_s = (before, pace())  # the runs are over, the namespace not yet being deleted
    kube = prefect_requests = 0
    by: dict[str, dict[str, float]] = {"kubernetes_by": {}, "prefect_by": {}, "events": {}, "prefect_callers": {}}
    for f in counts.glob("*.json"):
        data = json.loads(f.read_text())
        kube += data["kubernetes"]
        prefect_requests += data["prefect"]
        for key, table in by.items():
            for shape, count in data.get(key, {}).items():
                table[shape] = table.get(shape, 0) + count / n
    result.kube_per_run, result.prefect_per_run = kube / n, prefect_requests / n
    result.events_per_run = sum(by["events"].values())
    result.breakdown = {k: dict(sorted(v.items(), key=lambda kv: -kv[1])) for k, v in by.items()}

    async def cleanup() -> None:
        async with cluster.api_client() as api:
            await client.CoreV1Api(api).delete_namespace(namespace, propagation_policy="Background")
    asyncio.run(cleanup())
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--targets", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long each backup Job runs")
    parser.add_argument("--modes", default="stashflow,process,process-limit")
    parser.add_argument("--limit", type=int, default=20, help="--limit of the limited process worker")
    parser.add_argument("--memory-bound-mb", type=float, default=6000.0,
                        help="stop the unlimited process worker when its processes pass this total RSS")
    parser.add_argument("--lead", type=float, default=75.0,
                        help="seconds from scheduling until the runs' instant (the stashflow worker claims runs 60 s "
                             "ahead; Prefect's process worker 10 s)")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up this long after the Jobs' time")
    parser.add_argument("--db", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--db-pool", default="", metavar="SIZE+OVERFLOW",
                        help="the Prefect server's PostgreSQL connection pool, e.g. 20+20 (default: Prefect's, 5+10)")
    parser.add_argument("--callers", action="store_true",
                        help="with --breakdown: which code made each Prefect request (slower; not for timings)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also print each worker's requests per run by method and path shape, and its events")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="fanout-"))
    os.chmod(base, 0o755)
    cluster = Cluster()
    cluster.up()
    agent = cluster.node_agent(state_dir=base / "agent").start()
    agent.script({"stashflow.io/task": "backup"}, succeed(message=REPORT, after=args.seconds))
    pg = Postgres(base) if args.db == "postgres" else None
    server = PrefectServer(base, pg.url if pg else None,
                           tuple(int(n) for n in args.db_pool.split("+")) if args.db_pool else None)  # type: ignore[arg-type]
    os.environ.update(PREFECT_API_URL=server.url, PREFECT_HOME=str(server.home))
    results = []
    try:
        for mode in args.modes.split(","):
            print(f"[fanout] {mode}: {args.targets} targets, Jobs of {args.seconds:.0f}s", file=sys.stderr, flush=True)
            results.append(run_mode(mode, args, cluster, server, base))
            print(f"[fanout] {results[-1]}", file=sys.stderr, flush=True)
    finally:
        server.stop()
        if pg:
            pg.stop()
        agent.stop()
        if cluster.started_here:
            cluster.down()
    print(f"{args.targets} targets at one instant, Jobs of {args.seconds:.0f}s, Prefect server on {args.db}; "
          f"times from the instant (logs in {base})")
    print(f"{'worker':16} {'peak RSS':>10} {'procs':>6} {'all Jobs':>9} {'all final':>10} {'k8s/run':>8} "
          f"{'prefect/run':>12} {'events/run':>11} {'CPU s/run':>15} {'pace':>10}  states")
    for r in results:
        fmt = lambda v: f"{v:.0f}s" if v is not None else "-"  # noqa: E731
        print(f"{r.mode:16} {r.peak_rss_mb:>8.0f}MB {r.peak_processes:>6} {fmt(r.all_jobs_s):>9} "
              f"{fmt(r.all_final_s):>10} {r.kube_per_run:>8.1f} {r.prefect_per_run:>12.1f} {r.events_per_run:>11.1f} "
              f"{r.worker_cpu_s / r.targets:>6.2f}w {r.server_cpu_s / r.targets:>6.2f}s "
              f"{r.pace_s[0]:>4.2f}/{r.pace_s[1]:.2f}  {r.states}"
              + (f" Late seen: {r.late}" if r.late else "") + (f"  {r.stopped_at}" if r.stopped_at else ""))
    if args.breakdown:
        for r in results:
            for key, table in r.breakdown.items():
                sep = "\n  " if key == "prefect_callers" else ", "
                print(f"{r.mode} {key} per run: " + sep.join(f"{k} {v:.2f}" for k, v in table.items() if v >= 0.05))
    return 0


if __name__ == "__main__":
    sys.exit(main())
