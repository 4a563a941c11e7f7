"""The fault matrix: each fault on the real control plane, the run's end, and what it leaves.

Every row runs with ``history_limit`` 0, so a correct run leaves no Job and no PVC at all. A row
records the run's end state and code, the Snapshot's phase, the Jobs and PVCs left, and the
duplicate backup Pods (a Pod of a backup Job beyond the one the target needed); the suite prints
the table at the end (``pytest_terminal_summary`` in this folder's conftest).

Killing a run at an exact step uses ``STASHFLOW_FAULT_KILL_AFTER`` (flows/engine.py): SIGKILL of the
run's own process right after that step, the one fault no outside observer can time precisely.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
from kubernetes_asyncio import client

from localkube.helpers import apt_install, create_pvc, pvc_host_path
from localkube.nodeagent import never_ends, run as run_for_real, succeed

from .conftest import REPO, run_flow
from .observe import api, eventually, jobs, pvcs, snapshot, snapshots

STASHFLOW = str(REPO / ".venv" / "bin" / "stashflow")
REPORT = '{"components": {"backup": {"phase": "Succeeded", "size": "1 MiB", "integrity": true}}}'


@dataclass
class Row:
    fault: str
    state: str
    code: str
    snapshot: str
    jobs_left: int
    pvcs_left: int
    duplicates: int


ROWS: list[Row] = []


def _code(text: str) -> str:
    for token in text.replace(":", " ").split():
        if token.startswith(("job-", "run-", "repository-", "target-", "api-", "snapshot-", "no-result",
                             "namespace-", "pvc-", "secret-")):
            return token
    return "-"


def _backup_pods(node_agent, namespace: str) -> int:  # type: ignore[no-untyped-def]
    return len([r for r in node_agent.records if r.namespace == namespace and r.job and not r.job.endswith(
        ("-init", "-verify")) and "-forget-" not in r.job])


def _record(fault: str, state: str, code: str, cluster, namespace: str, node_agent, *,  # type: ignore[no-untyped-def]
            snapshot_name: str | None, expected_pods: int = 1) -> Row:
    eventually(lambda: not jobs(cluster, namespace) and not pvcs(cluster, namespace), timeout=60) \
        if state != "-" else None
    phase = snapshot(cluster, namespace, snapshot_name)["status"]["phase"] if snapshot_name else "-"
    row = Row(fault, state, code, phase, len(jobs(cluster, namespace)), len(pvcs(cluster, namespace)),
              max(_backup_pods(node_agent, namespace) - expected_pods, 0))
    ROWS.append(row)
    return row


def _cli(cluster, namespace: str, env: dict[str, str], *extra: str, kill_after: str | None = None,  # type: ignore[no-untyped-def]
         task: tuple[str, str] = ("scripted", "backup"), timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**env, **({"STASHFLOW_FAULT_KILL_AFTER": kill_after} if kill_after else {})}
    return subprocess.run([STASHFLOW, "run", *task, "--namespace", namespace, "--target", "pvc/data",
                           "--kubeconfig", str(cluster.kubeconfig), "--history-limit", "0", *extra],
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("step", ["claim-target", "provision-volumes", "launch-job", "wait-for-job",
                                  "record-snapshot"])
def test_sigkill_after_each_step_then_rerun(step: str, kube_cluster, namespace, node_agent, prefect_env) -> None:
    """The run dies (SIGKILL) right after a step; the same run started again finishes it, once."""
    node_agent.script({"stashflow.io/session": "data-k"}, succeed(after=1.0, message=REPORT))
    killed = _cli(kube_cluster, namespace, prefect_env, "--run", "data-k", kill_after=step)
    assert killed.returncode == -9, killed.stderr[-2000:]
    again = _cli(kube_cluster, namespace, prefect_env, "--run", "data-k")
    assert again.returncode == 0, again.stderr[-2000:]
    row = _record(f"SIGKILL after {step}, rerun", "Completed", "-", kube_cluster, namespace, node_agent,
                  snapshot_name="data-data-k")
    assert (row.snapshot, row.jobs_left, row.pvcs_left, row.duplicates) == ("Succeeded", 0, 0, 0)


def test_sigkill_mid_job_then_another_run(kube_cluster, namespace, node_agent, prefect_env) -> None:
    """A killed run's Job goes on: another run of the target is refused, it never runs beside it."""
    node_agent.script({"stashflow.io/session": "data-k"}, succeed(after=8.0, message=REPORT))
    first = subprocess.Popen([STASHFLOW, "run", "scripted", "backup", "--namespace", namespace, "--target",
                              "pvc/data", "--kubeconfig", str(kube_cluster.kubeconfig), "--history-limit", "0",
                              "--run", "data-k"], env=prefect_env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    eventually(lambda: jobs(kube_cluster, namespace), timeout=90)
    first.kill()
    first.wait()
    other = _cli(kube_cluster, namespace, prefect_env, "--run", "data-o")
    assert other.returncode == 1 and "target-busy" in other.stderr
    assert len(jobs(kube_cluster, namespace)) == 1
    # the orphan is finished by its own run started again
    again = _cli(kube_cluster, namespace, prefect_env, "--run", "data-k")
    assert again.returncode == 0, again.stderr[-2000:]
    row = _record("SIGKILL mid-Job, another run, then rerun", "Failed/Completed", "target-busy", kube_cluster,
                  namespace, node_agent, snapshot_name="data-data-k")
    assert (row.snapshot, row.jobs_left, row.pvcs_left, row.duplicates) == ("Succeeded", 0, 0, 0)
    assert not any(s["metadata"]["name"] == "data-data-o" for s in snapshots(kube_cluster, namespace))


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict]:
    box: dict = {}
    thread = threading.Thread(target=lambda: box.setdefault("state", fn()))
    thread.start()
    return thread, box


def _scripted(cluster, namespace: str, session: str, **kw: Any) -> Callable[[], Any]:  # type: ignore[no-untyped-def]
    return lambda: run_flow("scripted", "backup", target="PersistentVolumeClaim/data", namespace=namespace,
                            kubeconfig=str(cluster.kubeconfig), session=session, history_limit=0, **kw)


def _finish(thread: threading.Thread, box: dict) -> Any:
    thread.join(timeout=240)
    assert not thread.is_alive()
    return box["state"]


def test_apiserver_stopped_mid_wait(kube_cluster, namespace, node_agent, prefect_api) -> None:
    node_agent.script({"stashflow.io/session": "data-a"}, succeed(after=6.0, message=REPORT))
    thread, box = _in_thread(_scripted(kube_cluster, namespace, "data-a"))
    eventually(lambda: jobs(kube_cluster, namespace), timeout=60)
    kube_cluster.restart_apiserver(downtime=8.0)
    state = _finish(thread, box)
    row = _record("apiserver stopped 8 s mid-wait", state.type.value.title(), _code(state.message or ""),
                  kube_cluster, namespace, node_agent, snapshot_name="data-data-a")
    assert state.is_completed(), state.message
    assert (row.snapshot, row.jobs_left, row.pvcs_left, row.duplicates) == ("Succeeded", 0, 0, 0)


@pytest.mark.parametrize("what", ["Job", "Pod", "PVC", "Snapshot"])
def test_object_deleted_under_a_run(what: str, kube_cluster, namespace, node_agent, prefect_api) -> None:
    node_agent.script({"stashflow.io/session": "data-x"}, succeed(after=6.0, message=REPORT))
    thread, box = _in_thread(_scripted(kube_cluster, namespace, "data-x", stuck_after=20))
    eventually(lambda: jobs(kube_cluster, namespace), timeout=60)
    eventually(lambda: api(kube_cluster, lambda c: client.CoreV1Api(c).list_namespaced_pod(
        namespace, label_selector="stashflow.io/session=data-x")).items, timeout=60)

    async def delete(c: client.ApiClient) -> None:
        if what == "Job":
            await client.BatchV1Api(c).delete_namespaced_job("data-x-backup", namespace,
                                                             propagation_policy="Foreground")
        elif what == "Pod":
            pods = await client.CoreV1Api(c).list_namespaced_pod(namespace, label_selector="stashflow.io/session=data-x")
            await client.CoreV1Api(c).delete_namespaced_pod(pods.items[0].metadata.name, namespace)
        elif what == "PVC":
            (pvc,) = (await client.CoreV1Api(c).list_namespaced_persistent_volume_claim(
                namespace, label_selector="stashflow.io/session=data-x")).items
            await client.CoreV1Api(c).delete_namespaced_persistent_volume_claim(pvc.metadata.name, namespace)
        else:
            await client.CustomObjectsApi(c).delete_namespaced_custom_object(
                "storage.kubestash.com", "v1alpha1", namespace, "snapshots", "data-data-x")

    api(kube_cluster, delete)
    state = _finish(thread, box)
    row = _record(f"{what} deleted mid-run", state.type.value.title(), _code(state.message or ""), kube_cluster,
                  namespace, node_agent, snapshot_name="data-data-x", expected_pods=2 if what == "Pod" else 1)
    expected = {"Job": ("Failed", "job-failed", "Failed"), "Pod": ("Completed", "-", "Succeeded"),
                "PVC": ("Completed", "-", "Succeeded"), "Snapshot": ("Completed", "-", "Succeeded")}[what]
    assert (row.state, row.code, row.snapshot) == expected, (state.message, row)
    assert (row.jobs_left, row.pvcs_left, row.duplicates) == (0, 0, 0)


@pytest.mark.parametrize("missing", ["Secret", "PVC", "namespace"])
def test_missing_input_in_the_cluster(missing: str, kube_cluster, namespace, node_agent, prefect_api,
                                      host_tmp) -> None:
    """What the run needs is not there: it fails with a code that says so, and leaves nothing."""
    ns = namespace if missing != "namespace" else namespace + "-absent"
    if missing != "PVC":
        api(kube_cluster, lambda c: create_pvc(c, namespace, "data"))
    storage = {"apiVersion": "storage.kubestash.com/v1alpha1", "kind": "BackupStorage", "metadata": {"name": "s"},
               "spec": {"storage": {"provider": "local", "local": {"mountPath": "/r",
                                                                   "hostPath": {"path": str(host_tmp)}}}}}
    state = run_flow("stashflow-pvc", "logical-backup", target="PersistentVolumeClaim/data", namespace=ns,
                     kubeconfig=str(kube_cluster.kubeconfig), storage=storage, encryption_secret="absent",
                     history_limit=0, stuck_after=5, session="data-m")
    names = [s["metadata"]["name"] for s in snapshots(kube_cluster, namespace)]
    row = _record(f"missing {missing}", state.type.value.title(), _code(state.message or ""), kube_cluster,
                  namespace, node_agent, snapshot_name="data-data-m" if "data-data-m" in names else None,
                  expected_pods=0)
    assert state.is_failed()
    expected = {"Secret": "secret-not-found", "PVC": "pvc-not-found", "namespace": "namespace-not-found"}[missing]
    assert row.code == expected, state.message
    # found by the pre-flight check: nothing was created, no Pod ever ran
    assert row.snapshot == "-" and not node_agent.records
    assert (row.jobs_left, row.pvcs_left, row.duplicates) == (0, 0, 0)


@pytest.fixture(scope="module")
def restic() -> str:
    apt_install("restic")
    return "/usr/bin/restic"


def _restic_setup(cluster, namespace: str) -> Path:  # type: ignore[no-untyped-def]
    async def setup(c: client.ApiClient) -> Path:
        await create_pvc(c, namespace, "data")
        await client.CoreV1Api(c).create_namespaced_secret(namespace, {
            "metadata": {"name": "pw"}, "data": {"RESTIC_PASSWORD": base64.b64encode(b"pw").decode()}})
        return await pvc_host_path(c, namespace, "data")

    return api(cluster, setup)


def test_damaged_repository(kube_cluster, namespace, node_agent, prefect_api, host_tmp, restic) -> None:
    node_agent.default = run_for_real()
    data = _restic_setup(kube_cluster, namespace)
    (data / "a.bin").write_bytes(os.urandom(100_000))
    storage = {"apiVersion": "storage.kubestash.com/v1alpha1", "kind": "BackupStorage", "metadata": {"name": "s"},
               "spec": {"storage": {"provider": "local", "local": {"mountPath": "/r",
                                                                   "hostPath": {"path": str(host_tmp)}}}}}
    common = dict(target="PersistentVolumeClaim/data", namespace=namespace, kubeconfig=str(kube_cluster.kubeconfig),
                  storage=storage, encryption_secret="pw", history_limit=0)
    assert run_flow("stashflow-pvc", "logical-backup", session="data-1", **common).is_completed()
    max((p for p in host_tmp.rglob("data/*/*") if p.is_file()), key=lambda p: p.stat().st_size).unlink()
    state = run_flow("stashflow-pvc", "logical-backup", session="data-2", **common)
    row = _record("damaged repository (a pack deleted)", state.type.value.title(), _code(state.message or ""),
                  kube_cluster, namespace, node_agent, snapshot_name="data-data-2", expected_pods=2)
    assert (row.state, row.code, row.snapshot) == ("Failed", "repository-corrupt", "Failed")
    assert (row.jobs_left, row.pvcs_left, row.duplicates) == (0, 0, 0)


def test_full_volume(kube_cluster, namespace, node_agent, prefect_api, tmp_path, restic) -> None:
    """The repository's volume fills up mid-backup (a 2 MiB tmpfs): restic's own error, a Failed run."""
    node_agent.default = run_for_real()
    data = _restic_setup(kube_cluster, namespace)
    (data / "big.bin").write_bytes(os.urandom(6_000_000))
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(full)], check=True)
    try:
        storage = {"apiVersion": "storage.kubestash.com/v1alpha1", "kind": "BackupStorage",
                   "metadata": {"name": "s"},
                   "spec": {"storage": {"provider": "local", "local": {"mountPath": "/r",
                                                                       "hostPath": {"path": str(full)}}}}}
        state = run_flow("stashflow-pvc", "logical-backup", target="PersistentVolumeClaim/data", namespace=namespace,
                         kubeconfig=str(kube_cluster.kubeconfig), storage=storage, encryption_secret="pw",
                         history_limit=0, session="data-f")
        row = _record("repository volume full", state.type.value.title(), _code(state.message or ""),
                      kube_cluster, namespace, node_agent, snapshot_name="data-data-f")
    finally:
        subprocess.run(["umount", "-l", str(full)], check=False)
    assert (row.state, row.code, row.snapshot) == ("Failed", "job-exit-code", "Failed"), state.message
    assert "no space left" in (state.message or "").lower() or "space" in json.dumps(
        snapshot(kube_cluster, namespace, "data-data-f")["status"]).lower()
    assert (row.jobs_left, row.pvcs_left, row.duplicates) == (0, 0, 0)


def test_stuck_pod_times_out(kube_cluster, namespace, node_agent, prefect_api) -> None:
    node_agent.script({"stashflow.io/session": "data-t"}, never_ends())
    state = _scripted(kube_cluster, namespace, "data-t", timeout="3s")()
    row = _record("Job never ends (deadline 3 s)", state.type.value.title(), _code(state.message or ""),
                  kube_cluster, namespace, node_agent, snapshot_name="data-data-t")
    assert (row.state, row.snapshot) == ("Failed", "Failed")
    assert row.code in ("job-deadline-exceeded", "run-timeout")
    assert (row.jobs_left, row.pvcs_left, row.duplicates) == (0, 0, 0)
