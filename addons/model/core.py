"""``core.kubestash.com/v1alpha1``: what users write to plan backups and restores (REFERENCE.md §2)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from .addon import ContainerRuntimeSettings, VolumeSource
from .base import KubeDict, KubeObject, Model, ObjectReference, TypedObjectReference
from .types import Count, Deadline, Duration, Seconds

CORE_API = "core.kubestash.com/v1alpha1"


class AddonVolumeInfo(Model):
    """Replaces the source of the task's volume template of the same name."""

    name: str
    source: VolumeSource | None = None


class TargetVolumeInfo(Model):
    volumes: list[KubeDict] | None = None
    volume_mounts: list[KubeDict] | None = None
    volume_claim_templates: list[KubeDict] | None = None


class TaskReference(Model):
    name: str
    variables: list[KubeDict] | None = None  # core.EnvVar: value or valueFrom
    params: dict[str, Any] | None = None  # RawExtension in the API; scalars become strings
    target_volumes: TargetVolumeInfo | None = None
    addon_volumes: list[AddonVolumeInfo] | None = None


class PodTemplateSpec(Model):
    """ofst.PodTemplateSpec: pod-level settings plus a few container-level ones."""

    metadata: KubeDict | None = None
    controller: KubeDict | None = None
    spec: KubeDict | None = None


class AddonInfo(Model):
    name: str
    tasks: list[TaskReference] | None = None
    container_runtime_settings: ContainerRuntimeSettings | None = None
    job_template: PodTemplateSpec | None = None


class JobTemplate(Model):
    parallelism: Count | None = None
    completions: Count | None = None
    active_deadline_seconds: Seconds | None = None
    backoff_limit: Count | None = None
    template: PodTemplateSpec | None = None
    ttl_seconds_after_finished: Count | None = None
    completion_mode: str | None = None
    suspend: bool | None = None


class SchedulerSpec(Model):
    schedule: str
    starting_deadline_seconds: Seconds | None = None
    concurrency_policy: Literal["Allow", "Forbid", "Replace"] | None = None
    suspend: bool | None = None
    job_template: JobTemplate | None = None
    successful_jobs_history_limit: Count | None = None
    failed_jobs_history_limit: Count | None = None


class RetryConfig(Model):
    max_retry: Count | None = None
    delay: Duration | None = None  # metav1.Duration: 30s, 2m, 1h


class HookInfo(Model):
    name: str
    hook_template: ObjectReference | None = None
    params: dict[str, Any] | None = None
    max_retry: Count | None = None
    timeout: Deadline | None = None
    execution_policy: Literal["Always", "OnSuccess", "OnFailure"] | None = None
    variables: list[KubeDict] | None = None
    volumes: list[KubeDict] | None = None
    volume_mounts: list[KubeDict] | None = None
    runtime_settings: KubeDict | None = None


class BackupHooks(Model):
    pre_backup: list[HookInfo] | None = None
    post_backup: list[HookInfo] | None = None


class RepositoryInfo(Model):
    name: str
    backend: str | None = None
    backup_verifier: ObjectReference | None = None
    directory: str | None = None
    encryption_secret: ObjectReference | None = None
    deletion_policy: Literal["Delete", "WipeOut", "Retain"] | None = None


class Session(Model):
    name: str
    scheduler: SchedulerSpec | None = None
    hooks: BackupHooks | None = None
    retry_config: RetryConfig | None = None
    backup_timeout: Deadline | None = None
    session_history_limit: Count | None = None
    addon: AddonInfo | None = None
    repositories: list[RepositoryInfo] | None = None


class BackendReference(Model):
    name: str
    storage_ref: ObjectReference | None = None
    retention_policy: ObjectReference | None = None


class BackupConfigurationSpec(Model):
    target: TypedObjectReference | None = None
    backends: list[BackendReference] | None = None
    sessions: list[Session] | None = None
    paused: bool | None = None


class BackupConfiguration(KubeObject):
    API_VERSION: ClassVar[str] = CORE_API
    KIND: ClassVar[str] = "BackupConfiguration"

    spec: BackupConfigurationSpec = Field(default_factory=BackupConfigurationSpec)
    status: KubeDict | None = None


class PITR(Model):
    target_time: str | None = None
    exclusive: bool | None = None


class RestoreDataSource(Model):
    namespace: str | None = None
    repository: str | None = None
    snapshot: str | None = None  # a Snapshot name, or "latest"
    pitr: PITR | None = None
    components: list[str] | None = None
    encryption_secret: ObjectReference | None = None


class RestoreHooks(Model):
    pre_restore: list[HookInfo] | None = None
    post_restore: list[HookInfo] | None = None


class RestoreSessionSpec(Model):
    target: TypedObjectReference | None = None
    data_source: RestoreDataSource | None = None
    addon: AddonInfo | None = None
    hooks: RestoreHooks | None = None
    restore_timeout: Deadline | None = None
    manifest_options: KubeDict | None = None


class RestoreSession(KubeObject):
    API_VERSION: ClassVar[str] = CORE_API
    KIND: ClassVar[str] = "RestoreSession"

    spec: RestoreSessionSpec = Field(default_factory=RestoreSessionSpec)
    status: KubeDict | None = None
