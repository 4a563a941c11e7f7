"""The typed contract of a session run: what the ``backup-session`` flow takes.

A BackupConfiguration's session, carried whole so that a worker needs no file: the plan and the
session's names, the target (none for a cluster-wide plan), the Addon and its tasks in order, the
repositories (each a BackupStorage, a directory, an encryption Secret and the backend's retention),
and the session's knobs in the same groups as an Addon-task run (``flows/parameters.py``):
``limits`` (backupTimeout, sessionHistoryLimit), ``schedule`` (retryConfig, missed runs),
``cluster``. ``deploy`` builds these from the plan; the Prefect form shows them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from stashflow.addons.hooks import HookPlan, plan_hook
from stashflow.addons.model.addon import Function
from stashflow.addons.model.core import HookInfo
from stashflow.addons.model.hook import HookTemplate
from stashflow.addons.model.types import Blank, ObjectName

from .parameters import Cluster, Group, Limits, SchedulePolicy, Storage


class SessionTask(Group):
    """One of the session's Addon tasks (``addon.tasks[]``), run in this order."""

    name: str = Field(description="The Addon task, e.g. logical-backup.")
    params: dict[str, str] = Field(default_factory=dict, description="The task's own parameters.")
    variables: dict[str, str] = Field(default_factory=dict, description="Its variables (built-ins it sets).")
    addon_volumes: list[dict[str, Any]] = Field(default_factory=list, description="Its addonVolumes.")


class SessionRepository(Group):
    """A repository of the session: every repository gets its own Snapshot and its own copy of the data."""

    name: ObjectName = Field(description="The Repository's name.")
    storage: Storage = Field(description="The BackupStorage it lives in.")
    directory: str = Field("", description="Its directory inside the storage.")
    encryption_secret: Annotated[ObjectName | None, Blank] = Field(
        None, description="Secret in the namespace whose key RESTIC_PASSWORD encrypts the data.")
    deletion_policy: str | None = Field(None, description="Delete, WipeOut or Retain.")
    retention_policy: str | None = Field(None, description="The backend's RetentionPolicy name.")
    retention: dict[str, Any] | None = Field(None, description="That RetentionPolicy's spec, applied after each "
                                                               "session.")


class SessionHook(Group):
    """A hook of the session (``hooks.preBackup[]``/``postBackup[]``) with its HookTemplate, carried whole."""

    phase: Literal["preBackup", "postBackup", "preRestore", "postRestore"] = Field(description="When it runs.")
    hook: dict[str, Any] = Field(description="The HookInfo as the plan writes it (name, hookTemplate, params, "
                                             "maxRetry, timeout, executionPolicy).")
    template: dict[str, Any] = Field(description="The HookTemplate object it names.")
    function: dict[str, Any] = Field(default_factory=dict, description="The Function its executor runs as a Job "
                                                                       "(the Function executor only).")

    def plan(self, namespace: str) -> HookPlan:
        """The hook, ready to run (``addons.hooks.plan_hook``; checked at deploy, so this does not fail
        unless the parameters were edited by hand)."""
        function = Function.model_validate(self.function) if self.function else None
        return plan_hook(HookInfo.model_validate(self.hook), HookTemplate.model_validate(self.template), self.phase,
                         namespace, function)


class SessionAdvanced(Group):
    """What retries and plans set; rarely typed by hand."""

    backup_session: Annotated[ObjectName | None, Blank] = Field(
        None, description="The BackupSession's name; default <config>-<session>-<unix time of the scheduled run>. "
                          "Started again under the same name, a session adopts what it made.")
    attempt: int = Field(1, ge=1, description="Attempt number (retries are new sessions).")
    db_version: str | None = Field(None, description="Database version, mapped onto the Functions' "
                                                     "availableVersions.")
    addon: dict[str, Any] = Field(default_factory=dict, description="The session's addon settings: jobTemplate, "
                                                                    "containerRuntimeSettings.")
    configuration: dict[str, Any] | None = Field(None, description="The BackupConfiguration's spec, applied to the "
                                                                   "cluster as it is written in the plan.")


class SessionParameters(BaseModel):
    """One session run's parameters, typed."""

    model_config = ConfigDict(extra="forbid")

    configuration: ObjectName
    session: str
    namespace: str = "default"
    target: str | None = None
    addon: str
    tasks: list[SessionTask]
    repositories: list[SessionRepository]
    hooks: list[SessionHook] = Field(default_factory=list)
    limits: Limits = Field(default_factory=Limits)
    schedule: SchedulePolicy = Field(default_factory=SchedulePolicy)
    cluster: Cluster = Field(default_factory=Cluster)
    advanced: SessionAdvanced = Field(default_factory=SessionAdvanced)

    def to_flow(self) -> dict[str, Any]:
        """The flow's keyword arguments (JSON-ready): groups only where they differ from the defaults."""
        out = self.model_dump(mode="json", exclude_defaults=True)
        # unset is absent, never null: Prefect checks a deployment's parameters against the form's schema,
        # where an optional field is its own type (parameters.plain_optionals), not "or null"
        whole = self.model_dump(mode="json", exclude_none=True)
        for key in ("configuration", "session", "addon", "tasks", "repositories", "hooks"):
            out[key] = whole[key]
        return out
