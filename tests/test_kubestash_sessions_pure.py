"""How a session runs a task whose Function speaks KubeStash's executor contract: the pure choices
(flows/session_flows.py, flows/restore.py). tests/runs/test_kubestash_sessions.py runs them for real."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import HAVE_SHARED, NEEDS_SHARED_REASON, UPSTREAM_CATALOG

LOCAL = {"storage": {"provider": "local", "local": {"mountPath": "/r", "hostPath": {"path": "/srv"}}}}


def _params(repos: list[tuple[str, str]], addon: dict | None = None):  # type: ignore[no-untyped-def]
    from stashflow.flows.session_parameters import SessionParameters

    return SessionParameters(
        configuration="bc", session="nightly", namespace="demo", target="PersistentVolumeClaim/data",
        addon="pvc-addon", tasks=[{"name": "logical-backup"}],
        repositories=[{"name": r, "storage": {"name": s, "spec": LOCAL}, "directory": f"/{r}", "encryption_secret": "pw"}
                      for r, s in repos],
        advanced={"addon": addon or {}})


def test_the_executor_runs_once_as_the_plans_service_account_or_stashflows() -> None:
    from stashflow.addons.contract import executor_account
    from stashflow.flows.session_flows import kubestash_task_parameters

    params = _params([("repo-a", "s"), ("repo-b", "s")])
    assert executor_account(params.advanced.addon) == ("stashflow-kubestash-executor", True)
    flow = kubestash_task_parameters(params, params.tasks[0], "bc-nightly-1", 60, "stashflow-kubestash-executor")
    assert flow["repository"]["name"] == "repo-a"  # the first repository: its storage is mounted
    assert flow["advanced"]["within_session"] is True
    assert flow["advanced"]["addon"]["jobTemplate"]["spec"]["serviceAccountName"] == "stashflow-kubestash-executor"
    own = _params([("repo-a", "s")], {"jobTemplate": {"spec": {"serviceAccountName": "mine", "nodeSelector": {"a": "b"}}}})
    assert executor_account(own.advanced.addon) == ("mine", False)
    flow = kubestash_task_parameters(own, own.tasks[0], "bc-nightly-1", None, "mine")
    assert flow["advanced"]["addon"]["jobTemplate"]["spec"] == {"serviceAccountName": "mine", "nodeSelector": {"a": "b"}}


def test_repositories_on_two_local_storages_are_unsupported_for_one_executor_job() -> None:
    from stashflow.flows.session_flows import _one_storage

    assert _one_storage(_params([("repo-a", "s"), ("repo-b", "s")])) is None
    why = _one_storage(_params([("repo-a", "s"), ("repo-b", "t")]))
    assert why is not None and why.startswith("unsupported: ") and "s, t" in why


@pytest.mark.skipif(not HAVE_SHARED, reason=NEEDS_SHARED_REASON)
def test_a_restoresession_becomes_the_restore_session_flows_parameters(tmp_path: Path) -> None:
    from stashflow.addons.catalog import Catalog
    from stashflow.addons.model import RestoreSession
    from stashflow.flows.restore import restore_session_parameters

    f = tmp_path / "rs.yaml"
    f.write_text("apiVersion: core.kubestash.com/v1alpha1\nkind: RestoreSession\nmetadata: {name: r, namespace: demo}\n"
                 "spec:\n  target: {kind: PersistentVolumeClaim, name: restored}\n"
                 "  dataSource: {repository: repo, snapshot: latest, encryptionSecret: {name: pw}}\n"
                 "  restoreTimeout: 10m\n"
                 "  addon: {name: pvc-addon, tasks: [{name: logical-backup-restore}]}\n")
    catalog = Catalog().add_paths([str(UPSTREAM_CATALOG), str(f)])
    (session,) = catalog.of_kind(RestoreSession)
    p = restore_session_parameters(catalog, session)
    assert (p["name"], p["namespace"], p["target"], p["addon"]) == ("r", "demo", "PersistentVolumeClaim/restored",
                                                                    "pvc-addon")
    assert [t["name"] for t in p["tasks"]] == ["logical-backup-restore"]
    assert p["data_source"]["snapshot"] == "latest" and p["data_source"]["encryption_secret"] == "pw"
    assert p["limits"] == {"timeout": "10m"}
