"""The execution plan of one run: every Kubernetes object it creates, as plain data.

``render_plan`` is pure: the same request gives the same objects (pass ``now`` and
``snapshot_id`` to pin the two values that change per run). ``stashflow render`` prints
the plan; the ``tasks`` layer creates it.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, Mapping

from .catalog import Catalog
from .errors import InputError, Location, raise_all
from .model import AddonInfo, AddonVolumeInfo, BackupStorage, ContainerRuntimeSettings
from .names import label_value, name_problem, ulid, valid_name
from .resolve import ResolvedTask, Value, resolve_task
from .template import kube_escape
from .workloads import ENV as WORKLOAD_ENV
from .workloads import PodVolumes, job_volumes

MANAGED_BY = "stashflow"
LABEL_PREFIX = "stashflow.io/"
FLOW_RUN_LABEL = LABEL_PREFIX + "flow-run"  # the Prefect flow run that made an object
REPOSITORY_LOCATION_LABEL = LABEL_PREFIX + "repository-location"  # on Snapshots: see repository_location()
TMP_VOLUME = "kubestash-tmp-volume"
INTERIM_VOLUME = "kubestash-interim-volume"
STORAGE_VOLUME = "stashflow-storage"
CREDENTIALS_VOLUME = "stashflow-credentials"
#: A Function annotation: the ServiceAccount its Pod runs as (the manifest Functions talk to the API).
SERVICE_ACCOUNT_ANNOTATION = LABEL_PREFIX + "service-account"

#: Snapshot component written by each well-known task (REFERENCE.md §4.4, [AM] constants).
COMPONENT_BY_TASK = {
    "logical-backup": "dump",
    "logical-backup-restore": "dump",
    "manifest-backup": "manifest",
    "manifest-restore": "manifest",
    "physical-backup": "physical",
    "physical-backup-restore": "physical",
    "volume-snapshot": "volumesnapshot",
    "volume-snapshot-restore": "volumesnapshot",
    "dashboard-backup": "dashboard",
    "dashboard-restore": "dashboard",
}

_TARGET_ALIASES = {
    "pvc": ("", "PersistentVolumeClaim"),
    "persistentvolumeclaim": ("", "PersistentVolumeClaim"),
    "deployment": ("apps", "Deployment"),
    "statefulset": ("apps", "StatefulSet"),
    "daemonset": ("apps", "DaemonSet"),
}

# Container-level fields that ofst.PodTemplateSpec carries in its pod spec.
_CONTAINER_FIELDS_IN_POD_SPEC = {
    "args", "env", "resources", "livenessProbe", "readinessProbe", "lifecycle",
    "containerSecurityContext", "volumeMounts", "podPlacementPolicy",
}


@dataclass(frozen=True)
class Target:
    """What is backed up or restored: ``PersistentVolumeClaim/data``, ``Postgres.kubedb.com/pg``."""

    kind: str
    name: str
    api_group: str = ""

    @classmethod
    def parse(cls, text: str) -> "Target":
        kind, sep, name = text.partition("/")
        if not sep or not kind or not name or "/" in name:
            raise InputError(
                f'"{text}" is not KIND/NAME',
                code="invalid-argument",
                field="--target",
                hint="e.g. --target PersistentVolumeClaim/data or --target Postgres.kubedb.com/prod-db",
            )
        group = ""
        if "." in kind:
            kind, group = kind.split(".", 1)
        alias = _TARGET_ALIASES.get(kind.lower())
        if alias and not group:
            group, kind = alias
        return cls(kind=kind, name=name, api_group=group)

    def __str__(self) -> str:
        return f"{self.kind}{'.' + self.api_group if self.api_group else ''}/{self.name}"


@dataclass(frozen=True)
class RepositoryContext:
    """Where the run's data goes (DESIGN.md §2 "Where the data goes").

    The Function's container gets restic's own environment: ``RESTIC_REPOSITORY`` for the
    component and ``RESTIC_PASSWORD`` plus provider credentials by Secret reference."""

    name: str
    storage: BackupStorage | None = None
    directory: str = ""
    encryption_secret: str | None = None  # a Secret in the run's namespace with key RESTIC_PASSWORD
    component_path: str | None = None  # "repository/v1/<session>/<component>"; restores take the Snapshot's
    restic_snapshot_id: str | None = None  # restores: the restic snapshot to read (${RESTIC_SNAPSHOT_ID})


@dataclass
class RenderRequest:
    """Everything one run needs besides the catalog."""

    addon: str
    task: str
    namespace: str
    target: Target
    params: Mapping[str, Any] = field(default_factory=dict)
    variables: Mapping[str, Any] = field(default_factory=dict)
    builtins: Mapping[str, Any] = field(default_factory=dict)  # what --var sets
    session: str | None = None  # backupSession / restoreSession name
    plan_session: str | None = None  # the BackupConfiguration session (repository path)
    invoker_kind: str | None = None
    invoker_name: str | None = None
    attempt: int = 1
    timeout_seconds: int | None = None
    repository: RepositoryContext | None = None
    addon_info: AddonInfo | None = None  # jobTemplate, containerRuntimeSettings
    addon_volumes: list[AddonVolumeInfo] = field(default_factory=list)
    component: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    now: datetime | None = None
    snapshot_id: str | None = None
    target_volumes: list[PodVolumes] | None = None  # a workload's data volumes, read by the tasks layer
    #: one task of a session run (flows/session_flows.py): one Job per (task, repository), named and
    #: labelled with the repository; the session owns the Snapshot, the task writes its component
    within_session: bool = False
    #: the run that named itself from the clock (no session name given): only it may take its name's
    #: Lease and Job again, so two runs started in the same second do not both adopt one Job
    owner: str | None = None


@dataclass
class ExecutionPlan:
    """Objects of one run, in creation order: PVCs, the Snapshot (backups), then the Job."""

    resolved: ResolvedTask
    namespace: str
    target: Target
    session: str
    job_name: str
    component: str
    repository: str | None
    snapshot_name: str | None
    labels: dict[str, str]
    pvcs: list[dict[str, Any]]
    job: dict[str, Any]
    snapshot: dict[str, Any] | None
    #: the restic repository's full location (URL and, for local storage, its volume), hashed:
    #: what decides whether it was initialised, whatever the repository's name
    repository_location: str | None = None
    #: one task of a session run: the session made the Snapshot and finishes it; this run writes its component
    within_session: bool = False
    #: see ``RenderRequest.owner``
    owner: str | None = None

    @property
    def kind(self) -> Literal["backup", "restore"]:
        return self.resolved.kind

    def objects(self) -> list[dict[str, Any]]:
        """PVCs, then the Job, then the Snapshot: the order ``stashflow render`` prints."""
        return [*self.pvcs, self.job, *([self.snapshot] if self.snapshot else [])]


def _check_name(value: str, what: str, *, label: bool = False) -> None:
    """A name the API server would refuse; the caller (the CLI) locates it by ``what``."""
    problem = name_problem(value, max_len=63 if label else 253, label=label)
    if problem:
        raise InputError(problem, code="invalid-name", field=what)


def snapshot_name(repository: str, session: str) -> str:
    """KubeStash's ``GenerateSnapshotName``: ``<repo>-<session prefix>-<digits>``, ≤63 chars."""
    match = re.match(r"^(.*)-([0-9]+)$", session)
    if match:
        return valid_name(repository, match.group(1), match.group(2))
    return valid_name(repository, session)


def render_plan(catalog: Catalog, request: RenderRequest) -> ExecutionPlan:
    """Resolve the task and build every object of the run."""
    _check_name(request.namespace, "--namespace", label=True)
    _check_name(request.target.name, "--target")
    now = request.now or datetime.now(timezone.utc)
    addon, list_name, _, task = catalog.task(request.addon, request.task)
    kind = "backup" if list_name == "backupTasks" else "restore"
    session_var = "backupSession" if kind == "backup" else "restoreSession"
    given = {k: (v.value if isinstance(v, Value) else v) for k, v in request.builtins.items()}
    session = str(given.get(session_var) or request.session or valid_name(request.target.name, str(int(now.timestamp()))))
    _check_name(session, session_var)
    component = request.component or COMPONENT_BY_TASK.get(task.name, task.name)
    repo_name = request.repository.name if request.repository else request.target.name
    job_name = valid_name(session, task.name, repo_name if request.within_session else "",
                          str(request.attempt) if request.attempt > 1 else "")
    snap_name = snapshot_name(repo_name, session) if kind == "backup" else None

    builtins: dict[str, Any] = {
        "namespace": request.namespace,
        session_var: session,
        "taskName": task.name,
        "INTERIM_VOLUME": INTERIM_VOLUME,
        "RESTIC_CACHE_VOLUME": TMP_VOLUME,
    }
    if snap_name:
        builtins["snapshot"] = snap_name
    if request.target.kind == "PersistentVolumeClaim":
        builtins["PVC_NAME"] = request.target.name
    if request.repository and request.repository.restic_snapshot_id:
        builtins["RESTIC_SNAPSHOT_ID"] = request.repository.restic_snapshot_id
    if request.invoker_kind:
        builtins["invokerKind"] = request.invoker_kind
        builtins["invokerName"] = request.invoker_name or ""
    builtins.update(request.builtins)

    resolved = resolve_task(catalog, request.addon, request.task, params=request.params,
                            variables=request.variables, builtins=builtins)
    labels = run_labels(request, resolved, session)

    volumes, pvcs = _volumes(resolved, request, job_name, labels)
    container = _container(resolved, request, component)
    pod_spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container], "volumes": volumes}
    if request.target_volumes is not None:  # the workload's data, per Pod (addons/workloads.py)
        extra, mounts, described = job_volumes(request.target_volumes, read_only=kind == "backup")
        pod_spec["volumes"].extend(extra)
        container.setdefault("volumeMounts", []).extend(mounts)
        _upsert_env(container.setdefault("env", []), [{"name": WORKLOAD_ENV, "value": kube_escape(described)}])
    account = (resolved.function.metadata.annotations or {}).get(SERVICE_ACCOUNT_ANNOTATION)
    if account:  # the plan's jobTemplate may still name another
        pod_spec["serviceAccountName"] = account
    pod_meta: dict[str, Any] = {"labels": dict(labels)}
    job_meta: dict[str, Any] = {"name": job_name, "namespace": request.namespace, "labels": dict(labels),
                                "annotations": {LABEL_PREFIX + "flow": resolved.flow_name,
                                                LABEL_PREFIX + "target": str(request.target)}}
    location = _apply_repository(request, pod_spec, container, component, session)
    _apply_job_template(request.addon_info, pod_meta, pod_spec, container, job_meta, labels)
    if not pod_spec["volumes"]:
        del pod_spec["volumes"]

    job_spec: dict[str, Any] = {"backoffLimit": 0, "completions": 1, "parallelism": 1,
                                "template": {"metadata": pod_meta, "spec": pod_spec}}
    if request.timeout_seconds:
        job_spec["activeDeadlineSeconds"] = int(request.timeout_seconds)
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": job_meta, "spec": job_spec}

    snapshot = None
    if snap_name:
        snapshot = _snapshot(request, resolved, snap_name, repo_name, session, component, job_name, labels, now)
        if location:
            snapshot["metadata"]["labels"][REPOSITORY_LOCATION_LABEL] = location
    return ExecutionPlan(resolved, request.namespace, request.target, session, job_name, component,
                         repo_name, snap_name, labels, pvcs, job, snapshot, location, request.within_session,
                         request.owner)


def run_labels(request: RenderRequest, resolved: ResolvedTask, session: str) -> dict[str, str]:
    """Labels on everything a run creates: find a run's objects with ``stashflow.io/session=...``."""
    labels = {
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/component": f"kubestash-{resolved.kind}",
        LABEL_PREFIX + "addon": label_value(resolved.addon.name),
        LABEL_PREFIX + "task": label_value(resolved.task.name),
        LABEL_PREFIX + "session": label_value(session),
        LABEL_PREFIX + "attempt": str(request.attempt),
        LABEL_PREFIX + "target-kind": label_value(request.target.kind),
        LABEL_PREFIX + "target-name": label_value(request.target.name),
    }
    if request.invoker_kind:
        labels[LABEL_PREFIX + "invoker-kind"] = label_value(request.invoker_kind)
        labels[LABEL_PREFIX + "invoker-name"] = label_value(request.invoker_name or "")
    if request.plan_session:
        labels[LABEL_PREFIX + "plan-session"] = label_value(request.plan_session)
    if request.within_session and request.repository:
        labels[LABEL_PREFIX + "repository"] = label_value(request.repository.name)
    labels.update({k: label_value(v) for k, v in request.labels.items()})
    return labels


def _volumes(resolved: ResolvedTask, request: RenderRequest, job_name: str,
             labels: dict[str, str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Pod volumes from the task's templates after ``addonVolumes``; PVCs for claim templates."""
    overrides: dict[str, dict[str, Any]] = {}
    for override in request.addon_volumes:
        name = override.name.replace("${RESTIC_CACHE_VOLUME}", TMP_VOLUME).replace("${INTERIM_VOLUME}", INTERIM_VOLUME)
        overrides[name] = override.source.dump() if override.source else {}
    volumes: list[dict[str, Any]] = []
    pvcs: list[dict[str, Any]] = []
    for vt in resolved.volume_templates:
        source = overrides.get(vt["name"], vt.get("source") or {})
        claim = source.get("volumeClaimTemplate")
        if claim is not None:
            pvc_name = valid_name(job_name, vt["name"])
            meta = claim.get("metadata") or {}
            pvcs.append({
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {
                    "name": pvc_name,
                    "namespace": request.namespace,
                    "labels": {**(meta.get("labels") or {}), **labels, LABEL_PREFIX + "volume": label_value(vt["name"])},
                    **({"annotations": meta["annotations"]} if meta.get("annotations") else {}),
                },
                "spec": claim["spec"],
            })
            volumes.append({"name": vt["name"], "persistentVolumeClaim": {"claimName": pvc_name}})
        else:
            volumes.append({"name": vt["name"], **{k: v for k, v in source.items() if k != "volumeClaimTemplate"}})
    return volumes, pvcs


def _upsert_env(env: list[dict[str, Any]], entries: list[dict[str, Any]]) -> None:
    index = {e.get("name"): i for i, e in enumerate(env)}
    for entry in entries:
        if entry.get("name") in index:
            env[index[entry["name"]]] = entry
        else:
            index[entry.get("name")] = len(env)
            env.append(entry)


def _apply_runtime_settings(container: dict[str, Any], settings: ContainerRuntimeSettings | dict | None) -> None:
    """kmodules ``ApplyContainerRuntimeSettings``: replace what is set, upsert env, append envFrom."""
    if settings is None:
        return
    data = settings.dump() if isinstance(settings, ContainerRuntimeSettings) else settings
    for key in ("resources", "livenessProbe", "readinessProbe", "lifecycle", "securityContext"):
        if data.get(key):
            container[key] = data[key]
    if data.get("envFrom"):
        container.setdefault("envFrom", []).extend(data["envFrom"])
    if data.get("env"):
        _upsert_env(container.setdefault("env", []), data["env"])
    extra = []
    if (data.get("nice") or {}).get("adjustment") is not None:
        extra.append({"name": "NICE_ADJUSTMENT", "value": kube_escape(str(data["nice"]["adjustment"]))})
    ionice = data.get("ionice") or {}
    if ionice.get("class") is not None:
        extra.append({"name": "IONICE_CLASS", "value": kube_escape(str(ionice["class"]))})
    if ionice.get("classData") is not None:
        extra.append({"name": "IONICE_CLASS_DATA", "value": kube_escape(str(ionice["classData"]))})
    if extra:
        _upsert_env(container.setdefault("env", []), extra)


def _container(resolved: ResolvedTask, request: RenderRequest, component: str) -> dict[str, Any]:
    spec = resolved.container
    if not spec.get("image"):
        raise InputError("the Function has no image", code="missing-field", location=resolved.function.location(("spec",)),
                         obj=resolved.function.ref, field="spec.image")
    container: dict[str, Any] = {"name": valid_name(resolved.task.name, "0"), "image": spec["image"]}
    for key in ("command", "args", "workingDir", "ports", "volumeDevices"):
        if spec.get(key):
            container[key] = list(spec[key]) if isinstance(spec[key], list) else spec[key]
    mounts = [m.dump() for m in resolved.task.volume_mounts or []]
    seen = {m["mountPath"] for m in mounts}
    mounts += [m for m in spec.get("volumeMounts") or [] if m["mountPath"] not in seen]
    if mounts:
        container["volumeMounts"] = mounts
    _apply_runtime_settings(container, spec.get("runtimeSettings"))
    if request.addon_info:
        _apply_runtime_settings(container, request.addon_info.container_runtime_settings)
    _upsert_env(container.setdefault("env", []), [{"name": "COMPONENT_NAME", "value": kube_escape(component)}])
    container["imagePullPolicy"] = "IfNotPresent"
    # A container that dies before writing its result still explains itself.
    container["terminationMessagePolicy"] = "FallbackToLogsOnError"
    return container


def _storage_url(storage: BackupStorage, path: str) -> tuple[str, list[dict[str, Any]]]:
    """restic's repository URL for ``path`` inside the storage, and the env it needs."""
    backend = storage.spec.storage
    provider = backend.provider if backend else None
    where: dict[str, Any] = dict(location=storage.location(("spec", "storage")), obj=storage.ref, field="spec.storage")
    if backend is None or provider is None:
        raise InputError("the storage has no provider", code="missing-field", **where)
    if provider == "local":
        if not backend.local or not backend.local.mount_path:
            raise InputError("a local storage needs local.mountPath", code="missing-field", **where)
        return posixpath.join(backend.local.mount_path, path), []
    if provider == "s3" and backend.s3:
        s3 = backend.s3
        env = [{"name": "AWS_DEFAULT_REGION", "value": kube_escape(s3.region)}] if s3.region else []
        if s3.secret_name:
            env += [_secret_env(k, s3.secret_name, k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")]
        endpoint = (s3.endpoint or "s3.amazonaws.com").rstrip("/")
        return f"s3:{endpoint}/{posixpath.join(s3.bucket or '', s3.prefix or '', path)}", env
    if provider == "gcs" and backend.gcs:
        gcs = backend.gcs
        env = [_secret_env("GOOGLE_PROJECT_ID", gcs.secret_name, "GOOGLE_PROJECT_ID"),
               {"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": "/etc/stashflow/credentials/GOOGLE_SERVICE_ACCOUNT_JSON_KEY"}] \
            if gcs.secret_name else []
        return f"gs:{gcs.bucket}:/{posixpath.join(gcs.prefix or '', path)}", env
    if provider == "azure" and backend.azure:
        az = backend.azure
        env = [{"name": "AZURE_ACCOUNT_NAME", "value": kube_escape(az.storage_account or "")}]
        if az.secret_name:
            env.append(_secret_env("AZURE_ACCOUNT_KEY", az.secret_name, "AZURE_ACCOUNT_KEY"))
        return f"azure:{az.container}:/{posixpath.join(az.prefix or '', path)}", env
    raise InputError(f'provider "{provider}" needs its "{provider}" section', code="missing-field", **where)


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def repository_location(url: str, volume: dict[str, Any] | None) -> str:
    """A label value naming one restic repository: its URL and, for local storage, the volume behind
    the mount path (two hostPaths at one mountPath are two repositories)."""
    key = json.dumps({"url": url, "volume": volume}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(key.encode()).hexdigest()[:40]


def _apply_repository(request: RenderRequest, pod_spec: dict[str, Any], container: dict[str, Any],
                      component: str, session: str) -> str | None:
    """restic's environment, and the storage volume, on the container; returns the repository's
    location (``repository_location``) when the run names a storage."""
    repo = request.repository
    if repo is None:
        return None
    location = None
    path = repo.component_path or posixpath.join("repository", "v1", request.plan_session or request.task, component)
    env: list[dict[str, Any]] = []
    if repo.storage is not None:
        url, provider_env = _storage_url(repo.storage, posixpath.join(repo.directory.strip("/"), path))
        env.append({"name": "RESTIC_REPOSITORY", "value": kube_escape(url)})
        env += provider_env
        backend = repo.storage.spec.storage
        local = backend.local.kube_source() if backend and backend.provider == "local" and backend.local else None
        location = repository_location(url, local)
        if backend and backend.provider == "local" and backend.local:
            pod_spec["volumes"].append({"name": STORAGE_VOLUME, **backend.local.kube_source()})
            mount = {"name": STORAGE_VOLUME, "mountPath": backend.local.mount_path}
            if backend.local.sub_path:
                mount["subPath"] = backend.local.sub_path
            container.setdefault("volumeMounts", []).append(mount)
        if backend and backend.provider == "gcs" and backend.gcs and backend.gcs.secret_name:
            pod_spec["volumes"].append({"name": CREDENTIALS_VOLUME, "secret": {"secretName": backend.gcs.secret_name}})
            container.setdefault("volumeMounts", []).append(
                {"name": CREDENTIALS_VOLUME, "mountPath": "/etc/stashflow/credentials", "readOnly": True})
    if repo.encryption_secret:
        env.append(_secret_env("RESTIC_PASSWORD", repo.encryption_secret, "RESTIC_PASSWORD"))
    env.append({"name": "STASHFLOW_COMPONENT_PATH", "value": kube_escape(path)})
    _upsert_env(container.setdefault("env", []), env)
    return location


def _apply_job_template(info: AddonInfo | None, pod_meta: dict[str, Any], pod_spec: dict[str, Any],
                        container: dict[str, Any], job_meta: dict[str, Any], labels: dict[str, str]) -> None:
    """The plan's ``addon.jobTemplate`` (ofst.PodTemplateSpec) onto the Job, pod and container."""
    if info is None or info.job_template is None:
        return
    tpl = info.job_template
    for target, source in ((pod_meta, tpl.metadata or {}), (job_meta, tpl.controller or {})):
        if source.get("labels"):
            target["labels"] = {**source["labels"], **target.get("labels", {}), **labels}
        if source.get("annotations"):
            target["annotations"] = {**source["annotations"], **target.get("annotations", {})}
    spec = dict(tpl.spec or {})
    if spec.get("args"):
        container["args"] = [*container.get("args", []), *spec["args"]]
    if spec.get("env"):
        _upsert_env(container.setdefault("env", []), spec["env"])
    for key in ("resources", "livenessProbe", "readinessProbe", "lifecycle"):
        if spec.get(key):
            container[key] = spec[key]
    if spec.get("containerSecurityContext"):
        container["securityContext"] = spec["containerSecurityContext"]
    if spec.get("volumeMounts"):
        container.setdefault("volumeMounts", []).extend(spec["volumeMounts"])
    for key, value in spec.items():
        if key in _CONTAINER_FIELDS_IN_POD_SPEC or value in (None, {}, []):
            continue
        if key == "volumes":
            pod_spec["volumes"].extend(value)
        else:
            pod_spec[key] = value


def _snapshot(request: RenderRequest, resolved: ResolvedTask, name: str, repository: str, session: str,
              component: str, job_name: str, labels: dict[str, str], now: datetime) -> dict[str, Any]:
    """The Pending Snapshot created before the Job (KubeStash's shape, REFERENCE.md §5)."""
    target = request.target
    path = (request.repository.component_path if request.repository else None) or posixpath.join(
        "repository", "v1", request.plan_session or request.task, component)
    return {
        "apiVersion": "storage.kubestash.com/v1alpha1",
        "kind": "Snapshot",
        "metadata": {
            "name": name,
            "namespace": request.namespace,
            "labels": {
                "kubestash.com/repo-name": label_value(repository),
                "kubestash.com/app-ref-kind": label_value(target.kind),
                "kubestash.com/app-ref-name": label_value(target.name),
                "kubestash.com/app-ref-namespace": label_value(request.namespace),
                **labels,
            },
            "annotations": {LABEL_PREFIX + "job": job_name},
        },
        "spec": {
            "snapshotID": request.snapshot_id or ulid(now.timestamp()),
            "type": "FullBackup",
            "repository": repository,
            "session": request.plan_session or resolved.task.name,
            "backupSession": session,
            "version": "v1",
            # optional strings are left out when empty (a core-group target has no apiGroup)
            "appRef": {**({"apiGroup": target.api_group} if target.api_group else {}), "kind": target.kind,
                       "name": target.name, "namespace": request.namespace},
            "deletionPolicy": "Delete",
        },
        "status": {
            "phase": "Pending",
            "snapshotTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "totalComponents": 1,
            "components": {component: {"phase": "Pending", "driver": resolved.task.driver or "Restic", "path": path}},
        },
    }


INT32 = 2**31 - 1
INT64 = 2**63 - 1
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


def _qualified_name_problem(key: Any) -> str | None:
    """Why ``key`` is not a label/annotation key (``[prefix/]name``), or None."""
    if not isinstance(key, str):
        return f"the key {key!r} is not a string"
    prefix, _, name = key.rpartition("/")
    if prefix and name_problem(prefix):
        return f'the key "{key}" has an invalid prefix: {name_problem(prefix)}'
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        return f'"{key}" is not a valid key (at most 63 letters, digits, "-", "_", "." after an optional prefix/)'
    return None


class _Checker:
    """Collects what the API server would refuse in rendered objects."""

    def __init__(self, location: Location | None) -> None:
        self.location = location
        self.problems: list[InputError] = []
        self.obj = ""

    def bad(self, message: str, field: str, code: str = "invalid-name") -> None:
        self.problems.append(InputError(message, code=code, location=self.location, obj=self.obj, field=field,
                                        hint="the API server would refuse the object"))

    def name(self, value: Any, field: str, *, label: bool = False, max_len: int | None = None) -> None:
        if not isinstance(value, str):
            self.bad(f"the name must be a string, not {type(value).__name__}", field, "invalid-type")
            return
        problem = name_problem(value, max_len=max_len or (63 if label else 253), label=label)
        if problem:
            self.bad(problem, field)

    def integer(self, value: Any, field: str, low: int, high: int) -> None:
        if value is None:
            return
        if not isinstance(value, int) or isinstance(value, bool):
            self.bad(f"must be a whole number, not {type(value).__name__} {value!r}", field, "invalid-type")
        elif not low <= value <= high:
            self.bad(f"{value} is outside {low}..{high}", field, "invalid-value")

    def labels(self, labels: Any, field: str, *, values: bool = True) -> None:
        if labels is None:
            return
        if not isinstance(labels, dict):
            self.bad("must be a mapping", field, "invalid-type")
            return
        for key, value in labels.items():
            problem = _qualified_name_problem(key)
            if problem:
                self.bad(problem, f"{field}.{key}")
            if not isinstance(value, str):
                self.bad(f"the value must be a string, not {type(value).__name__}", f"{field}.{key}", "invalid-type")
            elif values and label_value(value) != value:
                self.bad(f'label value "{value}" is not valid (at most 63 letters, digits, "-", "_", ".")',
                         f"{field}.{key}")

    def job(self, job: dict[str, Any]) -> None:
        spec = job.get("spec") or {}
        self.integer(spec.get("activeDeadlineSeconds"), "spec.activeDeadlineSeconds", 1, INT64)
        for key in ("backoffLimit", "completions", "parallelism", "ttlSecondsAfterFinished"):
            self.integer(spec.get(key), f"spec.{key}", 0, INT32)
        template = spec.get("template") or {}
        self.labels((template.get("metadata") or {}).get("labels"), "spec.template.metadata.labels")
        self.pod(template.get("spec") or {}, "spec.template.spec")

    def pod(self, pod: dict[str, Any], base: str) -> None:
        self.integer(pod.get("activeDeadlineSeconds"), f"{base}.activeDeadlineSeconds", 1, INT64)
        self.integer(pod.get("terminationGracePeriodSeconds"), f"{base}.terminationGracePeriodSeconds", 0, INT64)
        if pod.get("serviceAccountName") is not None:
            self.name(pod["serviceAccountName"], f"{base}.serviceAccountName")
        volumes: set[str | None] = set()  # a volume without a name is reported above
        for i, volume in enumerate(pod.get("volumes") or []):
            where = f"{base}.volumes[{i}]"
            if not isinstance(volume, dict):
                self.bad("a volume must be a mapping", where, "invalid-type")
                continue
            self.name(volume.get("name"), f"{where}.name", label=True)
            if volume.get("name") in volumes:
                self.bad(f'volume "{volume.get("name")}" is defined twice', f"{where}.name", "duplicate-volume")
            volumes.add(volume.get("name"))
            for source, key in (("persistentVolumeClaim", "claimName"), ("secret", "secretName"), ("configMap", "name")):
                if isinstance(volume.get(source), dict) and key in volume[source]:
                    self.name(volume[source][key], f"{where}.{source}.{key}")
        for i, container in enumerate(pod.get("containers") or []):
            self.container(container, f"{base}.containers[{i}]", volumes)

    def container(self, container: dict[str, Any], base: str, volumes: set[str | None]) -> None:
        self.name(container.get("name"), f"{base}.name", label=True)
        image = container.get("image")
        if not isinstance(image, str) or not image.strip() or image != image.strip():
            self.bad(f"the image {image!r} is empty or has surrounding spaces", f"{base}.image", "invalid-value")
        for i, env in enumerate(container.get("env") or []):
            where = f"{base}.env[{i}]"
            name = env.get("name") if isinstance(env, dict) else None
            if not isinstance(name, str) or not _ENV_NAME.match(name):
                self.bad(f"{name!r} is not a valid environment variable name", f"{where}.name", "invalid-name")
            value_from = env.get("valueFrom") if isinstance(env, dict) else None
            if isinstance(env, dict) and "value" in env and not isinstance(env["value"], str):
                self.bad(f"the value must be a string, not {type(env['value']).__name__}", f"{where}.value",
                         "invalid-type")
            for ref in ("secretKeyRef", "configMapKeyRef"):
                if isinstance(value_from, dict) and isinstance(value_from.get(ref), dict):
                    self.name(value_from[ref].get("name"), f"{where}.valueFrom.{ref}.name")
                    key = value_from[ref].get("key")
                    if not isinstance(key, str) or len(key) > 253 or not _CONFIG_KEY.match(key):
                        self.bad(f"{key!r} is not a valid key", f"{where}.valueFrom.{ref}.key")
        for i, source in enumerate(container.get("envFrom") or []):
            for ref in ("secretRef", "configMapRef"):
                if isinstance(source, dict) and isinstance(source.get(ref), dict):
                    self.name(source[ref].get("name"), f"{base}.envFrom[{i}].{ref}.name")
        for i, mount in enumerate(container.get("volumeMounts") or []):
            if isinstance(mount, dict) and mount.get("name") not in volumes:
                self.bad(f'volumeMount "{mount.get("name")}" names no volume of the pod',
                         f"{base}.volumeMounts[{i}].name", "unknown-volume")
            if isinstance(mount, dict) and not mount.get("mountPath"):
                self.bad("a volumeMount needs a mountPath", f"{base}.volumeMounts[{i}].mountPath", "missing-field")


def check_objects(objects: list[dict[str, Any]], location: Location | None = None) -> None:
    """What the API server would refuse, checked offline: every object's name (≤63, DNS-1123) and
    namespace, label keys and values, and in the Job every referenced Secret, ConfigMap and PVC
    name, environment variable names and the integer ranges (activeDeadlineSeconds int64 > 0...).
    ``location`` is where the request came from, for errors that cannot point into a file."""
    checker = _Checker(location)
    for obj in objects:
        meta = obj["metadata"]
        checker.obj = f'{obj["kind"]} "{meta["name"]}"'
        checker.name(meta["name"], "metadata.name", max_len=63)
        if meta.get("namespace") is not None:
            checker.name(meta["namespace"], "metadata.namespace", label=True)
        checker.labels(meta.get("labels"), "metadata.labels")
        checker.labels(meta.get("annotations"), "metadata.annotations", values=False)
        if obj["kind"] == "Job":
            checker.job(obj)
    raise_all(checker.problems)  # type: ignore[arg-type]
