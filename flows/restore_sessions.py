"""A RestoreSession is one run too: the ``restore-session`` flow (``stashflow.flows.restore_sessions:restore_session``).

As KubeStash runs one: ``dataSource.snapshot: latest`` is resolved to a concrete Snapshot name (the
repository's newest Succeeded one) before anything runs, the RestoreSession object is created (its
references' namespaces filled) with ``status.components`` pre-created ``{<component>: {phase: Pending}}``
(KubeStash's executors write nothing when it is missing), the target is claimed once, the restore tasks
run in order, each its own flow run (a subflow) reading its component of that Snapshot, and each
component's phase, duration and error are recorded; the RestoreSession's phase follows its components
(one Failed fails it).
"""

from __future__ import annotations

import dataclasses
import math
import time
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect import task as prefect_task
from prefect.runtime import flow_run as current_flow_run
from prefect.states import Failed, State
from pydantic import BaseModel, ConfigDict, Field

from stashflow.addons import sessions
from stashflow.addons.contract import contract_of, executor_account, restore_result, with_service_account
from stashflow.addons.durations import deadline_seconds
from stashflow.addons.errors import NotFound, RunError, StashflowError
from stashflow.addons.model.types import Blank, ObjectName
from stashflow.addons.restore_source import RestoreSource, repository_of, source_problem
from stashflow.addons.render import FLOW_RUN_LABEL, LABEL_PREFIX, MANAGED_BY
from stashflow.tasks import claim, objects, resources
from stashflow.tasks.kube import current
from stashflow.tasks.steps import STEP, restore_component

from .addon_flows import flow_for, loaded, state_message
from .engine import FLOW_RESULTS, Connection, shielded_cleanup
from .parameters import Cluster, Group, Limits, RunParameters, form_parameter
from .session_flows import parse_target, task_target
from .hook_runs import HookResults, run_phase
from .session_parameters import SessionHook, SessionTask

FLOW_NAME = "restore-session"
ENTRYPOINT = f"{__name__}:restore_session"


class DataSource(Group):
    """Where the restore reads from (``spec.dataSource``)."""

    repository: str | None = Field(None, description="The Repository; needed for latest.")
    snapshot: str = Field("latest", description="A Snapshot name, or latest (the repository's newest Succeeded).")
    namespace: str | None = Field(None, description="Where the Snapshot is (default: the session's namespace).")
    encryption_secret: Annotated[ObjectName | None, Blank] = Field(None, description="Secret with RESTIC_PASSWORD.")


class RestoreParameters(BaseModel):
    """One restore session's parameters, typed."""

    model_config = ConfigDict(extra="forbid")

    name: ObjectName
    namespace: str = "default"
    target: str | None = None
    addon: str
    tasks: list[SessionTask]
    data_source: DataSource
    limits: Limits = Field(default_factory=Limits)
    cluster: Cluster = Field(default_factory=Cluster)
    addon_settings: dict[str, Any] = Field(default_factory=dict)
    hooks: list[SessionHook] = Field(default_factory=list)


def restore_session_object(params: RestoreParameters, snapshot: str) -> dict[str, Any]:
    """The RestoreSession as KubeStash's executors read it: namespaces filled, the concrete Snapshot."""
    ns = params.namespace
    target = parse_target(params.target)
    source: dict[str, Any] = {"namespace": params.data_source.namespace or ns, "snapshot": snapshot}
    if params.data_source.repository:
        source["repository"] = params.data_source.repository
    if params.data_source.encryption_secret:
        source["encryptionSecret"] = {"name": params.data_source.encryption_secret, "namespace": ns}
    spec: dict[str, Any] = {"dataSource": source, "addon": {"name": params.addon, "tasks": [
        {"name": t.name, **({"params": t.params} if t.params else {})} for t in params.tasks]}}
    if target is not None:
        spec["target"] = sessions.app_ref(target, ns)
    if params.limits.timeout:
        spec["restoreTimeout"] = params.limits.timeout
    labels = {"app.kubernetes.io/managed-by": MANAGED_BY, LABEL_PREFIX + "session": params.name}
    if current_flow_run.id:
        labels[FLOW_RUN_LABEL] = str(current_flow_run.id)
    return {"apiVersion": "core.kubestash.com/v1alpha1", "kind": "RestoreSession",
            "metadata": {"name": params.name, "namespace": ns, "labels": labels}, "spec": spec}


@prefect_task(name="start-restore", **STEP)
async def start_restore(params: RestoreParameters) -> tuple[str, dict[str, str], dict[str, Any]]:
    """``latest`` → a Snapshot name; the RestoreSession with its components Pending. Returns the Snapshot's
    name, each task's component, and the RestoreSession."""
    kube, logger = current(), get_run_logger()
    await objects.ensure_crds(kube, ["RestoreSession", "Snapshot", "Repository"])
    source_ns = params.data_source.namespace or params.namespace
    given, repository = params.data_source.snapshot, params.data_source.repository
    if given in ("", "latest") and not repository:
        raise RunError('a restore of "latest" needs dataSource.repository', code="invalid-argument")
    source = await _restore_source(kube, params, source_ns)
    problem = source_problem(source, any(_speaks_kubestash(params, t.name) for t in params.tasks))
    if problem is not None:  # before any claim, hook or Job: the RestoreSession records why, and that is all
        await _record_invalid(kube, params, f"{problem.code}: {problem.message}")
        raise RunError(problem.message, code=problem.code, hint=problem.hint)
    found = source.snapshot
    assert found is not None
    name = found["metadata"]["name"]
    have = list(((found.get("status") or {}).get("components") or {}))
    try:
        components = {t.name: restore_component(t.name, have, name) for t in params.tasks}
    except RunError as exc:  # no component of the Snapshot is one a task reads
        await _record_invalid(kube, params, f"{exc.code}: {exc.message}")
        raise
    logger.info("restoring Snapshot %s (components %s)", name, ", ".join(components.values()))
    rs = restore_session_object(params, name)
    try:
        await objects.create(kube, rs)
    except StashflowError as exc:
        if exc.code != "api-conflict":
            raise
    now = datetime.now(timezone.utc)
    status: dict[str, Any] = {"components": {c: {"phase": "Pending"} for c in components.values()},
                              "totalComponents": len(set(components.values())), "phase": "Running",
                              "conditions": [sessions.condition("RestoreExecutorEnsured", True,
                                                                "SuccessfullyEnsuredRestoreExecutor")]}
    if params.limits.timeout:
        status["restoreDeadline"] = (now + timedelta(seconds=deadline_seconds(params.limits.timeout))).strftime(
            "%Y-%m-%dT%H:%M:%SZ")
    await objects.patch_status(kube, "RestoreSession", params.namespace, params.name, status)
    return name, components, rs


async def _restore_source(kube: Any, params: RestoreParameters, source_ns: str) -> RestoreSource:
    """What the cluster holds for the restore: the Snapshot (latest resolved), its Repository object."""
    given, named_repository = params.data_source.snapshot, params.data_source.repository
    found: dict[str, Any] | None
    has_snapshots = False
    if given in ("", "latest"):
        assert named_repository is not None
        found = await resources.latest_snapshot(kube, source_ns, named_repository)
        if found is None:
            has_snapshots = bool(await resources.list_snapshots(kube, source_ns,
                                                                f"kubestash.com/repo-name={named_repository}"))
    else:
        try:
            found = await resources.read(kube, "Snapshot", source_ns, given)
        except NotFound:
            found = None
    source = RestoreSource(namespace=source_ns, snapshot_name=given, repository_name=named_repository,
                           snapshot=found, repository=None, repository_has_snapshots=has_snapshots)
    repository_name = repository_of(source)
    if repository_name:
        try:
            source = dataclasses.replace(source, repository=await objects.read(kube, "Repository", source_ns,
                                                                               repository_name))
        except NotFound:
            pass  # no Repository object: restore_source's rules say whether the restore can go on without it
    return source


async def _record_invalid(kube: Any, params: RestoreParameters, why: str) -> None:
    """The RestoreSession, Failed before it ran: what it names is not there (condition ValidationPassed)."""
    try:
        await objects.create(kube, restore_session_object(params, params.data_source.snapshot or "latest"))
    except StashflowError as exc:
        if exc.code != "api-conflict":
            raise
    await objects.patch_status(kube, "RestoreSession", params.namespace, params.name, {
        "phase": "Failed", "conditions": [sessions.condition("ValidationPassed", False, "RestoreSourceNotFound", why)]})


async def _record(namespace: str, name: str, component: str, value: dict[str, Any]) -> None:
    await objects.patch_status(current(), "RestoreSession", namespace, name, {"components": {component: value}})


def _speaks_kubestash(params: RestoreParameters, task: str) -> bool:
    return contract_of(loaded()[0].task_function(params.addon, task)) == "kubestash"


def _with_account(addon: dict[str, Any], kubestash: bool) -> dict[str, Any]:
    """A KubeStash executor's run gets its ServiceAccount (``executor_account``) in the jobTemplate."""
    return with_service_account(addon, executor_account(addon)[0]) if kubestash else addon


async def _prepare_kubestash(params: RestoreParameters, task: str, component: str) -> None:
    """Before a KubeStash restore executor's Job: its RBAC (in the Snapshot's namespace too, when another),
    and what it reads checked (``restore_preconditions``): a problem is a coded error before any Job."""
    from stashflow.tasks import executor_contract as ec

    account, make = executor_account(params.addon_settings)
    source_ns = params.data_source.namespace or params.namespace
    image = loaded()[0].task_function(params.addon, task).spec.image or ""
    await ec.ensure_executor_rbac(params.namespace, account, "restore",
                                  [source_ns] if source_ns != params.namespace else [],
                                  image.startswith("ghcr.io/kubedb/"), make)
    problems = await ec.restore_problems(params.namespace, params.name, component)
    if problems:
        raise RunError("the restore executor would not find what it reads: " + "; ".join(problems),
                       code="unknown-object", hint="fill what is named before the restore runs")


async def cleanup_hook(flow: Any, flow_run: Any, state: Any) -> None:
    """``on_cancellation`` / ``on_crashed`` (SIGTERM to ``stashflow restore``, a cancel in the UI): the
    RestoreSessions this flow run made (found by its label) end Failed with the reason, their unfinished
    components too; their Jobs, PVCs and claim are removed (the restore tasks' own hooks remove theirs)."""
    from stashflow.addons.names import label_value

    p = flow_run.parameters or {}
    namespace = p.get("namespace") or "default"
    reason = f"the flow run was {str(getattr(state, 'name', 'stopped')).lower()}"
    async with Connection.of_parameters(p).connect() as kube:
        for rs in await objects.list_of(kube, "RestoreSession", namespace, f"{FLOW_RUN_LABEL}={flow_run.id}"):
            name, status = rs["metadata"]["name"], rs.get("status") or {}
            selector = f"app.kubernetes.io/managed-by={MANAGED_BY},{LABEL_PREFIX}session={label_value(name)}"
            await resources.delete_run_objects(kube, namespace, selector)
            await claim.delete_leases(kube, namespace, selector)
            if status.get("phase") in ("Succeeded", "Failed"):
                continue
            components = {c: {**v, "phase": "Failed", "error": reason}
                          for c, v in (status.get("components") or {}).items()
                          if (v or {}).get("phase") not in ("Succeeded", "Failed")}
            await objects.patch_status(kube, "RestoreSession", namespace, name, {
                "phase": "Failed", **({"components": components} if components else {}),
                "conditions": sessions.set_condition(status.get("conditions") or [], sessions.condition(
                    "RestoreIncomplete", True, "RestoreExecutorTerminatedBeforeCompletion", reason))})


@flow(name=FLOW_NAME, retries=0, validate_parameters=True,
      on_cancellation=[cleanup_hook], on_crashed=[cleanup_hook], **FLOW_RESULTS)
async def restore_session(*, target: str | None = None, namespace: str = "default", name: str, addon: str,
                          tasks: list[SessionTask], data_source: DataSource, limits: Limits = Limits(),
                          cluster: Cluster = Cluster(), addon_settings: dict[str, Any] | None = None,
                          hooks: list[SessionHook] | None = None) -> Any:
    """Run a KubeStash RestoreSession: latest resolved, its components Pending, its restore tasks in order.

    Args:
        target: What is restored into, as KIND/NAME.
        namespace: Namespace of the RestoreSession and its target.
        name: The RestoreSession's name.
        addon: The Addon of the restore tasks.
        tasks: The restore tasks, in order.
        data_source: The repository and Snapshot (a name, or latest) to restore from.
        limits: restoreTimeout (one deadline for the session), stuck Pods, Jobs kept.
        cluster: How to reach the cluster.
        addon_settings: jobTemplate, containerRuntimeSettings.
        hooks: preRestore/postRestore hooks, each with its HookTemplate.
    """
    logger = get_run_logger()
    try:
        params = RestoreParameters(name=name, addon=addon, tasks=tasks, data_source=data_source, namespace=namespace,
                                   target=target, limits=limits, cluster=cluster,
                                   addon_settings=addon_settings or {}, hooks=hooks or [])
        catalog, _ = loaded()
        for t in params.tasks:
            catalog.task(params.addon, t.name)
        return await _run(params)
    except StashflowError as exc:
        logger.error("%s", exc.format())
        return Failed(message=state_message(exc), data=exc)


async def _run(params: RestoreParameters) -> dict[str, Any]:
    logger = get_run_logger()
    started = time.time()
    ns, parsed = params.namespace, parse_target(params.target)
    timeout = deadline_seconds(params.limits.timeout) if params.limits.timeout else None
    deadline = started + timeout if timeout else None
    connection = Connection(params.cluster.kubeconfig, params.cluster.context, params.cluster.credentials_block)
    async with connection.connect() as kube:
        snapshot, components, _ = await start_restore(params)
        held = None
        if parsed is not None:
            held = await claim.claim_target(kube, claim.Claimant(
                namespace=ns, target=parsed, labels={"app.kubernetes.io/managed-by": MANAGED_BY,
                                                     LABEL_PREFIX + "session": params.name},
                holder=f"{params.name}/restore", job=params.name))
        failures: dict[str, str] = {}
        hook_plans = [h.plan(ns) for h in params.hooks]
        hooked = HookResults()
        try:
            pre_failure = await run_phase([h for h in hook_plans if h.phase == "preRestore"], hooked)
            if pre_failure is not None:  # as KubeStash: the restore is skipped, the session Failed
                failures["preRestore hooks"] = f"{pre_failure.code}: the restore was skipped: {pre_failure.message}"
                for t in params.tasks:
                    await _record(ns, params.name, components[t.name],
                                  {"phase": "Failed", "error": failures["preRestore hooks"]})
            for t in params.tasks if pre_failure is None else []:
                component = components[t.name]
                left = deadline - time.time() if deadline else None
                if left is not None and left <= 0:
                    failures[t.name] = f"run-timeout: restoreTimeout {params.limits.timeout} passed before {t.name}"
                    await _record(ns, params.name, component, {"phase": "Failed", "error": failures[t.name]})
                    continue
                kubestash = _speaks_kubestash(params, t.name)
                if kubestash:  # its executor writes Running itself; the pre-created Pending stays until then
                    try:
                        await _prepare_kubestash(params, t.name, component)
                    except RunError as exc:  # what it reads is missing: this component fails, before any Job
                        failures[t.name] = f"{exc.code}: {exc.message}"
                        await _record(ns, params.name, component, {"phase": "Failed", "error": failures[t.name]})
                        continue
                else:
                    await _record(ns, params.name, component, {"phase": "Running"})
                begun = time.time()
                run = RunParameters.model_validate(dict(
                    target=task_target(parsed), namespace=ns,
                    task_params={k: v for k, v in t.params.items() if form_parameter(k)}, snapshot=snapshot,
                    repository={"name": params.data_source.repository,
                                "encryption_secret": params.data_source.encryption_secret},
                    limits={"timeout": f"{math.ceil(left)}s" if left else None,
                            "stuck_after": params.limits.stuck_after, "history_limit": params.limits.history_limit,
                            "logs": "follow" if params.limits.follows("restore") else "tail"},
                    cluster=params.cluster,
                    advanced={"session": params.name, "variables": t.variables,
                              "extra_params": {k: v for k, v in t.params.items() if not form_parameter(k)},
                              "addon": _with_account({**params.addon_settings,
                                                      **({"addonVolumes": t.addon_volumes} if t.addon_volumes
                                                         else {})}, kubestash),
                              "invoker": {"kind": "RestoreSession", "name": params.name}, "within_session": True}))
                state: State = await flow_for(params.addon, t.name)(**run.to_flow("restore"), return_state=True)
                took = sessions.duration(time.time() - begun)
                if held is not None:
                    await claim.renew(kube, held)
                if kubestash and state.is_completed():  # the components say, never the exit code
                    rs_now = await objects.read(kube, "RestoreSession", ns, params.name)
                    result = restore_result(rs_now, component)
                    if not result.ok:
                        failures[t.name] = f"{result.code}: {result.message}"
                        written = ((rs_now.get("status") or {}).get("components") or {}).get(component) or {}
                        await _record(ns, params.name, component, {**written, "phase": "Failed",
                                                                   "error": failures[t.name]})
                elif state.is_completed():
                    await _record(ns, params.name, component, {"phase": "Succeeded", "duration": took})
                else:
                    failures[t.name] = state.message or state.type.value
                    await _record(ns, params.name, component,
                                  {"phase": "Failed", "duration": took, "error": failures[t.name]})
        finally:
            if held is not None:
                await shielded_cleanup(claim.release(kube, held))
        rs = await objects.read(kube, "RestoreSession", ns, params.name)
        status = rs.get("status") or {}
        phase = sessions.restore_phase(status.get("components") or {})
        post_failure = await run_phase([h for h in hook_plans if h.phase == "postRestore"], hooked,
                                       phase == "Succeeded")
        if post_failure is not None:  # a failed postRestore hook fails the session
            failures["postRestore hooks"] = f"{post_failure.code}: {post_failure.message}"
            phase = "Failed"
        conditions = status.get("conditions") or []
        for hook_condition in hooked.conditions():
            conditions = sessions.set_condition(conditions, hook_condition)
        conditions = sessions.set_condition(conditions, sessions.condition(
            "MetricsPushed", True, "SessionFinished", "The session's final step ran (stashflow pushes no metrics)."))
        final = {"phase": phase, "duration": sessions.duration(time.time() - started), "conditions": conditions,
                 **({"hooks": hooked.status()} if hooked.ran else {})}
        await objects.patch_status(kube, "RestoreSession", ns, params.name, final)
        logger.info("RestoreSession %s/%s: %s", ns, params.name, phase)
    if phase != "Succeeded":
        first = next(iter(failures.values()), "job-failed: a component did not succeed")
        raise RunError(f"RestoreSession {ns}/{params.name} failed: " + "; ".join(
            f"{k}: {v}" for k, v in failures.items()), code=first.split(":", 1)[0].strip() or "job-failed",
            hint="see each restore task's flow run")
    return {"restore_session": params.name, "snapshot": snapshot, "phase": phase, "components": components}


__all__ = ["DataSource", "ENTRYPOINT", "FLOW_NAME", "RestoreParameters", "restore_session", "restore_session_object"]
