"""``addons.kubestash.com/v1alpha1``: Addon and Function (REFERENCE.md §1)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from .base import KubeDict, KubeObject, Model, ObjectMeta

ADDONS_API = "addons.kubestash.com/v1alpha1"

Driver = Literal["Restic", "WalG", "Medusa", "VolumeSnapshotter", "Solr", "ClickHouseBackup", "Neo4jAdmin"]
Executor = Literal["Job", "Sidecar", "EphemeralContainer", "MultiLevelJob"]


class ParameterDefinition(Model):
    """Every parameter value is a string: the API has no types."""

    name: str
    usage: str | None = None
    required: bool | None = None
    default: str | None = None


class PersistentVolumeClaimTemplate(Model):
    """ofst.PersistentVolumeClaimTemplate: a PVC that stashflow creates for the run."""

    metadata: ObjectMeta | None = None
    spec: KubeDict


class VolumeSource(Model):
    """apis.VolumeSource: a Kubernetes volume source, or a PVC template stashflow creates.

    The Kubernetes sources are kept as the user wrote them (extras); only the template
    is modelled because stashflow acts on it."""

    volume_claim_template: PersistentVolumeClaimTemplate | None = None

    def kube_source(self) -> KubeDict:
        """The source as a pod volume would hold it, without the stashflow-only template."""
        return {k: v for k, v in self.dump().items() if k != "volumeClaimTemplate"}


class VolumeTemplate(Model):
    name: str
    usage: str | None = None
    source: VolumeSource | None = None


class VolumeMount(Model):
    name: str
    mount_path: str
    read_only: bool | None = None
    sub_path: str | None = None
    sub_path_expr: str | None = None
    mount_propagation: str | None = None


class Task(Model):
    """One backup or restore task of an Addon; each becomes a Prefect flow."""

    name: str
    function: str
    driver: Driver | None = None
    executor: Executor | None = None
    singleton: bool | None = None
    parameters: list[ParameterDefinition] | None = None
    volume_template: list[VolumeTemplate] | None = None
    volume_mounts: list[VolumeMount] | None = None


class AddonSpec(Model):
    backup_tasks: list[Task] | None = None
    restore_tasks: list[Task] | None = None


class Addon(KubeObject):
    API_VERSION: ClassVar[str] = ADDONS_API
    KIND: ClassVar[str] = "Addon"
    NAMESPACED: ClassVar[bool] = False

    spec: AddonSpec = Field(default_factory=AddonSpec)

    def tasks(self) -> list[tuple[str, int, Task]]:
        """``(list field, index, task)`` for every task, backup tasks first."""
        out = [("backupTasks", i, t) for i, t in enumerate(self.spec.backup_tasks or [])]
        out += [("restoreTasks", i, t) for i, t in enumerate(self.spec.restore_tasks or [])]
        return out

    def find_task(self, name: str) -> tuple[str, int, Task] | None:
        return next((entry for entry in self.tasks() if entry[2].name == name), None)


class ContainerRuntimeSettings(Model):
    """ofst.ContainerRuntimeSettings: applied to the executor container."""

    resources: KubeDict | None = None
    liveness_probe: KubeDict | None = None
    readiness_probe: KubeDict | None = None
    lifecycle: KubeDict | None = None
    security_context: KubeDict | None = None
    nice: KubeDict | None = None
    ionice: KubeDict | None = None
    env_from: list[KubeDict] | None = None
    env: list[KubeDict] | None = None


class FunctionSpec(Model):
    image: str | None = None
    command: list[str] | None = None
    args: list[str] | None = None
    working_dir: str | None = None
    ports: list[KubeDict] | None = None
    volume_mounts: list[VolumeMount] | None = None
    volume_devices: list[KubeDict] | None = None
    runtime_settings: ContainerRuntimeSettings | None = None
    available_versions: list[str] | None = None


class Function(KubeObject):
    API_VERSION: ClassVar[str] = ADDONS_API
    KIND: ClassVar[str] = "Function"
    NAMESPACED: ClassVar[bool] = False

    spec: FunctionSpec = Field(default_factory=FunctionSpec)
