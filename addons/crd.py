"""stashflow's own CRDs of KubeStash's kinds, for clusters without KubeStash.

One compact table (``KINDS``) gives, per kind, the same group, version, kind, names, scope,
status subresource and printer columns as KubeStash's CRD, and a schema of the same shape: the
fields stashflow and KubeStash's executors read are typed, the deep parts (pod templates, hooks,
driver statistics) keep unknown fields. So objects written here read the same with KubeStash
installed later. Each CRD is labelled ``app.kubernetes.io/managed-by: stashflow``; a KubeStash
CRD already in the cluster is left alone (``stashflow install`` creates only the missing ones).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CORE, STORAGE, VERSION = "core.kubestash.com", "storage.kubestash.com", "v1alpha1"
# the Snapshot's, kept by name: the run steps read and write Snapshots through these
GROUP, PLURAL, KIND = STORAGE, "snapshots", "Snapshot"
CRD_NAME = f"{PLURAL}.{GROUP}"
MANAGED_LABELS = {"app.kubernetes.io/managed-by": "stashflow"}

Schema = dict[str, Any]
_STR: Schema = {"type": "string"}
_BOOL: Schema = {"type": "boolean"}
_INT32: Schema = {"type": "integer", "format": "int32"}
_TIME: Schema = {"type": "string", "format": "date-time"}
_OPEN: Schema = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


def _obj(required: list[str] | None = None, **properties: Schema) -> Schema:
    return {"type": "object", "properties": properties, **({"required": required} if required else {})}


def _enum(*values: str, default: str | None = None) -> Schema:
    return {"type": "string", "enum": list(values), **({"default": default} if default else {})}


def _list(items: Schema) -> Schema:
    return {"type": "array", "items": items}


_REF = _obj(["name"], name=_STR, namespace=_STR)
_LOCAL_REF = _obj(["kind", "name"], apiGroup=_STR, kind=_STR, name=_STR)
_TYPED_REF = _obj(["name"], apiGroup=_STR, kind=_STR, name=_STR, namespace=_STR)
_CONDITION = {**_obj(["type", "status"], type=_STR, status=_STR, reason=_STR, message=_STR,
                      lastTransitionTime=_TIME, observedGeneration={"type": "integer", "format": "int64"}),
              "x-kubernetes-preserve-unknown-fields": True}
_CONDITIONS = _list(_CONDITION)
_SNAPSHOT_PHASE = _enum("Pending", "Running", "Succeeded", "Failed")
_COMPONENT = {**_obj(path=_STR, phase=_SNAPSHOT_PHASE, size=_STR, duration=_STR, integrity=_BOOL, error=_STR,
                     driver=_STR, resticStats=_list(_OPEN)),
              "x-kubernetes-preserve-unknown-fields": True}  # driver-specific stats (walGStats, ...)
_TASK_REF = _obj(["name"], name=_STR, variables=_list(_OPEN), params=_OPEN, targetVolumes=_OPEN,
                 addonVolumes=_list(_OPEN))
_ADDON = _obj(["name"], name=_STR, tasks=_list(_TASK_REF), containerRuntimeSettings=_OPEN, jobTemplate=_OPEN)
_HOOKS = _OPEN  # HookInfo lists: kept whole
_REPO_INFO = _obj(["name"], name=_STR, backend=_STR, backupVerifier=_REF, directory=_STR, encryptionSecret=_REF,
                  deletionPolicy=_enum("Delete", "WipeOut", "Retain"))
_SESSION = _obj(["name"], name=_STR, scheduler=_OPEN, hooks=_HOOKS, retryConfig=_obj(maxRetry=_INT32, delay=_STR),
                backupTimeout=_STR, sessionHistoryLimit={**_INT32, "default": 1}, addon=_ADDON,
                repositories=_list(_REPO_INFO))
_BACKEND = _obj(["name"], name=_STR, storageRef=_REF, retentionPolicy=_REF)


@dataclass(frozen=True)
class KindSpec:
    """One row of the table: a KubeStash kind and the shape of its CRD."""

    group: str
    kind: str
    plural: str
    short_names: tuple[str, ...]
    categories: tuple[str, ...]
    columns: tuple[tuple[str, ...], ...]  # (name, jsonPath, type[, format]), Age added last
    spec: Schema
    status: Schema | None  # None: no status subresource

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{self.group}"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{VERSION}"


_ALL = ("kubestash", "appscode", "all")

KINDS: dict[str, KindSpec] = {k.kind: k for k in [
    KindSpec(STORAGE, "Snapshot", "snapshots", (), ("kubestash", "appscode"),
             (("Repository", ".spec.repository", "string"), ("Session", ".spec.session", "string"),
              ("Snapshot-Time", ".status.snapshotTime", "string"),
              ("Deletion-Policy", ".spec.deletionPolicy", "string"), ("Phase", ".status.phase", "string")),
             _obj(snapshotID=_STR, type=_enum("FullBackup", "IncrementalBackup"), repository=_STR, session=_STR,
                  backupSession=_STR, version=_STR, appRef=_TYPED_REF,
                  deletionPolicy=_enum("Delete", "WipeOut", default="Delete"), paused=_BOOL),
             _obj(phase=_SNAPSHOT_PHASE, verificationStatus=_enum("Verified", "NotVerified", "VerificationFailed"),
                  verificationSession=_STR, snapshotTime=_TIME, lastUpdateTime=_TIME, size=_STR, integrity=_BOOL,
                  conditions=_CONDITIONS, totalComponents=_INT32,
                  components={"type": "object", "additionalProperties": _COMPONENT})),
    KindSpec(CORE, "BackupConfiguration", "backupconfigurations", ("bc",), _ALL,
             (("Phase", ".status.phase", "string"), ("Paused", ".spec.paused", "boolean")),
             _obj(target=_TYPED_REF, backends=_list(_BACKEND), sessions=_list(_SESSION), paused=_BOOL),
             _obj(phase=_enum("NotReady", "Ready", "Invalid"), targetFound=_BOOL, conditions=_CONDITIONS,
                  backends=_list(_OPEN), repositories=_list(_OPEN), dependencies=_list(_OPEN),
                  sessions=_list({**_obj(["name"], name=_STR, nextSchedule=_STR, conditions=_CONDITIONS),
                                  "x-kubernetes-preserve-unknown-fields": True}))),
    KindSpec(CORE, "BackupSession", "backupsessions", (), _ALL,
             (("Invoker-Type", ".spec.invoker.kind", "string"), ("Invoker-Name", ".spec.invoker.name", "string"),
              ("Phase", ".status.phase", "string"), ("Duration", ".status.duration", "string")),
             _obj(invoker=_LOCAL_REF, session=_STR, retryLeft=_INT32, backupTimeout=_STR),
             _obj(phase=_enum("Pending", "Running", "Succeeded", "Failed", "Skipped"), duration=_STR,
                  backupDeadline=_TIME, totalSnapshots=_INT32,
                  snapshots=_list(_obj(name=_STR, phase=_SNAPSHOT_PHASE, appRef=_TYPED_REF, repository=_STR)),
                  hooks=_OPEN,
                  retentionPolicy=_list(_obj(ref=_REF, repository=_STR,
                                             phase=_enum("Pending", "Applied", "FailedToApply"), error=_STR)),
                  retried=_BOOL, nextRetry=_TIME, conditions=_CONDITIONS)),
    KindSpec(CORE, "RestoreSession", "restoresessions", ("restore",), _ALL,
             (("Repository", ".spec.dataSource.repository", "string"), ("Phase", ".status.phase", "string"),
              ("Duration", ".status.duration", "string")),
             _obj(target=_TYPED_REF,
                  dataSource=_obj(namespace=_STR, repository=_STR, snapshot=_STR, pitr=_OPEN, components=_list(_STR),
                                  encryptionSecret=_REF),
                  addon=_ADDON, hooks=_HOOKS, restoreTimeout=_STR, manifestOptions=_OPEN),
             _obj(phase=_enum("Pending", "Running", "Failed", "Succeeded", "Invalid", "Unknown"), targetFound=_BOOL,
                  duration=_STR, restoreDeadline=_TIME, totalComponents=_INT32,
                  components={"type": "object", "additionalProperties": {
                      **_obj(phase=_enum("Pending", "Running", "Succeeded", "Failed", "Unknown"), duration=_STR,
                             error=_STR, progress=_OPEN), "x-kubernetes-preserve-unknown-fields": True}},
                  hooks=_OPEN, dependencies=_list(_OPEN), pausedBackups=_list(_TYPED_REF), conditions=_CONDITIONS)),
    KindSpec(STORAGE, "Repository", "repositories", ("repo",), _ALL,
             (("Integrity", ".status.integrity", "boolean"), ("Snapshot-Count", ".status.snapshotCount", "integer"),
              ("Size", ".status.size", "string"), ("Phase", ".status.phase", "string"),
              ("Last-Successful-Backup", ".status.lastBackupTime", "date", "date-time")),
             _obj(["storageRef"], appRef=_TYPED_REF, storageRef=_REF, path=_STR,
                  deletionPolicy=_enum("Delete", "WipeOut", default="Delete"), encryptionSecret=_REF, paused=_BOOL),
             _obj(phase=_enum("NotReady", "Ready"), lastBackupTime=_TIME, integrity=_BOOL, snapshotCount=_INT32,
                  size=_STR, recentSnapshots=_list(_obj(name=_STR, phase=_SNAPSHOT_PHASE, session=_STR, size=_STR,
                                                        snapshotTime=_TIME)),
                  conditions=_CONDITIONS, componentPaths=_list(_STR))),
    KindSpec(STORAGE, "BackupStorage", "backupstorages", (), _ALL,
             (("Provider", ".spec.storage.provider", "string"), ("Default", ".spec.default", "boolean"),
              ("Deletion-Policy", ".spec.deletionPolicy", "string"), ("Total-Size", ".status.totalSize", "string"),
              ("Phase", ".status.phase", "string")),
             _obj(["storage"], storage={**_obj(["provider"], provider=_STR, local=_OPEN, s3=_OPEN, gcs=_OPEN,
                                               azure=_OPEN), "x-kubernetes-preserve-unknown-fields": True},
                  usagePolicy=_OPEN, default=_BOOL, deletionPolicy=_enum("Delete", "WipeOut"), runtimeSettings=_OPEN),
             _obj(phase=_enum("Ready", "NotReady"), totalSize=_STR, repositories=_list(_OPEN), conditions=_CONDITIONS)),
    KindSpec(STORAGE, "RetentionPolicy", "retentionpolicies", (), ("kubestash", "appscode"),
             (("Max-Retention-Period", ".spec.maxRetentionPeriod", "string"), ("Default", ".spec.default", "boolean")),
             _obj(maxRetentionPeriod=_STR, usagePolicy=_OPEN, successfulSnapshots=_OPEN, failedSnapshots=_OPEN,
                  default=_BOOL),
             None),
]}


def crd(kind: str) -> dict[str, Any]:
    """The CustomResourceDefinition (apiextensions.k8s.io/v1) of ``kind``, as plain data."""
    k = KINDS[kind]
    properties: Schema = {"apiVersion": _STR, "kind": _STR, "metadata": {"type": "object"}, "spec": k.spec}
    if k.status is not None:
        properties["status"] = k.status
    names: dict[str, Any] = {"kind": k.kind, "listKind": f"{k.kind}List", "plural": k.plural,
                             "singular": k.kind.lower(), "categories": list(k.categories)}
    if k.short_names:
        names["shortNames"] = list(k.short_names)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": k.crd_name, "labels": dict(MANAGED_LABELS)},
        "spec": {
            "group": k.group,
            "names": names,
            "scope": "Namespaced",
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}} if k.status is not None else {},
                "additionalPrinterColumns": [
                    *({**({"format": c[3]} if len(c) > 3 else {}), "jsonPath": c[1], "name": c[0], "type": c[2]}
                      for c in k.columns),
                    {"jsonPath": ".metadata.creationTimestamp", "name": "Age", "type": "date"}],
                "schema": {"openAPIV3Schema": {"type": "object", "properties": properties}},
            }],
        },
    }


def snapshot_crd() -> dict[str, Any]:
    """The Snapshot's CRD (what a backup run installs when the cluster has none)."""
    return crd("Snapshot")


def all_crds() -> list[dict[str, Any]]:
    """Every CRD stashflow can install, in the table's order."""
    return [crd(kind) for kind in KINDS]
