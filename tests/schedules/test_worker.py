"""`stashflow worker`: many flow runs of a work pool in one process, on a real `prefect server` and the
real control plane (the node agent scripts what each backup Job does)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from localkube.nodeagent import never_ends, succeed

from runs.observe import eventually, jobs, prefect, snapshots
from .conftest import REPO
from .plans import QUIET_CRON

STASHFLOW = str(REPO / ".venv" / "bin" / "stashflow")
# a worker's runs talk to the server at once: PostgreSQL, as in production (SQLite locks under it)
pytestmark = pytest.mark.postgres_only  # on SQLite, "database is locked" starts runs up to 30 s late
REPORT = '{"components": {"backup": {"phase": "Succeeded", "size": "1 MiB", "integrity": true}}}'


def write_targets(path: Path, namespace: str, targets: list[str], *, plan: str = "fleet") -> Path:
    """One BackupConfiguration per target (PVC), each with one nightly session, sharing one storage."""
    docs: list[dict[str, Any]] = [
        {"apiVersion": "storage.kubestash.com/v1alpha1", "kind": "BackupStorage",
         "metadata": {"name": "local", "namespace": namespace},
         "spec": {"storage": {"provider": "local", "local": {"mountPath": "/repo", "hostPath": {"path": "/tmp"}}}}}]
    for target in targets:
        docs.append({
            "apiVersion": "core.kubestash.com/v1alpha1", "kind": "BackupConfiguration",
            "metadata": {"name": f"{plan}-{target}", "namespace": namespace},
            "spec": {"target": {"kind": "PersistentVolumeClaim", "name": target},
                     "backends": [{"name": "local", "storageRef": {"name": "local", "namespace": namespace}}],
                     "sessions": [{"name": "nightly", "scheduler": {"schedule": QUIET_CRON},
                                   "repositories": [{"name": f"repo-{target}", "backend": "local",
                                                     "directory": f"/w/{target}", "encryptionSecret": {"name": "pw"}}],
                                   "addon": {"name": "scripted", "tasks": [{"name": "backup"}]}}]}})
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


class Worker:
    """`stashflow worker --pool POOL` as a process of its own; stopped by pid."""

    def __init__(self, pool: str, env: dict[str, str], log: Path, *extra: str) -> None:
        self.log = log
        self.process = subprocess.Popen([STASHFLOW, "worker", "--pool", pool, *extra], env=env,
                                        stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        return self.log.read_text()

    def terminate(self, timeout: float = 120) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            raise AssertionError(f"the worker did not stop within {timeout}s:\n{self.text()[-3000:]}") from None

    def started(self) -> int:
        """Runs it started, from its exit line."""
        found = re.search(r"stopped: (\d+) run\(s\) started", self.text())
        assert found, self.text()[-3000:]
        return int(found.group(1))


@pytest.fixture
def start_worker(prefect_server, tmp_path):  # type: ignore[no-untyped-def]
    env = {**prefect_server, "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "2",
           "PREFECT_WORKER_CANCELLATION_POLL_SECONDS": "2"}
    started: list[Worker] = []

    def start(pool: str, *extra: str) -> Worker:
        worker = Worker(pool, env, tmp_path / f"worker-{len(started)}.log", *extra)
        started.append(worker)
        return worker
    yield start
    for worker in started:
        if worker.process.poll() is None:
            os.killpg(worker.process.pid, signal.SIGKILL)
            worker.process.wait()


def deploy(plan: Path, pool: str, env: dict[str, str], kubeconfig: Path) -> list[str]:
    done = subprocess.run([STASHFLOW, "deploy", str(plan), "--work-pool", pool, "--kubeconfig", str(kubeconfig)],
                          env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    return re.findall(r"^deployed (\S+):", done.stdout, re.M)


def trigger_all(names: list[str]) -> list[Any]:
    from prefect.deployments import run_deployment

    return [run_deployment(name, timeout=0) for name in names]


def read_runs(ids: list[Any]) -> list[Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    found = prefect(lambda c: c.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids))))
    return sorted(found, key=lambda r: ids.index(r.id))


def all_final(ids: list[Any]) -> list[Any] | None:
    runs = read_runs(ids)
    return runs if len(runs) == len(ids) and all(r.state and r.state.is_final() for r in runs) else None


def state_names(run_id: Any) -> list[str]:
    states = prefect(lambda c: c.read_flow_run_states(run_id))
    return [s.name for s in sorted(states, key=lambda s: s.timestamp)]


def heartbeats_of(ids: list[Any]) -> set[str]:
    """The flow runs among ``ids`` that have sent a heartbeat event."""
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    page = prefect(lambda c: c.read_events(filter=EventFilter(
        event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
        resource=EventResourceFilter(id=[f"prefect.flow-run.{i}" for i in ids])), limit=50))
    return {e.resource.id.removeprefix("prefect.flow-run.") for e in page.events}


def children(pid: int) -> list[int]:
    """Child processes of ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def test_one_worker_process_runs_many_flow_runs_at_once(kube_cluster, namespace, node_agent, prefect_server,
                                                        start_worker, tmp_path) -> None:
    from kubernetes_asyncio import client

    from runs.observe import api

    targets = [f"t{i}" for i in range(5)]
    node_agent.script({"stashflow.io/task": "backup"}, never_ends())  # held until the test lets them go
    pool = f"pool-{uuid.uuid4().hex[:6]}"
    worker = start_worker(pool)
    names = deploy(write_targets(tmp_path / "plan.yaml", namespace, targets), pool, prefect_server,
                   kube_cluster.kubeconfig)
    assert len(names) == len(targets)
    ids = [r.id for r in trigger_all(names)]
    # every run is Running at once, with its Job, in the worker's one process (which has no child processes)
    eventually(lambda: len(jobs(kube_cluster, namespace)) == len(targets), timeout=180, interval=0.5)
    running = eventually(lambda: (lambda rs: rs if all(r.state.is_running() for r in rs) else None)(read_runs(ids)),
                         timeout=120, interval=0.5)
    assert {r.infrastructure_pid.split(":")[1] for r in running} == {str(worker.process.pid)}
    assert children(worker.process.pid) == []
    # each run's heartbeat reaches the API, sent by the process's one heartbeat thread (inprocess.SharedWatch)
    eventually(lambda: heartbeats_of(ids) == {str(i) for i in ids}, timeout=120, interval=1)
    # let them go: replacement Pods (the Job controller makes them) succeed
    node_agent.script({"stashflow.io/task": "backup"}, succeed(message=REPORT))
    api(kube_cluster, lambda c: client.CoreV1Api(c).delete_collection_namespaced_pod(namespace))
    runs = eventually(lambda: all_final(ids), timeout=180, interval=1)
    assert [r.state.name for r in runs] == ["Completed"] * len(targets), [r.state.message for r in runs]
    assert all(state_names(r.id).count("Running") == 1 for r in runs)
    phases = sorted(s["status"]["phase"] for s in snapshots(kube_cluster, namespace))
    assert phases == ["Succeeded"] * len(targets)
    assert worker.terminate() == 0
    assert worker.started() == len(targets)


def test_cancelling_one_run_cancels_only_that_run_and_cleans_it_up(kube_cluster, namespace, node_agent,
                                                                   prefect_server, start_worker, tmp_path) -> None:
    from prefect.states import Cancelling

    node_agent.script({"stashflow.io/task": "backup"}, succeed(message=REPORT, after=10))
    node_agent.script({"stashflow.io/target-name": "stuck"}, never_ends())  # later scripts win
    pool = f"pool-{uuid.uuid4().hex[:6]}"
    worker = start_worker(pool)
    names = deploy(write_targets(tmp_path / "plan.yaml", namespace, ["stuck", "a", "b"]), pool, prefect_server,
                   kube_cluster.kubeconfig)
    ids = [r.id for r in trigger_all(names)]
    eventually(lambda: len(jobs(kube_cluster, namespace)) == 3, timeout=120, interval=0.5)
    stuck = next(r for r in read_runs(ids) if r.parameters["target"] == "PersistentVolumeClaim/stuck")
    prefect(lambda c: c.set_flow_run_state(stuck.id, Cancelling(message="cancelled by the test"), force=True))
    runs = eventually(lambda: all_final(ids), timeout=180, interval=1)
    by_id = {r.id: r for r in runs}
    assert by_id[stuck.id].state.name == "Cancelled", by_id[stuck.id].state.message
    assert sorted(r.state.name for r in runs if r.id != stuck.id) == ["Completed", "Completed"]
    # the cancelled run's Job is gone and its Snapshot Failed; the others' Jobs are kept (history limit 1)
    target_of = lambda snap: snap["spec"]["repository"].removeprefix("repo-")  # noqa: E731
    eventually(lambda: sorted(j.metadata.labels["stashflow.io/target-name"] for j in jobs(kube_cluster, namespace))
               == ["a", "b"], timeout=60)
    phases = {target_of(s): s["status"]["phase"] for s in snapshots(kube_cluster, namespace)}
    assert phases == {"stuck": "Failed", "a": "Succeeded", "b": "Succeeded"}
    assert worker.process.poll() is None  # the worker goes on
    assert worker.terminate() == 0


def test_sigterm_ends_running_runs_with_their_cleanup(kube_cluster, namespace, node_agent, prefect_server,
                                                     start_worker, tmp_path) -> None:
    node_agent.script({"stashflow.io/task": "backup"}, never_ends())
    pool = f"pool-{uuid.uuid4().hex[:6]}"
    worker = start_worker(pool)
    names = deploy(write_targets(tmp_path / "plan.yaml", namespace, ["a", "b"]), pool, prefect_server,
                   kube_cluster.kubeconfig)
    ids = [r.id for r in trigger_all(names)]
    eventually(lambda: len(jobs(kube_cluster, namespace)) == 2, timeout=120, interval=0.5)
    assert worker.terminate() == 0
    text = worker.text()
    assert "2 ended by the stop" in text, text[-3000:]
    runs = read_runs(ids)
    assert [r.state.name for r in runs] == ["Crashed", "Crashed"]
    assert all("stopped (SIGTERM)" in (r.state.message or "") for r in runs), [r.state.message for r in runs]
    eventually(lambda: not jobs(kube_cluster, namespace), timeout=60)
    for s in snapshots(kube_cluster, namespace):
        assert s["status"]["phase"] == "Failed"
        reasons = " ".join(c.get("message", "") for c in s["status"].get("conditions") or [])
        assert "SIGTERM" in reasons, s["status"]


def test_two_workers_on_one_pool_never_run_a_flow_run_twice(kube_cluster, namespace, node_agent, prefect_server,
                                                            start_worker, tmp_path) -> None:
    targets = [f"t{i}" for i in range(8)]
    node_agent.script({"stashflow.io/task": "backup"}, succeed(message=REPORT, after=2))
    pool = f"pool-{uuid.uuid4().hex[:6]}"
    first, second = start_worker(pool, "--limit", "5"), start_worker(pool, "--limit", "5")
    names = deploy(write_targets(tmp_path / "plan.yaml", namespace, targets), pool, prefect_server,
                   kube_cluster.kubeconfig)
    ids = [r.id for r in trigger_all(names)]
    runs = eventually(lambda: all_final(ids), timeout=240, interval=1)
    assert [r.state.name for r in runs] == ["Completed"] * len(targets), [r.state.message for r in runs]
    for r in runs:  # claimed once (one Pending), run once (one Running)
        names_seen = state_names(r.id)
        assert names_seen.count("Pending") == 1 and names_seen.count("Running") == 1, names_seen
    assert first.terminate() == 0 and second.terminate() == 0
    assert first.started() + second.started() == len(targets)
    assert len([rec for rec in node_agent.records if rec.namespace == namespace]) == len(targets)


def test_a_run_claimed_ahead_of_its_time_starts_on_time_or_is_handed_back(kube_cluster, namespace, node_agent,
                                                                           prefect_server, start_worker,
                                                                           tmp_path) -> None:
    """``--prefetch-seconds``: a run is claimed (Pending) well before its time and starts at its time, not
    before; a worker stopped while its run waits hands it back Scheduled at that time (not Crashed: it never
    began), and another worker runs it."""
    from datetime import datetime, timedelta, timezone

    from prefect.deployments import run_deployment

    node_agent.script({"stashflow.io/task": "backup"}, succeed(message=REPORT))
    pool = f"pool-{uuid.uuid4().hex[:6]}"
    first = start_worker(pool, "--prefetch-seconds", "120")
    names = deploy(write_targets(tmp_path / "plan.yaml", namespace, ["early"]), pool, prefect_server,
                   kube_cluster.kubeconfig)
    due = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=40)
    run_id = run_deployment(names[0], scheduled_time=due, timeout=0).id
    claimed = eventually(lambda: (lambda r: r if r.state.is_pending() else None)(read_runs([run_id])[0]),
                         timeout=30, interval=0.5)
    assert datetime.now(timezone.utc) < due - timedelta(seconds=5), "claimed too late to show anything"
    assert first.terminate() == 0
    assert "1 handed back" in first.text(), first.text()[-3000:]
    back = read_runs([run_id])[0]
    assert back.state.is_scheduled() and back.state.state_details.scheduled_time == due, back.state
    assert "handed back" in (back.state.message or "")
    assert "Crashed" not in state_names(run_id) and "Running" not in state_names(run_id)
    assert not jobs(kube_cluster, namespace) and claimed.id == run_id

    second = start_worker(pool, "--prefetch-seconds", "120")
    done = eventually(lambda: all_final([run_id]), timeout=150, interval=1)[0]
    assert done.state.name == "Completed", done.state.message
    assert state_names(run_id).count("Running") == 1
    assert done.start_time >= due - timedelta(seconds=0.5), (done.start_time, due)  # Prefect rounds to 1 s
    assert [s["status"]["phase"] for s in snapshots(kube_cluster, namespace)] == ["Succeeded"]
    assert second.terminate() == 0 and second.started() == 1
