"""End to end with real data: restic backs up a PVC's files and restores them into an empty PVC.

The node agent runs each Job's container for real (restic from Debian), with the Pod's
volumes bind-mounted; the Snapshot must carry what restic itself reports."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kubernetes_asyncio import client

from localkube.helpers import apt_install, create_pvc, pvc_host_path
from localkube.nodeagent import run as run_for_real

from .conftest import run_flow
from .observe import api, eventually, flow_run_artifacts, flow_run_logs, jobs, snapshot, snapshots

PASSWORD = "correct horse battery staple, with 'quotes' and \\slashes"


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def restic() -> str:
    apt_install("restic")
    return "/usr/bin/restic"


def test_backup_then_restore_latest_gives_identical_files(kube_cluster, namespace, node_agent, prefect_api, host_tmp,
                                                          restic) -> None:
    node_agent.default = run_for_real()

    async def setup(c: client.ApiClient) -> tuple[Path, Path]:
        await create_pvc(c, namespace, "data")
        await create_pvc(c, namespace, "restored")
        await client.CoreV1Api(c).create_namespaced_secret(namespace, {
            "metadata": {"name": "restic-password"},
            "data": {"RESTIC_PASSWORD": base64.b64encode(PASSWORD.encode()).decode()}})
        return await pvc_host_path(c, namespace, "data"), await pvc_host_path(c, namespace, "restored")

    data, restored = api(kube_cluster, setup)
    (data / "nested" / "deeper").mkdir(parents=True)
    (data / "hello.txt").write_text("hello, world\n")
    (data / "nested" / "binary.bin").write_bytes(os.urandom(300_000))
    (data / "nested" / "deeper" / "name with spaces & 'quotes'.txt").write_text("odd names survive\n")
    before = tree(data)
    repo = host_tmp / "repository"
    repo.mkdir()
    storage = {"apiVersion": "storage.kubestash.com/v1alpha1", "kind": "BackupStorage",
               "metadata": {"name": "local", "namespace": namespace},
               "spec": {"storage": {"provider": "local",
                                    "local": {"mountPath": "/stashflow-repo", "hostPath": {"path": str(repo)}}}}}
    common = dict(namespace=namespace, kubeconfig=str(kube_cluster.kubeconfig), storage=storage,
                  directory="demo/data", encryption_secret="restic-password")

    backup = run_flow("stashflow-pvc", "logical-backup", target="PersistentVolumeClaim/data", **common)
    assert backup.is_completed(), backup.message
    snap = snapshot(kube_cluster, namespace, backup.result()["snapshot"])
    assert snap["status"]["phase"] == "Succeeded"
    (stats,) = snap["status"]["components"]["dump"]["resticStats"]
    stats = stats.get("summary", stats)  # KubeStash's CRD holds the nested form

    # the id is restic's own: the repository on disk holds exactly that snapshot
    component_repo = repo / "demo" / "data" / snap["status"]["components"]["dump"]["path"]
    listed = subprocess.run([restic, "-r", str(component_repo), "snapshots", "--json", "--no-lock"],
                            env={**os.environ, "RESTIC_PASSWORD": PASSWORD}, capture_output=True, text=True,
                            check=True)
    (only,) = json.loads(listed.stdout)
    assert only["id"].startswith(stats["id"]) and len(stats["id"]) >= 8  # restic 0.14 reports the short id
    assert stats["hostPath"] == "/kubestash-data" and stats["size"].endswith(("KiB", "MiB"))
    # verified after the backup: `restic check` passed, `restic stats` gave the repository's size
    component = snap["status"]["components"]["dump"]
    assert component["integrity"] is True and snap["status"]["integrity"] is True
    assert component["size"].endswith(("KiB", "MiB")) and snap["status"]["size"] == component["size"]

    restore = run_flow("stashflow-pvc", "logical-backup-restore", target="PersistentVolumeClaim/restored",
                       snapshot="latest", repository="data", namespace=namespace,
                       kubeconfig=str(kube_cluster.kubeconfig))
    assert restore.is_completed(), restore.message
    assert tree(restored) == before

    # the password went to restic by Secret reference only: not in Jobs, logs or artifacts
    for job in jobs(kube_cluster, namespace):
        assert PASSWORD not in json.dumps(job.to_dict(), default=str)
    for state in (backup, restore):
        flow_run_id = state.state_details.flow_run_id
        assert not any(PASSWORD in line for line in flow_run_logs(flow_run_id))
        assert not any(PASSWORD in str(a.data) for a in flow_run_artifacts(flow_run_id))


def test_second_backup_needs_no_init_and_retention_forgets_the_first(kube_cluster, namespace, node_agent, prefect_api, host_tmp, restic) -> None:
    """After a Succeeded Snapshot the repository is known: no init Job. Retention after the second
    backup (keep the last 1) deletes the first Snapshot and, by a restic Job, its data."""
    node_agent.default = run_for_real()

    async def setup(c: client.ApiClient) -> Path:
        await create_pvc(c, namespace, "data")
        await client.CoreV1Api(c).create_namespaced_secret(namespace, {
            "metadata": {"name": "pw"}, "data": {"RESTIC_PASSWORD": base64.b64encode(b"pw").decode()}})
        return await pvc_host_path(c, namespace, "data")

    data = api(kube_cluster, setup)
    (data / "f").write_text("1")
    storage = {"apiVersion": "storage.kubestash.com/v1alpha1", "kind": "BackupStorage", "metadata": {"name": "s"},
               "spec": {"storage": {"provider": "local",
                                    "local": {"mountPath": "/r", "hostPath": {"path": str(host_tmp)}}}}}
    common = dict(target="PersistentVolumeClaim/data", namespace=namespace, kubeconfig=str(kube_cluster.kubeconfig),
                  storage=storage, encryption_secret="pw", history_limit=5)
    assert run_flow("stashflow-pvc", "logical-backup", session="data-1", **common).is_completed()
    pods_after_first = len([r for r in node_agent.records if r.namespace == namespace])
    second = run_flow("stashflow-pvc", "logical-backup", session="data-2",
                      retention={"successfulSnapshots": {"last": 1}}, **common)
    assert second.is_completed(), second.message
    pods_after_second = len([r for r in node_agent.records if r.namespace == namespace])
    # init + backup + verify the first time; then backup + verify, and the retention Job that forgets
    # the first snapshot
    assert (pods_after_first, pods_after_second - pods_after_first) == (3, 3)
    # retention: the older Snapshot object is gone, and so is its data in the restic repository
    assert [s["metadata"]["name"] for s in snapshots(kube_cluster, namespace)] == ["data-data-2"]
    assert second.result()["retention"] == {"keep": ["data-data-2"], "delete": ["data-data-1"]}
    (component_repo,) = [p.parent for p in host_tmp.rglob("config")]
    listed = subprocess.run([restic, "-r", str(component_repo), "snapshots", "--json", "--no-lock"],
                            env={**os.environ, "RESTIC_PASSWORD": "pw"}, capture_output=True, text=True, check=True)
    (only,) = json.loads(listed.stdout)
    kept = snapshot(kube_cluster, namespace, "data-data-2")["status"]["components"]["dump"]["resticStats"][0]
    assert only["id"].startswith(kept.get("summary", kept)["id"])
    eventually(lambda: not jobs(kube_cluster, namespace, "stashflow.io/role=retention"))  # and its Job removed


def test_a_restoresession_file_restores_latest(kube_cluster, namespace, node_agent, prefect_env, host_tmp,
                                                restic, tmp_path) -> None:
    """KubeStash's own restore request, run by `stashflow restore` as one restore-session (stashflow's own
    Function too): the RestoreSession object with its component, its preRestore/postRestore hooks; a failed
    preRestore hook is a coded line and exit 1, and no restore Job is made."""
    import socket

    from .test_sessions import custom, leases

    node_agent.default = run_for_real()

    async def setup(c: client.ApiClient) -> tuple[Path, Path]:
        await create_pvc(c, namespace, "data")
        await create_pvc(c, namespace, "restored")
        await client.CoreV1Api(c).create_namespaced_secret(namespace, {
            "metadata": {"name": "pw"}, "data": {"RESTIC_PASSWORD": base64.b64encode(b"pw").decode()}})
        return await pvc_host_path(c, namespace, "data"), await pvc_host_path(c, namespace, "restored")

    data, restored = api(kube_cluster, setup)
    (data / "a.txt").write_text("restore me\n")
    (data / "sub").mkdir()
    (data / "sub" / "b.bin").write_bytes(os.urandom(50_000))
    storage = {"apiVersion": "storage.kubestash.com/v1alpha1", "kind": "BackupStorage", "metadata": {"name": "s"},
               "spec": {"storage": {"provider": "local", "local": {"mountPath": "/r", "hostPath": {"path": str(host_tmp)}}}}}
    backup = subprocess.run(
        [str(Path(sys.executable).parent / "stashflow"), "run", "stashflow-pvc", "logical-backup", "-n", namespace,
         "--target", "pvc/data", "--encryption-secret", "pw", "--kubeconfig", str(kube_cluster.kubeconfig),
         "--catalog", "addons/catalog", "--catalog", str(_write(tmp_path / "storage.yaml", storage)), "--storage", "s"],
        env=prefect_env, capture_output=True, text=True, timeout=300)
    assert backup.returncode == 0, backup.stderr[-3000:]
    app = socket.create_server(("127.0.0.1", 0))  # what the hooks check: a port that is open, then one that is not
    closed = socket.create_server(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()

    def session_file(name: str, port: int) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(
            "apiVersion: core.kubestash.com/v1alpha1\nkind: HookTemplate\n"
            f"metadata: {{name: app-{name}, namespace: {namespace}}}\n"
            f"spec: {{action: {{tcpSocket: {{host: 127.0.0.1, port: {port}}}}}, executor: {{type: Operator}}}}\n---\n"
            "apiVersion: core.kubestash.com/v1alpha1\nkind: RestoreSession\n"
            f"metadata: {{name: {name}, namespace: {namespace}}}\n"
            "spec:\n  target: {kind: PersistentVolumeClaim, name: restored}\n"
            "  dataSource: {repository: data, snapshot: latest, encryptionSecret: {name: pw}}\n"
            "  restoreTimeout: 10m\n  addon:\n    name: stashflow-pvc\n    tasks:\n    - name: logical-backup-restore\n"
            f"  hooks:\n    preRestore: [{{name: app-up, hookTemplate: {{name: app-{name}}}}}]\n"
            f"    postRestore: [{{name: app-check, hookTemplate: {{name: app-{name}}}, executionPolicy: OnSuccess}}]\n")
        return path

    def restore(path: Path) -> subprocess.CompletedProcess:
        return subprocess.run([str(Path(sys.executable).parent / "stashflow"), "restore", str(path),
                               "--kubeconfig", str(kube_cluster.kubeconfig)], env=prefect_env, capture_output=True,
                              text=True, timeout=300)

    with app:
        done = restore(session_file("put-it-back", app.getsockname()[1]))
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"restored PersistentVolumeClaim/restored in {namespace} with stashflow-pvc/logical-backup-restore " \
           "from latest of data" in done.stdout
    assert f"with RestoreSession put-it-back from data-" in done.stdout  # latest, resolved to a name
    assert tree(restored) == tree(data)
    rs = custom(kube_cluster, "restoresessions", "core.kubestash.com", namespace, "put-it-back")
    assert rs["spec"]["dataSource"]["snapshot"].startswith("data-")  # a name, never latest
    status = rs["status"]
    assert status["phase"] == "Succeeded" and status["totalComponents"] == 1
    assert status["components"]["dump"]["phase"] == "Succeeded"
    assert status["hooks"] == {"preHooks": [{"name": "app-up", "phase": "Succeeded"}],
                               "postHooks": [{"name": "app-check", "phase": "Succeeded"}]}
    assert not leases(kube_cluster, namespace)

    made = {j.metadata.name for j in jobs(kube_cluster, namespace)}
    failed = restore(session_file("app-down", closed_port))
    assert failed.returncode == 1, failed.stdout
    line = failed.stderr.strip().splitlines()[-1]
    assert "hook-failed" in line and "the restore was skipped" in line and "Traceback" not in failed.stderr
    assert "restored" not in failed.stdout
    assert {j.metadata.name for j in jobs(kube_cluster, namespace)} == made  # no restore Job
    rs = custom(kube_cluster, "restoresessions", "core.kubestash.com", namespace, "app-down")
    assert rs["status"]["phase"] == "Failed"
    assert rs["status"]["components"]["dump"]["phase"] == "Failed"
    assert rs["status"]["hooks"]["preHooks"][0]["phase"] == "Failed"
    assert not leases(kube_cluster, namespace)


def _write(path: Path, obj: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(obj))
    return path


def test_a_broken_restoresession_fails_with_its_line_before_anything_runs(tmp_path) -> None:
    from support import run_cli

    session = tmp_path / "restore.yaml"
    session.write_text(
        "apiVersion: core.kubestash.com/v1alpha1\nkind: RestoreSession\nmetadata: {name: r, namespace: x}\n"
        "spec:\n  target: {kind: PersistentVolumeClaim, name: restored}\n"
        "  dataSource:\n    snapshot: latest\n"
        "  addon: {name: stashflow-pvc, tasks: [{name: logical-backup}]}\n")
    rc, _, err = run_cli("restore", str(session))
    assert rc == 1
    assert f"{session}:6: missing-field: " in err and "needs dataSource.repository" in err
