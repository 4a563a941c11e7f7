"""What happens around a scheduled run: missed runs, one run per target, new attempts.

- **Missed runs.** After the scheduler or the workers were down, Prefect still holds every
  missed run. Policy ``latest`` (default) runs only the newest missed run of a deployment and
  skips the older ones; ``all`` runs them all; ``none`` skips every run that starts late. A
  run later than ``starting_deadline_seconds`` (KubeStash's scheduler field) is skipped too.
- **One run per target.** A deployment run holds the Prefect global concurrency limit
  ``stashflow-target-<namespace>-<kind>-<name>`` (limit 1, made at deploy time) while it works.
  A second run of the same target does not queue up behind it: it ends at once as ``Skipped``.
  A plan without a target holds its BackupConfiguration the same way (``held_unit``).
- **New attempts.** After a failed backup, a deployment run with ``max_retry`` left schedules a
  new flow run of its deployment after ``retry_delay``: a new session, a new Job, a new Snapshot.

Skipped runs end in a Completed state named ``Skipped`` whose message says why.
"""

from __future__ import annotations

import re
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator
from uuid import UUID

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
)
from prefect.runtime import deployment as current_deployment
from prefect.runtime import flow_run as current_flow_run
from prefect.states import Completed, State

from stashflow.addons.durations import parse_duration
from stashflow.addons.render import Target
from stashflow.flows import locks

LATE_TOLERANCE = timedelta(seconds=60)  # a run this late is still "on time"


class Skip(Exception):
    """This run must not run; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def skipped(reason: str) -> State:
    get_run_logger().warning("skipped: %s", reason)
    return Completed(name="Skipped", message=reason)


def held_unit(configuration: str, target: Target | None) -> Target:
    """What a session run holds, one run at a time: its target; for a cluster-wide plan (no target) its
    BackupConfiguration, as KubeStash skips a BackupSession while another of the same invoker runs."""
    return target if target is not None else Target("BackupConfiguration", configuration, "core.kubestash.com")


def lock_name(namespace: str, target: Target) -> str:
    """The global concurrency limit that keeps one run per target."""
    raw = f"stashflow-target-{namespace}-{target.kind}-{target.name}".lower()
    return re.sub(r"[^a-z0-9-]", "-", raw)


async def check_missed(policy: str, starting_deadline_seconds: int | None, late_after_seconds: float | None = None
                       ) -> None:
    """Raise ``Skip`` for a scheduled run that the missed-run policy does not run.

    "Due" is the run's ``expected_start_time``: the time the schedule meant it for."""
    if not current_deployment.id or not current_flow_run.id:
        return
    context = FlowRunContext.get()  # the engine read the run as it started it: no second read
    me = context.flow_run if context is not None and context.flow_run is not None \
        and str(context.flow_run.id) == current_flow_run.id else None  # runtime's id is a str
    if me is None:
        async with get_client() as client:
            me = await client.read_flow_run(current_flow_run.id)
    due = me.expected_start_time
    if not me.auto_scheduled or due is None or me.deployment_id is None:
        return  # only runs the schedule made; manual runs and new attempts always run
    now = datetime.now(timezone.utc)
    late = now - due
    if starting_deadline_seconds is not None and late > timedelta(seconds=starting_deadline_seconds):
        raise Skip(f"missed: started {late.total_seconds():.0f}s after its scheduled time {due:%Y-%m-%d %H:%M:%S}, "
                   f"past startingDeadlineSeconds {starting_deadline_seconds}")
    tolerance = timedelta(seconds=late_after_seconds) if late_after_seconds is not None else LATE_TOLERANCE
    if late <= tolerance or policy == "all":
        return
    if policy == "none":
        raise Skip(f"missed: scheduled for {due:%Y-%m-%d %H:%M:%S}, started {late.total_seconds():.0f}s late "
                   "(missed-run policy: none)")
    async with get_client() as client:
        newer = [r.expected_start_time for r in await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[me.deployment_id])),
            flow_run_filter=FlowRunFilter(expected_start_time=FlowRunFilterExpectedStartTime(
                # pydantic makes Prefect's DateTime (pendulum's, on 3.11) of the datetime
                after_=due + timedelta(microseconds=1), before_=now)))  # type: ignore[arg-type]
            if r.auto_scheduled and r.id != me.id and r.expected_start_time is not None]
    if newer:
        raise Skip(f"missed: scheduled for {due:%Y-%m-%d %H:%M:%S}; a later missed run "
                   f"({max(newer):%Y-%m-%d %H:%M:%S}) runs instead (missed-run policy: latest)")


@asynccontextmanager
async def target_lock(namespace: str, target: Target, exclusive: bool) -> AsyncIterator[None]:
    """Hold the target's lock, or raise ``Skip`` when another run holds it. A target without a lock (an
    ad-hoc run; ``stashflow deploy`` makes them) runs without: the cluster's Lease still keeps runs of
    the target apart (``tasks/claim.py``), failing instead of skipping. One request either way: the API
    holds nothing, silently, for a limit that does not exist (``locks.hold`` gives None)."""
    if not exclusive:
        yield
        return
    name = lock_name(namespace, target)
    run_id = current_flow_run.id
    try:
        held = locks.hold(name, UUID(run_id) if run_id else None)
        await held.__aenter__()
    except locks.Busy:
        raise Skip(f"another run of {target} in {namespace} is in progress (lock {name})") from None
    try:
        yield
    except BaseException as exc:
        await held.__aexit__(type(exc), exc, exc.__traceback__)
        raise
    await held.__aexit__(None, None, None)


def retry_note(attempt: int, max_retry: int, delay: str | None, deployed: bool) -> str:
    """What follows if this attempt fails, as the failure's diagnosis says it."""
    if not deployed:
        return "none (a run by hand is not retried; its deployment's runs are)"
    if attempt > max_retry:
        return f"none: this was attempt {attempt} of {max_retry + 1} (retryConfig.maxRetry {max_retry})"
    return f"attempt {attempt + 1} of {max_retry + 1} follows" + (f" in {delay}" if delay else " now")


async def schedule_retry(parameters: dict[str, Any], attempt: int, max_retry: int, delay: str | None, *,
                         name_key: str = "session") -> str | None:
    """Start a new attempt through this run's deployment; returns a note for the log, or None.
    ``name_key`` is the ``advanced`` field naming the run, dropped so that the attempt gets its own."""
    if not current_deployment.id or attempt > max_retry:
        return None
    from prefect.deployments import arun_deployment

    seconds = parse_duration(delay) if delay else 0.0
    when = datetime.now(timezone.utc) + timedelta(seconds=seconds)
    advanced = dict(parameters.get("advanced") or {})
    advanced.update(attempt=attempt + 1)
    advanced.pop(name_key, None)  # a new attempt is a new run: its own name, Job and Snapshot
    again = {**parameters, "advanced": advanced}
    run = await arun_deployment(current_deployment.id, parameters=again, scheduled_time=when, timeout=0,
                               as_subflow=False, tags=[f"attempt:{attempt + 1}"])
    return f"attempt {attempt + 1} of {max_retry + 1} scheduled for {when:%H:%M:%S} (flow run {run.name})"
