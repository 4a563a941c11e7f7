"""Runs that are cancelled, killed, or whose API server restarts: nothing left behind, nothing duplicated."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time


from localkube.nodeagent import never_ends, succeed

from .conftest import REPO, run_flow
from .observe import eventually, jobs, nothing_left, pvcs, snapshot, snapshots

STASHFLOW = str(REPO / ".venv" / "bin" / "stashflow")


def _job_exists(cluster, namespace):  # type: ignore[no-untyped-def]
    return lambda: jobs(cluster, namespace)


def test_cancelling_a_deployment_run_deletes_its_job_and_pvcs(kube_cluster, namespace, node_agent, prefect_env,
                                                              tmp_path) -> None:
    """Through Prefect itself: a served deployment, cancelled via the API; the runner runs the hook."""
    from prefect.client.schemas.objects import StateType
    from prefect.states import State

    from .observe import prefect

    node_agent.script({"stashflow.io/task": "backup"}, never_ends(logs=["working"]))
    server = subprocess.Popen(
        [sys.executable, "-c",
         "from prefect.deployments.runner import EntrypointType\n"
         "from stashflow.flows.addon_flows import scripted__backup as f\n"
         "if __name__ == '__main__':\n"
         f"    f.serve(name='cancel-{namespace[-6:]}', entrypoint_type=EntrypointType.MODULE_PATH)\n"],
        env=prefect_env, stdout=open(tmp_path / "serve.log", "w"), stderr=subprocess.STDOUT, cwd=REPO)
    try:
        deployment = f"scripted:backup/cancel-{namespace[-6:]}"
        run = eventually(lambda: _try_run(deployment, namespace, kube_cluster), timeout=90, interval=1)
        eventually(_job_exists(kube_cluster, namespace), timeout=90)
        assert pvcs(kube_cluster, namespace)
        prefect(lambda c: c.set_flow_run_state(run.id, State(type=StateType.CANCELLING), force=True))
        eventually(lambda: nothing_left(kube_cluster, namespace), timeout=90)
        final = eventually(lambda: _terminal(run.id), timeout=60)
        assert final.state.type == StateType.CANCELLED
        (snap,) = snapshots(kube_cluster, namespace)
        assert snap["status"]["phase"] == "Failed" and "cancel" in str(snap["status"]["components"])
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert not node_agent.running_pids(namespace)


def _try_run(deployment, namespace, cluster):  # type: ignore[no-untyped-def]
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    try:
        return run_deployment(deployment, timeout=0, parameters={
            "target": "PersistentVolumeClaim/data", "namespace": namespace,
            "cluster": {"kubeconfig": str(cluster.kubeconfig)}, "advanced": {"session": "data-cancel"}})
    except ObjectNotFound:
        return None


def _terminal(flow_run_id):  # type: ignore[no-untyped-def]
    from .observe import prefect

    run = prefect(lambda c: c.read_flow_run(flow_run_id))
    return run if run.state and run.state.is_final() else None


def test_cancelling_the_task_in_process_cleans_up(kube_cluster, namespace, node_agent, prefect_api) -> None:
    """An interrupted in-process run (Ctrl-C, a cancelled asyncio task) removes its Job and PVCs too."""
    from stashflow.flows.addon_flows import flow_for

    node_agent.script({"stashflow.io/task": "backup"}, never_ends())

    async def scenario() -> None:
        run = asyncio.create_task(flow_for("scripted", "backup")(
            target="PersistentVolumeClaim/data", namespace=namespace,
            cluster={"kubeconfig": str(kube_cluster.kubeconfig)}, advanced={"session": "data-int"},
            return_state=True))
        for _ in range(300):
            if await asyncio.to_thread(jobs, kube_cluster, namespace):
                break
            await asyncio.sleep(0.1)
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)

    asyncio.run(scenario())
    eventually(lambda: nothing_left(kube_cluster, namespace), timeout=60)
    assert snapshot(kube_cluster, namespace, "data-data-int")["status"]["phase"] == "Failed"


def test_apiserver_restart_while_waiting(kube_cluster, namespace, node_agent, prefect_api) -> None:
    report = '{"components": {"backup": {"phase": "Succeeded", "size": "2 MiB", "integrity": true}}}'
    node_agent.script({"stashflow.io/session": "data-r"}, succeed(after=8.0, logs=["a", "b"], message=report))
    result: dict = {}

    def runner() -> None:
        result["state"] = run_flow("scripted", "backup", target="PersistentVolumeClaim/data", namespace=namespace,
                                   kubeconfig=str(kube_cluster.kubeconfig), session="data-r")

    thread = threading.Thread(target=runner)
    thread.start()
    eventually(_job_exists(kube_cluster, namespace), timeout=60)
    time.sleep(1.0)
    kube_cluster.restart_apiserver(downtime=2.0)
    thread.join(timeout=120)
    state = result["state"]
    # the Job completed around the restart; the run resumed its watches and saw it, with no second Job
    assert state.is_completed(), state.message
    assert snapshot(kube_cluster, namespace, "data-data-r")["status"]["phase"] == "Succeeded"
    assert len(jobs(kube_cluster, namespace)) == 1


def test_a_killed_run_started_again_adopts_its_job(kube_cluster, namespace, node_agent, prefect_env) -> None:
    report = '{"components": {"backup": {"phase": "Succeeded", "size": "1 MiB", "integrity": true}}}'
    node_agent.script({"stashflow.io/session": "data-k"}, succeed(after=6.0, message=report))
    args = [STASHFLOW, "run", "scripted", "backup", "--namespace", namespace, "--target", "pvc/data",
            "--var", "backupSession=data-k", "--kubeconfig", str(kube_cluster.kubeconfig)]
    first = subprocess.Popen(args, env=prefect_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    eventually(_job_exists(kube_cluster, namespace), timeout=90)
    first.kill()  # SIGKILL: no hook, no cleanup can run
    first.wait()
    second = subprocess.run(args, env=prefect_env, capture_output=True, text=True, timeout=180)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "phase: Succeeded" in second.stdout
    assert [j.metadata.name for j in jobs(kube_cluster, namespace)] == ["data-k-backup"]
    pods = [r for r in node_agent.records if r.namespace == namespace]
    assert len(pods) == 1  # one Job, one Pod: nothing ran twice
