"""Small async helpers for tests against the local cluster (waits, PVCs, CRDs, apt)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from localkube.nodeagent import STORAGE_CLASS

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared"
KUBESTASH_CRDS = SHARED / "kubestash" / "crds"

T = TypeVar("T")


async def wait_until(check: Callable[[], Awaitable[T | None]], timeout: float = 60.0, interval: float = 0.1,
                     what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = await check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def job_body(name: str, *, backoff_limit: int = 0, annotations: dict[str, str] | None = None,
             command: list[str] | None = None, **spec: Any) -> dict[str, Any]:
    """A minimal batch/v1 Job (restartPolicy Never, one container ``main``); ``spec`` adds Job fields."""
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"backoffLimit": backoff_limit, **spec, "template": {
                "metadata": {"annotations": annotations or {}},
                "spec": {"restartPolicy": "Never",
                         "containers": [{"name": "main", "image": "registry.example/tool:1.0",
                                         "command": command or ["tool", "--run"]}]}}}}


async def create_job(api: client.ApiClient, namespace: str, body: dict[str, Any]) -> None:
    await client.BatchV1Api(api).create_namespaced_job(namespace, body)


def job_condition(job: client.V1Job) -> str | None:
    """``Complete`` or ``Failed`` once the job controller has decided, else None."""
    for c in (job.status.conditions or []) if job.status else []:
        if c.type in ("Complete", "Failed") and c.status == "True":
            return c.type
    return None


async def wait_job_finished(api: client.ApiClient, namespace: str, name: str, timeout: float = 120.0) -> client.V1Job:
    """Wait until the Job has a Complete or Failed condition; return it."""
    batch = client.BatchV1Api(api)

    async def check() -> client.V1Job | None:
        job = await batch.read_namespaced_job(name, namespace)
        return job if job_condition(job) else None
    return await wait_until(check, timeout, what=f"job {namespace}/{name} to finish")


async def job_pods(api: client.ApiClient, namespace: str, job: str) -> list[client.V1Pod]:
    """The Job's Pods, oldest first."""
    pods = (await client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"job-name={job}")).items
    return sorted(pods, key=lambda p: p.metadata.creation_timestamp)


async def wait_pod(api: client.ApiClient, namespace: str, job: str,
                   check: Callable[[client.V1Pod], bool], timeout: float = 60.0, what: str = "pod state") -> client.V1Pod:
    """Wait until one of the Job's Pods satisfies ``check``."""
    async def probe() -> client.V1Pod | None:
        return next((p for p in await job_pods(api, namespace, job) if check(p)), None)
    return await wait_until(probe, timeout, what=f"{what} ({namespace}, job {job})")


async def pod_log(api: client.ApiClient, namespace: str, pod: str, container: str, **params: Any) -> str:
    """A container's log as raw text (the preloaded client call json-decodes JSON lines: avoid it)."""
    r = await client.CoreV1Api(api).read_namespaced_pod_log(pod, namespace, container=container,
                                                            _preload_content=False, **params)
    text = await r.text()
    if r.status >= 300:
        raise ApiException(status=r.status, reason=text)
    return text


async def create_pvc(api: client.ApiClient, namespace: str, name: str, size: str = "1Gi",
                     storage_class: str = STORAGE_CLASS, timeout: float = 30.0) -> client.V1PersistentVolumeClaim:
    """Create a PVC of the node agent's hostPath class and wait until it is Bound."""
    core = client.CoreV1Api(api)
    await core.create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": storage_class,
                 "resources": {"requests": {"storage": size}}}})
    return await wait_pvc_bound(api, namespace, name, timeout)


async def wait_pvc_bound(api: client.ApiClient, namespace: str, name: str,
                         timeout: float = 30.0) -> client.V1PersistentVolumeClaim:
    core = client.CoreV1Api(api)

    async def check() -> client.V1PersistentVolumeClaim | None:
        try:
            pvc = await core.read_namespaced_persistent_volume_claim(name, namespace)
        except ApiException as exc:  # not made yet (a StatefulSet's claim comes with its Pod)
            if exc.status == 404:
                return None
            raise
        return pvc if pvc.status and pvc.status.phase == "Bound" else None
    return await wait_until(check, timeout, what=f"PVC {namespace}/{name} to be Bound")


async def pvc_host_path(api: client.ApiClient, namespace: str, name: str) -> Path:
    """The host directory behind a bound hostPath PVC: put test data there, or read what a Pod wrote."""
    core = client.CoreV1Api(api)
    pvc = await core.read_namespaced_persistent_volume_claim(name, namespace)
    pv = await core.read_persistent_volume(pvc.spec.volume_name)
    return Path(pv.spec.host_path.path)


def drop_empty_string_defaults(node: Any) -> int:
    """Remove ``default: ""`` from string schemas in place; return how many were removed.

    Why: the v1.20.2 apiserver built here rejects a CRD whose schema has ``default: ""`` ("Invalid
    value: "null": in body must be of type string"), and upstream KubeStash CRDs (generated by a newer
    controller-gen) put one on every ``name`` of a LocalObjectReference. Dropping it changes only
    what the server fills into an object reference that omits its name.
    """
    n = 0
    if isinstance(node, dict):
        if node.get("default") == "" and node.get("type") == "string":
            del node["default"]
            n += 1
        for v in node.values():
            n += drop_empty_string_defaults(v)
    elif isinstance(node, list):
        for v in node:
            n += drop_empty_string_defaults(v)
    return n


async def install_crds(api: client.ApiClient, crd_dir: Path = KUBESTASH_CRDS, timeout: float = 60.0) -> list[str]:
    """Create (or replace) every CRD in ``crd_dir`` and wait until each is Established.

    Empty-string defaults are dropped first (see :func:`drop_empty_string_defaults`); nothing else changes.
    """
    ext = client.ApiextensionsV1Api(api)
    names = []
    for f in sorted(crd_dir.glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            drop_empty_string_defaults(doc["spec"])
            name = doc["metadata"]["name"]
            try:
                await ext.create_custom_resource_definition(doc)
            except ApiException as e:
                if e.status != 409:
                    raise RuntimeError(f"{f.name}: the apiserver rejected CRD {name}: {e.body}") from e
                cur = await ext.read_custom_resource_definition(name)
                doc["metadata"]["resourceVersion"] = cur.metadata.resource_version
                await ext.replace_custom_resource_definition(name, doc)
            names.append(name)

    async def established() -> bool:
        for n in names:
            crd = await ext.read_custom_resource_definition(n)
            if not any(c.type == "Established" and c.status == "True" for c in (crd.status.conditions or [])):
                return False
        return True
    await wait_until(established, timeout, what="CRDs to be Established")
    return names


def apt_install(*packages: str) -> None:
    """Install Debian packages a test needs (idempotent; CI machines are fresh)."""
    subprocess.run(["bash", "-c", f'. "{HERE}/lib.sh"; apt_install "$@"', "apt_install", *packages],
                   check=True, stdin=subprocess.DEVNULL, stdout=2)
