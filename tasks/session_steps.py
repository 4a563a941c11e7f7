"""The steps a session run takes around its tasks, each a Prefect task (flows/session_flows.py).

start-session (the plan's objects, the target's claim, the BackupSession, one Snapshot per repository,
``status.snapshots`` written before any Job) → [the tasks, as subflows] → finish-snapshots →
apply-retention → finish-session (Repositories' status, session history, the BackupSession's end, the
BackupConfiguration's status: one task, as each Prefect task run costs its worker and the server
three events, and a fleet's sessions start on the same minute). Objects are built
by ``addons/sessions.py``; here they meet the cluster. Each step is idempotent: a session started
again under the same name adopts what it made.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from prefect import get_run_logger, task

from stashflow.addons import sessions
from stashflow.addons.errors import Conflict, NotFound, RunError, StashflowError
from stashflow.addons.names import label_value
from stashflow.addons.render import LABEL_PREFIX, MANAGED_BY

from . import claim, objects, resources
from .kube import current
from .results import aggregate, failed_status
from .steps import STEP, log_claim
from .stopping import shielded, stop_reason


@dataclass(frozen=True)
class SessionStart:
    """What a session makes before its first task. The BackupSession and Snapshots are as built without
    their owners' uids: ``start-session`` names their owners once the plan's objects are applied."""

    plan_objects: list[dict[str, Any]]  # BackupStorages, Repositories, the BackupConfiguration
    claimant: claim.Claimant  # the target, held for the whole session
    backup_session: dict[str, Any]
    snapshots: list[dict[str, Any]]  # one Pending Snapshot per repository
    deadline: datetime | None  # backupTimeout, as the BackupSession's status.backupDeadline


@dataclass(frozen=True)
class StartedSession:
    """A session ready for its tasks: the target held, the BackupSession's status as written."""

    held: claim.Claim
    status: dict[str, Any]


@task(name="start-session", **STEP)
async def start_session(start: SessionStart) -> StartedSession:
    """Apply the plan's objects, hold the target for the whole session, then make the BackupSession, one
    Running Snapshot per repository and the BackupSession's status naming them (what KubeStash's
    executors read first) with its deadline: the tasks come next.

    One task, not three: each task run costs the worker and the Prefect server three events, and a fleet's
    sessions start on the same minute. A failure after the claim ends what was made and gives the target
    back, here: the caller has no claim to release."""
    kube = current()
    applied = await _apply_plan_objects(start.plan_objects)
    held = log_claim(await claim.claim_target(kube, start.claimant), start.claimant.target)
    try:
        status = await _begin(sessions.owned(start.backup_session, applied),
                              [sessions.owned(s, applied) for s in start.snapshots], start.deadline)
    except BaseException as exc:
        name = start.backup_session["metadata"]["name"]
        await shielded(abort_session(start.claimant.namespace, name, stop_reason(exc, "session")))
        await shielded(claim.release(kube, held))
        raise
    return StartedSession(held, status)


async def _apply_plan_objects(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Create or update the plan's BackupStorages, Repositories and BackupConfiguration (their CRDs
    first where the cluster has none); return them as the cluster has them (with their uids)."""
    kube, logger = current(), get_run_logger()
    for kind, state in (await objects.ensure_crds(kube, sorted({o["kind"] for o in items} | {
            "BackupSession", "Snapshot"}))).items():
        if state == "installed":
            logger.info("installed stashflow's %s CRD: the cluster had none", kind)
    applied = []
    for obj in items:
        applied.append(await objects.apply(kube, obj))
        logger.info("%s %s/%s applied", obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
    return applied


async def _create_or_adopt(obj: dict[str, Any]) -> dict[str, Any]:
    kube = current()
    meta = obj["metadata"]
    try:
        return await objects.create(kube, obj)
    except Conflict:
        pass  # there already: this session's (a restart) or another's
    found = await objects.read(kube, obj["kind"], meta["namespace"], meta["name"])
    mine = (found["metadata"].get("labels") or {}).get(LABEL_PREFIX + "session")
    if mine != meta["labels"].get(LABEL_PREFIX + "session"):
        raise Conflict(f'{obj["kind"]} {meta["namespace"]}/{meta["name"]} exists and belongs to another session',
                       status=409, hint="give the session another name, or delete the old object")
    return found


async def _begin(backup_session: dict[str, Any], snapshots: list[dict[str, Any]], deadline: datetime | None
                 ) -> dict[str, Any]:
    """The BackupSession, its Snapshots, then its status. Each status is written once, as it stands when
    the tasks start: the Snapshots Running, the session's ``SnapshotsEnsured`` and ``BackupExecutorEnsured``
    (KubeStash writes Pending first and Running when its executor starts: nothing runs in between here)."""
    kube, logger = current(), get_run_logger()
    bs = await _create_or_adopt(backup_session)
    ns, name = bs["metadata"]["namespace"], bs["metadata"]["name"]
    listed = []
    for snap in snapshots:
        found = await _create_or_adopt(snap)
        phase = (found.get("status") or {}).get("phase")  # adopted (a restarted session): made already
        if phase != "Running":
            fresh = {**snap["status"], "phase": "Running"}
            await resources.patch_snapshot_status(kube, ns, snap["metadata"]["name"],
                                                  {"phase": "Running"} if phase else fresh)
        listed.append({"name": snap["metadata"]["name"], "phase": "Running", "appRef": snap["spec"]["appRef"],
                       "repository": snap["spec"]["repository"]})
        logger.info("Snapshot %s of repository %s is Running", snap["metadata"]["name"], snap["spec"]["repository"])
    status: dict[str, Any] = {"snapshots": listed, "totalSnapshots": len(listed), "conditions": [
        sessions.condition("SnapshotsEnsured", True, "SuccessfullyEnsuredSnapshots",
                           "Snapshots have been ensured successfully."),
        sessions.condition("BackupExecutorEnsured", True, "SuccessfullyEnsuredBackupExecutor",
                           "Backup Executor has been ensured successfully.")]}
    if deadline is not None:
        status["backupDeadline"] = deadline.strftime("%Y-%m-%dT%H:%M:%SZ")
    status["phase"] = sessions.calculate_phase(status)
    logger.info("BackupSession %s/%s: %s", ns, name, status["phase"])
    written = await objects.patch_status(kube, "BackupSession", ns, name, status)
    return written.get("status") or status


@task(name="fail-component", **STEP)
async def fail_component(namespace: str, snapshot: str, component: str, why: str) -> None:
    """A KubeStash executor's component that did not succeed (absent, still Running, or Failed): Failed,
    its error the result's code and reason, what the executor wrote otherwise kept."""
    kube = current()
    try:
        snap = await resources.read(kube, "Snapshot", namespace, snapshot)
    except NotFound:
        return
    written = ((snap.get("status") or {}).get("components") or {}).get(component) or {}
    await resources.patch_snapshot_status(kube, namespace, snapshot, {"components": {component: {
        **written, "phase": "Failed", "error": why}}})


@task(name="finish-snapshots", **STEP)
async def finish_snapshots(namespace: str, expected: dict[str, dict[str, str]]) -> dict[str, dict[str, Any]]:
    """End each Snapshot (by name: component → why it would be missing) from its components: a component
    no task wrote is Failed with that reason; phase, size, integrity, totalComponents, conditions."""
    kube, logger = current(), get_run_logger()
    now = datetime.now(timezone.utc)
    done: dict[str, dict[str, Any]] = {}
    for name, components in expected.items():
        try:
            snap = await resources.read(kube, "Snapshot", namespace, name)
        except NotFound:
            logger.warning("Snapshot %s was deleted during the session", name)
            done[name] = {"phase": "Failed"}
            continue
        status = snap.get("status") or {}
        written = {k: v for k, v in (status.get("components") or {}).items() if v}
        status = sessions.finish_snapshot(status, components, now=now, aggregate=aggregate(written))
        done[name] = await resources.patch_snapshot_status(kube, namespace, name, status)
        logger.info("Snapshot %s: %s (%d component(s)%s)", name, status["phase"], status["totalComponents"],
                    f", {status['size']}" if status.get("size") else "")
    return {n: (s.get("status") or {}) if "status" in s else s for n, s in done.items()}


async def update_repositories(namespace: str, repositories: list[str]) -> None:
    """Each Repository's status from its Snapshots: last backup, count, size, integrity, recent ones."""
    kube = current()
    for name in repositories:
        snaps = await resources.list_snapshots(kube, namespace, f"{sessions.REPO_LABEL}={name}")
        status = sessions.repository_status(snaps)
        status["conditions"] = [sessions.condition("RepositoryInitialized", True, "RepositoryInitializationSucceeded",
                                                   "stashflow initialises the restic repositories of its own "
                                                   "Functions before their first backup")]
        await objects.patch_status(kube, "Repository", namespace, name, status)


async def clean_session_history(namespace: str, configuration: str, session: str, current_name: str,
                                limit: int) -> list[str]:
    """``sessionHistoryLimit``: keep that many BackupSessions of this plan's session (this one always) with
    their Jobs; older ones go, with their Jobs and PVCs. A limit of 0 keeps no Job, not even this session's
    (its BackupSession stays: it is the record)."""
    kube, logger = current(), get_run_logger()
    selector = (f"{sessions.INVOKER_LABEL}={configuration},app.kubernetes.io/managed-by={MANAGED_BY},"
                f"{LABEL_PREFIX}plan-session={session}")
    found = await objects.list_of(kube, "BackupSession", namespace, selector)
    others = sorted((b for b in found if b["metadata"]["name"] != current_name),
                    key=lambda b: b["metadata"].get("creationTimestamp") or "", reverse=True)
    removed: list[str] = []
    for old in others[max(limit - 1, 0):]:
        name = old["metadata"]["name"]
        removed += await resources.delete_run_objects(kube, namespace, _of_session(name))
        if await objects.delete(kube, "BackupSession", namespace, name):
            removed.append(f"BackupSession/{name}")
    if limit <= 0:
        removed += await resources.delete_run_objects(kube, namespace, _of_session(current_name))
    if removed:
        logger.info("session history limit %d: removed %s", limit, ", ".join(removed))
    return removed


def _of_session(name: str) -> str:
    return f"app.kubernetes.io/managed-by={MANAGED_BY},{LABEL_PREFIX}session={label_value(name)}"


@dataclass(frozen=True)
class SessionEnd:
    """What ``finish-session`` needs: the session, how its Snapshots and retention ended, its hooks."""

    namespace: str
    name: str
    configuration: str
    session: str
    repositories: list[str]
    history_limit: int
    snapshots: dict[str, dict[str, Any]]
    retention: list[dict[str, Any]]
    started: float
    retry_at: datetime | None = None
    hooks: dict[str, Any] | None = None
    hook_conditions: list[dict[str, Any]] | None = None
    next_schedule: datetime | None = None


@task(name="finish-session", **STEP)
async def finish_session(end: SessionEnd) -> dict[str, Any]:
    """What follows a session's Snapshots and retention, one step: each Repository's status, the session
    history limit, the BackupSession's end, the BackupConfiguration's status. Returns the BackupSession's
    status. Only the BackupSession's own write can fail the step: history that could not be cleaned is
    its condition, a configuration status not written a warning."""
    logger = get_run_logger()
    await update_repositories(end.namespace, end.repositories)
    try:
        await clean_session_history(end.namespace, end.configuration, end.session, end.name, end.history_limit)
        cleaned = True
    except StashflowError as exc:
        logger.error("session history not cleaned: %s", exc)
        cleaned = False
    status = await _end_session(end.namespace, end.name, end.snapshots, end.retention, cleaned, end.started,
                                end.retry_at, end.hooks, end.hook_conditions)
    try:
        await update_configuration(end.namespace, end.configuration, end.session, end.next_schedule,
                                   status["phase"])
    except Exception as exc:  # noqa: BLE001 - the configuration's status never changes the session's outcome
        logger.warning("BackupConfiguration status not updated: %s", exc)
    return status


async def _end_session(namespace: str, name: str, snapshots: dict[str, dict[str, Any]],
                       retention: list[dict[str, Any]], history_cleaned: bool, started: float,
                       retry_at: datetime | None = None, hooks: dict[str, Any] | None = None,
                       hook_conditions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The BackupSession's end: its Snapshots' phases, retention per repository, its hooks (``status.hooks``
    and a condition per phase), the final steps' conditions, the duration, and the phase ``CalculatePhase``
    gives."""
    import time

    kube, logger = current(), get_run_logger()
    bs = await objects.read(kube, "BackupSession", namespace, name)
    status = bs.get("status") or {}
    status["snapshots"] = [{**s, "phase": (snapshots.get(s["name"]) or {}).get("phase") or "Failed"}
                           for s in status.get("snapshots") or []]
    conditions = status.get("conditions") or []
    if hooks:
        status["hooks"] = hooks
    for hook_condition in hook_conditions or []:
        conditions = sessions.set_condition(conditions, hook_condition)
    if retention:
        status["retentionPolicy"] = retention
        conditions = sessions.set_condition(conditions, sessions.condition(
            "RetentionPolicyExecutorEnsured", True, "SuccessfullyEnsuredRetentionPolicyExecutor",
            "RetentionPolicy Executor has been ensured successfully."))
    conditions = sessions.set_condition(conditions, sessions.condition(
        "SessionHistoryCleaned", history_cleaned,
        "SuccessfullyCleanedSessionHistory" if history_cleaned else "FailedToCleanSessionHistory"))
    # stashflow pushes no metrics: the session's record is its Prefect flow run; the final step ran
    conditions = sessions.set_condition(conditions, sessions.condition(
        "MetricsPushed", True, "SessionFinished", "The session's final step ran (stashflow pushes no metrics; its "
                                                   "Prefect flow run is the record)."))
    status["conditions"] = conditions
    status["duration"] = sessions.duration(time.time() - started)
    status["phase"] = sessions.calculate_phase(status)
    if retry_at is not None and status["phase"] == "Failed":
        status["retried"] = True
        status["nextRetry"] = retry_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    await objects.patch_status(kube, "BackupSession", namespace, name, status)
    logger.info("BackupSession %s/%s: %s in %s", namespace, name, status["phase"], status["duration"])
    return status


async def abort_session(namespace: str, name: str, reason: str) -> list[str]:
    """Stop a session from outside its normal path: delete its Jobs and PVCs, give the target back, end its
    unfinished Snapshots Failed and the BackupSession Failed."""
    kube = current()
    selector = _of_session(name)
    done = await resources.delete_run_objects(kube, namespace, selector)
    done += await claim.delete_leases(kube, namespace, selector)
    for snap in await resources.list_snapshots(kube, namespace, selector):
        if (snap.get("status") or {}).get("phase") in (None, "Pending", "Running"):
            await resources.patch_snapshot_status(kube, namespace, snap["metadata"]["name"],
                                                  failed_status(snap.get("status"), reason))
            done.append(f'Snapshot/{snap["metadata"]["name"]} marked Failed')
    with contextlib.suppress(NotFound):
        bs = await objects.read(kube, "BackupSession", namespace, name)
        labels = bs["metadata"].get("labels") or {}
        ours = labels.get(LABEL_PREFIX + "session") == label_value(name) and \
            labels.get("app.kubernetes.io/managed-by") == MANAGED_BY  # not KubeStash's of the same name
        if ours and (bs.get("status") or {}).get("phase") not in ("Succeeded", "Failed", "Skipped"):
            conditions = sessions.set_condition((bs.get("status") or {}).get("conditions") or [], sessions.condition(
                "MetricsPushed", False, "SessionStopped", reason))
            await objects.patch_status(kube, "BackupSession", namespace, name,
                                       {"phase": "Failed", "conditions": conditions})
            done.append(f"BackupSession/{name} marked Failed")
    return done


def session_error(name: str, namespace: str, failures: dict[str, str]) -> RunError:
    """The session's failure: the first failed task's code, every failure in the message."""
    first = next(iter(failures.values()))
    code = first.split(":", 1)[0].strip() if ":" in first else "job-failed"
    detail = "; ".join(f"{where}: {why}" for where, why in failures.items())
    return RunError(f"BackupSession {namespace}/{name} failed: {detail}", code=code,
                    hint="see each task's flow run; a Snapshot of another repository may have succeeded")


async def update_configuration(namespace: str, configuration: str, session: str, next_schedule: datetime | None,
                               last_phase: str) -> None:
    """The BackupConfiguration's status: Ready (its sessions are scheduled by Prefect deployments), and this
    session's entry with its next scheduled run (``sessions[].nextSchedule``)."""
    kube = current()
    bc = await objects.read(kube, "BackupConfiguration", namespace, configuration)
    status = bc.get("status") or {}
    entry: dict[str, Any] = {"name": session, "conditions": [sessions.condition(
        "SchedulerEnsured", True, "SchedulerEnsured", f"scheduled by a Prefect deployment; last session {last_phase}")]}
    if next_schedule is not None:
        entry["nextSchedule"] = next_schedule.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    entries = [e for e in status.get("sessions") or [] if e.get("name") != session] + [entry]
    await objects.patch_status(kube, "BackupConfiguration", namespace, configuration,
                               {"phase": "Ready", "sessions": sorted(entries, key=lambda e: e["name"]),
                                "conditions": sessions.set_condition(status.get("conditions") or [], sessions.condition(
                                    "ValidationPassed", True, "ResourceValidationPassed",
                                    "checked by stashflow's plan check (stashflow validate)"))})
