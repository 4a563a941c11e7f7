"""A session is one run: the ``backup-session`` flow (``stashflow.flows.session_flows:backup_session``).

As KubeStash runs a BackupConfiguration's session (REFERENCE.md §4.1): the plan's objects are applied
(BackupStorage, Repository, BackupConfiguration), the target is claimed once for the session, the
BackupSession ``<config>-<session>-<unix time>`` is created with one Pending Snapshot per repository
(named in its ``status.snapshots`` before any Job starts), then the session's Addon tasks run in order,
each **its own Prefect flow, as a subflow**, once per repository: every repository gets its own full
backup (one Job per task and repository), so one unreachable repository fails only its Snapshot. Each
task writes its component into its repository's Snapshot (``advanced.within_session``). Then each
Snapshot is finished from its components, retention runs per repository, the Repositories' status is
updated, ``sessionHistoryLimit`` is applied and the BackupSession gets the phase ``CalculatePhase``
gives. ``backupTimeout`` is one deadline for the whole session; ``retryConfig`` starts a new session.
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import deployment as current_deployment
from prefect.runtime import flow_run as current_flow_run
from prefect.states import Failed, State

from stashflow.addons import sessions
from stashflow.addons.contract import contract_of, executor_account, with_service_account
from stashflow.addons.durations import deadline_seconds, parse_duration
from stashflow.addons.errors import InputError, StashflowError
from stashflow.addons.names import label_value
from stashflow.addons.render import COMPONENT_BY_TASK, FLOW_RUN_LABEL, Target
from stashflow.tasks import claim
from stashflow.tasks import session_steps as steps
from stashflow.tasks.retention import apply_retention
from stashflow.tasks.stopping import stop_reason
from stashflow.tasks.steps import ANN_DIRECTORY, ANN_SECRET, ANN_STORAGE, ANN_STORAGE_OBJECT, resolve_parameters

from . import policies
from .hook_runs import HookResults, run_phase
from .addon_flows import _spec_from_parameters, flow_for, loaded, state_message
from .engine import FLOW_RESULTS, Connection, shielded_cleanup
from .parameters import Cluster, Limits, RunParameters, SchedulePolicy
from .session_parameters import SessionAdvanced, SessionHook, SessionParameters, SessionRepository, SessionTask

__all__ = ["ENTRYPOINT", "FLOW_NAME", "SessionParameters", "backup_session", "plan_objects", "task_parameters"]

FLOW_NAME = "backup-session"
ENTRYPOINT = f"{__name__}:backup_session"


def parse_target(text: str | None) -> Target | None:
    """The plan's target, or None for a cluster-wide plan (no target, or KubeStash's ``na``)."""
    if not text:
        return None
    target = Target.parse(text)
    return None if target.name == "na" and target.api_group == "na" else target


def task_target(target: Target | None) -> str:
    """What a task of the session is run for: the target, or KubeStash's ``na`` reference without one."""
    return str(target) if target is not None else "na.na/na"


def _run_name() -> str:
    p = current_flow_run.parameters
    ns = str(p.get("namespace") or "default")
    advanced = p.get("advanced") or {}
    name = advanced.get("backup_session") if isinstance(advanced, dict) else getattr(advanced, "backup_session", None)
    when = current_flow_run.scheduled_start_time
    return f"{ns}/{p.get('configuration')}/{p.get('session')} " + (name or (f"{when:%Y-%m-%d %H:%M}" if when else ""))


def component_of(task: str) -> str:
    """The component a task writes (the rule the run's rendering uses)."""
    return COMPONENT_BY_TASK.get(task, task)


def _storage_annotations(repo: SessionRepository) -> dict[str, str]:
    """Where a Snapshot's data is, so that a restore needs only the Snapshot's name (as a task run records it)."""
    import json

    storage = repo.storage.to_object()
    stored = {"apiVersion": storage.api_version, "kind": storage.kind,
              "metadata": {k: v for k, v in (("name", storage.name), ("namespace", storage.namespace)) if v},
              "spec": {"storage": storage.spec.storage.dump() if storage.spec.storage else {}}}
    values = {ANN_STORAGE: storage.name, ANN_DIRECTORY: repo.directory.strip("/"), ANN_SECRET: repo.encryption_secret or "",
              ANN_STORAGE_OBJECT: json.dumps(stored, separators=(",", ":"), sort_keys=True)}
    return {k: v for k, v in values.items() if v}


def plan_objects(params: SessionParameters, target: Target | None) -> list[dict[str, Any]]:
    """The BackupStorages, Repositories and BackupConfiguration a session needs in the cluster."""
    ns = params.namespace
    out: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    labels = {"app.kubernetes.io/managed-by": "stashflow"}
    for repo in params.repositories:
        storage_ns = repo.storage.namespace or ns
        if (storage_ns, repo.storage.name) not in seen:
            seen.add((storage_ns, repo.storage.name))
            out.append({"apiVersion": "storage.kubestash.com/v1alpha1", "kind": "BackupStorage",
                        "metadata": {"name": repo.storage.name, "namespace": storage_ns, "labels": labels},
                        "spec": repo.storage.spec})
    for repo in params.repositories:
        out.append(sessions.repository(_repo_ref(params, repo), ns, params.configuration, target))
    spec = params.advanced.configuration or _configuration_spec(params, target)
    out.append({"apiVersion": "core.kubestash.com/v1alpha1", "kind": "BackupConfiguration",
                "metadata": {"name": params.configuration, "namespace": ns, "labels": labels},
                "spec": _fill_namespaces(spec, ns)})
    return out


def _repo_ref(params: SessionParameters, repo: SessionRepository) -> sessions.RepositoryRef:
    return sessions.RepositoryRef(name=repo.name, storage=repo.storage.name,
                                  storage_namespace=repo.storage.namespace or params.namespace,
                                  directory=repo.directory, encryption_secret=repo.encryption_secret,
                                  deletion_policy=repo.deletion_policy)


def _configuration_spec(params: SessionParameters, target: Target | None) -> dict[str, Any]:
    """A BackupConfiguration spec for a session given without its plan (what the parameters say)."""
    backends = {}
    for repo in params.repositories:
        backends[repo.storage.name] = {"name": repo.storage.name, "storageRef": {"name": repo.storage.name}}
        if repo.retention_policy:
            backends[repo.storage.name]["retentionPolicy"] = {"name": repo.retention_policy}
    spec: dict[str, Any] = {"backends": list(backends.values()), "sessions": [{
        "name": params.session, "sessionHistoryLimit": params.limits.history_limit,
        "addon": {"name": params.addon, "tasks": [{"name": t.name, **({"params": t.params} if t.params else {})}
                                                   for t in params.tasks]},
        "repositories": [{"name": r.name, "backend": r.storage.name, "directory": r.directory or "/",
                          **({"encryptionSecret": {"name": r.encryption_secret}} if r.encryption_secret else {})}
                         for r in params.repositories]}]}
    if target is not None:
        spec["target"] = {**({"apiGroup": target.api_group} if target.api_group else {}), "kind": target.kind,
                          "name": target.name}
    return spec


def _fill_namespaces(spec: dict[str, Any], ns: str) -> dict[str, Any]:
    """What KubeStash's webhook defaults: the namespace of every reference (the executors read them); and
    what its CRD requires that a stashflow plan may leave out (``scheduler.jobTemplate``, which configures
    KubeStash's trigger CronJob: Prefect schedules here)."""
    import copy

    spec = copy.deepcopy(spec)
    for session in spec.get("sessions") or []:
        if isinstance(session.get("scheduler"), dict):
            session["scheduler"].setdefault("jobTemplate", {})
    if isinstance(spec.get("target"), dict) and spec["target"].get("name") not in (None, "na"):
        spec["target"].setdefault("namespace", ns)
    for backend in spec.get("backends") or []:
        for key in ("storageRef", "retentionPolicy"):
            if isinstance(backend.get(key), dict):
                backend[key].setdefault("namespace", ns)
    for session in spec.get("sessions") or []:
        for repo in session.get("repositories") or []:
            if isinstance(repo.get("encryptionSecret"), dict):
                repo["encryptionSecret"].setdefault("namespace", ns)
    return spec


def task_run(params: SessionParameters, task: SessionTask, repo: SessionRepository, backup_session: str,
             timeout_seconds: int | None) -> RunParameters:
    """The Addon-task run of one task into one repository, within this session."""
    from .parameters import form_parameter

    return RunParameters.model_validate(dict(
        target=task_target(parse_target(params.target)), namespace=params.namespace,
        task_params={k: v for k, v in task.params.items() if form_parameter(k)},
        repository={"name": repo.name, "storage": repo.storage, "directory": repo.directory.strip("/"),
                    "encryption_secret": repo.encryption_secret},
        limits={"timeout": f"{timeout_seconds}s" if timeout_seconds else None,
                "stuck_after": params.limits.stuck_after, "history_limit": params.limits.history_limit,
                "logs": params.limits.logs},
        schedule={"exclusive": False, "max_retry": 0, "missed_runs": "all"}, cluster=params.cluster,
        advanced={"session": backup_session, "plan_session": params.session, "attempt": params.advanced.attempt,
                  "db_version": params.advanced.db_version, "variables": task.variables,
                  "extra_params": {k: v for k, v in task.params.items() if not form_parameter(k)},
                  "addon": {**params.advanced.addon, **({"addonVolumes": task.addon_volumes}
                                                        if task.addon_volumes else {})},
                  "invoker": {"kind": "BackupConfiguration", "name": params.configuration},
                  "within_session": True,
                  "retry_note": policies.retry_note(params.advanced.attempt, params.schedule.max_retry,
                                                    params.schedule.retry_delay, bool(current_deployment.id))}))


def task_parameters(params: SessionParameters, task: SessionTask, repo: SessionRepository, backup_session: str,
                    timeout_seconds: int | None) -> dict[str, Any]:
    """The Addon-task flow's parameters (JSON-ready) for one task into one repository."""
    return task_run(params, task, repo, backup_session, timeout_seconds).to_flow("backup")


# -- tasks whose Function speaks KubeStash's executor contract ---------------------------------------
def _speaks_kubestash(params: SessionParameters, task: SessionTask) -> bool:
    return contract_of(loaded()[0].task_function(params.addon, task.name)) == "kubestash"


def kubestash_task_parameters(params: SessionParameters, task: SessionTask, backup_session: str,
                              timeout_seconds: int | None, service_account: str) -> dict[str, Any]:
    """The one Addon-task run of a KubeStash executor: run for the first repository (its storage is the one
    mounted; its name is in the Job's), as the executor's ServiceAccount."""
    run = task_run(params, task, params.repositories[0], backup_session, timeout_seconds)
    addon = with_service_account(run.advanced.addon, service_account)
    run = run.model_copy(update={"advanced": run.advanced.model_copy(update={"addon": addon})})
    return run.to_flow("backup")


def _one_storage(params: SessionParameters) -> str | None:
    """Why one executor Job cannot reach every repository, or None: it mounts one local storage."""
    locals_ = {(r.storage.namespace or params.namespace, r.storage.name) for r in params.repositories
               if (r.storage.spec.get("storage") or {}).get("provider") == "local"}
    if len(locals_) > 1:
        return (f"unsupported: a KubeStash executor runs once for all repositories and mounts one local "
                f"BackupStorage, but the repositories use {len(locals_)} ({', '.join(sorted(n for _, n in locals_))}); "
                "put them on one local BackupStorage (different directories) or on object storage")
    return None


async def _kubestash_task(params: SessionParameters, task: SessionTask, flow_: Any, ref: sessions.BackupSessionRef,
                          snapshot_of: dict[str, str], deadline: datetime | None, failures: dict[str, str],
                          missing: dict[str, dict[str, str]]) -> None:
    """One KubeStash executor for every repository: RBAC and its objects checked before the Job; after it,
    each Snapshot's component as the executor wrote it. A component missing, unfinished or Failed is that
    Snapshot's failure, with its code."""
    from stashflow.tasks import executor_contract as ec

    logger = get_run_logger()
    ns, name = params.namespace, ref.name
    component = component_of(task.name)
    where = f"{task.name} → all repositories"

    def fail_all(why: str) -> None:
        failures[where] = why
        for snap in snapshot_of.values():
            missing[snap][component] = why

    left = (deadline - datetime.now(timezone.utc)).total_seconds() if deadline else None
    if left is not None and left <= 0:
        return fail_all(f"run-timeout: the session's backupTimeout {params.limits.timeout} passed before "
                        f"{task.name} ran")
    unsupported = _one_storage(params)
    if unsupported:
        return fail_all(unsupported)
    image = loaded()[0].task_function(params.addon, task.name).spec.image or ""
    account, make = executor_account(params.advanced.addon)
    others = sorted({r.storage.namespace for r in params.repositories if r.storage.namespace} - {ns})
    await ec.ensure_executor_rbac(ns, account, "backup", others, image.startswith("ghcr.io/kubedb/"), make)
    problems = await ec.backup_problems(ns, name)
    if problems:
        return fail_all("unknown-object: the executor would not find what it reads: " + "; ".join(problems))
    state: State = await flow_(**kubestash_task_parameters(params, task, name,
                                                           math.ceil(left) if left is not None else None, account),
                               return_state=True)
    if not state.is_completed():  # stashflow's own steps failed (pre-flight, API): no component can be trusted
        logger.warning("%s failed: %s", where, state.message)
        return fail_all(state.message or state.type.value)
    results = await ec.read_backup_results(ns, list(snapshot_of.values()), component)
    for repo, snap in snapshot_of.items():
        result = results[snap]
        if result.ok:
            missing[snap][component] = f"{task.name} ended without writing component {component}"
            continue
        why = f"{result.code}: {result.message}"
        failures[f"{task.name} → {repo}"] = why
        missing[snap][component] = why
        await steps.fail_component(ns, snap, component, why)


async def run_session(params: SessionParameters, backup_session: str, connection: Connection) -> dict[str, Any]:
    """The session to its end; returns its summary or raises ``StashflowError`` (the session failed)."""
    started_at = time.time()
    now = datetime.now(timezone.utc)
    catalog, _ = loaded()
    for t in params.tasks:
        catalog.task(params.addon, t.name)  # unknown-addon / unknown-task before anything is made
    target = parse_target(params.target)
    ns = params.namespace
    timeout = deadline_seconds(params.limits.timeout) if params.limits.timeout else None
    deadline = now + timedelta(seconds=timeout) if timeout else None
    run_id = current_flow_run.id
    ref = sessions.BackupSessionRef(configuration=params.configuration, session=params.session, name=backup_session,
                                    namespace=ns, target=target,
                                    extra_labels={FLOW_RUN_LABEL: str(run_id)} if run_id else {})
    async with connection.connect() as kube:
        begun = await steps.start_session(steps.SessionStart(
            plan_objects=plan_objects(params, target),
            claimant=claim.Claimant(namespace=ns, target=policies.held_unit(params.configuration, target),
                                    labels=sessions.session_labels(ref),
                                    holder=session_holder(params, backup_session, run_id), job=backup_session,
                                    backup_session=backup_session),
            backup_session=sessions.backup_session(ref, backup_timeout=params.limits.timeout, retry_left=max(
                params.schedule.max_retry - (params.advanced.attempt - 1), 0)),
            snapshots=[sessions.session_snapshot(ref, _repo_ref(params, repo), total_components=len(params.tasks),
                                                 now=now, annotations=_storage_annotations(repo))
                       for repo in params.repositories],
            deadline=deadline))
        try:
            return await _session(kube, params, ref, begun.held, deadline, started_at)
        except BaseException as exc:
            if isinstance(exc, StashflowError) and getattr(exc, "session_recorded", False):
                raise
            reason = stop_reason(exc, "session")  # the stashflow worker's SIGTERM says so, as a cancel from the UI
            await shielded_cleanup(steps.abort_session(ns, backup_session, reason))
            raise
        finally:
            await shielded_cleanup(claim.release(kube, begun.held))


async def _session(kube: Any, params: SessionParameters, ref: sessions.BackupSessionRef, held: claim.Claim,
                   deadline: datetime | None, started: float) -> dict[str, Any]:
    logger = get_run_logger()
    ns, name = params.namespace, ref.name
    snapshot_of = {repo.name: sessions.snapshot_name(repo.name, name) for repo in params.repositories}

    failures: dict[str, str] = {}  # "<task> → <repository>": "code: reason"
    missing: dict[str, dict[str, str]] = {snapshot_of[r.name]: {} for r in params.repositories}
    hook_plans = [h.plan(ns) for h in params.hooks]
    hooked = HookResults()
    pre_failure = await run_phase([h for h in hook_plans if h.phase == "preBackup"], hooked)
    pre_ok = pre_failure is None
    if pre_failure is not None:  # KubeStash: a failed preBackup hook skips the backup and fails the session
        skipped = f"{pre_failure.code}: the backup was skipped: {pre_failure.message}"
        failures["preBackup hooks"] = skipped
        for repo in params.repositories:
            for task in params.tasks:
                missing[snapshot_of[repo.name]][component_of(task.name)] = skipped
    tasks_to_run = params.tasks if pre_ok else []
    for task in tasks_to_run:
        flow_ = flow_for(params.addon, task.name)
        # stashflow's own (env-contract) Functions: one Job per task and repository. A Function that speaks
        # KubeStash's API contract (addons/contract.py) reads every Snapshot of status.snapshots itself and
        # writes its component into each: one Job per task, its result read from those components.
        if _speaks_kubestash(params, task):
            await _kubestash_task(params, task, flow_, ref, snapshot_of, deadline, failures, missing)
            await claim.renew(kube, held)
            continue
        for repo in params.repositories:
            where = f"{task.name} → {repo.name}"
            component = component_of(task.name)
            left = (deadline - datetime.now(timezone.utc)).total_seconds() if deadline else None
            if left is not None and left <= 0:
                why = f"run-timeout: the session's backupTimeout {params.limits.timeout} passed before {task.name} ran"
                failures[where] = why
                missing[snapshot_of[repo.name]][component] = why
                continue
            state: State = await flow_(**task_parameters(params, task, repo, name,
                                                         math.ceil(left) if left is not None else None),
                                       return_state=True)
            await claim.renew(kube, held)
            if not state.is_completed():
                failures[where] = state.message or state.type.value
                logger.warning("%s failed: %s", where, failures[where])
            missing[snapshot_of[repo.name]][component] = failures.get(where) or \
                f"{task.name} ended without writing component {component}"

    finished = await steps.finish_snapshots(ns, missing)
    backed_up = pre_ok and all((finished.get(n) or {}).get("phase") == "Succeeded" for n in snapshot_of.values())
    post_failure = await run_phase([h for h in hook_plans if h.phase == "postBackup"], hooked, backed_up)
    if post_failure is not None:  # KubeStash: a failed postBackup hook fails the session
        failures["postBackup hooks"] = f"{post_failure.code}: {post_failure.message}"
    retention = await _retention(params, ref, finished, snapshot_of)
    for repo_name, snap_name in snapshot_of.items():
        snap = finished.get(snap_name) or {}
        if snap.get("phase") != "Succeeded" and not any(w.endswith(f"→ {repo_name}") for w in failures):
            failures[f"Snapshot {snap_name}"] = "job-failed: " + ("; ".join(
                f"{c}: {v.get('error')}" for c, v in (snap.get("components") or {}).items()
                if v and v.get("phase") != "Succeeded") or f"it ended {snap.get('phase')}")
    retry_at = None
    if failures or any(r.get("phase") == "FailedToApply" for r in retention):
        retry_at = await _retry(params)
    from .artifacts import next_scheduled_run

    try:
        next_schedule = await next_scheduled_run()
    except Exception as exc:  # noqa: BLE001 - the configuration's status never changes the session's outcome
        logger.warning("next scheduled run not read: %s", exc)
        next_schedule = None
    status = await steps.finish_session(steps.SessionEnd(
        namespace=ns, name=name, configuration=params.configuration, session=params.session,
        repositories=[r.name for r in params.repositories], history_limit=params.limits.history_limit,
        snapshots=finished, retention=retention, started=started, retry_at=retry_at, hooks=hooked.status(),
        hook_conditions=hooked.conditions(), next_schedule=next_schedule))
    summary = {"backup_session": name, "phase": status["phase"], "duration": status.get("duration"),
               "snapshots": {n: {"phase": s.get("phase"), "size": s.get("size"), "integrity": s.get("integrity"),
                                 "components": sorted((s.get("components") or {}))} for n, s in finished.items()}}
    await _publish(params, ref, summary, failures)
    if status["phase"] != "Succeeded":
        error = steps.session_error(name, ns, failures or {"retention": "retention-failed: see the BackupSession"})
        error.session_recorded = True  # type: ignore[attr-defined]
        raise error
    return summary


async def _retention(params: SessionParameters, ref: sessions.BackupSessionRef, finished: dict[str, dict[str, Any]],
                     snapshot_of: dict[str, str]) -> list[dict[str, Any]]:
    """Each repository's RetentionPolicy over its Snapshots, once this session's Snapshot is finished
    (never on a repository whose check failed: pruning a damaged one could lose more)."""
    logger = get_run_logger()
    catalog, _ = loaded()
    out = []
    addon = catalog.addons[params.addon]
    for repo in params.repositories:
        if not repo.retention:
            continue
        entry = {"ref": {"name": repo.retention_policy or "plan", "namespace": params.namespace},
                 "repository": repo.name}
        components = (finished.get(snapshot_of[repo.name]) or {}).get("components") or {}
        if any((c or {}).get("integrity") is False for c in components.values()):
            out.append({**entry, "phase": "FailedToApply",
                        "error": "the repository failed its check: retention skipped, pruning could lose more"})
            continue
        _, _, _, task = catalog.task(params.addon, params.tasks[0].name)
        try:  # the forget Jobs are the first task's pod, as a task run's retention uses its own
            run = task_run(params, params.tasks[0], repo, ref.name, 1800)
            plan = await resolve_parameters(_spec_from_parameters(addon, task, run), catalog)
            await apply_retention(plan, repo.retention)
            out.append({**entry, "phase": "Applied"})
        except StashflowError as exc:
            logger.error("retention of repository %s failed: %s", repo.name, exc)
            out.append({**entry, "phase": "FailedToApply", "error": exc.message})
    return out


async def _retry(params: SessionParameters) -> datetime | None:
    """A new session after a failed one, through this run's deployment (retryConfig)."""
    policy = params.schedule
    note = await policies.schedule_retry(dict(current_flow_run.parameters), params.advanced.attempt, policy.max_retry,
                                         policy.retry_delay, name_key="backup_session")
    if not note:
        return None
    get_run_logger().warning("session failed; %s", note)
    delay = parse_duration(policy.retry_delay) if policy.retry_delay else 0.0
    return datetime.now(timezone.utc) + timedelta(seconds=delay)


async def _publish(params: SessionParameters, ref: sessions.BackupSessionRef, summary: dict[str, Any],
                   failures: dict[str, str]) -> None:
    """The session's Snapshots as a table artifact, keyed per plan session. Never fails the session."""
    from prefect.artifacts import acreate_table_artifact

    try:
        rows = [{"Snapshot": n, "phase": s["phase"] or "", "size": s.get("size") or "",
                 "components": ", ".join(s["components"])} for n, s in summary["snapshots"].items()]
        key = label_value(f"session-{params.namespace}-{params.configuration}-{params.session}").lower()
        key = "".join(ch if ch.isalnum() or ch == "-" else "-" for ch in key)
        await acreate_table_artifact(key=key, table=rows, description=f"BackupSession {ref.name}: {summary['phase']}"
                                     + (f" ({'; '.join(failures.values())})" if failures else ""))
    except Exception as exc:  # noqa: BLE001 - an artifact must never change the session's outcome
        get_run_logger().warning("session artifact not written: %s", exc)


def session_holder(params: SessionParameters, backup_session: str, run_id: Any) -> str:
    """Who holds the target for the session: its name, and the flow run when the name came from the
    clock (two runs started in the same second must not adopt one session; a rerun of the same flow
    run, or a replacement Pod of it, still does)."""
    return claim.identity(f"{backup_session}/session",
                          None if params.advanced.backup_session or not run_id else str(run_id))


def backup_session_name(params: SessionParameters) -> str:
    """The BackupSession's name: given, else ``<config>-<session>-<unix time of the scheduled run>``."""
    if params.advanced.backup_session:
        return params.advanced.backup_session
    when = current_flow_run.scheduled_start_time
    seconds = int(when.timestamp()) if when else int(time.time())
    return sessions.backup_session_name(params.configuration, params.session, seconds)


async def cleanup_hook(flow: Any, flow_run: Any, state: Any) -> None:
    """``on_cancellation`` / ``on_crashed``: end the sessions this flow run made (found by its label):
    their Jobs and PVCs deleted, the target given back, unfinished Snapshots and the BackupSession Failed."""
    from stashflow.tasks import objects

    p = flow_run.parameters or {}
    connection = Connection.of_parameters(p)
    namespace = p.get("namespace") or "default"
    reason = f"the flow run was {str(getattr(state, 'name', 'stopped')).lower()}"
    async with connection.connect() as kube:
        for bs in await objects.list_of(kube, "BackupSession", namespace, f"{FLOW_RUN_LABEL}={flow_run.id}"):
            await steps.abort_session(namespace, bs["metadata"]["name"], reason)


@flow(name=FLOW_NAME, flow_run_name=_run_name, retries=0, validate_parameters=True,
      on_cancellation=[cleanup_hook], on_crashed=[cleanup_hook], **FLOW_RESULTS)
async def backup_session(*, target: str | None = None, namespace: str = "default", configuration: str, session: str,
                         addon: str, tasks: list[SessionTask], repositories: list[SessionRepository],
                         hooks: list[SessionHook] | None = None,
                         limits: Limits = Limits(), schedule: SchedulePolicy = SchedulePolicy(),
                         cluster: Cluster = Cluster(), advanced: SessionAdvanced = SessionAdvanced()) -> Any:
    """Run one session of a BackupConfiguration as KubeStash does: one BackupSession, one Snapshot per
    repository, the session's Addon tasks in order (each its own flow run), one component per task.

    Args:
        target: What is backed up, as KIND/NAME; empty for a cluster-wide plan.
        namespace: Namespace of the plan, its target and everything the session creates.
        configuration: The BackupConfiguration's name (the session's invoker).
        session: The name of its session (sessions[].name).
        addon: The session's Addon.
        tasks: Its tasks, in order, with their params.
        repositories: Where the data goes; each gets its own Snapshot and its own copy.
        hooks: The session's preBackup/postBackup hooks, each with its HookTemplate.
        limits: backupTimeout (one deadline for the session), stuck Pods, sessionHistoryLimit.
        schedule: retryConfig (new sessions), missed runs, the target's lock.
        cluster: How to reach the cluster.
        advanced: The BackupSession's name, attempt, the plan as written.
    """
    try:
        params = SessionParameters(configuration=configuration, session=session, addon=addon, tasks=tasks,
                                   repositories=repositories, namespace=namespace, target=target,
                                   hooks=hooks or [], limits=limits, schedule=schedule, cluster=cluster,
                                   advanced=advanced)
        if not params.tasks or not params.repositories:
            raise InputError("a session needs at least one task and one repository", code="missing-field",
                             field="tasks" if not params.tasks else "repositories")
        name = backup_session_name(params)
        connection = Connection(cluster.kubeconfig, cluster.context, cluster.credentials_block)
        parsed = parse_target(params.target)
        await policies.check_missed(schedule.missed_runs.value, schedule.starting_deadline_seconds,
                                    schedule.late_after_seconds)
        async with policies.target_lock(namespace, policies.held_unit(configuration, parsed), schedule.exclusive):
            return await run_session(params, name, connection)
    except policies.Skip as skip:
        return policies.skipped(skip.reason)
    except StashflowError as exc:
        get_run_logger().error("%s", exc.format())
        return Failed(message=state_message(exc), data=exc)

