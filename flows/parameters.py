"""The typed run contract: what every Addon-task flow takes.

The CLI (``stashflow run``), RestoreSession files, backup plans (deployments) and the Prefect form
all build these same models, so a value is checked once, in one place, whatever it came from.
A flow's parameters, in the order the Prefect form shows them:

``target``, ``namespace``; the Addon task's own parameters (with their ``usage``, defaults and
``required`` flags); ``snapshot`` (restores only); then the run options, grouped:
``repository`` (where the data goes), ``limits`` (deadline, stuck Pods, history), ``schedule``
and ``retention`` (backups only), ``cluster`` (how to reach it) and ``advanced`` (what plans and
retries set: the run's name, attempt, plan session, the plan's addon settings).
"""

from __future__ import annotations

import keyword
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from stashflow.addons.model import BackupStorage, TaskReference
from stashflow.addons.model.types import Blank, Count, Deadline, Duration, ObjectName, Seconds
from stashflow.addons.resolve import as_value


def plain_optionals(schema: dict[str, Any]) -> None:
    """Show an optional field as its own type: ``anyOf [string, null]`` → ``string``, no ``null`` default.

    Prefect's form draws ``X | None`` as a type toggle ("str"/"None") and a ``null`` default as a value
    the form then sends and its own validator refuses. Without them the field is a plain, optional box;
    Prefect's server still accepts a ``null`` for it (it makes optional fields without a default nullable)."""
    for prop in schema.get("properties", {}).values():
        options = prop.get("anyOf")
        if options and len(options) == 2 and {"type": "null"} in options:
            prop.pop("anyOf")
            kept = next(o for o in options if o != {"type": "null"})
            prop.update(kept if "$ref" not in kept else {"allOf": [kept]})
        if "default" in prop and prop["default"] is None:
            del prop["default"]


class Group(BaseModel):
    """A group of run options: unknown fields are refused (a typo is an error, not ignored)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=plain_optionals)


class Storage(Group):
    """A BackupStorage, carried whole so that a worker needs no file: its name and its spec
    (``{"storage": {"provider": "local", "local": {"mountPath": ..., "hostPath": {...}}}}``)."""

    name: str = Field(description="The BackupStorage's name (recorded on the Snapshot).")
    namespace: Annotated[str | None, Blank] = Field(None, description="Its namespace, when it has one.")
    spec: dict[str, Any] = Field(description="The BackupStorage's spec: storage.provider and its section.")

    @field_validator("spec")
    @classmethod
    def _valid_spec(cls, spec: dict[str, Any]) -> dict[str, Any]:
        BackupStorage.model_validate({"apiVersion": "storage.kubestash.com/v1alpha1", "kind": "BackupStorage",
                                      "metadata": {"name": "check"}, "spec": spec})
        return spec

    def to_object(self) -> BackupStorage:
        return BackupStorage.model_validate({
            "apiVersion": "storage.kubestash.com/v1alpha1", "kind": "BackupStorage",
            "metadata": {"name": self.name, **({"namespace": self.namespace} if self.namespace else {})},
            "spec": self.spec})

    @classmethod
    def of(cls, storage: BackupStorage) -> "Storage":
        return cls(name=storage.name, namespace=storage.namespace, spec=storage.spec.dump())


class RepositoryOptions(Group):
    """Where the data goes (backups) or comes from (restores, where the Snapshot says the rest)."""

    name: Annotated[str | None, Blank] = Field(None, description="Repository name recorded in the Snapshot (default: the target's "
                                               "name). Restores of latest read this repository's newest Snapshot.")
    storage: Storage | None = Field(None, description="The BackupStorage to back up into.")
    directory: str = Field("", description="The repository's directory inside the storage.")
    encryption_secret: Annotated[ObjectName | None, Blank] = Field(
        None, description="Secret in the namespace whose key RESTIC_PASSWORD encrypts the data.")


class LogMode(StrEnum):
    TAIL = "tail"
    FOLLOW = "follow"


class Limits(Group):
    """How long a run may take, when a stuck Pod fails it, how many finished Jobs stay, which Job logs
    the run reads."""

    timeout: Annotated[Deadline | None, Blank] = Field("6h", description="Deadline of the run (the Job's "
                                                                         "activeDeadlineSeconds), e.g. 30m, 6h; "
                                                                         "empty: none.")
    stuck_after: float = Field(180.0, ge=1, description="Seconds a Pod may be stuck (image pull, config, "
                                                        "unschedulable) before the run fails.")
    history_limit: Count = Field(1, description="Finished Jobs of this target and task kept for debugging "
                                                    "(sessionHistoryLimit); 0 keeps none.")
    logs: LogMode = Field(LogMode.TAIL, description="The Job's log in this run's logs: tail reads its last lines "
                                                    "once, when the Job failed or reported its result there; "
                                                    "follow streams every container's log live (one open "
                                                    "request per container: for runs someone watches). "
                                                    "Default: tail for backups, follow for restores.")

    def follows(self, kind: str) -> bool:
        """Whether the run streams its Job's log: as set, else by kind (a fleet's backups read logs only
        when they fail; a restore is watched, and a dry run's plan is its log)."""
        return self.logs is LogMode.FOLLOW if "logs" in self.model_fields_set else kind == "restore"


class MissedRuns(StrEnum):
    LATEST = "latest"
    ALL = "all"
    NONE = "none"


class SchedulePolicy(Group):
    """How scheduled backups behave: overlap, retries, missed runs."""

    exclusive: bool = Field(True, description="Hold the target's lock: a run that finds it held is Skipped, "
                                              "not queued.")
    max_retry: Count = Field(0, description="After a failed backup, up to this many new attempts, each its "
                                                "own Job and Snapshot (retryConfig.maxRetry).")
    retry_delay: Annotated[Duration | None, Blank] = Field(None, description="Wait before a new attempt, e.g. 30s, "
                                                                             "5m (retryConfig.delay).")
    missed_runs: MissedRuns = Field(MissedRuns.LATEST, description="After downtime, which missed scheduled runs "
                                                                   "run: the latest only, all, or none.")
    starting_deadline_seconds: Seconds | None = Field(None, description="Skip a scheduled run that starts later "
                                                                          "than this.")
    late_after_seconds: float | None = Field(None, ge=0, description="A scheduled run later than this was missed "
                                                                     "(default: half the schedule's interval, "
                                                                     "at most 60 s).")


class Cluster(Group):
    """How to reach the cluster (default: in-cluster, then $KUBECONFIG, then ~/.kube/config)."""

    kubeconfig: Annotated[str | None, Blank] = Field(None, description="Kubeconfig file.")
    context: Annotated[str | None, Blank] = Field(None, description="Kubeconfig context.")
    credentials_block: Annotated[str | None, Blank] = Field(None, description="Name of a prefect-kubernetes KubernetesCredentials "
                                                            "block.")


class Invoker(Group):
    kind: Literal["BackupConfiguration", "RestoreSession"]
    name: str


class Advanced(Group):
    """What plans, RestoreSessions and retries set; rarely typed by hand."""

    session: Annotated[ObjectName | None, Blank] = Field(None, description="The run's name (KubeStash's BackupSession/RestoreSession): it "
                                                   "names the Job and the Snapshot; a run with the same name adopts "
                                                   "that run's Job instead of starting a second. Default: the target "
                                                   "and the run's scheduled time.")
    plan_session: Annotated[str | None, Blank] = Field(None, description="The plan's session name (the repository path "
                                                        "repository/v1/NAME/<component>); default: the task name.")
    attempt: int = Field(1, ge=1, description="Attempt number (names the Job; retries are new attempts).")
    db_version: Annotated[str | None, Blank] = Field(None, description="Database version, mapped onto the Function's "
                                                     "availableVersions.")
    variables: dict[str, str] = Field(default_factory=dict, description="Other built-in variables "
                                                                        "(e.g. POD_ORDINAL).")
    extra_params: dict[str, str] = Field(default_factory=dict, description="Task parameters whose names cannot be "
                                                                           "form fields.")
    addon: dict[str, Any] = Field(default_factory=dict, description="The plan's addon settings: jobTemplate, "
                                                                    "containerRuntimeSettings, addonVolumes.")
    invoker: Invoker | None = Field(None, description="The plan or RestoreSession that invoked this run.")
    within_session: bool = Field(False, description="Set by a backup-session run: the session holds the target "
                                                    "and made the Snapshot; this run writes its component into it.")
    retry_note: str | None = Field(None, description="Set by a backup-session run: what follows if the session "
                                                     "fails (its retryConfig), for this run's diagnosis.")


#: The groups, in form order, and the kinds of task each applies to.
GROUPS: list[tuple[str, type[Group], tuple[str, ...]]] = [
    ("repository", RepositoryOptions, ("backup", "restore")),
    ("limits", Limits, ("backup", "restore")),
    ("schedule", SchedulePolicy, ("backup",)),
    ("cluster", Cluster, ("backup", "restore")),
    ("advanced", Advanced, ("backup", "restore")),
]
#: Top-level names besides the task's own parameters.
TOP_LEVEL = ("target", "namespace", "snapshot", "retention")
RESERVED = frozenset([*TOP_LEVEL, *(name for name, _, _ in GROUPS)])


def form_parameter(name: str) -> bool:
    """Whether a task parameter can be its own form field (else it goes in ``advanced.extra_params``)."""
    return name.isidentifier() and not keyword.iskeyword(name) and name not in RESERVED


def from_task_reference(ref: TaskReference, settings: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    """A plan's or RestoreSession's ``addon.tasks[]`` entry → the task's own parameters and the
    ``advanced`` fields it sets (its own addonVolumes over the plan's addon ``settings``)."""
    values = {name: as_value(raw).value for name, raw in (ref.params or {}).items()}
    volumes = {"addonVolumes": [v.dump() for v in ref.addon_volumes]} if ref.addon_volumes else {}
    return ({k: v for k, v in values.items() if form_parameter(k)},
            {"extra_params": {k: v for k, v in values.items() if not form_parameter(k)},
             "addon": {**settings, **volumes},
             "variables": {v["name"]: v["value"] for v in ref.variables or [] if "value" in v}})


class RunParameters(BaseModel):
    """One flow run's parameters, typed: what ``_spec_from_parameters`` reads."""

    model_config = ConfigDict(extra="forbid")

    target: str
    namespace: str = "default"
    task_params: dict[str, str] = Field(default_factory=dict)
    snapshot: str | None = None
    retention: dict[str, Any] | None = None
    repository: RepositoryOptions = Field(default_factory=RepositoryOptions)
    limits: Limits = Field(default_factory=Limits)
    schedule: SchedulePolicy = Field(default_factory=SchedulePolicy)
    cluster: Cluster = Field(default_factory=Cluster)
    advanced: Advanced = Field(default_factory=Advanced)

    @classmethod
    def from_flow(cls, values: dict[str, Any], task_param_names: set[str]) -> "RunParameters":
        """The flow function's keyword arguments (groups already models, or dicts from the API)."""
        task_params = {k: str(v) for k, v in values.items() if k in task_param_names and v is not None}
        rest = {k: v for k, v in values.items() if k not in task_param_names and v is not None}
        return cls.model_validate({**rest, "task_params": task_params})

    def to_flow(self, kind: Literal["backup", "restore"]) -> dict[str, Any]:
        """The keyword arguments of the flow (JSON-ready): task parameters at the top, groups as dicts,
        only what applies to ``kind`` and differs from the defaults."""
        out: dict[str, Any] = {"target": self.target, "namespace": self.namespace, **self.task_params}
        if kind == "restore" and self.snapshot:
            out["snapshot"] = self.snapshot
        if kind == "backup" and self.retention:
            out["retention"] = self.retention
        for name, _, kinds in GROUPS:
            group: Group = getattr(self, name)
            data = group.model_dump(mode="json", exclude_defaults=True)
            if kind in kinds and data:
                out[name] = data
        return out
