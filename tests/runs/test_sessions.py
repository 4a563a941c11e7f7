"""A session is one run: one BackupSession, one Snapshot per repository, one component per task.

The ``backup-session`` flow runs on the local control plane with restic for real (the node agent runs
each Job's container on this machine): a session of two tasks (``pvc-pair``: the built-in stashflow-pvc
Functions, each backing up its own folder) into two repositories on two storages."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client

from localkube.helpers import apt_install, create_pvc, pvc_host_path
from localkube.nodeagent import run as run_for_real
from support import run_cli

from .conftest import run_flow
from .observe import api, eventually, jobs, pvcs, snapshot, snapshots


@pytest.fixture(scope="module")
def restic() -> str:
    apt_install("restic")
    return "/usr/bin/restic"


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def storage(name: str, path: Path, mount: str = "/r") -> dict[str, Any]:
    return {"name": name, "spec": {"storage": {"provider": "local",
                                               "local": {"mountPath": mount, "hostPath": {"path": str(path)}}}}}


def custom(cluster, kind_plural: str, group: str, namespace: str, name: str | None = None) -> Any:  # type: ignore[no-untyped-def]
    api_ = lambda c: client.CustomObjectsApi(c)  # noqa: E731
    if name:
        return api(cluster, lambda c: api_(c).get_namespaced_custom_object(group, "v1alpha1", namespace, kind_plural,
                                                                           name))
    return api(cluster, lambda c: api_(c).list_namespaced_custom_object(group, "v1alpha1", namespace,
                                                                        kind_plural))["items"]


def leases(cluster, namespace: str) -> list[Any]:  # type: ignore[no-untyped-def]
    return api(cluster, lambda c: client.CoordinationV1Api(c).list_namespaced_lease(namespace)).items


def run_session(**parameters: Any):  # type: ignore[no-untyped-def]
    from stashflow.flows.session_flows import backup_session

    return asyncio.run(backup_session(**parameters, return_state=True))


def _setup(cluster, namespace: str) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    async def go(c: client.ApiClient) -> tuple[Path, Path]:
        await create_pvc(c, namespace, "data")
        await create_pvc(c, namespace, "restored")
        await client.CoreV1Api(c).create_namespaced_secret(namespace, {
            "metadata": {"name": "pw"}, "data": {"RESTIC_PASSWORD": base64.b64encode(b"pw").decode()}})
        return await pvc_host_path(c, namespace, "data"), await pvc_host_path(c, namespace, "restored")
    data, restored = api(cluster, go)
    (data / "data" / "nested").mkdir(parents=True)
    (data / "data" / "a.txt").write_text("the data\n")
    (data / "data" / "nested" / "blob.bin").write_bytes(os.urandom(200_000))
    (data / "config").mkdir()
    (data / "config" / "settings.conf").write_text("key = 'value'\n")
    return data, restored


def session_parameters(cluster, namespace: str, first: Path, second: Path, **extra: Any) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return {"configuration": "data-backup", "session": "nightly", "namespace": namespace,
            "target": "PersistentVolumeClaim/data", "addon": "pvc-pair",
            "tasks": [{"name": "logical-backup"}, {"name": "config-backup"}],
            "repositories": [
                {"name": "repo-a", "storage": storage("store-a", first), "directory": "demo/data",
                 "encryption_secret": "pw", "retention_policy": "keep-last",
                 "retention": {"successfulSnapshots": {"last": 3}}},
                {"name": "repo-b", "storage": storage("store-b", second), "directory": "/demo/data",
                 "encryption_secret": "pw"}],
            "cluster": {"kubeconfig": str(cluster.kubeconfig)}, **extra}


def test_a_session_of_two_tasks_into_two_repositories(kube_cluster, namespace, node_agent, prefect_api, host_tmp,
                                                      restic) -> None:
    node_agent.default = run_for_real()
    data, restored = _setup(kube_cluster, namespace)
    before = tree(data)
    (host_tmp / "a").mkdir()
    (host_tmp / "b").mkdir()
    state = run_session(**session_parameters(kube_cluster, namespace, host_tmp / "a", host_tmp / "b",
                                             advanced={"backup_session": "data-backup-nightly-1700000000"}))
    assert state.is_completed(), state.message
    summary = state.result()

    # one BackupSession, invoked by (and owned by) the BackupConfiguration the session applied
    (bs,) = custom(kube_cluster, "backupsessions", "core.kubestash.com", namespace)
    assert bs["metadata"]["name"] == "data-backup-nightly-1700000000" == summary["backup_session"]
    assert bs["metadata"]["labels"]["kubestash.com/invoker-name"] == "data-backup"
    assert bs["spec"]["invoker"] == {"apiGroup": "core.kubestash.com", "kind": "BackupConfiguration",
                                     "name": "data-backup"}
    assert bs["spec"]["session"] == "nightly"
    assert bs["metadata"]["ownerReferences"][0]["kind"] == "BackupConfiguration"
    assert bs["status"]["phase"] == "Succeeded" and bs["status"]["totalSnapshots"] == 2
    assert {c["type"] for c in bs["status"]["conditions"]} >= {"SnapshotsEnsured", "BackupExecutorEnsured",
                                                               "SessionHistoryCleaned", "MetricsPushed"}
    assert bs["status"]["retentionPolicy"] == [{"ref": {"name": "keep-last", "namespace": namespace},
                                                "repository": "repo-a", "phase": "Applied"}]
    bc = custom(kube_cluster, "backupconfigurations", "core.kubestash.com", namespace, "data-backup")
    assert bc["spec"]["target"]["namespace"] == namespace  # namespaces filled, as the executors read them
    assert bc["status"]["phase"] == "Ready" and [s["name"] for s in bc["status"]["sessions"]] == ["nightly"]

    # two Snapshots (one per repository), two components each (one per task), both Succeeded
    names = {"repo-a": "repo-a-data-backup-nightly-1700000000", "repo-b": "repo-b-data-backup-nightly-1700000000"}
    assert set(summary["snapshots"]) == set(names.values())
    listed = {s["metadata"]["name"]: s for s in snapshots(kube_cluster, namespace)}
    assert set(listed) == set(names.values())
    assert [s["name"] for s in bs["status"]["snapshots"]] == [names["repo-a"], names["repo-b"]]
    for repo, name in names.items():
        snap = listed[name]
        assert snap["spec"]["repository"] == repo and snap["spec"]["session"] == "nightly"
        assert snap["spec"]["backupSession"] == bs["metadata"]["name"]
        assert snap["metadata"]["ownerReferences"][0] == {**snap["metadata"]["ownerReferences"][0],
                                                           "kind": "Repository", "name": repo}
        status = snap["status"]
        assert status["phase"] == "Succeeded" and status["totalComponents"] == 2, status
        assert set(status["components"]) == {"dump", "config-backup"}
        for comp, c in status["components"].items():
            assert c["phase"] == "Succeeded" and c["integrity"] is True
            assert c["path"] == f"repository/v1/nightly/{comp}"
        assert status["integrity"] is True and status["size"]
        repository = custom(kube_cluster, "repositories", "storage.kubestash.com", namespace, repo)
        assert repository["spec"]["storageRef"]["namespace"] == namespace
        assert repository["status"]["snapshotCount"] == 1 and repository["status"]["phase"] == "Ready"
        assert repository["status"]["lastBackupTime"] == status["snapshotTime"]
    # each repository holds its own full copy, in KubeStash's layout
    assert (host_tmp / "a" / "demo" / "data" / "repository" / "v1" / "nightly" / "dump" / "config").is_file()
    assert (host_tmp / "b" / "demo" / "data" / "repository" / "v1" / "nightly" / "config-backup" / "config").is_file()

    # `stashflow snapshots` says what the API says
    rc, out, err = run_cli("snapshots", "-n", namespace, "--kubeconfig", str(kube_cluster.kubeconfig))
    assert rc == 0, err
    rows = [line.split() for line in out.strip().splitlines()[1:]]
    assert sorted((r[1], r[2], r[3], r[4]) for r in rows) == sorted(
        (n, s["spec"]["repository"], s["spec"]["session"], s["status"]["phase"]) for n, s in listed.items())
    assert not leases(kube_cluster, namespace)  # the session gave its target back

    # a restore from EITHER repository gives the same files, byte for byte: from repo-a by Snapshot name,
    # task by task; from repo-b as a RestoreSession of latest (one run: both components, latest resolved)
    for task in ("logical-backup-restore", "config-backup-restore"):
        done = run_flow("pvc-pair", task, target="PersistentVolumeClaim/restored", namespace=namespace,
                        snapshot=names["repo-a"], kubeconfig=str(kube_cluster.kubeconfig))
        assert done.is_completed(), (task, done.message)
    assert tree(restored) == before
    for path in restored.iterdir():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    from stashflow.flows.restore_sessions import restore_session

    done = asyncio.run(restore_session(
        name="restore-b", namespace=namespace, target="PersistentVolumeClaim/restored", addon="pvc-pair",
        tasks=[{"name": "logical-backup-restore"}, {"name": "config-backup-restore"}],
        data_source={"repository": "repo-b", "snapshot": "latest"},
        cluster={"kubeconfig": str(kube_cluster.kubeconfig)}, return_state=True))
    assert done.is_completed(), done.message
    assert tree(restored) == before
    rs = custom(kube_cluster, "restoresessions", "core.kubestash.com", namespace, "restore-b")
    assert rs["spec"]["dataSource"] == {"namespace": namespace, "repository": "repo-b",
                                        "snapshot": names["repo-b"]}  # latest, resolved to a name
    assert rs["status"]["phase"] == "Succeeded" and rs["status"]["totalComponents"] == 2
    assert {c: v["phase"] for c, v in rs["status"]["components"].items()} == {"dump": "Succeeded",
                                                                               "config-backup": "Succeeded"}
    assert not leases(kube_cluster, namespace)


def test_one_unreachable_repository_fails_only_its_snapshot(kube_cluster, namespace, node_agent, prefect_api,
                                                            host_tmp, restic) -> None:
    node_agent.default = run_for_real()
    _setup(kube_cluster, namespace)
    (host_tmp / "good").mkdir()
    not_a_folder = host_tmp / "not-a-folder"
    not_a_folder.write_text("a file where the storage should be\n")
    state = run_session(**session_parameters(kube_cluster, namespace, host_tmp / "good", not_a_folder,
                                             limits={"history_limit": 0},
                                             advanced={"backup_session": "data-backup-nightly-1700000001"}))
    assert state.is_failed()
    code = (state.message or "").split(":", 1)[0]
    assert code == "job-exit-code", state.message
    good = snapshot(kube_cluster, namespace, "repo-a-data-backup-nightly-1700000001")["status"]
    bad = snapshot(kube_cluster, namespace, "repo-b-data-backup-nightly-1700000001")["status"]
    assert good["phase"] == "Succeeded" and set(good["components"]) == {"dump", "config-backup"}
    assert bad["phase"] == "Failed" and set(bad["components"]) == {"dump", "config-backup"}
    assert all(c["phase"] == "Failed" and c["error"].startswith("job-exit-code") for c in bad["components"].values())
    assert any(c["type"] == "BackupIncomplete" and c["status"] == "True" for c in bad["conditions"])
    bs = custom(kube_cluster, "backupsessions", "core.kubestash.com", namespace, "data-backup-nightly-1700000001")
    assert bs["status"]["phase"] == "Failed"
    assert {s["name"]: s["phase"] for s in bs["status"]["snapshots"]} == {
        "repo-a-data-backup-nightly-1700000001": "Succeeded", "repo-b-data-backup-nightly-1700000001": "Failed"}
    # nothing left behind: no Job, no PVC (history limit 0), no Lease
    eventually(lambda: not jobs(kube_cluster, namespace) and not pvcs(kube_cluster, namespace), 60)
    assert not leases(kube_cluster, namespace)


def test_two_runs_of_a_plan_without_a_target_do_not_overlap(kube_cluster, namespace, node_agent, prefect_api,
                                                           tmp_path) -> None:
    """A cluster-wide plan (no target) is held by its BackupConfiguration, as KubeStash skips a
    BackupSession while another of the same invoker runs: a second session run while the first works
    fails target-busy, naming the first, and makes no Job; another plan without a target is not held."""
    import threading

    from localkube.nodeagent import succeed

    report = '{"components": {"backup": {"phase": "Succeeded", "size": "1 MiB", "integrity": true}}}'
    node_agent.script({"stashflow.io/task": "backup"}, succeed(after=8.0, message=report))
    api(kube_cluster, lambda c: client.CoreV1Api(c).create_namespaced_secret(namespace, {
        "metadata": {"name": "pw"}, "data": {"RESTIC_PASSWORD": base64.b64encode(b"pw").decode()}}))

    def params(configuration: str, name: str) -> dict[str, Any]:
        return {"configuration": configuration, "session": "nightly", "namespace": namespace, "addon": "scripted",
                "tasks": [{"name": "backup"}], "advanced": {"backup_session": name},
                "repositories": [{"name": f"repo-{configuration}", "storage": storage("store", tmp_path),
                                  "directory": f"/{configuration}", "encryption_secret": "pw"}],
                "cluster": {"kubeconfig": str(kube_cluster.kubeconfig)}}

    states: dict[str, Any] = {}
    first = threading.Thread(target=lambda: states.update(a=run_session(**params("cluster", "cluster-a"))))
    first.start()
    eventually(lambda: leases(kube_cluster, namespace), timeout=120)
    states["b"] = run_session(**params("cluster", "cluster-b"))
    states["other"] = run_session(**params("other", "other-a"))  # its own BackupConfiguration: not held
    first.join(timeout=180)
    assert states["a"].is_completed() and states["other"].is_completed(), (states["a"].message,
                                                                            states["other"].message)
    assert states["b"].is_failed() and "target-busy" in states["b"].message, states["b"].message
    assert "cluster-a" in states["b"].message
    assert sorted(j.metadata.name for j in jobs(kube_cluster, namespace)) == ["cluster-a-backup-repo-cluster",
                                                                              "other-a-backup-repo-other"]
    assert custom(kube_cluster, "backupsessions", "core.kubestash.com", namespace, "cluster-a")["status"]["phase"] \
        == "Succeeded"
    assert not leases(kube_cluster, namespace)


def test_a_session_whose_name_is_taken_by_another_backup_session_fails_and_touches_it_not(
        kube_cluster, namespace, node_agent, prefect_api, tmp_path) -> None:
    """A BackupSession of the same name that is not this session's (KubeStash's own, say: it names them the
    same way) is refused with ``api-conflict``; the other object is left as it was, nothing of the failed
    session stays, and the target is free for the next run."""
    from localkube.nodeagent import succeed

    report = '{"components": {"backup": {"phase": "Succeeded", "size": "1 MiB", "integrity": true}}}'
    node_agent.script({"stashflow.io/task": "backup"}, succeed(message=report))
    api(kube_cluster, lambda c: client.CoreV1Api(c).create_namespaced_secret(namespace, {
        "metadata": {"name": "pw"}, "data": {"RESTIC_PASSWORD": base64.b64encode(b"pw").decode()}}))

    def params(name: str) -> dict[str, Any]:
        return {"configuration": "data", "session": "nightly", "namespace": namespace, "addon": "scripted",
                "tasks": [{"name": "backup"}],
                "advanced": {"backup_session": name},
                "repositories": [{"name": "repo", "storage": storage("store", tmp_path), "directory": "/data",
                                  "encryption_secret": "pw"}],
                "cluster": {"kubeconfig": str(kube_cluster.kubeconfig)}}

    assert run_session(**params("first")).is_completed()  # the CRDs are there from now on
    group = "core.kubestash.com"
    theirs = {"apiVersion": f"{group}/v1alpha1", "kind": "BackupSession",
              "metadata": {"name": "taken", "labels": {"kubestash.com/invoker-name": "data"}},
              "spec": {"invoker": {"apiGroup": group, "kind": "BackupConfiguration", "name": "data"},
                       "session": "nightly"}}
    objs = lambda c: client.CustomObjectsApi(c)  # noqa: E731
    api(kube_cluster, lambda c: objs(c).create_namespaced_custom_object(group, "v1alpha1", namespace,
                                                                        "backupsessions", theirs))
    api(kube_cluster, lambda c: objs(c).patch_namespaced_custom_object_status(
        group, "v1alpha1", namespace, "backupsessions", "taken", {"status": {"phase": "Running"}},
        _content_type="application/merge-patch+json"))

    state = run_session(**params("taken"))
    assert state.is_failed() and "api-conflict" in state.message and "another session" in state.message, state.message
    kept = custom(kube_cluster, "backupsessions", group, namespace, "taken")
    assert kept["status"] == {"phase": "Running"} and kept["metadata"]["labels"] == theirs["metadata"]["labels"]
    assert [s["metadata"]["name"] for s in snapshots(kube_cluster, namespace)] == ["repo-first"], \
        "no Snapshot of the refused session"
    assert not leases(kube_cluster, namespace)
    assert run_session(**params("second")).is_completed()  # the target was given back
