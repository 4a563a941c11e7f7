"""Creating, adopting and removing what a run makes: PVCs, the Job, the Snapshot.

Every object carries the run's labels (``stashflow.io/session``, ``.../task``,
``.../target-*``). A create that meets an existing object with the same session, task and
target adopts it (a retried or restarted run), anything else is a conflict. Cleanup finds
objects by label, so it also works from a cancel or crash hook that has only the labels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from stashflow.addons import crd
from stashflow.addons.errors import Conflict, Forbidden, NotFound
from stashflow.addons.render import LABEL_PREFIX, MANAGED_BY

from .kube import Kube

log = logging.getLogger("stashflow.resources")

IDENTITY_LABELS = ("session", "task", "target-kind", "target-name", "attempt", "repository")
MERGE_PATCH = "application/merge-patch+json"


def identity(labels: dict[str, str]) -> dict[str, str]:
    return {k: labels.get(LABEL_PREFIX + k, "") for k in IDENTITY_LABELS}


def selector(labels: dict[str, str], keys: tuple[str, ...] = ("session", "task", "attempt", "repository")) -> str:
    """A label selector for a run's objects (by default: its session, task, attempt and, within a session
    run, repository)."""
    parts = [f"app.kubernetes.io/managed-by={MANAGED_BY}"]
    parts += [f"{LABEL_PREFIX}{k}={labels[LABEL_PREFIX + k]}" for k in keys if LABEL_PREFIX + k in labels]
    return ",".join(parts)


async def _create(kube: Kube, obj: dict[str, Any]) -> Any:
    kind, ns = obj["kind"], obj["metadata"]["namespace"]
    what = f'create {kind} {ns}/{obj["metadata"]["name"]}'
    if kind == "Job":
        return await kube.call(what, kube.batch.create_namespaced_job, ns, obj)
    if kind == "PersistentVolumeClaim":
        return await kube.call(what, kube.core.create_namespaced_persistent_volume_claim, ns, obj)
    if kind == "Snapshot":
        return await kube.call(what, kube.custom.create_namespaced_custom_object, crd.GROUP, crd.VERSION, ns,
                               crd.PLURAL, obj)
    raise ValueError(f"stashflow does not create {kind}")


async def read(kube: Kube, kind: str, namespace: str, name: str) -> dict[str, Any]:
    what = f"read {kind} {namespace}/{name}"
    found: Any  # a client model, or a dict for a custom object
    if kind == "Job":
        found = await kube.call(what, kube.batch.read_namespaced_job, name, namespace)
    elif kind == "PersistentVolumeClaim":
        found = await kube.call(what, kube.core.read_namespaced_persistent_volume_claim, name, namespace)
    elif kind == "Snapshot":
        found = await kube.call(what, kube.custom.get_namespaced_custom_object, crd.GROUP, crd.VERSION, namespace,
                                crd.PLURAL, name)
    else:
        raise ValueError(kind)
    return kube.api.sanitize_for_serialization(found)


async def create_or_adopt(kube: Kube, obj: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Create ``obj``; if it exists and belongs to the same run, return it. ``(object, adopted)``."""
    try:
        created = await _create(kube, obj)
        return kube.api.sanitize_for_serialization(created), False
    except Conflict:
        pass  # it exists: adopt it below if it is this run's
    meta = obj["metadata"]
    existing = await read(kube, obj["kind"], meta["namespace"], meta["name"])
    theirs = identity((existing.get("metadata") or {}).get("labels") or {})
    if theirs != identity(meta.get("labels") or {}) or (existing["metadata"].get("deletionTimestamp")):
        raise Conflict(
            f'{obj["kind"]} {meta["namespace"]}/{meta["name"]} exists and belongs to another run '
            f"({', '.join(f'{k}={v}' for k, v in theirs.items() if v) or 'not made by stashflow'})",
            status=409, hint="give the run another name (--run NAME) or delete the old object",
        )
    log.info("adopted existing %s %s/%s", obj["kind"], meta["namespace"], meta["name"])
    return existing, True


async def relabel(kube: Kube, obj: dict[str, Any], labels: dict[str, str]) -> None:
    """Set labels on an existing Job or Snapshot (an adopted object joins the current run)."""
    meta = obj["metadata"]
    body = {"metadata": {"labels": labels}}
    what = f'label {obj["kind"]} {meta["namespace"]}/{meta["name"]}'
    if obj["kind"] == "Job":
        await kube.call(what, kube.batch.patch_namespaced_job, meta["name"], meta["namespace"], body)
    else:
        await kube.call(what, kube.custom.patch_namespaced_custom_object, crd.GROUP, crd.VERSION, meta["namespace"],
                        crd.PLURAL, meta["name"], body, _content_type=MERGE_PATCH)


async def own_by_job(kube: Kube, namespace: str, pvc_names: list[str], job: dict[str, Any]) -> None:
    """Make the Job the owner of the run's PVCs, so deleting the Job (GC) deletes them too."""
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": job["metadata"]["name"], "uid": job["metadata"]["uid"],
             "blockOwnerDeletion": True}
    for name in pvc_names:
        await kube.call(f"own PVC {namespace}/{name}", kube.core.patch_namespaced_persistent_volume_claim, name,
                        namespace, {"metadata": {"ownerReferences": [owner]}})


async def patch_snapshot_status(kube: Kube, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
    """Merge ``status`` into the Snapshot's status subresource."""
    patched = await kube.call(f"update status of Snapshot {namespace}/{name}",
                              kube.custom.patch_namespaced_custom_object_status, crd.GROUP, crd.VERSION, namespace,
                              crd.PLURAL, name, {"status": status}, _content_type=MERGE_PATCH)
    found = kube.api.sanitize_for_serialization(patched)
    kube.seen[f"Snapshot/{namespace}/{name}"] = found
    return found


async def list_snapshots(kube: Kube, namespace: str | None, label_selector: str | None = None) -> list[dict[str, Any]]:
    kwargs = {"label_selector": label_selector} if label_selector else {}
    if namespace:
        found = await kube.call("list Snapshots", kube.custom.list_namespaced_custom_object, crd.GROUP, crd.VERSION,
                                namespace, crd.PLURAL, **kwargs)
    else:
        found = await kube.call("list Snapshots", kube.custom.list_cluster_custom_object, crd.GROUP, crd.VERSION,
                                crd.PLURAL, **kwargs)
    items = found.get("items", [])
    return sorted(items, key=lambda s: ((s.get("status") or {}).get("snapshotTime") or "",
                                        s["metadata"].get("creationTimestamp") or ""))


async def latest_snapshot(kube: Kube, namespace: str, repository: str) -> dict[str, Any] | None:
    """The newest Succeeded Snapshot of a repository."""
    snapshots = await list_snapshots(kube, namespace, f"kubestash.com/repo-name={repository}")
    succeeded = [s for s in snapshots if (s.get("status") or {}).get("phase") == "Succeeded"]
    return succeeded[-1] if succeeded else None


async def ensure_snapshot_crd(kube: Kube, timeout: float = 30.0) -> str:
    """Install stashflow's Snapshot CRD when the cluster has none: ``"present"``, ``"installed"``,
    or ``"unknown"`` when this identity may not read CRDs (then `stashflow install` did it)."""
    from .objects import ensure_crd

    return await ensure_crd(kube, crd.KIND, timeout)


async def snapshot_schema(kube: Kube) -> str:
    """Whose Snapshot CRD the cluster has: ``"stashflow"``, ``"kubestash"`` or ``"unknown"`` (no read access)."""
    from .objects import read_crd

    try:  # read by this run's provision step already, or by this process within a minute
        found: Any = await read_crd(kube, crd.CRD_NAME)
    except (Forbidden, NotFound):
        return "unknown"
    return "stashflow" if (found.metadata.labels or {}).get("app.kubernetes.io/managed-by") == MANAGED_BY else "kubestash"


async def delete_run_objects(kube: Kube, namespace: str, label_selector: str, *, jobs: bool = True,
                             wait: float = 0.0) -> list[str]:
    """Delete a run's Job(s) (Foreground: Pods first) and PVCs, found by label. Returns what was deleted."""
    deleted: list[str] = []
    if jobs:
        found = await kube.call("list Jobs", kube.batch.list_namespaced_job, namespace, label_selector=label_selector)
        for job in found.items:
            with contextlib.suppress(NotFound):
                await kube.call(f"delete Job {namespace}/{job.metadata.name}", kube.batch.delete_namespaced_job,
                                job.metadata.name, namespace, propagation_policy="Foreground")
                deleted.append(f"Job/{job.metadata.name}")
    claims = await kube.call("list PVCs", kube.core.list_namespaced_persistent_volume_claim, namespace,
                             label_selector=label_selector)
    for pvc in claims.items:
        with contextlib.suppress(NotFound):
            await kube.call(f"delete PVC {namespace}/{pvc.metadata.name}",
                            kube.core.delete_namespaced_persistent_volume_claim, pvc.metadata.name, namespace)
            deleted.append(f"PersistentVolumeClaim/{pvc.metadata.name}")
    if wait and jobs:
        loop = asyncio.get_running_loop()
        end = loop.time() + wait
        while loop.time() < end:
            left = await kube.call("list Jobs", kube.batch.list_namespaced_job, namespace, label_selector=label_selector)
            if not left.items:
                break
            await asyncio.sleep(0.2)
    return deleted


async def prune_history(kube: Kube, namespace: str, labels: dict[str, str], keep: int,
                        current: str | None = None) -> list[str]:
    """Keep ``keep`` finished Jobs of this target and task (``current``, this run's, always among them);
    delete the older ones. Their PVCs go with them: the Job owns them (``own_by_job``), so a Foreground
    delete has the garbage collector remove Pods and PVCs first: one request per Job, no listing."""
    sel = selector(labels, keys=("task", "target-kind", "target-name"))
    found = _cached_jobs(kube, namespace, sel)
    if found is None:
        listing = await kube.call("list Jobs", kube.batch.list_namespaced_job, namespace, label_selector=sel)
        found = [kube.api.sanitize_for_serialization(j) for j in listing.items]
    finished = [j for j in found
                if any(c["type"] in ("Complete", "Failed") and c["status"] == "True"
                       for c in (j.get("status") or {}).get("conditions") or [])
                and not j["metadata"].get("deletionTimestamp") and j["metadata"]["name"] != current]
    # creationTimestamp has one-second resolution: the current Job is kept explicitly, not by order
    finished.sort(key=lambda j: j["metadata"].get("creationTimestamp") or "", reverse=True)
    deleted: list[str] = []
    for job in finished[max(keep - (1 if current else 0), 0):]:
        name = job["metadata"]["name"]
        with contextlib.suppress(NotFound):
            await kube.call(f"delete Job {namespace}/{name}", kube.batch.delete_namespaced_job, name, namespace,
                            propagation_policy="Foreground")
            deleted.append(f"Job/{name}")
    return deleted


def _cached_jobs(kube: Kube, namespace: str, label_selector: str) -> list[dict[str, Any]] | None:
    """The Jobs matching ``label_selector`` (``k=v,...``) from this process's shared Job watch, when it
    watches the namespace already (a run waiting there just used it); else None: list them."""
    from .watch_hub import SELECTOR, hub_for

    try:
        hub = hub_for(kube, create=False)
    except RuntimeError:
        return None
    watched = hub.known(namespace) if hub is not None else None
    wanted = dict(part.split("=", 1) for part in label_selector.split(",") if "=" in part)
    if watched is None or not set(wanted.items()) >= {tuple(SELECTOR.split("=", 1))}:
        return None
    return watched.jobs_matching(wanted)
