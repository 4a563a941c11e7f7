"""Pydantic models of the KubeStash objects stashflow reads and writes.

Strict like the API server, lossless on unknown fields. ``KINDS`` maps (apiVersion, kind)
to its model."""

from .addon import (
    ADDONS_API,
    Addon,
    ContainerRuntimeSettings,
    Function,
    FunctionSpec,
    ParameterDefinition,
    Task,
    VolumeMount,
    VolumeSource,
    VolumeTemplate,
)
from .base import KubeObject, Model, ObjectMeta, ObjectReference, TypedObjectReference
from .core import (
    CORE_API,
    AddonInfo,
    AddonVolumeInfo,
    BackupConfiguration,
    PodTemplateSpec,
    RepositoryInfo,
    RestoreSession,
    Session,
    TaskReference,
)
from .hook import HookAction, HookExecutor, HookTemplate
from .storage import (
    STORAGE_API,
    BackupStorage,
    Component,
    Repository,
    RetentionPolicy,
    Snapshot,
)

KINDS: dict[tuple[str, str], type[KubeObject]] = {
    (m.API_VERSION, m.KIND): m
    for m in (Addon, Function, BackupConfiguration, RestoreSession, HookTemplate, BackupStorage, Repository,
              RetentionPolicy, Snapshot)
}

__all__ = [
    "ADDONS_API", "CORE_API", "STORAGE_API", "KINDS",
    "Addon", "AddonInfo", "AddonVolumeInfo", "BackupConfiguration", "BackupStorage", "Component",
    "ContainerRuntimeSettings", "Function", "FunctionSpec", "HookAction", "HookExecutor", "HookTemplate",
    "KubeObject", "Model", "ObjectMeta",
    "ObjectReference", "ParameterDefinition", "PodTemplateSpec", "Repository", "RepositoryInfo",
    "RestoreSession", "RetentionPolicy", "Session", "Snapshot", "Task", "TaskReference",
    "TypedObjectReference", "VolumeMount", "VolumeSource", "VolumeTemplate",
]
