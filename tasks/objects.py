"""KubeStash's objects in the cluster (BackupConfiguration, BackupSession, Repository, ...), by kind.

One set of calls for every kind of ``addons/crd.py``'s table: create, read, apply (server-side: the
spec and labels, created or updated), patch the status subresource, list, delete; and the CRDs
themselves, installed only where the cluster has none (a KubeStash CRD already there is left alone).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import weakref
from typing import Any, cast

from kubernetes_asyncio.client.exceptions import ApiException

from stashflow.addons.crd import KINDS, VERSION, crd
from stashflow.addons.errors import Conflict, Forbidden, NotFound, Unavailable

from .kube import Kube

MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"  # JSON is YAML
FIELD_MANAGER = "stashflow"


def _where(kind: str) -> tuple[str, str, str]:
    spec = KINDS[kind]
    return spec.group, VERSION, spec.plural


async def create(kube: Kube, obj: dict[str, Any]) -> dict[str, Any]:
    group, version, plural = _where(obj["kind"])
    meta = obj["metadata"]
    return await kube.call(f'create {obj["kind"]} {meta["namespace"]}/{meta["name"]}',
                           kube.custom.create_namespaced_custom_object, group, version, meta["namespace"], plural, obj)


async def read(kube: Kube, kind: str, namespace: str, name: str) -> dict[str, Any]:
    group, version, plural = _where(kind)
    return await kube.call(f"read {kind} {namespace}/{name}", kube.custom.get_namespaced_custom_object, group,
                           version, namespace, plural, name)


async def apply(kube: Kube, obj: dict[str, Any]) -> dict[str, Any]:
    """Bring ``obj``'s labels and spec into the cluster, creating it if missing, by server-side apply: one
    request either way (a create refused as a conflict, then a patch, took two for every object of every
    nightly session). Field manager ``stashflow``, forced: the plan is the truth for what it sets; what
    others set beside it stays, and what an earlier apply set that the plan no longer sets goes. Its
    status is left to whoever writes it."""
    group, version, plural = _where(obj["kind"])
    meta = obj["metadata"]
    body = {"apiVersion": obj["apiVersion"], "kind": obj["kind"],
            "metadata": {"name": meta["name"], "namespace": meta["namespace"], "labels": meta.get("labels") or {}},
            "spec": obj.get("spec") or {}}

    async def once() -> dict[str, Any]:
        # read raw: the client's generated method knows 200 only, and gives None for an apply's 201 Created
        patch: Any = kube.custom.patch_namespaced_custom_object  # its stub lacks the request options
        resp = await patch(group, version, meta["namespace"], plural, meta["name"], body, field_manager=FIELD_MANAGER,
                           force=True, _content_type=APPLY_PATCH, _preload_content=False)
        try:
            data = await resp.read()
        finally:
            resp.release()
        if not 200 <= resp.status <= 299:  # as the client raises it, for Kube.call to classify
            exc = ApiException(status=resp.status, reason=resp.reason)
            exc.body, exc.headers = data, resp.headers
            raise exc
        return cast(dict[str, Any], json.loads(data))
    return await kube.call(f'apply {obj["kind"]} {meta["namespace"]}/{meta["name"]}', once)


async def patch_status(kube: Kube, kind: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
    """Merge ``status`` into the object's status subresource."""
    group, version, plural = _where(kind)
    return await kube.call(f"update status of {kind} {namespace}/{name}",
                           kube.custom.patch_namespaced_custom_object_status, group, version, namespace, plural, name,
                           {"status": status}, _content_type=MERGE_PATCH)


async def list_of(kube: Kube, kind: str, namespace: str, label_selector: str | None = None) -> list[dict[str, Any]]:
    group, version, plural = _where(kind)
    kwargs = {"label_selector": label_selector} if label_selector else {}
    found = await kube.call(f"list {plural}", kube.custom.list_namespaced_custom_object, group, version, namespace,
                            plural, **kwargs)
    return list(found.get("items", []))


async def delete(kube: Kube, kind: str, namespace: str, name: str) -> bool:
    """Delete (Background); False when it was gone already."""
    group, version, plural = _where(kind)
    try:
        await kube.call(f"delete {kind} {namespace}/{name}", kube.custom.delete_namespaced_custom_object, group,
                        version, namespace, plural, name, propagation_policy="Background")
        return True
    except NotFound:
        return False


#: CRDs this process saw present, by API server and name, with when: a process running many runs (the
#: stashflow worker, a fleet's nightly minute) reads each CRD once per ``CRD_TTL`` seconds, not once per
#: run. A CRD replaced under a running process (KubeStash's installed over stashflow's) is seen within it.
CRD_TTL = 60.0
_present: dict[tuple[str, str], tuple[float, Any]] = {}
#: One read (and one install) of a CRD at a time per event loop: 200 runs starting on the same minute
#: otherwise all missed the empty cache together and read it 200 times (and raced to install it).
_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str, str], asyncio.Lock]] = \
    weakref.WeakKeyDictionary()


def _lock(what: str, key: tuple[str, str]) -> asyncio.Lock:
    locks = _locks.setdefault(asyncio.get_running_loop(), {})
    return locks.setdefault((what, *key), asyncio.Lock())


def forget_crds() -> None:
    """Drop what this process knows of CRDs (after replacing one under it, as a test does)."""
    _present.clear()


async def read_crd(kube: Kube, name: str) -> Any:
    """The CRD ``name``, as this run or (within ``CRD_TTL``) this process saw it, else read (and kept)."""
    found = kube.seen.get(f"crd/{name}")
    if found is not None:
        return found
    key = (kube.api.configuration.host or "", name)
    async with _lock("read", key):
        known = _present.get(key)
        if known is not None and time.monotonic() - known[0] < CRD_TTL:
            found = known[1]
        else:
            found = await kube.call("read CRD", kube.extensions.read_custom_resource_definition, name)
            _present[key] = (time.monotonic(), found)
    kube.seen[f"crd/{name}"] = found
    return found


async def ensure_crd(kube: Kube, kind: str, timeout: float = 30.0) -> str:
    """Install stashflow's CRD of ``kind`` when the cluster has none: ``"present"``, ``"installed"``,
    or ``"unknown"`` when this identity may not read CRDs (then `stashflow install` did it)."""
    name = KINDS[kind].crd_name
    key = (kube.api.configuration.host or "", name)
    async with _lock("install", key):  # the runs of this process waiting on one install read its result
        try:  # kept for the run (kube.seen): the Snapshot's schema is read from it, not asked again
            await read_crd(kube, name)
            return "present"
        except Forbidden:
            return "unknown"
        except NotFound:
            pass  # none: install stashflow's below
        with contextlib.suppress(Conflict):  # another process installed it at the same moment
            await kube.call(f"create CRD {name}", kube.extensions.create_custom_resource_definition, crd(kind))
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while loop.time() < end:
            found = await kube.call("read CRD", kube.extensions.read_custom_resource_definition, name)
            if any(c.type == "Established" and c.status == "True" for c in (found.status.conditions or [])):
                _present[key] = (time.monotonic(), found)
                kube.seen[f"crd/{name}"] = found
                return "installed"
            await asyncio.sleep(0.1)
    raise Unavailable(f"the CRD {name} was created but did not become Established")


async def ensure_crds(kube: Kube, kinds: list[str] | None = None) -> dict[str, str]:
    """``ensure_crd`` for each kind (default: every kind of the table)."""
    return {kind: await ensure_crd(kube, kind) for kind in (kinds or list(KINDS))}
