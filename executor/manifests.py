"""Kubernetes objects selected as kubedump selects them, written as YAML files, and applied back.

Selection (KubeStash kubedump-addon's parameters): namespaces to include (the run's own by
default, ``*`` for all) and exclude, resource types to include and exclude (``deployments``,
``deployments.apps``, ``Deployment``), labels that must all match (ANDed) or of which one must
(ORed), and whether cluster-scoped objects are included. What the cluster makes and owns itself
(events, endpoint slices, ServiceAccount tokens, ``kube-root-ca.crt``) is left out unless named.

A written object is what a user would write: the fields the API server sets (``resourceVersion``,
``uid``, ``creationTimestamp``, ``managedFields``, ``status``, a Service's ``clusterIP``, a
PVC's bound volume, ...) are removed. Restoring applies the objects with server-side apply in an
order where what others refer to comes first (Namespaces, CRDs, ServiceAccounts, Secrets,
ConfigMaps, PVCs, Services, then workloads); objects a controller owns are skipped, the controller
makes them again. Nothing here logs a value: only kinds, names and changed field paths.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from . import yamlform
from .kubeapi import Api, ApiError

ALL = "*"
MANAGER = "stashflow"
#: Resource types the cluster fills in itself: left out unless IncludeResources names them.
MANAGED_RESOURCES = {"events", "events.events.k8s.io", "endpointslices.discovery.k8s.io", "endpoints",
                     "controllerrevisions.apps", "leases.coordination.k8s.io", "tokenreviews.authentication.k8s.io",
                     "componentstatuses", "bindings", "nodes", "apiservices.apiregistration.k8s.io",
                     "certificatesigningrequests.certificates.k8s.io"}
#: Restore order: what others refer to first; workloads last.
ORDER = ["namespaces", "customresourcedefinitions.apiextensions.k8s.io", "storageclasses.storage.k8s.io",
         "priorityclasses.scheduling.k8s.io", "persistentvolumes", "serviceaccounts", "secrets", "configmaps",
         "limitranges", "resourcequotas", "clusterroles.rbac.authorization.k8s.io",
         "clusterrolebindings.rbac.authorization.k8s.io", "roles.rbac.authorization.k8s.io",
         "rolebindings.rbac.authorization.k8s.io", "persistentvolumeclaims", "services",
         "networkpolicies.networking.k8s.io", "ingresses.networking.k8s.io", "poddisruptionbudgets.policy"]
WORKLOADS = ["deployments.apps", "statefulsets.apps", "daemonsets.apps", "replicasets.apps", "cronjobs.batch",
             "jobs.batch", "pods", "replicationcontrollers"]
_METADATA_SET_BY_SERVER = ("resourceVersion", "uid", "creationTimestamp", "managedFields", "generation", "selfLink",
                           "deletionTimestamp", "deletionGracePeriodSeconds")
_ANNOTATIONS_SET_BY_SERVER = ("deployment.kubernetes.io/revision", "pv.kubernetes.io/bind-completed",
                              "pv.kubernetes.io/bound-by-controller", "pv.kubernetes.io/provisioned-by",
                              "volume.beta.kubernetes.io/storage-provisioner",
                              "volume.kubernetes.io/storage-provisioner", "kubectl.kubernetes.io/restartedAt")


class SelectionError(ValueError):
    """A selector parameter that cannot be read."""


@dataclass(frozen=True)
class Resource:
    """One API resource type, as discovery lists it."""

    group: str
    version: str
    name: str  # plural: deployments
    kind: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """``deployments.apps``; core resources are just ``configmaps``."""
        return f"{self.name}.{self.group}" if self.group else self.name

    def base(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        where = f"/namespaces/{namespace}" if self.namespaced and namespace else ""
        return f"{self.base()}{where}/{self.name}" + (f"/{name}" if name else "")

    def named_by(self, word: str) -> bool:
        """``deployments``, ``deployments.apps``, ``deployment``, ``Deployment``, ``deploy.apps`` all name it."""
        word = word.strip().lower()
        name, _, group = word.partition(".")
        if group and group != self.group.lower():
            return False
        return name in (self.name, self.kind.lower(), self.name.rstrip("s"))

    def rank(self) -> tuple[int, str]:
        if self.qualified in ORDER:
            return ORDER.index(self.qualified), self.qualified
        if self.qualified in WORKLOADS:
            return len(ORDER) + 1 + WORKLOADS.index(self.qualified), self.qualified
        return len(ORDER), self.qualified


def _words(text: str) -> list[str]:
    return [w.strip() for w in (text or "").split(",") if w.strip()]


def _labels(text: str, what: str) -> dict[str, str]:
    """``key1:value1,key2:value2`` (kubedump's form; ``=`` works too)."""
    out: dict[str, str] = {}
    for word in _words(text):
        sep = ":" if ":" in word else "="
        key, found, value = word.partition(sep)
        if not found or not key.strip():
            raise SelectionError(f'{what}: "{word}" is not key:value (e.g. app:web,tier:db)')
        out[key.strip()] = value.strip()
    return out


@dataclass(frozen=True)
class Selection:
    """What to back up or restore (kubedump's include/exclude parameters)."""

    namespaces: tuple[str, ...] = ()  # ("*",) = every namespace
    exclude_namespaces: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()  # empty: every resource type
    exclude_resources: tuple[str, ...] = ()
    and_labels: tuple[tuple[str, str], ...] = ()
    or_labels: tuple[tuple[str, str], ...] = ()
    cluster_resources: bool = False

    @classmethod
    def parse(cls, *, namespaces: str, default_namespace: str, exclude_namespaces: str = "", resources: str = "",
              exclude_resources: str = "", and_labels: str = "", or_labels: str = "",
              cluster_resources: str = "false") -> "Selection":
        included = _words(namespaces) or [default_namespace]
        flag = (cluster_resources or "false").strip().lower()
        if flag not in ("true", "false", ""):
            raise SelectionError(f'IncludeClusterResources: "{cluster_resources}" is not true or false')
        return cls(tuple(ALL if n == ALL else n for n in included), tuple(_words(exclude_namespaces)),
                   tuple(_words(resources)), tuple(_words(exclude_resources)),
                   tuple(_labels(and_labels, "ANDedLabelSelectors").items()),
                   tuple(_labels(or_labels, "ORedLabelSelectors").items()), flag == "true")

    @property
    def all_namespaces(self) -> bool:
        return ALL in self.namespaces

    def namespace_selected(self, namespace: str) -> bool:
        if namespace in self.exclude_namespaces:
            return False
        return self.all_namespaces or namespace in self.namespaces

    def resource_selected(self, res: Resource) -> bool:
        if any(res.named_by(w) for w in self.exclude_resources):
            return False
        if res.qualified == "namespaces":  # the selected namespaces themselves: their objects need them
            return True
        if self.resources:
            return any(res.named_by(w) for w in self.resources)
        return res.qualified not in MANAGED_RESOURCES

    def labels_selected(self, labels: dict[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in self.and_labels):
            return False
        return not self.or_labels or any(labels.get(k) == v for k, v in self.or_labels)

    def object_selected(self, res: Resource, obj: dict[str, Any]) -> bool:
        """Selection of one object: its namespace (a Namespace object: itself), type, labels."""
        meta = obj.get("metadata") or {}
        if res.qualified == "namespaces":  # whatever its labels: the objects selected in it need it
            return self.namespace_selected(meta.get("name", "")) and self.resource_selected(res)
        elif res.namespaced:
            in_scope = self.namespace_selected(meta.get("namespace", ""))
        else:
            in_scope = self.cluster_resources
        return in_scope and self.resource_selected(res) and self.labels_selected(meta.get("labels") or {})


# --------------------------------------------------------------------------------------- discovery


def discover(api: Api) -> list[Resource]:
    """Every resource type that can be listed and read, in the preferred version of its group."""
    found: list[Resource] = []
    groups = [("", v) for v in (api.get("/api").get("versions") or ["v1"])[:1]]
    for group in api.get("/apis").get("groups") or []:
        preferred = (group.get("preferredVersion") or {}).get("version")
        if preferred:
            groups.append((group["name"], preferred))
    for group, version in groups:
        path = f"/apis/{group}/{version}" if group else f"/api/{version}"
        try:
            listing = api.get(path)
        except ApiError as exc:  # an aggregated API that is down must not stop the others
            print(f"stashflow-executor: skipping {path}: {exc}", flush=True)
            continue
        for r in listing.get("resources") or []:
            verbs = set(r.get("verbs") or [])
            if "/" in r["name"] or not {"list", "get"} <= verbs:
                continue
            found.append(Resource(group, version, r["name"], r["kind"], bool(r.get("namespaced"))))
    return found


# --------------------------------------------------------------------------------------- cleaning


def _drop(obj: dict[str, Any], *path: str) -> None:
    for key in path[:-1]:
        obj = obj.get(key) if isinstance(obj, dict) else None  # type: ignore[assignment]
        if not isinstance(obj, dict):
            return
    obj.pop(path[-1], None)


def clean(obj: dict[str, Any], res: Resource) -> dict[str, Any]:
    """The object as a user would write it: no field the API server sets."""
    out = {"apiVersion": res.api_version, "kind": res.kind,
           **{k: copy.deepcopy(v) for k, v in obj.items() if k not in ("apiVersion", "kind", "status")}}
    meta = out.setdefault("metadata", {})
    for key in _METADATA_SET_BY_SERVER:
        meta.pop(key, None)
    annotations = meta.get("annotations") or {}
    for key in _ANNOTATIONS_SET_BY_SERVER:
        annotations.pop(key, None)
    if "annotations" in meta and not annotations:
        del meta["annotations"]
    spec: dict[str, Any] = out["spec"] if isinstance(out.get("spec"), dict) else {}
    if res.qualified == "services" and spec.get("clusterIP") not in ("None",):
        spec.pop("clusterIP", None)
        spec.pop("clusterIPs", None)
        for port in spec.get("ports") or []:
            if spec.get("type") not in ("NodePort", "LoadBalancer"):
                port.pop("nodePort", None)
    if res.qualified == "persistentvolumeclaims":
        spec.pop("volumeName", None)
    if res.qualified == "serviceaccounts":  # token Secrets are made again for the new account
        out.pop("secrets", None)
    if res.qualified == "namespaces":
        spec.pop("finalizers", None)
        if not spec:
            out.pop("spec", None)
    if res.qualified == "jobs.batch":  # the job controller's generated selector and labels
        spec.pop("selector", None)
        for labels in ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}, meta.get("labels") or {}:
            labels.pop("controller-uid", None)
            labels.pop("job-name", None)
    return out


def managed_by_cluster(res: Resource, obj: dict[str, Any]) -> str | None:
    """Why an object is the cluster's own and not backed up, else None."""
    meta = obj.get("metadata") or {}
    if res.qualified == "secrets" and obj.get("type") == "kubernetes.io/service-account-token":
        return "a ServiceAccount token (the token controller makes a new one)"
    if res.qualified == "configmaps" and meta.get("name") == "kube-root-ca.crt":
        return "the cluster's CA bundle (the controller manager publishes it in every namespace)"
    return None


def controlled_by(obj: dict[str, Any]) -> str | None:
    """``ReplicaSet/web-5d8f`` when a controller owns the object."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return f"{ref.get('kind')}/{ref.get('name')}"
    return None


def changed_paths(before: Any, after: Any, prefix: str = "") -> list[str]:
    """Field paths whose values differ (only the paths: a Secret's values never reach a log)."""
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[str] = []
        for key in sorted(set(before) | set(after), key=str):
            out += changed_paths(before.get(key), after.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    return [] if before == after else [prefix or "."]


# --------------------------------------------------------------------------------------- files


def relative_path(res: Resource, obj: dict[str, Any]) -> str:
    """``namespaces/demo/deployments.apps/web.yaml``, ``cluster/clusterroles.rbac.authorization.k8s.io/x.yaml``."""
    meta = obj["metadata"]
    name = meta["name"].replace("/", "%2F")
    if res.namespaced:
        return os.path.join("namespaces", meta["namespace"], res.qualified, f"{name}.yaml")
    return os.path.join("cluster", res.qualified, f"{name}.yaml")


@dataclass
class Dumped:
    """What a backup wrote: counts per type, and what it left out and why."""

    counts: dict[str, int] = field(default_factory=dict)
    left_out: dict[str, int] = field(default_factory=dict)
    forbidden: list[str] = field(default_factory=list)  # types this identity may not list

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _objects(api: Api, res: Resource, sel: Selection) -> Iterator[dict[str, Any]]:
    query = {"labelSelector": ",".join(f"{k}={v}" for k, v in sel.and_labels)} \
        if sel.and_labels and res.qualified != "namespaces" else {}
    if res.namespaced and not sel.all_namespaces:
        for ns in sel.namespaces:
            if sel.namespace_selected(ns):
                yield from api.list_all(res.path(ns), **query)
    elif res.namespaced or res.qualified == "namespaces" or sel.cluster_resources:
        yield from api.list_all(res.path(), **query)


def dump(api: Api, sel: Selection, dest: str, say: Callable[[str], None]) -> Dumped:
    """Write every selected object under ``dest`` as YAML (files mode 0600: Secrets are among them)."""
    done = Dumped()
    for res in sorted(discover(api), key=Resource.rank):
        if not sel.resource_selected(res):
            continue
        if not res.namespaced and res.qualified != "namespaces" and not sel.cluster_resources:
            continue
        try:
            items = list(_objects(api, res, sel))
        except ApiError as exc:
            if exc.status in (403, 404, 405):  # forbidden or not listable here: say so, go on
                say(f"skipping {res.qualified}: {exc}")
                if exc.status == 403:
                    done.forbidden.append(res.qualified)
                continue
            raise
        for item in items:
            item.setdefault("apiVersion", res.api_version)
            item.setdefault("kind", res.kind)
            if not sel.object_selected(res, item):
                continue
            why = managed_by_cluster(res, item)
            if why:
                done.left_out[why] = done.left_out.get(why, 0) + 1
                continue
            path = os.path.join(dest, relative_path(res, item))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(yamlform.dump(clean(item, res)))
            done.counts[res.qualified] = done.counts.get(res.qualified, 0) + 1
    return done


@dataclass(frozen=True)
class Saved:
    """One object read back from a backup."""

    path: str
    obj: dict[str, Any]

    @property
    def namespace(self) -> str | None:
        return (self.obj.get("metadata") or {}).get("namespace")

    @property
    def name(self) -> str:
        return (self.obj.get("metadata") or {}).get("name", "")

    def describe(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.obj.get('kind')} {where}{self.name}"


def read_tree(root: str) -> Iterator[Saved]:
    """Every object file under ``root`` (where ``restic restore`` put the backup)."""
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if name.endswith((".yaml", ".json")):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    try:
                        obj = yamlform.load(f.read())
                    except yamlform.FormError as exc:
                        raise yamlform.FormError(f"{os.path.relpath(path, root)}: {exc}") from None
                yield Saved(path, obj)


def resources_by_kind(resources: Iterable[Resource]) -> dict[tuple[str, str], Resource]:
    """(apiVersion, kind) → resource, to find the API path of a saved object."""
    out: dict[tuple[str, str], Resource] = {}
    for res in resources:
        out.setdefault((res.api_version, res.kind), res)
    return out


def find_resource(api: Api, known: dict[tuple[str, str], Resource], api_version: str, kind: str) -> Resource | None:
    """The resource of a saved object's apiVersion and kind (a version discovery did not prefer is
    looked up in its own group version)."""
    if (api_version, kind) in known:
        return known[(api_version, kind)]
    group, _, version = api_version.rpartition("/")
    path = f"/apis/{group}/{version}" if group else f"/api/{version}"
    try:
        listing = api.get(path)
    except ApiError as exc:
        if exc.not_found:
            return None
        raise
    for r in listing.get("resources") or []:
        if "/" not in r["name"]:
            known.setdefault((api_version, r["kind"]), Resource(group, version, r["name"], r["kind"],
                                                                bool(r.get("namespaced"))))
    return known.get((api_version, kind))
