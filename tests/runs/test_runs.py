"""Addon-task flows on the real control plane, with the node agent playing the kubelet."""

from __future__ import annotations

import json

import pytest

from localkube.nodeagent import config_error, evicted, fail, image_pull_error, never_ends, oom_killed, succeed, \
    unschedulable
from .conftest import run_flow
from .observe import artifacts_by_key, eventually, flow_run_artifacts, flow_run_logs, jobs, nothing_left, pvcs, \
    snapshot, snapshots

REPORT = {"components": {"dump": {
    "phase": "Succeeded", "driver": "Restic", "duration": "9.2s", "size": "1.134 MiB", "integrity": True,
    "resticStats": [{"id": "00f950ccb1cf2ec52ee2c6f4f537a2c68aa18d5e35939b066347b60c5e825095",
                     "hostPath": "/kubestash-data", "size": "4.994 MiB", "uploaded": "637.225 KiB"}]}}}


@pytest.fixture
def run(kube_cluster, namespace, prefect_api):  # type: ignore[no-untyped-def]
    def go(task: str = "backup", addon: str = "scripted", **parameters):  # type: ignore[no-untyped-def]
        parameters.setdefault("target", "PersistentVolumeClaim/data")
        return run_flow(addon, task, namespace=namespace, kubeconfig=str(kube_cluster.kubeconfig), **parameters)
    return go


def test_success_records_what_the_container_reported(run, kube_cluster, namespace, node_agent) -> None:
    node_agent.script({"stashflow.io/session": "data-1"},
                      succeed(message=json.dumps(REPORT), logs=["dumping", "uploading", "done"]))
    state = run(session="data-1", message='it\'s "quoted"\\n', logs="follow")
    assert state.is_completed(), state.message
    result = state.result()
    snap = snapshot(kube_cluster, namespace, result["snapshot"])
    assert snap["metadata"]["name"] == "data-data-1"
    status = snap["status"]
    assert status["phase"] == "Succeeded"
    assert status["size"] == "1.134 MiB" and status["integrity"] is True and status["totalComponents"] == 1
    component = status["components"]["dump"]
    for key, value in REPORT["components"]["dump"].items():
        if key == "resticStats" and "summary" in component[key][0]:  # KubeStash's CRD: the nested form
            value = [{"summary": v} for v in value]
        assert component[key] == value, key
    assert component["path"] == "repository/v1/backup/dump"
    # the value reached the Job verbatim, and the Job stays (history limit 1)
    (job,) = jobs(kube_cluster, namespace)
    assert '--message=it\'s "quoted"\\n' in job.spec.template.spec.containers[0].args
    assert f"--snapshot={snap['metadata']['name']}" in job.spec.template.spec.containers[0].args
    # the container's log is in the flow run's logs, each line with its source
    logs = flow_run_logs(state.state_details.flow_run_id)
    assert any(line.endswith("| uploading") for line in logs), logs[-20:]
    # artifacts: the components table of this run, and the target's "last backup" by a stable key
    artifacts = flow_run_artifacts(state.state_details.flow_run_id)
    table = next(a for a in artifacts if a.key == f"components-{namespace}-persistentvolumeclaim-data")
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert rows[0]["component"] == "dump" and rows[0]["restic snapshot"].startswith("00f950cc")
    (last, *_) = artifacts_by_key(f"last-backup-{namespace}-persistentvolumeclaim-data")
    assert "- Snapshot: `data-data-1`" in last.data and "- integrity: true" in last.data
    # and the fleet overview has this target's row
    fleet = json.loads(artifacts_by_key("stashflow-fleet")[0].data)
    (row,) = [r for r in fleet if r["target"] == f"{namespace}/pvc/data"]
    assert row["last attempt"] == "Completed" and row["size"] == status["size"]


CASES = {
    "exit-code": (fail(3, message="pg_dump: connection refused", logs=["starting", "pg_dump: connection refused"]),
                  "job-exit-code", "exit code 3"),
    "oom-killed": (oom_killed(), "job-oom-killed", "OOMKilled"),
    "image-pull": (image_pull_error(), "job-image-pull", "ImagePullBackOff"),
    "unschedulable": (unschedulable(), "job-unschedulable", "Insufficient memory"),
    "evicted": (evicted(), "job-evicted", "Evicted"),
    "config-error": (config_error(), "job-config-error", "CreateContainerConfigError"),
}


def test_by_default_a_jobs_log_is_read_only_when_the_job_failed(run, namespace, node_agent) -> None:
    """``limits.logs: tail``: a successful backup reads no log (its result is its termination message);
    a failed one reads the last lines once, into the run's logs and the diagnosis."""
    node_agent.script({"stashflow.io/session": "data-ok"}, succeed(message=json.dumps(REPORT), logs=["uploading"]))
    node_agent.script({"stashflow.io/session": "data-bad"},
                      fail(3, logs=["starting", "pg_dump: connection refused"]))
    ok = run(session="data-ok")
    assert ok.is_completed(), ok.message
    assert not any(line.endswith("| uploading") for line in flow_run_logs(ok.state_details.flow_run_id))
    bad = run(session="data-bad")
    assert bad.is_failed()
    logs = flow_run_logs(bad.state_details.flow_run_id)
    assert any(line.endswith("| pg_dump: connection refused") for line in logs), logs[-20:]
    diagnosis = next(a for a in flow_run_artifacts(bad.state_details.flow_run_id)
                     if a.description == "why the run failed")
    assert "pg_dump: connection refused" in diagnosis.data


@pytest.mark.parametrize("case", list(CASES))
def test_each_failure_class_fails_the_run_with_its_category(run, kube_cluster, namespace, node_agent, case) -> None:
    outcome, code, reason = CASES[case]
    node_agent.script({"stashflow.io/session": f"data-{case}"}, outcome)
    state = run(session=f"data-{case}", stuck_after=1.0, history_limit=0)
    assert state.is_failed()
    assert code in state.message and reason in state.message, state.message
    (snap,) = snapshots(kube_cluster, namespace)
    assert snap["status"]["phase"] == "Failed"
    (component,) = snap["status"]["components"].values()
    assert component["phase"] == "Failed" and reason in component["error"]
    assert any(c["type"] == "BackupIncomplete" for c in snap["status"]["conditions"])
    eventually(lambda: nothing_left(kube_cluster, namespace), timeout=60)
    artifacts = flow_run_artifacts(state.state_details.flow_run_id)
    assert any(a.type == "markdown" and code.removeprefix("job-") in a.data for a in artifacts)


def test_a_failed_job_is_kept_within_the_history_limit_and_counted(run, kube_cluster, namespace, node_agent) -> None:
    node_agent.script({"stashflow.io/task": "backup"}, fail(1))
    assert run(session="data-10", history_limit=1).is_failed()
    assert [j.metadata.name for j in jobs(kube_cluster, namespace)] == ["data-10-backup"]
    assert run(session="data-11", history_limit=1).is_failed()
    eventually(lambda: [j.metadata.name for j in jobs(kube_cluster, namespace)] == ["data-11-backup"])
    eventually(lambda: len(pvcs(kube_cluster, namespace)) == 1)  # the kept Job's PVC only


def test_timeout_stops_the_job_at_the_deadline(run, kube_cluster, namespace, node_agent) -> None:
    node_agent.script({"stashflow.io/session": "data-slow"}, never_ends(logs=["working"]))
    state = run(session="data-slow", timeout="3s")
    assert state.is_failed()
    assert "deadline-exceeded" in state.message or "run-timeout" in state.message, state.message
    eventually(lambda: nothing_left(kube_cluster, namespace), timeout=60)
    assert not node_agent.running_pids(namespace)


def test_a_kubernetes_credentials_block_reaches_the_cluster(kube_cluster, namespace, node_agent, prefect_api) -> None:
    """prefect-kubernetes' KubernetesCredentials block, saved in Prefect, instead of a kubeconfig path."""
    from prefect_kubernetes.credentials import KubernetesClusterConfig, KubernetesCredentials

    block = f"cluster-{namespace[-6:]}"
    KubernetesCredentials(cluster_config=KubernetesClusterConfig.from_file(str(kube_cluster.kubeconfig))).save(block)
    node_agent.script({"stashflow.io/session": "data-block"},
                      succeed(message='{"components": {"backup": {"phase": "Succeeded"}}}'))
    state = run_flow("scripted", "backup", target="PersistentVolumeClaim/data", namespace=namespace,
                     credentials_block=block, session="data-block")
    assert state.is_completed(), state.message
    assert snapshot(kube_cluster, namespace, "data-data-block")["status"]["phase"] == "Succeeded"
