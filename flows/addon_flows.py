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
import os
import re
from typing import Any, Coroutine

from prefect import Flow, flow, get_run_logger
from prefect.runtime import deployment as current_deployment
from prefect.runtime import flow_run as current_flow_run
from prefect.states import Failed

from stashflow.addons.catalog import BUILTIN_CATALOG, Catalog
from stashflow.addons.durations import deadline_seconds
from stashflow.addons.errors import InputError, Location, StashflowError
from stashflow.addons.model import Addon, Task
from stashflow.addons.names import valid_name
from stashflow.addons.render import FLOW_RUN_LABEL, RenderRequest, Target
from stashflow.addons.resolve import Value
from stashflow.tasks.steps import RunSpec

from stashflow.flows import policies
from stashflow.flows.naming import short_target
from stashflow.flows.parameters import GROUPS, Limits, LogMode, RunParameters, form_parameter
from stashflow.flows.engine import FLOW_RESULTS, Connection, cleanup_hook, execute

CATALOG_ENV = "STASHFLOW_CATALOG"

TARGET_DOC = "What to back up or restore, as KIND/NAME: PersistentVolumeClaim/data, Postgres.kubedb.com/prod-db."
NAMESPACE_DOC = "Namespace of the target and of everything the run creates."
SNAPSHOT_DOC = "The Snapshot to restore, or latest (the newest Succeeded one of repository.name)."
RETENTION_DOC = "A RetentionPolicy spec applied to the repository's Snapshots after each backup."


def catalog_paths() -> list[str]:
    env = os.environ.get(CATALOG_ENV)
    return [p for p in env.split(os.pathsep) if p] if env else [str(BUILTIN_CATALOG)]


def python_name(addon: str, task: str) -> str:
    """``stashflow-pvc`` + ``logical-backup`` → ``stashflow_pvc__logical_backup``."""
    return re.sub(r"\W", "_", f"{addon}__{task}")


def _run_name() -> str:
    """``demo/pvc/data 2026-11-28 02:00`` (the flow's name is shown beside it already), or the run's
    own name when it was given one (``--run``)."""
    p = current_flow_run.parameters
    where = short_target(str(p.get("namespace") or "default"), str(p.get("target", "")))
    advanced = p.get("advanced") or {}
    session = advanced.get("session") if isinstance(advanced, dict) else getattr(advanced, "session", None)
    if session:
        return f"{where} {session}"
    when = current_flow_run.scheduled_start_time
    return f"{where} {when:%Y-%m-%d %H:%M}" if when else where


def _spec_from_parameters(addon: Addon, task: Task, run: RunParameters) -> RunSpec:
    """The typed flow parameters → a checked ``RunSpec``."""
    try:
        target = Target.parse(run.target)
    except InputError as exc:
        raise InputError(exc.message, code=exc.code, field="target", hint=exc.hint) from None
    where = Location("<flow parameters>", 0)
    params: dict[str, Value] = {name: Value(value, where, name) for name, value in run.task_params.items()}
    params.update({name: Value(value, where, f"advanced.extra_params.{name}")
                   for name, value in run.advanced.extra_params.items()})
    builtins = {k: Value(v, where, f"advanced.variables.{k}") for k, v in run.advanced.variables.items()}
    if run.advanced.db_version:
        builtins["DB_VERSION"] = Value(run.advanced.db_version, where, "advanced.db_version")
    timeout = deadline_seconds(run.limits.timeout) if run.limits.timeout else None  # 0.1s is 1 s, not none
    run_id = current_flow_run.id
    session = run.advanced.session
    owner = None
    if not session:  # named from the clock: a second run in the same second must not adopt this one
        started = current_flow_run.scheduled_start_time
        session = valid_name(target.name, str(int(started.timestamp())) if started else "")
        owner = str(run_id) if run_id else None
    invoker = run.advanced.invoker
    request = RenderRequest(
        addon=addon.name, task=task.name, namespace=run.namespace, target=target, params=params, builtins=builtins,
        session=session, plan_session=run.advanced.plan_session, invoker_kind=invoker.kind if invoker else None,
        invoker_name=invoker.name if invoker else None, attempt=run.advanced.attempt, timeout_seconds=timeout,
        labels={FLOW_RUN_LABEL: run_id} if run_id else {}, within_session=run.advanced.within_session, owner=owner,
    )
    repo = run.repository
    return RunSpec(
        request=request, storage=repo.storage.to_object() if repo.storage else None, repository=repo.name,
        directory=repo.directory, encryption_secret=repo.encryption_secret, snapshot=run.snapshot,
        stuck_after=run.limits.stuck_after, history_limit=run.limits.history_limit,
        follow_logs=run.limits.follows("restore" if run.snapshot is not None else "backup"), addon_info=run.advanced.addon or None,
    )


def state_message(exc: StashflowError, limit: int = 160) -> str:
    """A failed run's state message: the stable code and the reason, short enough for the UI's one line
    (the flow and run names already say which task and target; the logs and artifact have the rest)."""
    diagnosis = getattr(exc, "diagnosis", None)
    if diagnosis is not None:  # the container's own words first, then where: "Fatal: ... (container x, exit 1)"
        said = diagnosis.message.strip().splitlines()[-1] if diagnosis.message.strip() else diagnosis.reason
        where = ", ".join([*([diagnosis.reason] if diagnosis.reason not in said else []),
                           *([f"container {diagnosis.container}"] if diagnosis.container else []),
                           *([f"exit code {diagnosis.exit_code}"] if diagnosis.exit_code is not None else [])])
        reason = f"{said} ({where})" if where else said
    else:
        reason = exc.message
    text = " ".join(f"{exc.code}: {reason}".split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def make_flow(catalog: Catalog, addon: Addon, list_name: str, task: Task) -> Flow:
    """The flow of one Addon task, its signature built from the task's parameters."""
    pyname = python_name(addon.name, task.name)
    kind = "backup" if list_name == "backupTasks" else "restore"
    keyword_only = inspect.Parameter.KEYWORD_ONLY
    parameters = [inspect.Parameter("target", keyword_only, annotation=str),
                  inspect.Parameter("namespace", keyword_only, default="default", annotation=str)]
    docs = [f"    target: {TARGET_DOC}", f"    namespace: {NAMESPACE_DOC}"]
    task_names: set[str] = set()
    unset_if_blank: set[str] = set()  # no default: an empty form box means "not given", as a missing value
    for p in task.parameters or []:
        if not form_parameter(p.name):
            continue
        task_names.add(p.name)
        default: Any = inspect.Parameter.empty if p.required else p.default
        if default is None:
            default = ""
            unset_if_blank.add(p.name)
        parameters.append(inspect.Parameter(p.name, keyword_only, default=default, annotation=str))
        docs.append(f"    {p.name}: {(p.usage or 'Addon task parameter.').strip()}"
                    + (" (required)" if p.required else ""))
    if kind == "restore":
        parameters.append(inspect.Parameter("snapshot", keyword_only, default="latest", annotation=str))
        docs.append(f"    snapshot: {SNAPSHOT_DOC}")
    for name, model, kinds in GROUPS:
        if kind in kinds:
            # the defaults as the form shows them: a group's unset options are absent, not null
            shown = model(logs=LogMode.FOLLOW) if model is Limits and kind == "restore" else model()
            parameters.append(inspect.Parameter(name, keyword_only, annotation=model,
                                                default=shown.model_dump(mode="json", exclude_none=True)))
            docs.append(f"    {name}: {(model.__doc__ or '').strip().splitlines()[0]}")
        if name == "schedule" and kind == "backup":
            parameters.append(inspect.Parameter("retention", keyword_only, default={},  # {}: none
                                                annotation=dict[str, Any]))
            docs.append(f"    retention: {RETENTION_DOC}")
    # Required task parameters have no default: Python wants them before the others only for positional
    # parameters, and these are keyword-only, so the form keeps this order: target, namespace, the task's
    # own parameters, then the run options.
    doc = (f"{'Back up' if kind == 'backup' else 'Restore'} with KubeStash Addon task {addon.name}/{task.name} "
           f"(Function {task.function}).\n\nArgs:\n" + "\n".join(docs))

    async def run(**values: Any) -> Any:
        values = {k: v for k, v in values.items() if not (k in unset_if_blank and v == "")}
        params = RunParameters.from_flow(values, task_names)
        spec = _spec_from_parameters(addon, task, params)
        cluster = params.cluster
        connection = Connection(cluster.kubeconfig, cluster.context, cluster.credentials_block)
        schedule = params.schedule
        try:
            await policies.check_missed(schedule.missed_runs.value, schedule.starting_deadline_seconds,
                                        schedule.late_after_seconds)
            async with policies.target_lock(spec.namespace, spec.target, kind == "backup" and schedule.exclusive):
                retry = params.advanced.retry_note if params.advanced.within_session else policies.retry_note(
                    spec.request.attempt, schedule.max_retry, schedule.retry_delay,
                    bool(current_deployment.id)) if kind == "backup" else None
                return await execute(spec, catalog, connection, params.retention, retry=retry)
        except policies.Skip as skip:
            return policies.skipped(skip.reason)
        except StashflowError as exc:
            get_run_logger().error("%s", exc.format())  # the whole line, once; no traceback for a known failure
            if kind == "backup":
                note = await policies.schedule_retry(dict(current_flow_run.parameters), spec.request.attempt,
                                                     schedule.max_retry, schedule.retry_delay)
                if note:
                    get_run_logger().warning("backup failed; %s", note)
            return Failed(message=state_message(exc), data=exc)

    run.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    run.__annotations__ = {prm.name: prm.annotation for prm in parameters} | {"return": Any}
    run.__name__ = run.__qualname__ = pyname
    run.__module__ = __name__
    run.__doc__ = doc
    return flow(
        name=f"{addon.name}:{task.name}",
        description=doc.split("\n\n")[0],
        flow_run_name=_run_name,
        retries=0,
        validate_parameters=True,
        on_cancellation=[cleanup_hook],
        on_crashed=[cleanup_hook],
        **FLOW_RESULTS,
    )(run)


def build_flows(paths: list[str]) -> tuple[Catalog, dict[str, Flow]]:
    catalog = Catalog().add_paths(paths).check().raise_for_problems()
    flows = {}
    for addon in catalog.addons.values():
        for list_name, _, task in addon.tasks():
            flows[python_name(addon.name, task.name)] = make_flow(catalog, addon, list_name, task)
    return catalog, flows


def loaded() -> tuple[Catalog, dict[str, Flow]]:
    """The catalog of ``$STASHFLOW_CATALOG`` (or the built-in one) and its flows, loaded on first use,
    not at import: modules that only map plans (restore, deployments) never pay for it, and a bad
    catalog path fails the command that needs it, with its coded error. Loaded once per set of paths."""
    return _load(tuple(catalog_paths()))


@functools.cache
def _load(paths: tuple[str, ...]) -> tuple[Catalog, dict[str, Flow]]:
    return build_flows(list(paths))


def flows() -> dict[str, Flow]:
    return loaded()[1]


def flows_of(paths: list[str]) -> dict[str, Flow]:
    """The flows of the catalog at ``paths`` (a worker serving deployments whose catalog is not its
    own environment's), loaded once per set of paths."""
    return _load(tuple(paths))[1]


def flow_for(addon: str, task: str) -> Flow[..., Coroutine[Any, Any, Any]]:
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
