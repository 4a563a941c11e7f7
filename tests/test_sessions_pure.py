"""Session objects, names and phases as KubeStash computes them (addons/sessions.py), the CRD table
(addons/crd.py) against KubeStash's own CRDs, and the session flow's pure parts."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
import yaml

from stashflow.addons import crd, sessions
from stashflow.addons.render import Target
from support import HAVE_SHARED, NEEDS_SHARED_REASON, SHARED

NOW = datetime(2025, 4, 22, 5, 55, tzinfo=timezone.utc)


def test_names_are_kubestashs() -> None:
    # REFERENCE.md §5: verified against a real object
    assert sessions.backup_session_name("cluster-resources-backup", "frequent-backup", 1745301300) == \
        "cluster-resources-backup-frequent-backup-1745301300"
    assert sessions.snapshot_name("kubedump-gcs-repository", "cluster-resources-backup-frequent-backup-1745301300") \
        == "kubedump-gcs-repository-cluster-ckup-frequent-backup-1745301300"
    assert sessions.snapshot_name("repo-a", "data-backup-nightly-1700000000") == "repo-a-data-backup-nightly-1700000000"


def _ref(target: Target | None = Target("PersistentVolumeClaim", "data")) -> sessions.BackupSessionRef:
    return sessions.BackupSessionRef(configuration="data-backup", session="nightly",
                                     name="data-backup-nightly-1745301300", namespace="demo", target=target)


def test_backup_session_is_invoked_and_owned_by_its_configuration() -> None:
    bs = sessions.backup_session(_ref(), backup_timeout="1h", retry_left=2)
    assert "ownerReferences" not in bs["metadata"]  # the configuration's uid is known once it is applied
    applied = [{"apiVersion": "core.kubestash.com/v1alpha1", "kind": "BackupConfiguration",
                "metadata": {"name": "other", "uid": "uid-0"}},
               {"apiVersion": "core.kubestash.com/v1alpha1", "kind": "BackupConfiguration",
                "metadata": {"name": "data-backup", "uid": "uid-1"}}]
    bs = sessions.owned(bs, applied)
    assert bs["spec"] == {"invoker": {"apiGroup": "core.kubestash.com", "kind": "BackupConfiguration",
                                      "name": "data-backup"}, "session": "nightly", "retryLeft": 2,
                          "backupTimeout": "1h"}
    labels = bs["metadata"]["labels"]
    assert labels["kubestash.com/invoker-name"] == "data-backup"
    assert labels["app.kubernetes.io/managed-by"] == "stashflow"
    assert labels["stashflow.io/session"] == "data-backup-nightly-1745301300"
    (owner,) = bs["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == ("BackupConfiguration",
                                                                                 "data-backup", "uid-1", True)


def test_snapshot_of_a_repository_as_the_executors_read_it() -> None:
    repo = sessions.RepositoryRef(name="repo-a", storage="s", storage_namespace="demo", directory="demo/data",
                                  encryption_secret="pw")
    snap = sessions.session_snapshot(_ref(), repo, total_components=2, now=NOW, snapshot_id="01JSE10SDAGJQ743JHMPYEY1JA")
    # owned by its Repository as applied; by nothing when that Repository is not among the applied objects
    assert sessions.owned(snap, [{"apiVersion": "storage.kubestash.com/v1alpha1", "kind": "Repository",
                                  "metadata": {"name": "repo-b", "uid": "r-2"}}]) == snap
    snap = sessions.owned(snap, [{"apiVersion": "storage.kubestash.com/v1alpha1", "kind": "Repository",
                                  "metadata": {"name": "repo-a", "uid": "r-1"}}])
    assert snap["metadata"]["name"] == "repo-a-data-backup-nightly-1745301300"
    assert snap["spec"] == {"snapshotID": "01JSE10SDAGJQ743JHMPYEY1JA", "type": "FullBackup", "repository": "repo-a",
                            "session": "nightly", "backupSession": "data-backup-nightly-1745301300", "version": "v1",
                            "appRef": {"kind": "PersistentVolumeClaim", "name": "data", "namespace": "demo"},
                            "deletionPolicy": "Delete"}
    labels = snap["metadata"]["labels"]
    assert (labels["kubestash.com/repo-name"], labels["kubestash.com/app-ref-kind"],
            labels["kubestash.com/app-ref-name"], labels["kubestash.com/app-ref-namespace"]) == \
        ("repo-a", "PersistentVolumeClaim", "data", "demo")
    (owner,) = snap["metadata"]["ownerReferences"]
    assert (owner["apiVersion"], owner["kind"], owner["name"], owner["uid"], owner["blockOwnerDeletion"]) == \
        ("storage.kubestash.com/v1alpha1", "Repository", "repo-a", "r-1", True)
    assert snap["status"] == {"phase": "Pending", "snapshotTime": "2025-04-22T05:55:00Z", "totalComponents": 2,
                              "verificationStatus": "NotVerified"}
    # the Repository it belongs to, with the namespaces KubeStash's webhook fills
    repository = sessions.repository(repo, "demo", "data-backup", Target("PersistentVolumeClaim", "data"))
    assert repository["spec"]["storageRef"] == {"name": "s", "namespace": "demo"}
    assert repository["spec"]["encryptionSecret"] == {"name": "pw", "namespace": "demo"}
    assert repository["spec"]["path"] == "demo/data"


def test_a_session_without_a_target_refers_to_na() -> None:
    repo = sessions.RepositoryRef(name="r", storage="s", storage_namespace="demo")
    snap = sessions.session_snapshot(_ref(None), repo, total_components=1, now=NOW)
    assert snap["spec"]["appRef"] == {"apiGroup": "na", "name": "na"}  # as examples/snapshot-succeeded.yaml
    assert snap["metadata"]["labels"]["kubestash.com/app-ref-name"] == "na"
    assert snap["metadata"]["labels"]["kubestash.com/app-ref-namespace"] == ""


def _cond(type_: str, status: str) -> dict:
    return {"type": type_, "status": status}


@pytest.mark.parametrize(("status", "phase"), [
    ({}, "Pending"),
    ({"snapshots": [{"phase": "Pending"}, {"phase": "Pending"}]}, "Pending"),
    ({"snapshots": [{"phase": "Running"}, {"phase": "Pending"}]}, "Running"),
    ({"snapshots": [{"phase": "Succeeded"}, {"phase": "Running"}]}, "Running"),
    # terminal only once the final step ran
    ({"snapshots": [{"phase": "Succeeded"}, {"phase": "Succeeded"}]}, "Running"),
    ({"snapshots": [{"phase": "Succeeded"}, {"phase": "Succeeded"}], "conditions": [_cond("MetricsPushed", "True")]},
     "Succeeded"),
    ({"snapshots": [{"phase": "Succeeded"}, {"phase": "Failed"}], "conditions": [_cond("MetricsPushed", "True")]},
     "Failed"),
    ({"snapshots": [{"phase": "Succeeded"}], "conditions": [_cond("MetricsPushed", "False")]}, "Failed"),
    ({"snapshots": [{"phase": "Succeeded"}], "conditions": [_cond("BackupSkipped", "True")]}, "Skipped"),
    ({"snapshots": [{"phase": "Succeeded"}], "retentionPolicy": [{"phase": "FailedToApply"}],
      "conditions": [_cond("MetricsPushed", "True")]}, "Failed"),
    ({"snapshots": [{"phase": "Succeeded"}],
      "conditions": [_cond("SessionHistoryCleaned", "False"), _cond("MetricsPushed", "True")]}, "Failed"),
    ({"snapshots": [{"phase": "Succeeded"}],
      "conditions": [_cond("SnapshotCleanupIncomplete", "True"), _cond("MetricsPushed", "True")]}, "Failed"),
])
def test_calculate_phase(status: dict, phase: str) -> None:
    assert sessions.calculate_phase(status) == phase


def test_finish_snapshot_fails_what_no_task_wrote() -> None:
    status = {"components": {"dump": {"phase": "Succeeded", "size": "1.000 MiB", "integrity": True},
                             "manifest": {"phase": "Running"}}}
    out = sessions.finish_snapshot(status, {"dump": "x", "manifest": "job-exit-code: died", "extra": "never ran"},
                                   now=NOW, aggregate={"size": "1.000 MiB"})
    assert out["phase"] == "Failed" and out["totalComponents"] == 3
    assert out["components"]["manifest"] == {"phase": "Failed", "error": "job-exit-code: died"}
    assert out["components"]["extra"] == {"phase": "Failed", "error": "never ran"}
    (incomplete,) = [c for c in out["conditions"] if c["type"] == "BackupIncomplete"]
    assert incomplete["status"] == "True" and "never ran" in incomplete["message"]
    ok = sessions.finish_snapshot({"components": {"dump": {"phase": "Succeeded"}, "manifest": {"phase": "Succeeded"}}},
                                  {"dump": "x", "manifest": "y"}, now=NOW, aggregate={"size": "2 MiB",
                                                                                      "integrity": True})
    assert (ok["phase"], ok["size"], ok["integrity"], ok["conditions"]) == ("Succeeded", "2 MiB", True, [])


def test_restore_phase_and_repository_status() -> None:
    assert sessions.restore_phase({"dump": {"phase": "Pending"}}) == "Pending"
    assert sessions.restore_phase({"dump": {"phase": "Succeeded"}, "manifest": {"phase": "Running"}}) == "Running"
    assert sessions.restore_phase({"dump": {"phase": "Succeeded"}, "manifest": {"phase": "Failed"}}) == "Failed"
    snaps = [{"metadata": {"name": n}, "spec": {"session": "s"},
              "status": {"phase": p, "snapshotTime": t, "size": "1 MiB", "integrity": True,
                         "components": {"dump": {"path": "repository/v1/s/dump"}}}}
             for n, p, t in (("a", "Failed", "2025-01-01T00:00:00Z"), ("b", "Succeeded", "2025-01-02T00:00:00Z"))]
    status = sessions.repository_status(snaps)
    assert (status["phase"], status["snapshotCount"], status["lastBackupTime"], status["integrity"]) == \
        ("Ready", 2, "2025-01-02T00:00:00Z", True)
    assert [r["name"] for r in status["recentSnapshots"]] == ["a", "b"]
    assert status["componentPaths"] == ["repository/v1/s/dump"]
    assert sessions.duration(65.2) == "1m5s" and sessions.duration(3600) == "1h0s"


@pytest.mark.skipif(not HAVE_SHARED, reason=NEEDS_SHARED_REASON)
@pytest.mark.parametrize("kind", sorted(crd.KINDS))
def test_each_crd_has_kubestashs_names_scope_columns_and_shape(kind: str) -> None:
    spec = crd.KINDS[kind]
    theirs = yaml.safe_load((SHARED / "kubestash" / "crds" / f"{spec.group}_{spec.plural}.yaml").read_text())
    ours = crd.crd(kind)
    assert ours["metadata"]["name"] == theirs["metadata"]["name"]
    assert ours["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "stashflow"}
    for key in ("group", "scope"):
        assert ours["spec"][key] == theirs["spec"][key]
    assert ours["spec"]["names"] == theirs["spec"]["names"]
    (v_ours,), (v_theirs,) = ours["spec"]["versions"], theirs["spec"]["versions"]
    assert v_ours["name"] == v_theirs["name"] and v_ours.get("subresources") == (v_theirs.get("subresources") or {})
    assert v_ours["additionalPrinterColumns"] == v_theirs["additionalPrinterColumns"]
    top_ours = v_ours["schema"]["openAPIV3Schema"]["properties"]
    top_theirs = v_theirs["schema"]["openAPIV3Schema"]["properties"]
    for part in ("spec", "status"):
        if part in top_theirs and top_theirs[part].get("properties"):
            assert set(top_ours[part]["properties"]) == set(top_theirs[part]["properties"]), part


def test_plan_objects_fill_namespaces_and_task_parameters_write_into_the_session() -> None:
    from stashflow.flows.session_flows import plan_objects, task_parameters
    from stashflow.flows.session_parameters import SessionParameters

    params = SessionParameters(
        configuration="pair", session="nightly", namespace="demo", target="PersistentVolumeClaim/data",
        addon="pvc-pair", tasks=[{"name": "logical-backup"}, {"name": "config-backup", "params": {"paths": "/x"}}],
        repositories=[{"name": "repo-a", "storage": {"name": "s", "spec": {"storage": {"provider": "local", "local": {
            "mountPath": "/r", "hostPath": {"path": "/srv"}}}}}, "directory": "/pair", "encryption_secret": "pw"}])
    storage, repository, configuration = plan_objects(params, Target("PersistentVolumeClaim", "data"))
    assert (storage["kind"], storage["metadata"]["namespace"]) == ("BackupStorage", "demo")
    assert repository["spec"]["encryptionSecret"] == {"name": "pw", "namespace": "demo"}
    assert configuration["spec"]["target"] == {"kind": "PersistentVolumeClaim", "name": "data", "namespace": "demo"}
    assert configuration["spec"]["backends"][0]["storageRef"] == {"name": "s", "namespace": "demo"}
    # a plan as written, without what KubeStash's CRD requires and stashflow does not use
    written = params.model_copy(update={"advanced": params.advanced.model_copy(update={"configuration": {
        "target": {"kind": "PersistentVolumeClaim", "name": "data"},
        "sessions": [{"name": "nightly", "scheduler": {"schedule": "0 2 * * *"}}]}})})
    configuration = plan_objects(written, Target("PersistentVolumeClaim", "data"))[-1]
    assert configuration["spec"]["sessions"][0]["scheduler"] == {"schedule": "0 2 * * *", "jobTemplate": {}}
    assert configuration["spec"]["target"]["namespace"] == "demo"
    flow = task_parameters(params, params.tasks[1], params.repositories[0], "pair-nightly-1", 300)
    assert flow["paths"] == "/x" and flow["repository"]["name"] == "repo-a"
    assert flow["advanced"]["within_session"] is True and flow["advanced"]["session"] == "pair-nightly-1"
    assert flow["advanced"]["plan_session"] == "nightly" and flow["limits"]["timeout"] == "300s"
    assert flow["schedule"] == {"exclusive": False, "missed_runs": "all"}  # the session holds the lock, retries


def test_a_session_named_from_the_clock_is_held_by_its_flow_run_only() -> None:
    """Two session runs due in the same second share the derived BackupSession name; the target's
    holder names the flow run too, so the second finds the target busy instead of adopting the first.
    A name given in the plan is held by the name alone: a rerun under it adopts (the cluster test
    tests/runs/test_safety.py shows the same for Addon-task runs on the real control plane)."""
    from stashflow.flows.session_flows import session_holder
    from stashflow.flows.session_parameters import SessionParameters

    params = SessionParameters(configuration="pair", session="nightly", namespace="demo", addon="pvc-pair",
                               target="PersistentVolumeClaim/data", tasks=[{"name": "logical-backup"}],
                               repositories=[{"name": "repo-a", "storage": {"name": "s", "spec": {"storage": {
                                   "provider": "local", "local": {"mountPath": "/r", "hostPath": {"path": "/srv"}}}}}}])
    first, second = (session_holder(params, "pair-nightly-1", run) for run in ("run-1", "run-2"))
    assert first != second and first.startswith("pair-nightly-1/session@")
    assert session_holder(params, "pair-nightly-1", "run-1") == first  # the same flow run adopts
    named = params.model_copy(update={"advanced": params.advanced.model_copy(update={"backup_session": "mine"})})
    assert session_holder(named, "mine", "run-1") == session_holder(named, "mine", "run-2") == "mine/session"


def test_who_may_take_a_held_target_again() -> None:
    """``tasks.claim.same_run``: the same identity; a run given a name adopts the run that named itself
    so from the clock (``--run data-1796195580`` after that run's CLI was killed); a run that named
    itself from the clock adopts only its own flow run."""
    from stashflow.tasks.claim import same_run

    assert same_run("data-1/backup/1", "data-1/backup/1")
    assert same_run("data-1/backup/1@run-a", "data-1/backup/1@run-a")  # a retry or replacement Pod
    assert not same_run("data-1/backup/1@run-a", "data-1/backup/1@run-b")  # due in the same second
    assert same_run("data-1/backup/1@run-a", "data-1/backup/1")  # named by hand: adopts it
    assert not same_run("data-1/backup/1", "data-1/backup/1@run-b")  # a named run is not the clock's
    assert not same_run("data-2/backup/1@run-a", "data-1/backup/1")
