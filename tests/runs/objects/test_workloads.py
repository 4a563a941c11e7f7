"""stashflow-workload end to end: a StatefulSet of 2 replicas (the statefulset controller of the
real kube-controller-manager makes its Pods and their PVCs from the claim template; the node agent
provisions and binds them), different data in each Pod's volume, backed up per Pod by the
``logical-backup`` flow (one restic snapshot per Pod), destroyed, restored per Pod: byte-identical."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client

from localkube.helpers import pvc_host_path, wait_pvc_bound
from localkube.nodeagent import Match, never_ends
from localkube.nodeagent import run as run_for_real

from ..conftest import run_flow
from ..observe import api, eventually, nothing_left, snapshot

RESTIC_PASSWORD = "workload 'pw' $HOME"
ADDON = "stashflow-workload"


def statefulset(ns: str) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db", "namespace": ns},
            "spec": {"replicas": 2, "serviceName": "db", "podManagementPolicy": "Parallel",
                     "selector": {"matchLabels": {"app": "db"}},
                     "template": {"metadata": {"labels": {"app": "db"}},
                                  "spec": {"containers": [{"name": "db", "image": "registry.example/db:1",
                                                           "volumeMounts": [{"name": "data", "mountPath": "/var/lib/app"},
                                                                            {"name": "conf", "mountPath": "/etc/app"}]}],
                                           "volumes": [{"name": "conf", "configMap": {"name": "db-conf"}}]}},
                     "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                         "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}}


def fill(root: Path, ordinal: int) -> None:
    """Data that differs per Pod: nested folders, unicode names, a binary file, an empty one, a link."""
    (root / "tables" / "ünï côde").mkdir(parents=True)
    (root / "tables" / "ünï côde" / f"rows-{ordinal}.txt").write_text("".join(f"row {i} of pod {ordinal}\n"
                                                                             for i in range(5000)))
    (root / "blob.bin").write_bytes(b"".join(hashlib.sha256(f"{ordinal}-{i}".encode()).digest() for i in range(40000)))
    (root / "empty").write_bytes(b"")
    (root / "mode-600").write_text(f"secret of pod {ordinal}\n")
    (root / "mode-600").chmod(0o600)
    os.symlink("blob.bin", root / "link")
    (root / "scratch.tmp").write_text("excluded\n")


def tree(root: Path) -> dict[str, Any]:
    """Every entry under root: file bytes' hash and mode, link targets, folders."""
    out: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            out[rel] = ("dir", path.stat().st_mode & 0o7777)
        else:
            out[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mode & 0o7777)
    return out


def test_statefulset_backed_up_and_restored_per_pod(kube_cluster, namespace, node_agent, prefect_api, host_tmp,
                                                    executor_on_host) -> None:
    node_agent.default = run_for_real()
    node_agent.script(Match(namespace=namespace, labels={"app": "db"}), never_ends())  # the database's Pods
    repo = host_tmp / "repository"
    repo.mkdir()

    async def setup(c: client.ApiClient) -> list[Path]:
        core = client.CoreV1Api(c)
        await core.create_namespaced_secret(namespace, {"metadata": {"name": "restic-password"}, "data": {
            "RESTIC_PASSWORD": base64.b64encode(RESTIC_PASSWORD.encode()).decode()}})
        await core.create_namespaced_config_map(namespace, {"metadata": {"name": "db-conf"}, "data": {"a": "b"}})
        await client.AppsV1Api(c).create_namespaced_stateful_set(namespace, statefulset(namespace))
        roots = []
        for i in range(2):
            await wait_pvc_bound(c, namespace, f"data-db-{i}", timeout=120)
            roots.append(await pvc_host_path(c, namespace, f"data-db-{i}"))
        return roots
    roots = api(kube_cluster, setup)
    for i, root in enumerate(roots):
        fill(root, i)
    before = [tree(root) for root in roots]
    assert before[0] != before[1]
    storage = {"apiVersion": "storage.kubestash.com/v1alpha1", "kind": "BackupStorage",
               "metadata": {"name": "local", "namespace": namespace},
               "spec": {"storage": {"provider": "local",
                                    "local": {"mountPath": "/stashflow-repo", "hostPath": {"path": str(repo)}}}}}

    backup = run_flow(ADDON, "logical-backup", target="StatefulSet/db", namespace=namespace,
                      kubeconfig=str(kube_cluster.kubeconfig), storage=storage, directory="workloads",
                      encryption_secret="restic-password", paths="/var/lib/app", exclude="*.tmp", history_limit=0)
    assert backup.is_completed(), backup.message
    snap = snapshot(kube_cluster, namespace, backup.result()["snapshot"])
    assert snap["status"]["phase"] == "Succeeded", snap["status"]
    stats = [s.get("summary", s) for s in snap["status"]["components"]["dump"]["resticStats"]]
    assert [s["hostPath"] for s in stats] == ["/stashflow-workload/db-0", "/stashflow-workload/db-1"]
    assert stats[0]["id"] != stats[1]["id"]

    for root in roots:  # destroyed: emptied, and one file changed in place
        for entry in root.iterdir():
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    (roots[1] / "blob.bin").write_bytes(b"damaged")

    restore = run_flow(ADDON, "logical-backup-restore", target="StatefulSet/db", namespace=namespace,
                       kubeconfig=str(kube_cluster.kubeconfig), snapshot="latest", repository="db", history_limit=0)
    assert restore.is_completed(), restore.message
    for i, root in enumerate(roots):
        expected = {k: v for k, v in before[i].items() if not k.endswith(".tmp")}  # excluded from the backup
        assert tree(root) == expected, i
    eventually(lambda: nothing_left(kube_cluster, namespace), timeout=60)
