"""``storage.kubestash.com/v1alpha1``: where data goes and what a run records (REFERENCE.md §2.6–2.8)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from .types import Count, RetentionPeriod
from .base import KubeDict, KubeObject, Model, ObjectReference, TypedObjectReference

STORAGE_API = "storage.kubestash.com/v1alpha1"

SnapshotPhase = Literal["Pending", "Running", "Succeeded", "Failed"]


class LocalSpec(Model):
    """A Kubernetes volume source (kept as extras) mounted at ``mountPath``."""

    mount_path: str | None = None
    sub_path: str | None = None
    max_connections: int | None = None

    def kube_source(self) -> KubeDict:
        return {k: v for k, v in self.dump().items() if k not in ("mountPath", "subPath", "maxConnections")}


class S3Spec(Model):
    endpoint: str | None = None
    bucket: str | None = None
    prefix: str | None = None
    region: str | None = None
    secret_name: str | None = None
    insecure_tls: bool | None = Field(default=None, alias="insecureTLS")
    max_connections: int | None = None


class GCSSpec(Model):
    bucket: str | None = None
    prefix: str | None = None
    secret_name: str | None = None
    max_connections: int | None = None


class AzureSpec(Model):
    storage_account: str | None = None
    container: str | None = None
    prefix: str | None = None
    secret_name: str | None = None
    max_connections: int | None = None


class Backend(Model):
    provider: Literal["local", "s3", "gcs", "azure", "b2", "swift", "rest"] | None = None
    local: LocalSpec | None = None
    s3: S3Spec | None = None
    gcs: GCSSpec | None = None
    azure: AzureSpec | None = None


class UsagePolicy(Model):
    allowed_namespaces: KubeDict | None = None


class BackupStorageSpec(Model):
    storage: Backend | None = None
    usage_policy: UsagePolicy | None = None
    default: bool | None = None
    deletion_policy: Literal["Delete", "WipeOut"] | None = None
    runtime_settings: KubeDict | None = None


class BackupStorage(KubeObject):
    API_VERSION: ClassVar[str] = STORAGE_API
    KIND: ClassVar[str] = "BackupStorage"

    spec: BackupStorageSpec = Field(default_factory=BackupStorageSpec)
    status: KubeDict | None = None


class RepositorySpec(Model):
    app_ref: TypedObjectReference | None = None
    storage_ref: ObjectReference | None = None
    path: str | None = None
    deletion_policy: Literal["Delete", "WipeOut"] | None = None
    encryption_secret: ObjectReference | None = None
    paused: bool | None = None


class Repository(KubeObject):
    API_VERSION: ClassVar[str] = STORAGE_API
    KIND: ClassVar[str] = "Repository"

    spec: RepositorySpec = Field(default_factory=RepositorySpec)
    status: KubeDict | None = None


class SuccessfulSnapshotsKeep(Model):
    last: Count | None = None
    hourly: Count | None = None
    daily: Count | None = None
    weekly: Count | None = None
    monthly: Count | None = None
    yearly: Count | None = None


class FailedSnapshotsKeep(Model):
    last: Count | None = None


class RetentionPolicySpec(Model):
    max_retention_period: RetentionPeriod | None = None  # "1y2mo3w4d5h6m"
    usage_policy: UsagePolicy | None = None
    successful_snapshots: SuccessfulSnapshotsKeep | None = None
    failed_snapshots: FailedSnapshotsKeep | None = None
    default: bool | None = None


class RetentionPolicy(KubeObject):
    API_VERSION: ClassVar[str] = STORAGE_API
    KIND: ClassVar[str] = "RetentionPolicy"

    spec: RetentionPolicySpec = Field(default_factory=RetentionPolicySpec)


class Component(Model):
    """One component of a Snapshot (``dump``, ``manifest``...), as its executor reported it."""

    path: str | None = None
    phase: SnapshotPhase | None = None
    size: str | None = None
    duration: str | None = None
    integrity: bool | None = None
    error: str | None = None
    driver: str | None = None
    restic_stats: list[dict[str, Any]] | None = None
    wal_g_stats: KubeDict | None = None
    volume_snapshotter_stats: list[KubeDict] | None = None


class SnapshotSpec(Model):
    snapshot_id: str | None = Field(default=None, alias="snapshotID")
    type: Literal["FullBackup", "IncrementalBackup"] | None = None
    repository: str | None = None
    session: str | None = None
    backup_session: str | None = None
    version: str | None = None
    app_ref: TypedObjectReference | None = None
    deletion_policy: Literal["Delete", "WipeOut"] | None = None
    paused: bool | None = None


class SnapshotStatus(Model):
    phase: SnapshotPhase | None = None
    verification_status: str | None = None
    snapshot_time: str | None = None
    last_update_time: str | None = None
    size: str | None = None
    integrity: bool | None = None
    conditions: list[KubeDict] | None = None
    total_components: int | None = None
    components: dict[str, Component] | None = None


class Snapshot(KubeObject):
    API_VERSION: ClassVar[str] = STORAGE_API
    KIND: ClassVar[str] = "Snapshot"

    spec: SnapshotSpec = Field(default_factory=SnapshotSpec)
    status: SnapshotStatus | None = None
