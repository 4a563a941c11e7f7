"""Before a run creates anything: is what its Job will need there?

A missing target PVC or Secret otherwise shows only as a Pod stuck for ``stuck_after``
seconds, and then as a failure that may blame the wrong thing (the storage, the repository).
Checked here, it fails in seconds with a code that names what is missing. Secrets are read
as metadata only (``PartialObjectMetadata``): their values never reach stashflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from stashflow.addons.errors import Forbidden, NotFound, RunError
from stashflow.addons.render import ExecutionPlan

from .kube import Kube

_METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


@dataclass(frozen=True)
class Needed:
    """One object the run's Pod refers to: kind, name, and where the reference is (for the message)."""

    kind: str  # "PersistentVolumeClaim" | "Secret" | "ServiceAccount"
    name: str
    where: str


def needed(plan: ExecutionPlan, job: dict[str, Any] | None = None) -> Iterator[Needed]:
    """The PVCs, Secrets and ServiceAccount the Job's Pod refers to, except the PVCs the run makes itself."""
    spec = (job or plan.job)["spec"]["template"]["spec"]
    own = {p["metadata"]["name"] for p in plan.pvcs}
    seen: set[tuple[str, str]] = set()

    def once(kind: str, name: str | None, where: str) -> Iterator[Needed]:
        if name and (kind, name) not in seen and not (kind == "PersistentVolumeClaim" and name in own):
            seen.add((kind, name))
            yield Needed(kind, name, where)

    yield from once("ServiceAccount", spec.get("serviceAccountName"), "the Pod's serviceAccountName")
    for volume in spec.get("volumes") or []:
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
        yield from once("PersistentVolumeClaim", claim, f"volume {volume['name']}")
        yield from once("Secret", (volume.get("secret") or {}).get("secretName"), f"volume {volume['name']}")
    for container in [*(spec.get("initContainers") or []), *spec.get("containers", [])]:
        for env in container.get("env") or []:
            ref = (env.get("valueFrom") or {}).get("secretKeyRef") or {}
            if not ref.get("optional"):
                yield from once("Secret", ref.get("name"), f"env {env['name']} of container {container['name']}")
        for source in container.get("envFrom") or []:
            ref = source.get("secretRef") or {}
            if not ref.get("optional"):
                yield from once("Secret", ref.get("name"), f"envFrom of container {container['name']}")


async def _exists(kube: Kube, what: str, path: str) -> bool | None:
    """Does the object at ``path`` exist? None when this identity may not look (the Pod will tell)."""
    try:
        await kube.call(f"read {what}", kube.api.call_api, path, "GET", header_params={"Accept": _METADATA_ONLY},
                        auth_settings=["BearerToken"], response_types_map={200: "object"},
                        _return_http_data_only=True)
        return True
    except NotFound:
        return False
    except Forbidden:
        return None


def namespace_missing(namespace: str) -> RunError:
    return RunError(f"namespace {namespace} does not exist", code="namespace-not-found",
                    hint=f"create it (kubectl create namespace {namespace}) or run in another one; nothing was created")


async def check(kube: Kube, plan: ExecutionPlan) -> list[Needed]:
    """Raise ``RunError`` (``namespace-not-found``, ``pvc-not-found``, ``secret-not-found``) for the
    first missing object; return what could not be checked for lack of permission."""
    unchecked = []
    for item in needed(plan):
        plural = {"PersistentVolumeClaim": "persistentvolumeclaims", "Secret": "secrets",
                  "ServiceAccount": "serviceaccounts"}[item.kind]
        found = await _exists(kube, f"{item.kind} {plan.namespace}/{item.name}",
                              f"/api/v1/namespaces/{plan.namespace}/{plural}/{item.name}")
        if found is None:
            unchecked.append(item)
        elif not found:
            if await _exists(kube, f"Namespace {plan.namespace}", f"/api/v1/namespaces/{plan.namespace}") is False:
                raise namespace_missing(plan.namespace)
            code = {"PersistentVolumeClaim": "pvc-not-found", "Secret": "secret-not-found",
                    "ServiceAccount": "serviceaccount-not-found"}[item.kind]
            target = " (the target)" if item.kind == "PersistentVolumeClaim" and item.name == plan.target.name else ""
            if item.kind == "ServiceAccount":
                raise RunError(
                    f'ServiceAccount "{item.name}" does not exist in namespace {plan.namespace}; the run\'s Pod runs as it',
                    code=code, hint=f"create it with the access the Function needs (stashflow install -n {plan.namespace} "
                                    "--manifests makes stashflow's own); nothing was created")
            raise RunError(
                f'{item.kind} "{item.name}"{target} does not exist in namespace {plan.namespace}; the run needs it '
                f"for {item.where}", code=code,
                hint=f"create it, or check the name and the namespace (kubectl -n {plan.namespace} get "
                     f"{item.kind.lower()} {item.name}); nothing was created")
    return unchecked
