"""Schedules, retries, overlap, timeouts and missed runs: `stashflow serve` on a real prefect server,
running backups on the real control plane with the node agent."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from localkube.nodeagent import fail, never_ends, succeed

from runs.observe import artifacts_by_key, eventually, jobs, nothing_left, snapshots
from .conftest import REPO
from .plans import QUIET_AT, QUIET_CRON, session, write_plan

REPORT = json.dumps({"components": {"backup": {"phase": "Succeeded", "size": "1 MiB", "integrity": True}}})
STASHFLOW = str(REPO / ".venv" / "bin" / "stashflow")


def flow_runs(deployment: str) -> list[Any]:
    """The flow runs of ``flow/deployment``, oldest expected start first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async def go():  # type: ignore[no-untyped-def]
        async with get_client() as c:
            d = await c.read_deployment_by_name(deployment)
            runs = await c.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[d.id])))
            return sorted(runs, key=lambda r: r.expected_start_time)
    return asyncio.run(go())


def triggered(deployment: str) -> list[Any]:
    """Runs started by hand or as new attempts, not the scheduler's future ones."""
    return [r for r in flow_runs(deployment) if not r.auto_scheduled]


def trigger(deployment: str, **parameters: Any) -> Any:
    from prefect.deployments import run_deployment

    return run_deployment(deployment, timeout=0, parameters=parameters)


def deployed(deployment: str) -> bool:
    from prefect.exceptions import ObjectNotFound

    try:
        flow_runs(deployment)
        return True
    except ObjectNotFound:
        return False


def finished(runs: list[Any]) -> bool:
    return bool(runs) and all(r.state and r.state.is_final() for r in runs)


def auto_scheduled(deployment: str, count: int) -> list[Any]:
    """The first ``count`` runs the Prefect scheduler made from the plan's cron (waits for them)."""
    return eventually(lambda: (lambda r: r[:count] if len(r) >= count else None)(
        [x for x in flow_runs(deployment) if x.auto_scheduled and x.state.type.value == "SCHEDULED"]),
        timeout=90, interval=1)


def move(run: Any, when: datetime) -> None:
    """Move a scheduled run in time: sooner, so the test need not wait for the cron; or into the
    past, as if the scheduler had made it while every worker was down."""
    from prefect.states import Scheduled

    from runs.observe import prefect

    prefect(lambda c: c.set_flow_run_state(run.id, Scheduled(scheduled_time=when), force=True))


def test_a_scheduled_run_fires_and_backs_up(kube_cluster, namespace, node_agent, serve, tmp_path) -> None:
    node_agent.script({"stashflow.io/task": "backup"}, succeed(message=REPORT))
    plan = write_plan(tmp_path / "plan.yaml", namespace, [session("nightly", QUIET_CRON)], name="sched")
    served = serve(plan, "--kubeconfig", str(kube_cluster.kubeconfig))
    name = f"backup-session/{namespace}-sched-nightly"
    eventually(lambda: deployed(name), timeout=90, interval=1)
    (first,) = auto_scheduled(name, 1)  # made by Prefect's scheduler from the cron, half a day from now
    assert (first.expected_start_time.hour, first.expected_start_time.minute) == (QUIET_AT.hour, QUIET_AT.minute)
    move(first, datetime.now(timezone.utc) + timedelta(seconds=2))  # rather than wait half a day
    run = eventually(lambda: (lambda r: r if r.state.is_final() else None)(
        next(x for x in flow_runs(name) if x.id == first.id)), timeout=120, interval=1)
    served.stop()
    assert run.state.is_completed() and run.state.name == "Completed", run.state.message
    assert [s["status"]["phase"] for s in snapshots(kube_cluster, namespace)] == ["Succeeded"]


def _retry_case(kube_cluster, namespace, node_agent, serve, tmp_path, max_retry: int, outcomes):  # type: ignore[no-untyped-def]
    node_agent.script({"stashflow.io/task": "backup"}, *outcomes)
    plan = write_plan(tmp_path / "plan.yaml", namespace,
                      [session("nightly", max_retry=max_retry, delay="1s", history=5)], name="retry")
    serve(plan, "--kubeconfig", str(kube_cluster.kubeconfig))
    name = f"backup-session/{namespace}-retry-nightly"
    eventually(lambda: deployed(name), timeout=90, interval=1)
    trigger(name)
    expected = min(max_retry + 1, len(outcomes))
    runs = eventually(lambda: (lambda r: r if len(r) == expected and finished(r) else None)(triggered(name)),
                      timeout=180, interval=1)
    time.sleep(3)  # no further attempt may appear
    return runs, triggered(name)


def test_fails_twice_then_succeeds_with_max_retry_2(kube_cluster, namespace, node_agent, serve, tmp_path) -> None:
    runs, again = _retry_case(kube_cluster, namespace, node_agent, serve, tmp_path, 2,
                              [fail(1), fail(2), succeed(message=REPORT)])
    assert len(again) == 3
    assert [r.state.type.value for r in runs] == ["FAILED", "FAILED", "COMPLETED"]
    assert [(r.parameters.get("advanced") or {}).get("attempt", 1) for r in runs] == [1, 2, 3]
    assert len(jobs(kube_cluster, namespace)) == 3  # one Job per attempt, never the same Job re-run
    phases = sorted(s["status"]["phase"] for s in snapshots(kube_cluster, namespace))
    assert phases == ["Failed", "Failed", "Succeeded"]
    # each failure's diagnosis says what follows it
    notes = [a.data for a in artifacts_by_key(f"failure-{namespace}-persistentvolumeclaim-data")]
    assert ["- retry: attempt 3 of 3 follows in 1s" in notes[0], "- retry: attempt 2 of 3 follows in 1s" in notes[1]] \
        == [True, True]


def test_with_max_retry_1_it_ends_failed_after_two_attempts(kube_cluster, namespace, node_agent, serve,
                                                            tmp_path) -> None:
    runs, again = _retry_case(kube_cluster, namespace, node_agent, serve, tmp_path, 1, [fail(1), fail(1), fail(1)])
    assert len(again) == 2
    assert [r.state.type.value for r in runs] == ["FAILED", "FAILED"]
    assert sorted(s["status"]["phase"] for s in snapshots(kube_cluster, namespace)) == ["Failed", "Failed"]
    last = artifacts_by_key(f"failure-{namespace}-persistentvolumeclaim-data")[0]
    assert "- retry: none: this was attempt 2 of 2 (retryConfig.maxRetry 1)" in last.data


def test_a_second_backup_of_the_same_target_is_skipped_not_queued(kube_cluster, namespace, node_agent, serve,
                                                                  tmp_path) -> None:
    # long enough that the second run starts while the first holds the target, however slowly a flow-run
    # process starts on a loaded machine (a session also applies its objects before its Job)
    node_agent.script({"stashflow.io/task": "backup"}, succeed(after=45.0, message=REPORT))
    plan = write_plan(tmp_path / "plan.yaml", namespace, [session("a"), session("b")], name="overlap")
    serve(plan, "--kubeconfig", str(kube_cluster.kubeconfig))
    first, second = f"backup-session/{namespace}-overlap-a", f"backup-session/{namespace}-overlap-b"
    eventually(lambda: deployed(first) and deployed(second), timeout=90, interval=1)
    trigger(first)
    eventually(lambda: jobs(kube_cluster, namespace), timeout=90)
    trigger(second)  # another session, same target
    (skipped,) = eventually(lambda: (lambda r: r if finished(r) else None)(triggered(second)), timeout=90, interval=1)
    assert skipped.state.name == "Skipped"
    assert "in progress" in skipped.state.message and "PersistentVolumeClaim/data" in skipped.state.message
    (running,) = triggered(first)
    assert not running.state.is_final()  # the first one is still at it; the second did not wait for it
    assert len(jobs(kube_cluster, namespace)) == 1
    (done,) = eventually(lambda: (lambda r: r if finished(r) else None)(triggered(first)), timeout=90, interval=1)
    assert done.state.is_completed()


def test_backup_timeout_bounds_the_run(kube_cluster, namespace, node_agent, serve, tmp_path) -> None:
    node_agent.script({"stashflow.io/task": "backup"}, never_ends(logs=["still going"]))
    plan = write_plan(tmp_path / "plan.yaml", namespace, [session("slow", timeout="3s")], name="slow")
    serve(plan, "--kubeconfig", str(kube_cluster.kubeconfig))
    name = f"backup-session/{namespace}-slow-slow"
    eventually(lambda: deployed(name), timeout=90, interval=1)
    trigger(name)
    (run,) = eventually(lambda: (lambda r: r if finished(r) else None)(triggered(name)), timeout=120, interval=1)
    assert run.state.is_failed() and "deadline-exceeded" in run.state.message
    eventually(lambda: nothing_left(kube_cluster, namespace), timeout=60)


def backdate(prefect_server: dict[str, str], run: Any, when: datetime) -> None:
    """As if ``run`` had fallen due at ``when`` while every worker was down.

    A real outage leaves the scheduler's runs with expected start times in the past; the API
    cannot set that field, so the test moves it in the server's own database (its SQLite file, naive
    UTC, or its PostgreSQL through psql), and re-schedules the run through the API so the runner sees
    it due."""
    import sqlite3

    move(run, when)
    stamp = when.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
    url = prefect_server.get("PREFECT_API_DATABASE_CONNECTION_URL")
    if url:  # the values are the test's own (a UUID and a timestamp), so they can be literals
        sql = (f"UPDATE flow_run SET expected_start_time = '{stamp}+00', next_scheduled_start_time = '{stamp}+00'"
               f" WHERE id = '{run.id}'")
        done = subprocess.run(["psql", "-X", "-v", "ON_ERROR_STOP=1", url.replace("+asyncpg", ""), "-c", sql],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "UPDATE 1" in done.stdout, done.stderr
        return
    with sqlite3.connect(Path(prefect_server["PREFECT_HOME"]) / "prefect.db") as db:
        db.execute("UPDATE flow_run SET expected_start_time = ?, next_scheduled_start_time = ? WHERE id = ?",
                   (stamp, stamp, str(run.id)))


def test_after_downtime_only_the_latest_missed_run_runs(kube_cluster, namespace, node_agent, prefect_server, serve,
                                                        tmp_path) -> None:
    node_agent.script({"stashflow.io/task": "backup"}, succeed(message=REPORT))
    # daily: the backdated runs below are the only ones due; an every-minute schedule would add a real run
    # at the next minute, which (as the latest missed run) would skip the fourth whenever the runner is slow
    plan = write_plan(tmp_path / "plan.yaml", namespace, [session("tick", "0 3 * * *")], name="missed")
    name = f"backup-session/{namespace}-missed-tick"
    subprocess.run([STASHFLOW, "deploy", str(plan), "--kubeconfig", str(kube_cluster.kubeconfig)],
                   env=prefect_server, check=True, timeout=120)
    # three runs of the schedule fell due while no worker ran: 3, 2 and 1 minute ago (Prefect's scheduler
    # makes at least three runs of a daily schedule)
    runs = auto_scheduled(name, 3)
    now = datetime.now(timezone.utc)
    for minutes_ago, run in zip((3, 2, 1), runs):
        backdate(prefect_server, run, now - timedelta(minutes=minutes_ago))
    missed_ids = [r.id for r in runs]
    served = serve(plan, "--kubeconfig", str(kube_cluster.kubeconfig))
    eventually(lambda: all(r.state.is_final() for r in flow_runs(name) if r.id in missed_ids), timeout=120,
               interval=1)
    served.stop()
    outcome = {r.id: r.state for r in flow_runs(name) if r.id in missed_ids}
    states = [outcome[i] for i in missed_ids]
    assert [s.name for s in states] == ["Skipped", "Skipped", "Completed"]
    assert all(s.message.startswith("missed:") and "runs instead" in s.message for s in states[:2])
    assert [s["status"]["phase"] for s in snapshots(kube_cluster, namespace)] == ["Succeeded"]
