"""A session's hooks, run as KubeStash runs them: preBackup before the tasks (a failure skips the backup and
fails the session), postBackup after the Snapshots by executionPolicy (a failure fails the session), each a
Prefect task run, recorded in the BackupSession's status.hooks and conditions. The hooks exec into a Pod
the node agent runs for real, through the API (the agent's kubelet /exec)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client

from localkube.helpers import wait_until
from localkube.nodeagent import run as run_for_real

from .observe import api, jobs, pvcs, snapshot
from .test_sessions import _setup, custom, leases, restic, run_session, session_parameters  # noqa: F401 (fixture)


def template(name: str, script: str) -> dict[str, Any]:
    return {"apiVersion": "core.kubestash.com/v1alpha1", "kind": "HookTemplate", "metadata": {"name": name},
            "spec": {"params": [{"name": "WHAT", "default": name}],
                     "action": {"exec": {"command": ["sh", "-c", script, "hook", "${WHAT}"]}},
                     "executor": {"type": "Pod", "pod": {"selector": "app=db"}}}}


def hook(phase: str, name: str, script: str, **info: Any) -> dict[str, Any]:
    return {"phase": phase, "hook": {"name": name, "hookTemplate": {"name": name}, **info},
            "template": template(name, script)}


@pytest.fixture
def db_pod(kube_cluster, namespace: str, node_agent, host_tmp: Path) -> Path:  # type: ignore[no-untyped-def]
    """A Running Pod labelled app=db whose /marks is ``host_tmp/marks`` (where the hooks leave their mark)."""
    node_agent.default = run_for_real()
    marks = host_tmp / "marks"
    marks.mkdir()

    async def start(c: client.ApiClient) -> None:
        core = client.CoreV1Api(c)
        await core.create_namespaced_pod(namespace, {
            "metadata": {"name": "db-0", "labels": {"app": "db"}},
            "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False,
                     "containers": [{"name": "db", "image": "debian:bookworm", "command": ["sleep", "600"],
                                     "volumeMounts": [{"name": "marks", "mountPath": "/marks"}]}],
                     "volumes": [{"name": "marks", "hostPath": {"path": str(marks), "type": "Directory"}}]}})

        async def running() -> bool | None:
            return (await core.read_namespaced_pod("db-0", namespace)).status.phase == "Running" or None
        await wait_until(running, timeout=60)
    api(kube_cluster, start)
    return marks


MARK = 'echo "$1" >> /marks/log'


def hooked_session(kube_cluster, namespace: str, host_tmp: Path, **parameters: Any):  # type: ignore[no-untyped-def]
    """The two-repository session of test_sessions.py (its objects set up, its repositories' folders made)
    run with ``parameters`` (the hooks); its final state."""
    _setup(kube_cluster, namespace)
    (host_tmp / "a").mkdir()
    (host_tmp / "b").mkdir()
    return run_session(**session_parameters(kube_cluster, namespace, host_tmp / "a", host_tmp / "b", **parameters))


def test_pre_and_post_hooks_around_a_good_backup(kube_cluster, namespace, db_pod, prefect_api, host_tmp,
                                                 restic) -> None:
    state = hooked_session(kube_cluster, namespace, host_tmp,
        hooks=[hook("preBackup", "freeze", MARK, params={"WHAT": "frozen $(HOME)"}),
               hook("postBackup", "thaw", MARK, executionPolicy="OnSuccess"),
               hook("postBackup", "alarm", MARK, executionPolicy="OnFailure")],
        advanced={"backup_session": "data-backup-nightly-1700000100"})
    assert state.is_completed(), state.message
    assert (db_pod / "log").read_text() == "frozen $(HOME)\nthaw\n"  # in order; the OnFailure hook did not run
    bs = custom(kube_cluster, "backupsessions", "core.kubestash.com", namespace, "data-backup-nightly-1700000100")
    assert bs["status"]["phase"] == "Succeeded"
    assert bs["status"]["hooks"] == {"preHooks": [{"name": "freeze", "phase": "Succeeded"}],
                                     "postHooks": [{"name": "thaw", "phase": "Succeeded"}]}
    conditions = {c["type"]: c["status"] for c in bs["status"]["conditions"]}
    assert conditions["PreBackupHooksExecutionSucceeded"] == "True"
    assert conditions["PostBackupHooksExecutionSucceeded"] == "True"

    # a RestoreSession's hooks: preRestore before its tasks, postRestore after them by policy
    import asyncio

    from stashflow.flows.restore_sessions import restore_session

    done = asyncio.run(restore_session(
        name="restore-hooked", namespace=namespace, target="PersistentVolumeClaim/restored", addon="pvc-pair",
        tasks=[{"name": "logical-backup-restore"}, {"name": "config-backup-restore"}],
        data_source={"repository": "repo-a", "snapshot": "latest"},
        hooks=[hook("preRestore", "stop-app", MARK), hook("postRestore", "start-app", MARK, executionPolicy="OnSuccess")],
        cluster={"kubeconfig": str(kube_cluster.kubeconfig)}, return_state=True))
    assert done.is_completed(), done.message
    assert (db_pod / "log").read_text() == "frozen $(HOME)\nthaw\nstop-app\nstart-app\n"
    rs = custom(kube_cluster, "restoresessions", "core.kubestash.com", namespace, "restore-hooked")
    assert rs["status"]["phase"] == "Succeeded"
    assert rs["status"]["hooks"] == {"preHooks": [{"name": "stop-app", "phase": "Succeeded"}],
                                     "postHooks": [{"name": "start-app", "phase": "Succeeded"}]}
    assert {c["type"]: c["status"] for c in rs["status"]["conditions"]}["PreRestoreHooksExecutionSucceeded"] == "True"


def test_a_failed_pre_hook_skips_the_backup_and_fails_the_session(kube_cluster, namespace, db_pod, prefect_api,
                                                                  host_tmp, restic) -> None:
    state = hooked_session(kube_cluster, namespace, host_tmp,
        hooks=[hook("preBackup", "freeze", MARK + "; echo 'cannot freeze' >&2; exit 4"),
               hook("postBackup", "thaw", MARK, executionPolicy="OnSuccess"),
               hook("postBackup", "alarm", MARK, executionPolicy="OnFailure")],
        limits={"history_limit": 0}, advanced={"backup_session": "data-backup-nightly-1700000101"})
    assert state.is_failed()
    assert state.message.startswith("hook-failed: "), state.message
    error = state.result(raise_on_failure=False)  # the whole error: the state message is one short line
    assert "cannot freeze" in error.message and "exit code 4" in error.message
    assert (db_pod / "log").read_text() == "freeze\nalarm\n"  # the backup failed: only the OnFailure post hook
    assert not jobs(kube_cluster, namespace)  # no backup Job was ever made
    for repo in ("repo-a", "repo-b"):
        snap = snapshot(kube_cluster, namespace, f"{repo}-data-backup-nightly-1700000101")["status"]
        assert snap["phase"] == "Failed"
        assert all(c["error"].startswith("hook-failed: the backup was skipped") for c in snap["components"].values())
    bs = custom(kube_cluster, "backupsessions", "core.kubestash.com", namespace, "data-backup-nightly-1700000101")
    assert bs["status"]["phase"] == "Failed"
    assert bs["status"]["hooks"] == {"preHooks": [{"name": "freeze", "phase": "Failed"}],
                                     "postHooks": [{"name": "alarm", "phase": "Succeeded"}]}
    conditions = {c["type"]: c["status"] for c in bs["status"]["conditions"]}
    assert conditions["PreBackupHooksExecutionSucceeded"] == "False"
    assert not pvcs(kube_cluster, namespace) and not leases(kube_cluster, namespace)


def test_a_failed_post_hook_fails_a_session_whose_backup_succeeded(kube_cluster, namespace, db_pod, prefect_api,
                                                                  host_tmp, restic) -> None:
    state = hooked_session(kube_cluster, namespace, host_tmp,
        hooks=[hook("postBackup", "thaw", "exit 9", maxRetry=1)],
        advanced={"backup_session": "data-backup-nightly-1700000102"})
    assert state.is_failed() and state.message.startswith("hook-failed: "), state.message
    for repo in ("repo-a", "repo-b"):  # the data is safe; the session says the hook failed
        assert snapshot(kube_cluster, namespace, f"{repo}-data-backup-nightly-1700000102")["status"]["phase"] == \
            "Succeeded"
    bs = custom(kube_cluster, "backupsessions", "core.kubestash.com", namespace, "data-backup-nightly-1700000102")
    assert bs["status"]["phase"] == "Failed"
    assert bs["status"]["hooks"] == {"postHooks": [{"name": "thaw", "phase": "Failed"}]}


def function_hook(phase: str, name: str, script: str, marks: Path, **info: Any) -> dict[str, Any]:
    """A hook whose HookTemplate names the Function executor: the Function's container runs as a Job (run for
    real by the node agent), the executor's volume giving it the marks folder."""
    function = {"apiVersion": "addons.kubestash.com/v1alpha1", "kind": "Function", "metadata": {"name": f"fn-{name}"},
                "spec": {"image": "debian:bookworm", "command": ["sh", "-c", script, "hook", "${WHAT}"]}}
    template = {"apiVersion": "core.kubestash.com/v1alpha1", "kind": "HookTemplate", "metadata": {"name": name},
                "spec": {"params": [{"name": "WHAT", "default": name}],
                         "executor": {"type": "Function", "function": {
                             "name": f"fn-{name}", "volumeMounts": [{"name": "marks", "mountPath": "/marks"}],
                             "volumes": [{"name": "marks", "hostPath": {"path": str(marks), "type": "Directory"}}]}}}}
    return {"phase": phase, "hook": {"name": name, "hookTemplate": {"name": name}, **info}, "template": template,
            "function": function}


def test_function_hooks_run_as_jobs_and_leave_none(kube_cluster, namespace, db_pod, prefect_api, host_tmp,
                                                   restic) -> None:
    state = hooked_session(kube_cluster, namespace, host_tmp,
        hooks=[function_hook("preBackup", "flush", MARK, db_pod, params={"WHAT": "flushed $(HOME)"}),
               function_hook("postBackup", "notify", MARK + "; echo 'no route to chat' >&2; exit 5", db_pod)],
        advanced={"backup_session": "data-backup-nightly-1700000103"})
    assert state.is_failed() and state.message.startswith("hook-failed: "), state.message
    assert "no route to chat" in state.result(raise_on_failure=False).message
    assert (db_pod / "log").read_text() == "flushed $(HOME)\nnotify\n"  # the parameter as data, then the post hook
    for repo in ("repo-a", "repo-b"):  # the backup ran between the two
        assert snapshot(kube_cluster, namespace, f"{repo}-data-backup-nightly-1700000103")["status"]["phase"] == \
            "Succeeded"
    bs = custom(kube_cluster, "backupsessions", "core.kubestash.com", namespace, "data-backup-nightly-1700000103")
    assert bs["status"]["hooks"] == {"preHooks": [{"name": "flush", "phase": "Succeeded"}],
                                     "postHooks": [{"name": "notify", "phase": "Failed"}]}
    api(kube_cluster, lambda c: wait_until(
        lambda: _no_hook_jobs(c, namespace), timeout=60, what="the hook Jobs to go"))


async def _no_hook_jobs(c: client.ApiClient, namespace: str) -> bool | None:
    found = await client.BatchV1Api(c).list_namespaced_job(namespace, label_selector="stashflow.io/role=hook")
    return True if not found.items else None
