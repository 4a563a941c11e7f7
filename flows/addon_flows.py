"""One Prefect flow per Addon task, as module-level objects of this module.

For ``stashflow-pvc`` / ``logical-backup`` the flow is named ``stashflow-pvc:logical-backup``
(Prefect forbids ``/`` in flow names) and importable as
``stashflow.flows.addon_flows:stashflow_pvc__logical_backup``, so workers, ``serve``,
``prefect deploy`` and the cancel/crash hooks can load it by entrypoint.

Each flow's parameters are the run options below plus the task's own parameters, with
their defaults, and ``usage`` as descriptions: the Prefect UI shows one form per task.
A required task parameter has no default; an optional one without a default is ``None``
("not given", which KubeStash treats differently from an empty string).

The catalog is ``$STASHFLOW_CATALOG`` (folders and files, ``:``-separated) or the built-in
one; it is loaded once, when a flow is first asked for (``flow_for``, or an attribute of this
module such as the entrypoint ``stashflow.flows.addon_flows:stashflow_pvc__logical_backup``).
"""

from __future__ import annotations

import functools
import inspect
import keyword
import os
import re
from typing import Any

from prefect import Flow, flow, get_run_logger
from prefect.runtime import flow_run as current_flow_run
from prefect.states import Failed

from stashflow.addons.catalog import BUILTIN_CATALOG, Catalog
from stashflow.addons.durations import parse_duration
from stashflow.addons.errors import InputError, Location, StashflowError
from stashflow.addons.model import Addon, Task
from stashflow.addons.names import valid_name
from stashflow.addons.render import FLOW_RUN_LABEL, RenderRequest, Target
from stashflow.addons.resolve import Value
from stashflow.tasks.steps import RunSpec

from stashflow.flows import policies
from stashflow.flows.engine import Connection, cleanup_hook, execute

CATALOG_ENV = "STASHFLOW_CATALOG"

#: Run options every flow has, in form order: (name, type, default, description).
RUN_OPTIONS: list[tuple[str, Any, Any, str]] = [
    ("target", str, inspect.Parameter.empty,
     "What to back up or restore, as KIND/NAME: PersistentVolumeClaim/data, Postgres.kubedb.com/prod-db."),
    ("namespace", str, "default", "Namespace of the target and of everything the run creates."),
    ("storage", str | dict | None, None,
     "BackupStorage to back up into: its name (from the catalog paths) or the object itself."),
    ("repository", str | None, None, "Repository name recorded in the Snapshot (default: the target's name)."),
    ("directory", str, "", "The repository's directory inside the storage."),
    ("encryption_secret", str | None, None, "Secret in the namespace whose key RESTIC_PASSWORD encrypts the data."),
    ("snapshot", str | None, None, "Restores: the Snapshot to restore, or 'latest' (of `repository`)."),
    ("timeout", str | None, "6h", "Deadline of the run (Job activeDeadlineSeconds), e.g. 30m, 6h; empty: none."),
    ("session", str | None, None, "The run's name (KubeStash's BackupSession/RestoreSession): it names the Job and "
                                  "the Snapshot, and a run with the same name adopts that run's Job instead of "
                                  "starting a second; default: the target and the run's scheduled time."),
    ("plan_session", str | None, None, "The plan's session name (repository path); default: the task name."),
    ("db_version", str | None, None, "Database version, mapped onto the Function's availableVersions."),
    ("variables", dict[str, str] | None, None, "Other built-in variables (e.g. POD_ORDINAL)."),
    ("extra_params", dict[str, str] | None, None, "Task parameters whose names are not Python identifiers."),
    ("history_limit", int, 1, "How many finished Jobs of this target and task stay for debugging."),
    ("stuck_after", float, 180.0, "Seconds a Pod may be stuck (image pull, config, unschedulable) before failing."),
    ("attempt", int, 1, "Attempt number (names the Job; retries are new attempts)."),
    ("max_retry", int, 0, "After a failed backup, up to this many new attempts (each its own Job and Snapshot)."),
    ("retry_delay", str | None, None, "Wait before a new attempt, e.g. 30s, 5m (retryConfig.delay)."),
    ("retention", dict | None, None, "A RetentionPolicy spec applied to the repository's Snapshots after a backup."),
    ("exclusive", bool, False, "Hold the target's lock: a run that finds it held is skipped, not queued."),
    ("missed_runs", str, "latest", "After downtime, which missed scheduled runs run: latest, all or none."),
    ("starting_deadline_seconds", int | None, None, "Skip a scheduled run that starts later than this."),
    ("late_after_seconds", float | None, None, "A scheduled run later than this was missed (default 60 s)."),
    ("addon", dict | None, None, "The plan's addon settings: jobTemplate, containerRuntimeSettings, addonVolumes."),
    ("invoker", dict[str, str] | None, None, "The plan that invoked this run: {kind, name}."),
    ("kubeconfig", str | None, None, "Kubeconfig file (default: in-cluster, then $KUBECONFIG, ~/.kube/config)."),
    ("context", str | None, None, "Kubeconfig context."),
    ("credentials_block", str | None, None, "Name of a prefect-kubernetes KubernetesCredentials block."),
]
RUN_OPTION_NAMES = {name for name, *_ in RUN_OPTIONS}


def catalog_paths() -> list[str]:
    env = os.environ.get(CATALOG_ENV)
    return [p for p in env.split(os.pathsep) if p] if env else [str(BUILTIN_CATALOG)]


def python_name(addon: str, task: str) -> str:
    """``stashflow-pvc`` + ``logical-backup`` → ``stashflow_pvc__logical_backup``."""
    return re.sub(r"\W", "_", f"{addon}__{task}")


def form_parameter(name: str) -> bool:
    """Whether a task parameter can be its own form field (else it goes in ``extra_params``)."""
    return name.isidentifier() and not keyword.iskeyword(name) and name not in RUN_OPTION_NAMES


KIND_SHORT = {"PersistentVolumeClaim": "pvc", "Deployment": "deploy", "StatefulSet": "sts", "DaemonSet": "ds"}


def short_target(namespace: str, target: str) -> str:
    """``demo/pvc/data``: what a person reads in a run name or a tag (the UI cuts long ones)."""
    try:
        parsed = Target.parse(target)
    except InputError:
        return f"{namespace}/{target}"
    return f"{namespace}/{KIND_SHORT.get(parsed.kind, parsed.kind.lower())}/{parsed.name}"


def target_tag(namespace: str, target: str) -> str:
    return f"target:{short_target(namespace, target)}"


def _run_name() -> str:
    """``demo/pvc/data 2026-11-28 02:00`` (the flow's name is shown beside it already), or the run's
    own name when it was given one (``--run``)."""
    p = current_flow_run.parameters
    where = short_target(str(p.get("namespace") or "default"), str(p.get("target", "")))
    if p.get("session"):
        return f"{where} {p['session']}"
    when = current_flow_run.scheduled_start_time
    return f"{where} {when:%Y-%m-%d %H:%M}" if when else where


def _spec_from_parameters(addon: Addon, task: Task, list_name: str, values: dict[str, Any]) -> RunSpec:
    """Flow parameters → a checked ``RunSpec``."""
    try:
        target = Target.parse(str(values["target"]))
    except InputError as exc:
        raise InputError(exc.message, code=exc.code, field="target", hint=exc.hint) from None
    params: dict[str, Value] = {}
    for p in task.parameters or []:
        if form_parameter(p.name) and values.get(p.name) is not None:
            params[p.name] = Value(str(values[p.name]), Location("<flow parameters>", 0), p.name)
    for name, value in (values.get("extra_params") or {}).items():
        params[name] = Value(str(value), Location("<flow parameters>", 0), f"extra_params.{name}")
    builtins = {k: Value(str(v), Location("<flow parameters>", 0), f"variables.{k}")
                for k, v in (values.get("variables") or {}).items()}
    if values.get("db_version"):
        builtins["DB_VERSION"] = Value(str(values["db_version"]), Location("<flow parameters>", 0), "db_version")
    timeout = None
    if values.get("timeout"):
        try:
            timeout = int(parse_duration(str(values["timeout"])))
        except ValueError as exc:
            raise InputError(str(exc), code="invalid-argument", field="timeout") from None
    run_id = current_flow_run.id
    session = values.get("session")
    if not session:
        started = current_flow_run.scheduled_start_time
        session = valid_name(target.name, str(int(started.timestamp())) if started else "")
    invoker = values.get("invoker") or {}
    request = RenderRequest(
        addon=addon.name, task=task.name, namespace=values.get("namespace") or "default", target=target,
        params=params, builtins=builtins, session=session, plan_session=values.get("plan_session"),
        invoker_kind=invoker.get("kind"), invoker_name=invoker.get("name"), attempt=int(values.get("attempt") or 1),
        timeout_seconds=timeout, labels={FLOW_RUN_LABEL: run_id} if run_id else {},
    )
    return RunSpec(
        request=request, storage=values.get("storage"), repository=values.get("repository"),
        directory=values.get("directory") or "", encryption_secret=values.get("encryption_secret"),
        snapshot=values.get("snapshot"), stuck_after=float(values.get("stuck_after") or 180.0),
        history_limit=int(values.get("history_limit") if values.get("history_limit") is not None else 1),
        addon_info=values.get("addon"),
    )


def state_message(exc: StashflowError, limit: int = 160) -> str:
    """A failed run's state message: the stable code and the reason, short enough for the UI's one line
    (the flow and run names already say which task and target; the logs and artifact have the rest)."""
    diagnosis = getattr(exc, "diagnosis", None)
    reason = diagnosis.summary() if diagnosis is not None else exc.message
    text = " ".join(f"{exc.code}: {reason}".split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def make_flow(catalog: Catalog, addon: Addon, list_name: str, task: Task) -> Flow:
    """The flow of one Addon task, its signature built from the task's parameters."""
    pyname = python_name(addon.name, task.name)
    parameters = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
                  for name, annotation, default, _ in RUN_OPTIONS]
    docs = [f"    {name}: {description}" for name, _, _, description in RUN_OPTIONS]
    for p in task.parameters or []:
        if not form_parameter(p.name):
            continue
        if p.required:
            default: Any = inspect.Parameter.empty
            annotation: Any = str
        else:
            default, annotation = (p.default, str) if p.default is not None else (None, str | None)
        parameters.append(inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                            annotation=annotation))
        docs.append(f"    {p.name}: {(p.usage or 'Addon task parameter.').strip()}"
                    + (" (required)" if p.required else ""))
    # Prefect wants required parameters first in the form; keyword-only order is free.
    parameters.sort(key=lambda prm: prm.default is not inspect.Parameter.empty)
    kind = "Back up" if list_name == "backupTasks" else "Restore"
    doc = (f"{kind} with KubeStash Addon task {addon.name}/{task.name} (Function {task.function}).\n\nArgs:\n"
           + "\n".join(docs))

    async def run(**values: Any) -> Any:
        spec = _spec_from_parameters(addon, task, list_name, values)
        connection = Connection(values.get("kubeconfig"), values.get("context"), values.get("credentials_block"))
        try:
            await policies.check_missed(values.get("missed_runs") or "latest", values.get("starting_deadline_seconds"),
                                        values.get("late_after_seconds"))
            async with policies.target_lock(spec.namespace, spec.target, bool(values.get("exclusive"))):
                return await execute(spec, catalog, connection, values.get("retention"))
        except policies.Skip as skip:
            return policies.skipped(skip.reason)
        except StashflowError as exc:
            get_run_logger().error("%s", exc.format())  # the whole line, once; no traceback for a known failure
            if list_name == "backupTasks":
                note = await policies.schedule_retry(dict(current_flow_run.parameters), spec.request.attempt,
                                                     int(values.get("max_retry") or 0), values.get("retry_delay"))
                if note:
                    get_run_logger().warning("backup failed; %s", note)
            return Failed(message=state_message(exc), data=exc)

    run.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    run.__annotations__ = {prm.name: prm.annotation for prm in parameters} | {"return": Any}
    run.__name__ = run.__qualname__ = pyname
    run.__module__ = __name__
    run.__doc__ = doc
    return flow(
        run,
        name=f"{addon.name}:{task.name}",
        description=doc.split("\n\n")[0],
        flow_run_name=_run_name,
        retries=0,
        validate_parameters=True,
        on_cancellation=[cleanup_hook],
        on_crashed=[cleanup_hook],
    )


def build_flows(paths: list[str]) -> tuple[Catalog, dict[str, Flow]]:
    catalog = Catalog().add_paths(paths).check().raise_for_problems()
    flows = {}
    for addon in catalog.addons.values():
        for list_name, _, task in addon.tasks():
            flows[python_name(addon.name, task.name)] = make_flow(catalog, addon, list_name, task)
    return catalog, flows


@functools.cache
def loaded() -> tuple[Catalog, dict[str, Flow]]:
    """The catalog of ``$STASHFLOW_CATALOG`` (or the built-in one) and its flows, loaded on first use,
    not at import: modules that only map plans (restore, deployments) never pay for it, and a bad
    catalog path fails the command that needs it, with its coded error."""
    return build_flows(catalog_paths())


def flows() -> dict[str, Flow]:
    return loaded()[1]


def flow_for(addon: str, task: str) -> Flow:
    """The flow of ``addon``/``task`` (an ``unknown-addon``/``unknown-task`` error if there is none)."""
    catalog, found = loaded()
    catalog.task(addon, task)
    return found[python_name(addon, task)]


def entrypoint(addon: str, task: str) -> str:
    """The module entrypoint of a flow, for deployments."""
    return f"{__name__}:{python_name(addon, task)}"


def __getattr__(name: str) -> Flow:
    """``stashflow.flows.addon_flows:stashflow_pvc__logical_backup``, the entrypoint a worker imports."""
    found = flows().get(name) if not name.startswith("__") else None
    if found is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return found


def __dir__() -> list[str]:
    return sorted([*globals(), *flows()])
