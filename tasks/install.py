"""``stashflow install``: what stashflow needs in a cluster, applied idempotently."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from stashflow.addons.crd import KINDS
from stashflow.addons.errors import Conflict
from stashflow.addons.rbac import manifest_rbac_objects, rbac_objects

from .kube import Kube
from .objects import ensure_crds


async def _apply(kube: Kube, obj: dict[str, Any]) -> str:
    kind, ns, name = obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"]
    calls: dict[str, tuple[Callable[..., Awaitable[Any]], Callable[..., Awaitable[Any]] | None]] = {
        "ServiceAccount": (kube.core.create_namespaced_service_account, None),
        "Role": (kube.rbac.create_namespaced_role, kube.rbac.replace_namespaced_role),
        "RoleBinding": (kube.rbac.create_namespaced_role_binding, kube.rbac.replace_namespaced_role_binding),
        "ClusterRole": (kube.rbac.create_cluster_role, kube.rbac.replace_cluster_role),
        "ClusterRoleBinding": (kube.rbac.create_cluster_role_binding, kube.rbac.replace_cluster_role_binding),
    }
    create, replace = calls[kind]
    scope = (ns,) if ns else ()
    try:
        await kube.call(f"create {kind} {name}", create, *scope, obj)
        return f"{kind}/{name} created"
    except Conflict:
        pass  # it exists: replace or keep it below
    if replace is None:
        return f"{kind}/{name} unchanged"
    await kube.call(f"update {kind} {name}", replace, name, *scope, obj)
    return f"{kind}/{name} updated"


async def install(kube: Kube, namespace: str, *, manifests: bool = False) -> list[str]:
    """stashflow's CRDs of KubeStash's kinds where the cluster has none (a KubeStash CRD there is left
    alone), then the ServiceAccount, Role and RoleBinding; with ``manifests``, the manifest Functions'
    ServiceAccounts and their cluster-wide roles too."""
    done = [f"CustomResourceDefinition/{KINDS[kind].crd_name} {'already present' if state == 'present' else 'installed'}"
            for kind, state in (await ensure_crds(kube)).items()]
    for obj in [*rbac_objects(namespace), *(manifest_rbac_objects(namespace) if manifests else [])]:
        done.append(await _apply(kube, obj))
    return done
