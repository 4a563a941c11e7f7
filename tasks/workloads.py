"""A workload target's data volumes, read from the cluster for a Function that mounts them
(``stashflow.io/target-volumes``; the volumes themselves come from ``addons.workloads``)."""

from __future__ import annotations

from kubernetes_asyncio import client

from stashflow.addons.errors import NotFound, RunError
from stashflow.addons.render import Target
from stashflow.addons.workloads import WORKLOAD_KINDS, PodVolumes, pod_volumes

from .kube import Kube


async def target_volumes(kube: Kube, target: Target, namespace: str) -> list[PodVolumes]:
    """The data volumes of each Pod of the target StatefulSet, Deployment or DaemonSet."""
    if target.kind not in WORKLOAD_KINDS or target.api_group not in ("", "apps"):
        raise RunError(f"{target} is not a workload: this Function backs up a StatefulSet, Deployment or DaemonSet",
                       code="invalid-argument", hint="e.g. --target StatefulSet/db")
    apps = client.AppsV1Api(kube.api)
    read = {"StatefulSet": apps.read_namespaced_stateful_set, "Deployment": apps.read_namespaced_deployment,
            "DaemonSet": apps.read_namespaced_daemon_set}[target.kind]
    try:
        found = await kube.call(f"read {target.kind} {namespace}/{target.name}", read, target.name, namespace)
    except NotFound:
        raise RunError(f"{target.kind} {target.name} does not exist in namespace {namespace}", code="target-not-found",
                       hint=f"check the name and the namespace (kubectl -n {namespace} get {target.kind.lower()}); "
                            "nothing was created") from None
    pods = pod_volumes(target.kind, kube.api.sanitize_for_serialization(found))
    if not any(p.mounts for p in pods):
        raise RunError(f"{target.kind} {target.name} mounts no data volume (PVC, claim template or hostPath)",
                       code="target-not-found", hint="nothing to back up or restore; nothing was created")
    return pods
