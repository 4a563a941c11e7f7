"""A session's side of KubeStash's executor contract (addons/contract.py, EXECUTOR-CONTRACT.md), as
Prefect tasks: before a ``kubestash``-contract task's Job, the executor's RBAC and a check that every
object its walk reads is there; after it, the result read from the components it wrote.

The session flow (flows/session_flows.py) runs such a task ONCE: the executor reads every Snapshot of
the BackupSession's ``status.snapshots`` and writes its component into each itself.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from stashflow.addons.contract import ComponentResult, backup_preconditions, backup_result, restore_preconditions
from stashflow.addons.errors import NotFound
from stashflow.addons.rbac import executor_rbac

from . import objects, resources
from .install import _apply
from .kube import current
from .steps import STEP

@task(name="ensure-executor-rbac", **STEP)
async def ensure_executor_rbac(namespace: str, service_account: str, kind: str, other_namespaces: list[str],
                               kubedb: bool, make_account: bool) -> list[str]:
    """The executor's Role/RoleBinding (and, when stashflow chose it, its ServiceAccount), applied
    idempotently in the session's namespace and read-only in the other namespaces its walk reaches."""
    kube = current()
    done = []
    if make_account:
        done.append(await _apply(kube, {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {
            "name": service_account, "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "stashflow"}}}))
    for obj in executor_rbac(namespace, service_account, kind, other_namespaces=other_namespaces, kubedb=kubedb):
        done.append(await _apply(kube, obj))
    get_run_logger().info("executor RBAC for ServiceAccount %s/%s: %s", namespace, service_account, ", ".join(done))
    return done


async def _secret_keys(kube: Any, namespace: str, name: str) -> list[str] | None:
    """A Secret's keys (its values are dropped at once: never logged, never returned)."""
    try:
        found = await kube.call(f"read Secret {namespace}/{name}", kube.core.read_namespaced_secret, name, namespace)
    except NotFound:
        return None
    return sorted((found.data or {}).keys())


@task(name="check-executor-objects", **STEP)
async def backup_problems(namespace: str, backup_session: str) -> list[str]:
    """What a KubeStash backup executor would miss if its Job started now (empty: good to go), read
    from the API as the executor will read it."""
    kube = current()
    bs = await objects.read(kube, "BackupSession", namespace, backup_session)
    invoker = ((bs.get("spec") or {}).get("invoker") or {}).get("name") or ""
    try:
        bc: dict[str, Any] | None = await objects.read(kube, "BackupConfiguration", namespace, invoker)
    except NotFound:
        bc = None
    snaps = await objects.list_of(kube, "Snapshot", namespace)
    repos = await objects.list_of(kube, "Repository", namespace)
    storages: list[dict[str, Any]] = []
    secrets: dict[tuple[str, str], list[str]] = {}
    for repo in repos:
        spec = repo.get("spec") or {}
        ref = spec.get("storageRef") or {}
        if ref.get("name") and ref.get("namespace"):
            try:
                storages.append(await objects.read(kube, "BackupStorage", ref["namespace"], ref["name"]))
            except NotFound:
                pass  # the check says so
        enc = spec.get("encryptionSecret") or {}
        if enc.get("name") and enc.get("namespace"):
            keys = await _secret_keys(kube, enc["namespace"], enc["name"])
            if keys is not None:
                secrets[(enc["namespace"], enc["name"])] = keys
    for storage in storages:
        backend = ((storage.get("spec") or {}).get("storage") or {})
        provider = backend.get("provider")
        secret = (backend.get(provider) or {}).get("secretName") if isinstance(provider, str) else None
        sns = (storage.get("metadata") or {}).get("namespace") or namespace
        if secret:
            keys = await _secret_keys(kube, sns, secret)
            if keys is not None:
                secrets[(sns, secret)] = keys
    return [str(p) for p in backup_preconditions(bs, bc, snaps, repos, storages, secrets)]


@task(name="read-components", **STEP)
async def read_backup_results(namespace: str, snapshots: list[str], component: str) -> dict[str, ComponentResult]:
    """Each Snapshot's ``component`` as the executor wrote it (Snapshot name → result): the Job's exit
    code says nothing (KubeStash's executors exit 0 on failure)."""
    kube = current()
    out = {}
    for name in snapshots:
        try:
            snap = await resources.read(kube, "Snapshot", namespace, name)
        except NotFound:
            snap = {}
        out[name] = backup_result(snap, component)
        get_run_logger().info("Snapshot %s: component %s %s", name, component,
                              "Succeeded" if out[name].ok else f"{out[name].code}: {out[name].message}")
    return out


@task(name="check-restore-executor-objects", **STEP)
async def restore_problems(namespace: str, restore_session: str, component: str) -> list[str]:
    """What a KubeStash restore executor would miss if its Job started now (empty: good to go)."""
    kube = current()
    rs = await objects.read(kube, "RestoreSession", namespace, restore_session)
    ds = (rs.get("spec") or {}).get("dataSource") or {}
    sns = ds.get("namespace") or namespace
    try:
        snap: dict[str, Any] | None = await resources.read(kube, "Snapshot", sns, ds.get("snapshot") or "")
    except NotFound:
        snap = None
    repos = await objects.list_of(kube, "Repository", sns)
    storages: list[dict[str, Any]] = []
    for repo in repos:
        ref = (repo.get("spec") or {}).get("storageRef") or {}
        if ref.get("name") and ref.get("namespace"):
            try:
                storages.append(await objects.read(kube, "BackupStorage", ref["namespace"], ref["name"]))
            except NotFound:
                pass  # the check says so
    secrets: dict[tuple[str, str], list[str]] = {}
    enc = ds.get("encryptionSecret") or {}
    if enc.get("name") and enc.get("namespace"):
        keys = await _secret_keys(kube, enc["namespace"], enc["name"])
        if keys is not None:
            secrets[(enc["namespace"], enc["name"])] = keys
    return [str(p) for p in restore_preconditions(rs, component, snap, repos, storages, secrets)]
