"""A restore whose source is not there stops before anything runs: `stashflow restore` of a RestoreSession
naming a Snapshot that does not exist, one that is not Succeeded, one whose Repository is gone (made by
KubeStash, it records no storage of its own), or latest of a repository that does not exist, is one coded
line and exit 1; the RestoreSession is Failed with the reason (condition ValidationPassed False); no Job,
no Lease, no PVC is made. The Snapshots are made by hand, as KubeStash would have left them: no Job is
needed to find these out (addons/restore_source.py holds the rules)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from kubernetes_asyncio import client

from support import run_cli

from .observe import api, eventually, jobs, nothing_left, pvcs, sigterm_once_a_job_exists
from .test_sessions import custom, leases


def _session_file(path: Path, namespace: str, name: str, snapshot: str, repository: str) -> Path:
    path.write_text(
        "apiVersion: core.kubestash.com/v1alpha1\nkind: RestoreSession\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\n"
        "spec:\n  target: {kind: PersistentVolumeClaim, name: restored}\n"
        f"  dataSource: {{repository: {repository}, snapshot: {snapshot}, encryptionSecret: {{name: pw}}}}\n"
        "  addon:\n    name: stashflow-pvc\n    tasks:\n    - name: logical-backup-restore\n")
    return path


def _snapshot(namespace: str, name: str, repository: str, phase: str) -> tuple[dict, dict]:
    obj = {"apiVersion": "storage.kubestash.com/v1alpha1", "kind": "Snapshot",
           "metadata": {"name": name, "namespace": namespace, "labels": {"kubestash.com/repo-name": repository}},
           "spec": {"repository": repository, "session": "frequent", "version": "v1", "type": "FullBackup",
                    "appRef": {"kind": "PersistentVolumeClaim", "name": "data", "namespace": namespace}}}
    status = {"phase": phase, "snapshotTime": "2026-01-01T00:00:00Z", "totalComponents": 1,
              "components": {"dump": {"phase": phase, "driver": "Restic", "path": "repository/v1/frequent/dump",
                                      "resticStats": [{"summary": {"id": "0123abcd"}}]}}}
    return obj, status


@pytest.fixture
def made_by_kubestash(kube_cluster, namespace: str) -> None:  # type: ignore[no-untyped-def]
    """A Failed Snapshot of repository "repo", and a Succeeded one of repository "gone" (no Repository object)."""
    from stashflow.tasks import objects
    from stashflow.tasks.kube import connect

    async def make() -> None:
        async with connect(str(kube_cluster.kubeconfig)) as kube:
            await objects.ensure_crds(kube, ["Snapshot", "RestoreSession", "Repository"])
            for name, repo, phase in (("repo-failed", "repo", "Failed"), ("gone-1", "gone", "Succeeded"),
                                      ("ours-1", "ours", "Succeeded")):
                obj, status = _snapshot(namespace, name, repo, phase)
                if repo == "ours":  # as stashflow records one: made by it, its storage on it
                    obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "stashflow"
                    obj["metadata"]["annotations"] = {"stashflow.io/storage-object": json.dumps(
                        {"apiVersion": "storage.kubestash.com/v1alpha1", "kind": "BackupStorage",
                         "metadata": {"name": "s"}, "spec": {"storage": {"provider": "local", "local": {
                             "mountPath": "/r", "hostPath": {"path": "/tmp"}}}}})}
                await objects.create(kube, obj)
                await objects.patch_status(kube, "Snapshot", namespace, name, status)
    asyncio.run(make())
    api(kube_cluster, lambda c: client.CoreV1Api(c).create_namespaced_secret(namespace, {
        "metadata": {"name": "pw"}, "stringData": {"RESTIC_PASSWORD": "pw"}}))
    api(kube_cluster, lambda c: client.CoreV1Api(c).create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": "restored"}, "spec": {"accessModes": ["ReadWriteOnce"],
                                                    "resources": {"requests": {"storage": "1Gi"}}}}))


@pytest.mark.parametrize(("rs_name", "snapshot", "repository", "code", "reason"), [
    ("no-such-snapshot", "nope", "repo", "snapshot-not-found", 'no Snapshot "nope"'),
    ("failed-snapshot", "repo-failed", "repo", "snapshot-not-found", 'Snapshot "repo-failed" is Failed, not Succeeded'),
    ("repository-gone", "gone-1", "gone", "repository-not-found", 'Repository "gone" of Snapshot "gone-1" does not exist'),
    ("latest-of-nothing", "latest", "nothing", "repository-not-found", 'Repository "nothing" does not exist'),
])
def test_a_restore_whose_source_is_missing_fails_before_anything_runs(
        kube_cluster, namespace, prefect_api, made_by_kubestash, tmp_path: Path, rs_name: str, snapshot: str,
        repository: str, code: str, reason: str) -> None:
    session = _session_file(tmp_path / "restore.yaml", namespace, rs_name, snapshot, repository)
    before = {p.metadata.name for p in pvcs(kube_cluster, namespace)}
    rc, out, err = run_cli("restore", str(session), "--kubeconfig", str(kube_cluster.kubeconfig))
    assert rc == 1, out
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"{code}: ") and reason in line, line
    assert "restored" not in out
    rs = custom(kube_cluster, "restoresessions", "core.kubestash.com", namespace, rs_name)
    assert rs["status"]["phase"] == "Failed"
    (validation,) = [c for c in rs["status"]["conditions"] if c["type"] == "ValidationPassed"]
    assert validation["status"] == "False" and reason in validation["message"]
    assert not jobs(kube_cluster, namespace, "")  # nothing was started, nor left behind
    assert not leases(kube_cluster, namespace)
    assert {p.metadata.name for p in pvcs(kube_cluster, namespace)} == before


def test_sigterm_to_a_restore_ends_its_restoresession_and_leaves_nothing(kube_cluster, namespace, node_agent,
                                                                       prefect_env, made_by_kubestash,
                                                                       tmp_path: Path) -> None:
    """`stashflow restore` stopped by SIGTERM while its Job runs: one interrupted line (exit 143), the Job and
    the claim gone, the RestoreSession and its component Failed with the reason (the flow's crash hook)."""
    from localkube.nodeagent import never_ends

    node_agent.script({"stashflow.io/session": "put-back"}, never_ends())
    session = _session_file(tmp_path / "restore.yaml", namespace, "put-back", "ours-1", "ours")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "stashflow"), "restore", str(session),
                             "--kubeconfig", str(kube_cluster.kubeconfig)], env=prefect_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = sigterm_once_a_job_exists(proc, kube_cluster, namespace)
    assert err.strip().splitlines()[-1].startswith("<command line>:1: interrupted: stopped by SIGTERM"), err[-2000:]
    assert proc.returncode == 143
    eventually(lambda: nothing_left(kube_cluster, namespace), timeout=120)
    assert not leases(kube_cluster, namespace)
    status = custom(kube_cluster, "restoresessions", "core.kubestash.com", namespace, "put-back")["status"]
    assert status["phase"] == "Failed" and status["components"]["dump"]["phase"] == "Failed", status
