"""A backup tool that cannot lie or leak: the reproductions of issue 8's data-safety defects, each on
the real control plane with restic run for real by the node agent."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from kubernetes_asyncio import client

from localkube.helpers import apt_install, create_pvc, pvc_host_path
from localkube.nodeagent import never_ends, run as run_for_real, succeed

from .conftest import REPO, run_flow
from .observe import api, artifacts_by_key, eventually, flow_run_artifacts, flow_run_logs, jobs, nothing_left, \
    snapshot, snapshots

STASHFLOW = str(REPO / ".venv" / "bin" / "stashflow")
PASSWORD = "pa$$word-$(HOME)-that-must-stay-secret"
REPORT = '{"components": {"backup": {"phase": "Succeeded", "size": "1 MiB", "integrity": true}}}'


@pytest.fixture(scope="module")
def restic() -> str:
    apt_install("restic")
    return "/usr/bin/restic"


def _storage(root: Path, name: str = "local") -> dict:
    return {"apiVersion": "storage.kubestash.com/v1alpha1", "kind": "BackupStorage", "metadata": {"name": name},
            "spec": {"storage": {"provider": "local", "local": {"mountPath": "/stashflow-repo",
                                                                "hostPath": {"path": str(root)}}}}}


def _pvc_with_secret(cluster, namespace: str, *pvcs: str) -> list[Path]:  # type: ignore[no-untyped-def]
    async def setup(c: client.ApiClient) -> list[Path]:
        paths = []
        for name in pvcs:
            await create_pvc(c, namespace, name)
            paths.append(await pvc_host_path(c, namespace, name))
        await client.CoreV1Api(c).create_namespaced_secret(namespace, {
            "metadata": {"name": "pw"}, "data": {"RESTIC_PASSWORD": base64.b64encode(PASSWORD.encode()).decode()}})
        return paths

    return api(cluster, setup)


def _restic_snapshots(restic: str, repo: Path) -> list[dict]:
    listed = subprocess.run([restic, "-r", str(repo), "snapshots", "--json", "--no-lock"],
                            env={**os.environ, "RESTIC_PASSWORD": PASSWORD}, capture_output=True, text=True, check=True)
    return json.loads(listed.stdout)


def _component_repo(root: Path, snap: dict) -> Path:
    (found,) = [p.parent for p in root.rglob("config") if p.parent.name == "dump"
                and str(p.parent).endswith(snap["status"]["components"]["dump"]["path"])]
    return found


def test_values_with_dollar_references_reach_restic_byte_for_byte(kube_cluster, namespace, node_agent, prefect_api,
                                                                 host_tmp, restic) -> None:
    """Kubernetes expands $(VAR) and $$ in args: stashflow escapes values, so restic receives them as given
    and no value can pull the repository password in (it did: issue 8, item 1)."""
    node_agent.default = run_for_real()
    (data,) = _pvc_with_secret(kube_cluster, namespace, "data")
    odd = "in $(RESTIC_PASSWORD) and $$ and $( and $"
    (data / odd).mkdir()
    (data / odd / "file.txt").write_text("kept\n")
    host = "h-$(RESTIC_PASSWORD)-$$-$(-$"
    state = run_flow("stashflow-pvc", "logical-backup", target="PersistentVolumeClaim/data", namespace=namespace,
                     kubeconfig=str(kube_cluster.kubeconfig), storage=_storage(host_tmp), directory="d",
                     encryption_secret="pw", paths=f"/kubestash-data/{odd}", host=host)
    assert state.is_completed(), state.message
    snap = snapshot(kube_cluster, namespace, state.result()["snapshot"])
    (only,) = _restic_snapshots(restic, _component_repo(host_tmp, snap))
    # what restic itself recorded: the exact bytes given, after the kubelet's expansion
    assert only["hostname"] == host
    assert only["paths"] == [f"/kubestash-data/{odd}"]
    flow_run_id = state.state_details.flow_run_id
    assert not any(PASSWORD in line for line in flow_run_logs(flow_run_id))
    assert not any(PASSWORD in str(a.data) for a in flow_run_artifacts(flow_run_id))
    pods = api(kube_cluster, lambda c: client.CoreV1Api(c).list_namespaced_pod(namespace))
    assert pods.items and PASSWORD not in json.dumps(pods.to_dict(), default=str)  # termination messages too


def test_a_damaged_repository_fails_the_backup(kube_cluster, namespace, node_agent, prefect_api, host_tmp,
                                               restic) -> None:
    """One pack file deleted: restic backup still exits 0, but the run fails repository-corrupt, the
    Snapshot says why, and the target's last-backup artifact keeps pointing at the good backup."""
    node_agent.default = run_for_real()
    (data,) = _pvc_with_secret(kube_cluster, namespace, "data")
    (data / "a.bin").write_bytes(os.urandom(200_000))
    common = dict(target="PersistentVolumeClaim/data", namespace=namespace, kubeconfig=str(kube_cluster.kubeconfig),
                  storage=_storage(host_tmp), directory="d", encryption_secret="pw", history_limit=3)
    first = run_flow("stashflow-pvc", "logical-backup", session="data-1", **common)
    assert first.is_completed(), first.message
    good = snapshot(kube_cluster, namespace, "data-data-1")
    repo = _component_repo(host_tmp, good)
    # the pack with a.bin's data (the largest; the small ones hold trees): restic backup, which trusts
    # its index for unchanged files, still exits 0
    max((p for p in (repo / "data").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size).unlink()

    second = run_flow("stashflow-pvc", "logical-backup", session="data-2", **common)
    assert second.is_failed()
    assert "repository-corrupt" in second.message
    bad = snapshot(kube_cluster, namespace, "data-data-2")
    assert bad["status"]["phase"] == "Failed"
    assert bad["status"]["components"]["dump"]["phase"] == "Failed"
    assert bad["status"]["components"]["dump"]["integrity"] is False
    (condition,) = [c for c in bad["status"]["conditions"] if c["type"] == "SnapshotVerified"]
    assert condition["status"] == "False" and condition["reason"] == "RepositoryCorrupt"
    assert "restic check" in condition["message"]
    latest = artifacts_by_key(f"last-backup-{namespace}-persistentvolumeclaim-data")[0]
    assert "- Snapshot: `data-data-1`" in latest.data  # still the good one
    assert "**The last attempt failed**: repository-corrupt" in latest.data


def test_a_new_directory_or_storage_is_initialised(kube_cluster, namespace, node_agent, prefect_api, tmp_path,
                                                   restic) -> None:
    """Same repository name, other directory, then other storage: each is a new repository and gets
    `restic init` (the name-based check skipped it: issue 8, item 3)."""
    node_agent.default = run_for_real()
    (data,) = _pvc_with_secret(kube_cluster, namespace, "data")
    (data / "f").write_text("x")
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    common = dict(target="PersistentVolumeClaim/data", namespace=namespace, kubeconfig=str(kube_cluster.kubeconfig),
                  encryption_secret="pw", repository="data", history_limit=5)
    for i, (root, directory) in enumerate([(one, "demo/data"), (one, "demo/other"), (two, "demo/data"),
                                           (one, "demo/data")]):
        state = run_flow("stashflow-pvc", "logical-backup", session=f"data-{i}", storage=_storage(root),
                         directory=directory, **common)
        assert state.is_completed(), (directory, root, state.message)
    inits = [r.job for r in node_agent.records if r.namespace == namespace and (r.job or "").endswith("-init")]
    # init for each new location, none for the known one at the end
    assert len(inits) == 3, inits
    assert len(list(one.rglob("config"))) == 2 and len(list(two.rglob("config"))) == 1


def test_a_killed_run_cannot_be_doubled_and_its_orphan_ends_failed(kube_cluster, namespace, node_agent,
                                                                   prefect_env) -> None:
    """SIGKILL of `stashflow run` mid-Job: a rerun under another name finds the target busy (no second Job
    beside the orphan); a rerun with the same --run adopts the Job; once the orphan's Job is gone, a new
    run takes the target over and the orphan's Snapshot ends Failed with the reason."""
    node_agent.script({"stashflow.io/session": "data-k"}, never_ends(logs=["working"]))
    base = [STASHFLOW, "run", "scripted", "backup", "--namespace", namespace, "--target", "pvc/data",
            "--kubeconfig", str(kube_cluster.kubeconfig)]
    first = subprocess.Popen([*base, "--run", "data-k"], env=prefect_env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    eventually(lambda: jobs(kube_cluster, namespace), timeout=90)
    first.kill()
    first.wait()

    other = subprocess.run([*base, "--run", "data-other"], env=prefect_env, capture_output=True, text=True,
                           timeout=180)
    assert other.returncode == 1
    assert "target-busy" in other.stderr and "data-k-backup" in other.stderr
    assert [j.metadata.name for j in jobs(kube_cluster, namespace)] == ["data-k-backup"]

    # the orphan's Job goes away (someone deletes it); the run that held the target is gone for good
    api(kube_cluster, lambda c: client.BatchV1Api(c).delete_namespaced_job(
        "data-k-backup", namespace, propagation_policy="Foreground"))
    eventually(lambda: not jobs(kube_cluster, namespace), timeout=60)
    # Time passing past the Lease's grace cannot be waited for in a test: the Lease is aged instead.
    old = (datetime.now(timezone.utc) - timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    api(kube_cluster, lambda c: client.CoordinationV1Api(c).patch_namespaced_lease(
        "stashflow-target-persistentvolumeclaim-data", namespace, {"spec": {"renewTime": old}}))
    node_agent.script({"stashflow.io/session": "data-new"}, succeed(message=REPORT))
    new = subprocess.run([*base, "--run", "data-new"], env=prefect_env, capture_output=True, text=True, timeout=180)
    assert new.returncode == 0, new.stderr[-2000:]
    orphan = snapshot(kube_cluster, namespace, "data-data-k")
    assert orphan["status"]["phase"] == "Failed"
    assert any(c.get("reason") == "BackupRunOrphaned" for c in orphan["status"]["conditions"])
    assert snapshot(kube_cluster, namespace, "data-data-new")["status"]["phase"] == "Succeeded"
    leases = api(kube_cluster, lambda c: client.CoordinationV1Api(c).list_namespaced_lease(namespace)).items
    assert not leases  # released at the end of the run


def test_a_killed_run_given_no_name_is_adopted_under_the_name_it_took(kube_cluster, namespace, node_agent,
                                                                     prefect_env) -> None:
    """SIGKILL of `stashflow run` started without --run: its name came from the clock (the Job says it),
    and a rerun with `--run <that name>` adopts its Job and records its Snapshot, never a second Job
    (the clock's name is held by its flow run only against other unnamed runs, not against its name)."""
    node_agent.script({"stashflow.io/task": "backup"}, succeed(after=15.0, message=REPORT))
    base = [STASHFLOW, "run", "scripted", "backup", "--namespace", namespace, "--target", "pvc/data",
            "--kubeconfig", str(kube_cluster.kubeconfig)]
    first = subprocess.Popen(base, env=prefect_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    found = eventually(lambda: jobs(kube_cluster, namespace), timeout=90)
    first.kill()
    first.wait()
    job = found[0].metadata.name
    name = job.removesuffix("-backup")
    again = subprocess.run([*base, "--run", name], env=prefect_env, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr[-2000:]
    assert [j.metadata.name for j in jobs(kube_cluster, namespace)] == [job]
    assert snapshot(kube_cluster, namespace, f"data-{name}")["status"]["phase"] == "Succeeded"
    assert not api(kube_cluster, lambda c: client.CoordinationV1Api(c).list_namespaced_lease(namespace)).items


def test_two_runs_of_one_target_at_once_make_one_job(kube_cluster, namespace, node_agent, prefect_api) -> None:
    """Without Prefect's lock (two ad-hoc runs), the cluster still allows one: the second, started while
    the first holds the target, fails target-busy and creates nothing."""
    node_agent.script({"stashflow.io/task": "backup"}, succeed(after=6.0, message=REPORT))
    states: dict[str, object] = {}

    def go(session: str) -> None:
        states[session] = run_flow("scripted", "backup", target="PersistentVolumeClaim/data", namespace=namespace,
                                   kubeconfig=str(kube_cluster.kubeconfig), session=session, history_limit=5)

    first = threading.Thread(target=go, args=("data-a",))
    first.start()
    eventually(lambda: api(kube_cluster, lambda c: client.CoordinationV1Api(c).list_namespaced_lease(namespace)).items,
               timeout=120)
    go("data-b")
    first.join(timeout=180)
    assert states["data-a"].is_completed(), states["data-a"].message  # type: ignore[attr-defined]
    assert states["data-b"].is_failed() and "target-busy" in states["data-b"].message  # type: ignore[attr-defined]
    assert len(jobs(kube_cluster, namespace)) == 1
    assert len([r for r in node_agent.records if r.namespace == namespace]) == 1
    assert [s["metadata"]["name"] for s in snapshots(kube_cluster, namespace)] == ["data-data-a"]


def test_a_snapshot_deleted_mid_run_is_recorded_again(kube_cluster, namespace, node_agent, prefect_api) -> None:
    """Deleted while its Job runs: the run records it again (the data is in the repository), keeps
    the history limit, and succeeds."""
    node_agent.script({"stashflow.io/session": "data-d"}, succeed(after=5.0, message=REPORT))
    result: dict = {}

    def runner() -> None:
        result["state"] = run_flow("scripted", "backup", target="PersistentVolumeClaim/data", namespace=namespace,
                                   kubeconfig=str(kube_cluster.kubeconfig), session="data-d", history_limit=1)

    thread = threading.Thread(target=runner)
    thread.start()
    eventually(lambda: jobs(kube_cluster, namespace), timeout=60)
    eventually(lambda: snapshots(kube_cluster, namespace), timeout=30)
    api(kube_cluster, lambda c: client.CustomObjectsApi(c).delete_namespaced_custom_object(
        "storage.kubestash.com", "v1alpha1", namespace, "snapshots", "data-data-d"))
    thread.join(timeout=120)
    state = result["state"]
    assert state.is_completed(), state.message
    snap = snapshot(kube_cluster, namespace, "data-data-d")
    assert snap["status"]["phase"] == "Succeeded"
    assert snap["status"]["components"]["backup"]["phase"] == "Succeeded"
    assert [j.metadata.name for j in jobs(kube_cluster, namespace)] == ["data-d-backup"]


def test_two_runs_named_from_the_same_second_make_one_job(kube_cluster, namespace, node_agent,
                                                          prefect_api) -> None:
    """Two runs without a name, due in the same second (two `stashflow run` at once): both name
    themselves ``data-<that second>``, but only the first may take that name's Lease and Job; the
    second fails target-busy instead of adopting the first's Job and reporting its Snapshot as its own."""
    import asyncio

    from prefect import flow_engine
    from prefect.client.orchestration import get_client
    from prefect.states import Scheduled

    from stashflow.flows.addon_flows import flow_for

    from .conftest import flow_parameters

    node_agent.script({"stashflow.io/task": "backup"}, succeed(after=6.0, message=REPORT))
    flow = flow_for("scripted", "backup")
    parameters = flow_parameters(target="PersistentVolumeClaim/data", namespace=namespace,
                                 kubeconfig=str(kube_cluster.kubeconfig), history_limit=5)
    due = datetime.now(timezone.utc).replace(microsecond=0)

    async def both() -> list:
        async with get_client() as prefect:
            made = [await prefect.create_flow_run(flow, parameters=parameters, state=Scheduled(scheduled_time=due))
                    for _ in range(2)]

        async def one(flow_run):  # type: ignore[no-untyped-def]
            return await flow_engine.run_flow(flow, flow_run=flow_run, return_type="state")

        return await asyncio.gather(*(one(r) for r in made))

    states = asyncio.run(both())
    done = [s for s in states if s.is_completed()]
    refused = [s for s in states if s.is_failed() and "target-busy" in (s.message or "")]
    assert len(done) == 1 and len(refused) == 1, [(s.name, s.message) for s in states]
    name = f"data-{int(due.timestamp())}"
    assert [j.metadata.name for j in jobs(kube_cluster, namespace)] == [f"{name}-backup"]
    assert [x["metadata"]["name"] for x in snapshots(kube_cluster, namespace)] == [f"data-{name}"]


def test_nothing_is_left_after_target_busy(kube_cluster, namespace, node_agent, prefect_api) -> None:
    """A run refused for a busy target creates nothing: no Job, PVC or Snapshot of its own."""
    node_agent.script({"stashflow.io/session": "data-hold"}, never_ends())
    result: dict = {}

    def holder() -> None:
        result["hold"] = run_flow("scripted", "backup", target="PersistentVolumeClaim/data", namespace=namespace,
                                  kubeconfig=str(kube_cluster.kubeconfig), session="data-hold", timeout="20s",
                                  history_limit=0)

    thread = threading.Thread(target=holder)
    thread.start()
    eventually(lambda: jobs(kube_cluster, namespace), timeout=60)
    refused = run_flow("scripted", "backup", target="PersistentVolumeClaim/data", namespace=namespace,
                       kubeconfig=str(kube_cluster.kubeconfig), session="data-late")
    assert refused.is_failed() and "target-busy" in refused.message
    assert [s["metadata"]["name"] for s in snapshots(kube_cluster, namespace)] == ["data-data-hold"]
    thread.join(timeout=120)
    eventually(lambda: nothing_left(kube_cluster, namespace), timeout=60)
