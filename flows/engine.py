"""The one async implementation behind every Addon-task flow.

The steps' large arguments (the catalog, the run's plan, the Job's outcome) are passed ``quote``d:
Prefect would otherwise walk every one of them looking for futures at every step, which was the
largest CPU cost of a run when hundreds share one worker process (``bench/fanout.py``).

A run: load the catalog → resolve-parameters → provision-volumes → launch-job →
wait-for-job → record-snapshot. Whatever way it ends, it leaves nothing behind that it
should not: a cancelled, crashed, stuck or timed-out run deletes its Job (Foreground) and
PVCs and marks its Snapshot Failed; a failed run keeps its Job only within the history limit
(``sessionHistoryLimit``), where it counts; a successful run keeps its Job for that limit.
"""

from __future__ import annotations

import os
import signal
import time
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, TypeVar, cast

from prefect import get_run_logger
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.settings import get_current_settings
from prefect.utilities.annotations import quote as prefect_quote

from stashflow.addons.catalog import Catalog
from stashflow.addons.contract import contract_of
from stashflow.addons.errors import RunError, StashflowError
from stashflow.addons.render import FLOW_RUN_LABEL, ExecutionPlan
from stashflow.flows import artifacts
from stashflow.tasks import claim, resources
from stashflow.tasks.kube import Kube, connect
from stashflow.tasks.diagnose import Category
from stashflow.tasks.logs import quiet_known_failures
from stashflow.tasks.results import failed_status, now_rfc3339
from stashflow.tasks.stopping import shielded, stop_reason
from stashflow.tasks.retention import apply_retention
from stashflow.tasks.steps import (
    JobFailed,
    RunSpec,
    claim_target,
    launch_job,
    provision_volumes,
    record_snapshot,
    resolve_parameters,
    verify_repository,
    wait_for_job,
)
from stashflow.tasks.wait import JobOutcome

T = TypeVar("T")


def quote(value: T) -> T:
    """Prefect's ``quote`` (a task gets ``value`` as is, not searched for futures), typed as ``value``:
    Prefect unwraps it before the task runs, but its task signatures do not accept the wrapper."""
    return cast(T, prefect_quote(value))

#: Runs whose Job succeeded but whose result cannot be called good: (message, hint) by code.
# Every stashflow flow's result options. Its return value is a summary, used in memory (a session's
# subflows run in its process) and never read back, so it is not persisted; the storage is named so
# that a flow run does not ask the server for its default result storage (three requests per
# session run, two of them blocking: with hundreds of runs on one worker's loop, they all waited).
FLOW_RESULTS: dict[str, Any] = dict(
    persist_result=False,
    result_storage=Path(get_current_settings().results.local_storage_path))

RESULT_FAILURES = {
    "no-result": ("the Job succeeded but reported no result",
                  "the Function must write its termination message or print restic's --json summary"),
    "repository-corrupt": ("restic check found errors in the repository",
                           "the repository is damaged: run `restic check` on it, repair it (`restic repair index`, "
                           "`restic repair snapshots`) or back up into a new directory; earlier Snapshots of this "
                           "repository may not restore either"),
    "repository-check-failed": ("the repository could not be checked after the backup",
                                "see the check's log lines; the backup is kept but counts as failed until a check "
                                "passes"),
}
REPOSITORY_FAILURES = {"repository-corrupt", "repository-check-failed"}
WAIT_GRACE_SECONDS = 30  # past activeDeadlineSeconds, the run's own deadline stops the wait
STOPPED_PHASES = {"TimedOut", "Stuck", "Gone"}  # the Job did not end by itself: always removed
STOPPED_CATEGORIES = {Category.DEADLINE_EXCEEDED}


@dataclass(frozen=True)
class Connection:
    """How to reach the cluster: a kubeconfig (and context), or a KubernetesCredentials block."""

    kubeconfig: str | None = None
    context: str | None = None
    credentials_block: str | None = None

    def connect(self) -> AbstractAsyncContextManager[Kube]:
        return connect(self.kubeconfig, self.context, self.credentials_block)

    @classmethod
    def of_parameters(cls, parameters: dict[str, Any]) -> "Connection":
        """From a flow run's parameters as the API gives them (its ``cluster`` group), for hooks that run
        after the flow-run process is gone."""
        cluster = parameters.get("cluster") or {}
        return cls(cluster.get("kubeconfig"), cluster.get("context"), cluster.get("credentials_block"))


async def execute(spec: RunSpec, catalog: Catalog, connection: Connection,
                  retention: dict[str, Any] | None = None, retry: str | None = None) -> dict[str, Any]:
    """Run one Addon task to its end; return the summary or raise ``StashflowError``.
    With ``retention`` (a RetentionPolicy spec), apply it after the backup, failed or not;
    ``retry`` says in a failure's diagnosis what follows it."""
    started = time.time()
    quiet_known_failures(JobFailed)
    async with connection.connect() as kube:
        plan = await resolve_parameters(quote(spec), quote(catalog), check=True)
        if plan.within_session:  # the session claimed the target for all its tasks
            return await _run(kube, spec, plan, None, started, retention, retry)
        held = await claim_target(quote(plan))
        _fault_point("claim-target")
        try:
            return await _run(kube, spec, plan, held, started, retention, retry)
        finally:
            await shielded_cleanup(claim.release(kube, kube.seen.get("claim", held)))


async def _run(kube: Kube, spec: RunSpec, plan: ExecutionPlan, held: claim.Claim | None, started: float,
               retention: dict[str, Any] | None, retry: str | None = None) -> dict[str, Any]:
    """The run's steps, with the target held."""
    logger = get_run_logger()
    timeout = (spec.request.timeout_seconds + WAIT_GRACE_SECONDS) if spec.request.timeout_seconds else 7 * 86400
    secrets = [plan.resolved.inputs[k] for k in plan.resolved.secret_inputs]
    try:
        pvcs = await provision_volumes(quote(plan))
        _fault_point("provision-volumes")
        await launch_job(quote(plan), pvcs)
        _fault_point("launch-job")
        try:
            outcome = await wait_for_job(quote(plan), timeout, spec.stuck_after, secrets, spec.follow_logs)
        except JobFailed as failed:  # the step is Failed; the run goes on to record why
            outcome = failed.outcome
        _fault_point("wait-for-job")
        if plan.within_session and contract_of(plan.resolved.function) == "kubestash":
            return await _kubestash_ended(kube, plan, outcome)
        if held is not None:
            kube.seen["claim"] = await claim.renew(kube, held)
        verified = await verify_repository(quote(plan)) if outcome.succeeded and plan.snapshot is not None else {}
        result = await record_snapshot(quote(plan), quote(outcome), started, verified)
        _fault_point("record-snapshot")
    except BaseException as exc:  # cancelled, interrupted, or the API failed mid-way
        reason = stop_reason(exc)
        await shielded_cleanup(abort(kube, plan.namespace, resources.selector(plan.labels), reason))
        raise
    retention_error: StashflowError | None = None
    if retention and plan.snapshot is not None and result.get("error_code") in REPOSITORY_FAILURES:
        logger.warning("retention skipped: the repository failed its check, pruning it could lose more")
    elif retention and plan.snapshot is not None:
        try:
            result["retention"] = await apply_retention(quote(plan), retention)
        except StashflowError as exc:  # reported, after the backup's own outcome
            logger.error("retention failed: %s", exc)
            retention_error = exc
    if plan.within_session and outcome.succeeded and "error_code" not in result:
        return result  # the session keeps its history, finishes the Snapshot and tells the overview
    if outcome.succeeded and "error_code" not in result:
        # a limit of 0 keeps nothing, not even this run's Job
        deleted = await resources.prune_history(kube, plan.namespace, plan.labels, spec.history_limit,
                                                plan.job_name if spec.history_limit > 0 else None)
        if deleted:
            logger.info("history limit %d: removed %s", spec.history_limit, ", ".join(deleted))
        await publish_success(kube, plan, result)
        if retention_error is not None:
            raise retention_error
        return result
    return await _failed(kube, spec, plan, outcome, result, retry)


def _fault_point(step: str) -> None:
    """The test suite's fault matrix kills a run right after ``step`` (``STASHFLOW_FAULT_KILL_AFTER``):
    SIGKILL, so nothing of the run can clean up, as when a node or a worker dies. Unset in real use."""
    if os.environ.get("STASHFLOW_FAULT_KILL_AFTER") == step:
        os.kill(os.getpid(), signal.SIGKILL)


async def _kubestash_ended(kube: Kube, plan: ExecutionPlan, outcome: JobOutcome) -> dict[str, Any]:
    """A KubeStash executor within a session: its result is the components it wrote into the session's
    Snapshots (the session reads them, ``addons/contract.py``), never its exit code, so nothing is
    recorded here. A Job that did not end by itself is removed; one that ended stays with its session."""
    if outcome.phase in STOPPED_PHASES or (outcome.diagnosis is not None
                                           and outcome.diagnosis.category in STOPPED_CATEGORIES):
        deleted = await resources.delete_run_objects(kube, plan.namespace, resources.selector(plan.labels))
        if deleted:
            get_run_logger().info("removed %s", ", ".join(deleted))
    get_run_logger().info("Job %s ended %s; its result is read from the components it wrote", plan.job_name,
                          outcome.phase)
    return {"job": plan.job_name, "job_phase": outcome.phase, "contract": "kubestash", "namespace": plan.namespace,
            "target": str(plan.target)}


async def _failed(kube: Kube, spec: RunSpec, plan: ExecutionPlan, outcome: JobOutcome, result: dict[str, Any],
                  retry: str | None = None) -> dict[str, Any]:
    logger = get_run_logger()
    diagnosis = outcome.diagnosis
    stopped = outcome.phase in STOPPED_PHASES or (diagnosis is not None and diagnosis.category in STOPPED_CATEGORIES)
    if stopped or (spec.history_limit <= 0 and not plan.within_session):
        deleted = await resources.delete_run_objects(kube, plan.namespace, resources.selector(plan.labels))
    elif plan.within_session:
        deleted = []  # kept with its session, within the session history limit
    else:  # keep the failed Job for debugging, counted in the history limit
        deleted = await resources.prune_history(kube, plan.namespace, plan.labels, spec.history_limit, plan.job_name)
    if deleted:
        logger.info("removed %s", ", ".join(deleted))
    title = f"{plan.resolved.flow_name} failed for {plan.target} in {plan.namespace}"
    kept = not any(d == f"Job/{plan.job_name}" for d in deleted)
    facts = [("Job", f"`{plan.job_name}`" + (" (kept for debugging)" if kept else " (removed)")),
             ("attempt", str(spec.request.attempt))]
    if plan.snapshot_name:
        facts.append(("Snapshot", f"`{plan.snapshot_name}` (Failed)"))
    if retry:
        facts.append(("retry", retry))
    key = artifacts.target_key("failure", plan.namespace, plan.target.kind, plan.target.name)
    code = result.get("error_code")
    if plan.snapshot_name is not None and not plan.within_session:
        final = code if code in RESULT_FAILURES else "run-timeout" if outcome.phase == "TimedOut" else \
            diagnosis.code if diagnosis else "job-failed"
        await publish_overview(kube, plan, "Failed", final)
    if code in RESULT_FAILURES:
        message, hint = RESULT_FAILURES[code]
        error = RunError(f"{title}: {result.get('error') or message}", code=code, hint=hint)
        await acreate_markdown_artifact(
            key=key, markdown="\n".join([f"# {code}: {title}", "", result.get("error") or message, "",
                                          *[f"- {k}: {v}" for k, v in facts], "", f"**What to do:** {hint}"]),
            description="why the run failed")
        raise error
    assert diagnosis is not None
    code = "run-timeout" if outcome.phase == "TimedOut" else diagnosis.code
    await acreate_markdown_artifact(key=key, markdown=diagnosis.markdown(title, facts),
                                    description="why the run failed")
    raise RunError(f"{title}: {diagnosis.summary()}", code=code, diagnosis=diagnosis, hint=diagnosis.hint)


async def publish_success(kube: Kube, plan: ExecutionPlan, result: dict[str, Any]) -> None:
    """A backup: its components (keyed per target), the target's last backup, its fleet row.
    A restore: what was restored, from which Snapshot."""
    target, ns = plan.target, plan.namespace
    rows = artifacts.component_rows(result.get("components") or {})
    if plan.snapshot_name is None:
        source = plan.resolved.inputs.get("snapshot", "")
        restic_id = plan.resolved.inputs.get("RESTIC_SNAPSHOT_ID", "latest")
        await acreate_markdown_artifact(
            key=artifacts.target_key("restore", ns, target.kind, target.name),
            markdown="\n".join([f"# Restored {target} in {ns}", "",
                                 f"- from Snapshot: `{source}` (component `{plan.component}`, restic snapshot "
                                 f"`{restic_id}`)", f"- task: `{plan.resolved.flow_name}`",
                                 f"- Job: `{plan.job_name}`", f"- finished: {now_rfc3339()}"]),
            description=f"the last restore into {target} in {ns}")
        return
    await acreate_table_artifact(key=artifacts.target_key("components", ns, target.kind, target.name), table=rows,
                                 description=f"Snapshot {plan.snapshot_name}: components")
    await publish_overview(kube, plan, "Completed", "")


async def publish_overview(kube: Kube, plan: ExecutionPlan, state: str, code: str) -> None:
    """The target's last-backup artifact and its fleet row, from the cluster's newest Succeeded Snapshot.
    Never fails the run: an overview that cannot be written is logged."""
    target, ns, now = plan.target, plan.namespace, artifacts.now_utc()
    try:
        own = kube.seen.get(f"Snapshot/{ns}/{plan.snapshot_name}") if state == "Completed" else None
        if own is not None and (own.get("status") or {}).get("phase") == "Succeeded":
            last = own  # this run's, just recorded: the repository's newest Succeeded Snapshot
        else:
            last = await resources.latest_snapshot(kube, ns, plan.repository) if plan.repository else None
        attempt = {"state": state, "code": code, "time": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                   "snapshot": plan.snapshot_name or "-"}
        await acreate_markdown_artifact(
            key=artifacts.target_key("last-backup", ns, target.kind, target.name),
            markdown=artifacts.last_backup_markdown(str(target), ns, last, attempt, now),
            description=f"the last successful backup of {target} in {ns}")
        row = artifacts.fleet_row(namespace=ns, target=str(target), task=plan.resolved.flow_name, state=state,
                                  code=code, when=now, last_success=last,
                                  next_run=await artifacts.next_scheduled_run())
        await artifacts.publish_fleet(row)
    except Exception as exc:  # noqa: BLE001 - the overview must never change a run's outcome
        get_run_logger().warning("overview artifacts not updated: %s", exc)


async def shielded_cleanup(coro: Awaitable[T]) -> T | None:
    """Run cleanup to its end even while the surrounding task is being cancelled; its failure is logged
    (None then). For a run's and a session's cleanup alike."""
    try:
        return await shielded(coro)
    except StashflowError as exc:
        get_run_logger().error("cleanup failed: %s", exc)
        return None


async def abort(kube: Kube, namespace: str, label_selector: str, reason: str) -> list[str]:
    """Stop a run from outside its normal path: delete its Job and PVCs, fail its Snapshot, give its
    target back."""
    deleted = await resources.delete_run_objects(kube, namespace, label_selector)
    deleted += await claim.delete_leases(kube, namespace, label_selector)
    for snapshot in await resources.list_snapshots(kube, namespace, label_selector):
        if (snapshot.get("status") or {}).get("phase") in (None, "Pending", "Running"):
            name = snapshot["metadata"]["name"]
            await resources.patch_snapshot_status(kube, namespace, name, failed_status(snapshot.get("status"), reason))
            deleted.append(f"Snapshot/{name} marked Failed")
    return deleted


async def cleanup_hook(flow: Any, flow_run: Any, state: Any) -> None:
    """``on_cancellation`` / ``on_crashed``: remove what the flow run made, found by its label.

    Prefect runs this in the runner or worker after the flow-run process is gone, so it
    reconnects from the run's own parameters."""
    params = flow_run.parameters or {}
    connection = Connection.of_parameters(params)
    namespace = params.get("namespace") or "default"
    reason = f"the flow run was {str(getattr(state, 'name', 'stopped')).lower()}"
    async with connection.connect() as kube:
        await abort(kube, namespace, f"{FLOW_RUN_LABEL}={flow_run.id}", reason)
