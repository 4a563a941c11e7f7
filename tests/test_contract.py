"""stashflow's side of KubeStash's executor contract, on plain dicts: which contract a Function speaks,
the result read from the components (never the exit code), and the executor's RBAC."""

from __future__ import annotations

import copy

import pytest
import yaml

from stashflow.addons.catalog import load
from stashflow.addons.contract import (
    CONTRACT_ANNOTATION, backup_result, backup_results, contract_of, restore_result,
)
from stashflow.addons.errors import CODES, InputError
from stashflow.addons.rbac import EXECUTOR_BACKUP_RULES, EXECUTOR_RESTORE_RULES, executor_rbac
from support import HAVE_SHARED, REPO, UPSTREAM_CATALOG, UPSTREAM_EXAMPLES

BUILTIN_CATALOG = REPO / "addons" / "catalog"


def fn(args: list[str], annotations: dict[str, str] | None = None) -> dict:
    meta: dict = {"name": "f"}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "addons.kubestash.com/v1alpha1", "kind": "Function", "metadata": meta,
            "spec": {"image": "x", "args": args}}


@pytest.mark.parametrize("args, expected", [
    (["backup", "--backupsession=${backupSession:=}"], "kubestash"),
    (["restore", "--restoresession=${restoreSession}", "--snapshot=${snapshot}"], "kubestash"),
    (["verify", "--backupverificationsession=${backupVerificationSession:=}"], "kubestash"),
    (["backup", "--tag=backupsession=${backupSession:=}"], "stashflow"),  # a restic tag, not the session flag
    (["backup", "--backupsession=fixed"], "stashflow"),
    (["backup", "--", "pg_dumpall", "-h", "${host}"], "stashflow"),
    (["--snapshot=${snapshot}"], "stashflow"),
    ([], "stashflow"),
])
def test_contract_from_session_references(args: list[str], expected: str) -> None:
    assert contract_of(fn(args)) == expected


def test_annotation_overrides_and_a_bad_one_is_a_coded_error() -> None:
    assert contract_of(fn(["--backupsession=${backupSession}"], {CONTRACT_ANNOTATION: "stashflow"})) == "stashflow"
    assert contract_of(fn(["x"], {CONTRACT_ANNOTATION: "kubestash"})) == "kubestash"
    with pytest.raises(InputError) as e:
        contract_of(fn(["x"], {CONTRACT_ANNOTATION: "kubestsh"}))
    assert e.value.code == "invalid-value" and CONTRACT_ANNOTATION in str(e.value) and "kubestsh" in str(e.value)


@pytest.mark.skipif(not HAVE_SHARED, reason="the upstream catalog is not in ../shared")
def test_every_upstream_executor_function_speaks_kubestash_and_builtins_speak_stashflow() -> None:
    upstream = load([UPSTREAM_CATALOG])
    contracts = {name: contract_of(f) for name, f in upstream.functions.items()}
    assert contracts["pvc-backup"] == contracts["postgres-restore"] == contracts["kubedbmanifest-backup"] == "kubestash"
    # every upstream Function reaches its work through the session objects
    assert set(contracts.values()) == {"kubestash"}, {k: v for k, v in contracts.items() if v != "kubestash"}
    builtin = load([BUILTIN_CATALOG])
    assert {contract_of(f) for f in builtin.functions.values()} == {"stashflow"}


def test_the_restic_image_for_kubestash_written_repositories_is_the_builtin_pvc_functions() -> None:
    """Retention forgets a KubeStash executor's restic data with stashflow's own restic image (tasks/retention.py):
    the one the built-in stashflow-pvc Functions run, so the two cannot drift apart."""
    from stashflow.addons.contract import RESTIC_IMAGE

    builtin = load([BUILTIN_CATALOG])
    assert {builtin.functions[n].spec.image for n in ("stashflow-pvc-backup", "stashflow-pvc-restore")} == {RESTIC_IMAGE}


SUCCEEDED = {"phase": "Succeeded", "driver": "Restic", "duration": "2.1s", "integrity": True, "size": "1.134 MiB",
             "path": "repository/v1/frequent/dump",
             "resticStats": [{"summary": {"id": "abc", "hostPath": "/kubestash-data", "size": "4 MiB"}}]}


def snap(components: dict | None) -> dict:
    return {"kind": "Snapshot", "status": {"components": components} if components is not None else {}}


def test_a_succeeded_component_is_good_whatever_the_exit_code_was() -> None:
    r = backup_result(snap({"dump": SUCCEEDED}), "dump")
    assert r.ok and r.code is None and r.restic_ids == ("abc",) and (r.size, r.integrity) == ("1.134 MiB", True)


@pytest.mark.parametrize("components, code, words", [
    (None, "component-missing", "never wrote"),
    ({}, "component-missing", "never wrote"),
    ({"manifest": SUCCEEDED}, "component-missing", "never wrote"),
    ({"dump": {"phase": "Running"}}, "component-unfinished", "still Running"),
    # stashflow pre-creates the component Pending; an executor writes Running first: never touched
    ({"dump": {"phase": "Pending", "driver": "Restic", "path": "repository/v1/s/dump"}}, "component-missing", "never wrote"),
    ({"dump": {"driver": "Restic", "resticStats": [{"progress": {"percentDone": "50.00%"}}]}}, "component-unfinished",
     "without a phase"),
    ({"dump": {"phase": "Failed", "error": "restic backup failed: Fatal: wrong password or no key found"}},
     "component-failed", "wrong password"),
    ({"dump": {"phase": "Failed"}}, "component-failed", "no error given"),
    ({"dump": {**SUCCEEDED, "integrity": False}}, "repository-corrupt", "check found errors"),
])
def test_bad_components_have_stable_codes(components: dict | None, code: str, words: str) -> None:
    r = backup_result(snap(components), "dump")
    assert not r.ok and r.code == code and words in r.message and r.hint
    assert code in CODES


def test_the_observed_upstream_snapshots_read_as_kubestash_wrote_them() -> None:
    if not HAVE_SHARED:
        pytest.skip("the upstream examples are not in ../shared")
    ok = yaml.safe_load((UPSTREAM_EXAMPLES / "snapshot-succeeded.yaml").read_text())
    r = backup_result(ok, "manifest")  # the older, flat resticStats form
    assert r.ok and r.restic_ids == ("00f950ccb1cf2ec52ee2c6f4f537a2c68aa18d5e35939b066347b60c5e825095",)
    failed = yaml.safe_load((UPSTREAM_EXAMPLES / "snapshot-failed-backupincomplete.yaml").read_text())
    (r,) = backup_results(failed, ["manifest"])
    assert r.code == "component-unfinished"  # the executor died: the component was left Running


def test_two_components_of_one_snapshot() -> None:
    results = backup_results(snap({"dump": SUCCEEDED, "manifest": {"phase": "Failed", "error": "boom"}}),
                             ["dump", "manifest"])
    assert [(r.component, r.code) for r in results] == [("dump", None), ("manifest", "component-failed")]


def test_restore_results() -> None:
    rs = {"status": {"components": {"dump": {"phase": "Succeeded", "duration": "3s"}}}}
    assert restore_result(rs, "dump").ok
    pending_only = {"status": {"components": {"dump": {"phase": "Pending"}}}}  # pre-created, never touched
    assert restore_result(pending_only, "dump").code == "component-missing"
    assert restore_result({"status": {"components": {"dump": {"phase": "Running"}}}}, "dump").code == "component-unfinished"
    r = restore_result({"status": {"components": {"dump": {"phase": "Failed", "error": "psql exited with code 2"}}}}, "dump")
    assert (r.code, r.error, r.size) == ("component-failed", "psql exited with code 2", None)


def test_inputs_are_not_changed() -> None:
    s = snap({"dump": SUCCEEDED})
    before = copy.deepcopy(s)
    backup_result(s, "dump")
    assert s == before


def test_executor_rbac_is_what_the_contract_lists() -> None:
    objs = executor_rbac("demo", "sa", "backup", other_namespaces=["storage-ns", "demo"], kubedb=True)
    assert [(o["kind"], o["metadata"]["namespace"]) for o in objs] == [
        ("Role", "demo"), ("RoleBinding", "demo"), ("Role", "storage-ns"), ("RoleBinding", "storage-ns")]
    role = objs[0]
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    assert ("storage.kubestash.com", "snapshots/status", "patch") in granted
    assert ("core.kubestash.com", "backupsessions", "get") in granted
    assert ("appcatalog.appscode.com", "appbindings", "get") in granted
    assert not any(v in ("create", "delete", "update", "*") for _, _, v in granted)
    elsewhere = {(g, r, v) for rule in objs[2]["rules"] for g in rule["apiGroups"] for r in rule["resources"]
                 for v in rule["verbs"]}
    assert all(v == "get" for _, _, v in elsewhere) and ("", "secrets", "get") in elsewhere
    for binding in (objs[1], objs[3]):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "sa", "namespace": "demo"}]
    restore = executor_rbac("demo", "sa", "restore")[0]["rules"]
    assert restore == EXECUTOR_RESTORE_RULES and EXECUTOR_BACKUP_RULES != EXECUTOR_RESTORE_RULES
    with pytest.raises(ValueError):
        executor_rbac("demo", "sa", "verify")


# -- what must exist before the Job ---------------------------------------------------------------
from stashflow.addons.contract import backup_preconditions, restore_preconditions  # noqa: E402


def good_backup() -> dict:
    ns = "demo"
    return {
        "bs": {"metadata": {"name": "bc-nightly-1", "namespace": ns},
               "spec": {"invoker": {"apiGroup": "core.kubestash.com", "kind": "BackupConfiguration", "name": "bc"},
                        "session": "nightly"},
               "status": {"snapshots": [{"name": "repo-bc-nightly-1", "repository": "repo"}]}},
        "bc": {"metadata": {"name": "bc", "namespace": ns}, "spec": {"target": {"kind": "PersistentVolumeClaim", "name": "d"}}},
        "snaps": [{"metadata": {"name": "repo-bc-nightly-1", "namespace": ns},
                   "spec": {"repository": "repo", "session": "nightly", "version": "v1", "backupSession": "bc-nightly-1"}}],
        "repos": [{"metadata": {"name": "repo", "namespace": ns},
                   "spec": {"path": "/demo", "storageRef": {"name": "s3", "namespace": "stash"},
                            "encryptionSecret": {"name": "enc", "namespace": ns}}}],
        "storages": [{"metadata": {"name": "s3", "namespace": "stash"},
                      "spec": {"storage": {"provider": "s3", "s3": {"bucket": "b", "secretName": "s3-creds"}}}}],
        "secrets": {("demo", "enc"): ["RESTIC_PASSWORD"], ("stash", "s3-creds"): ["AWS_ACCESS_KEY_ID"]},
    }


def check(o: dict) -> list[str]:
    return [str(p) for p in backup_preconditions(o["bs"], o["bc"], o["snaps"], o["repos"], o["storages"], o["secrets"])]


def test_good_backup_objects_have_no_problems() -> None:
    assert check(good_backup()) == []


@pytest.mark.parametrize("mutate, expected", [
    (lambda o: o["bs"].pop("status"), 'BackupSession "demo/bc-nightly-1" status.snapshots: empty'),
    (lambda o: o["bs"]["spec"]["invoker"].pop("apiGroup"), "spec.invoker: must be"),
    (lambda o: o["bs"]["spec"].update(backupTimeout="1h"), "status.backupDeadline: missing"),
    (lambda o: o.update(bc=None), 'BackupConfiguration "demo/bc" : the invoker does not exist'),
    (lambda o: o["snaps"][0]["spec"].update(session="other"), "spec.session: must be"),
    (lambda o: o["snaps"][0]["spec"].pop("version"), "spec.version: must be v1"),
    (lambda o: o["snaps"].clear(), "status.snapshots[0].name: no Snapshot demo/repo-bc-nightly-1"),
    (lambda o: o["repos"][0]["spec"]["storageRef"].pop("namespace"), "spec.storageRef.namespace: empty"),
    (lambda o: o["repos"][0]["spec"]["encryptionSecret"].pop("namespace"), "spec.encryptionSecret.namespace: empty"),
    (lambda o: o["repos"][0]["spec"].pop("path"), 'Repository "demo/repo" spec.path: missing'),
    (lambda o: o["secrets"].pop(("demo", "enc")), "the encryption Secret does not exist"),
    (lambda o: o["secrets"].update({("demo", "enc"): ["password"]}), "data.RESTIC_PASSWORD: missing"),
    (lambda o: o["secrets"].pop(("stash", "s3-creds")), 'Secret "stash/s3-creds" : the storage Secret does not exist'),
    (lambda o: o["storages"].clear(), 'BackupStorage "stash/s3" : does not exist'),
])
def test_each_missing_field_is_named(mutate, expected: str) -> None:  # type: ignore[no-untyped-def]
    o = good_backup()
    mutate(o)
    problems = check(o)
    assert any(expected in p for p in problems), problems


def good_restore() -> tuple:
    rs = {"metadata": {"name": "rs", "namespace": "demo"},
          "spec": {"dataSource": {"namespace": "demo", "repository": "repo", "snapshot": "repo-bc-nightly-1",
                                  "encryptionSecret": {"name": "enc", "namespace": "demo"}}},
          "status": {"components": {"dump": {"phase": "Pending"}}}}
    o = good_backup()
    snap = o["snaps"][0]
    snap["status"] = {"components": {"dump": {"phase": "Succeeded", "resticStats": [{"summary": {"id": "abc"}}]}}}
    return rs, snap, o["repos"], o["storages"], o["secrets"]


def test_restore_preconditions() -> None:
    rs, snap, repos, storages, secrets = good_restore()
    assert restore_preconditions(rs, "dump", snap, repos, storages, secrets) == ()
    rs["spec"]["dataSource"]["snapshot"] = "latest"
    del rs["status"]
    problems = [str(p) for p in restore_preconditions(rs, "dump", snap, repos, storages, secrets)]
    assert any("latest: resolve it" in p for p in problems) and any("not pre-created" in p for p in problems)
    rs, snap, repos, storages, secrets = good_restore()
    rs["spec"]["dataSource"].pop("encryptionSecret")
    snap["status"]["components"]["dump"]["resticStats"] = []
    problems = [str(p) for p in restore_preconditions(rs, "dump", snap, repos, storages, secrets)]
    assert any("spec.dataSource.encryptionSecret: missing" in p for p in problems)
    assert any("no restic snapshot id" in p for p in problems)
    # the Repository's own encryptionSecret is not what a restore reads
    rs, snap, repos, storages, secrets = good_restore()
    repos[0]["spec"].pop("encryptionSecret")
    assert restore_preconditions(rs, "dump", snap, repos, storages, secrets) == ()
