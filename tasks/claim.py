"""One run per target at a time, decided in the cluster itself.

Prefect's per-target concurrency limit keeps a deployment's runs apart, but it cannot see a
run of another Prefect server, an ad-hoc ``stashflow run``, or a run killed with its Job still
going. So before a run touches the repository it claims its target: a ``coordination.k8s.io``
Lease named for the target, created atomically (a second creator gets 409). The Lease names its
holder, the run's identity (session, task, attempt); the same identity claims it again (a rerun
adopting its Job). A Lease is released at the end of the run, and taken over only when it is
stale: no Job of its holder is active and the holder has not renewed it for ``grace`` seconds
(a run between its Jobs renews it). Snapshots that a stale holder left ``Pending`` or
``Running`` end ``Failed`` with the reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from kubernetes_asyncio import client

from stashflow.addons.errors import Conflict, NotFound, RunError
from stashflow.addons.names import label_value, valid_name
from stashflow.addons.render import LABEL_PREFIX, MANAGED_BY, ExecutionPlan, Target

from . import resources
from .kube import Kube
from .preflight import namespace_missing
from .results import failed_status

HOLDER_ANNOTATION = LABEL_PREFIX + "holder-job"
GRACE_SECONDS = 120


@dataclass(frozen=True)
class Claim:
    """A held target: the Lease's name and namespace, and whether it was taken from a stale run."""

    namespace: str
    lease: str
    holder: str
    taken_over_from: str | None = None
    orphans_failed: tuple[str, ...] = ()
    resource_version: str | None = None  # of our last write: release deletes exactly that, without a read
    renewed: float = dataclasses.field(default_factory=time.monotonic, compare=False)


@dataclass(frozen=True)
class Claimant:
    """Who claims a target: one Addon-task run (``of_plan``) or a whole session run (flows/session_flows.py)."""

    namespace: str
    target: Target
    labels: dict[str, str]
    holder: str  # the identity; the same identity may claim again (adoption after a restart)
    job: str  # named on the Lease, for whoever finds the target busy
    snapshot: str | None = None  # its own Snapshot, never an orphan
    backup_session: str | None = None  # a session's Snapshots are its own, never orphans

    @classmethod
    def of_plan(cls, plan: ExecutionPlan) -> "Claimant":
        return cls(plan.namespace, plan.target, dict(plan.labels), holder_of(plan), plan.job_name, plan.snapshot_name)


def lease_name(plan: ExecutionPlan | Claimant) -> str:
    return valid_name("stashflow-target", plan.target.kind.lower(), plan.target.name)


def holder_of(plan: ExecutionPlan) -> str:
    """The run's identity: what names its Job, and the flow run when the name came from the clock
    (``ExecutionPlan.owner``). The same identity may claim again (adoption)."""
    return identity(f"{plan.session}/{plan.resolved.task.name}/{plan.labels.get(LABEL_PREFIX + 'attempt', '1')}",
                    plan.owner)


def identity(named: str, owner: str | None) -> str:
    """A Lease holder: the run's name, and ``@owner`` (its flow run) when the name came from the clock."""
    return f"{named}@{owner}" if owner else named


def same_run(theirs: str, mine: str) -> bool:
    """Is the Lease's holder this run? The same identity; or, for a run given its name, the run that
    named itself so from the clock (``name@flow-run``): naming a run is asking to adopt it. A run that
    named itself from the clock adopts only its own flow run (another due in the same second is not it)."""
    return theirs == mine or ("@" not in mine and theirs.partition("@")[0] == mine)


def _micro_now() -> datetime:
    return datetime.now(timezone.utc)


def now_micro_rfc3339() -> str:
    """A Lease's MicroTime, always with its six digits (the API parses exactly that)."""
    return _micro_now().strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _lease_body(plan: Claimant, holder: str) -> client.V1Lease:
    now = now_micro_rfc3339()
    return client.V1Lease(
        metadata=client.V1ObjectMeta(name=lease_name(plan), namespace=plan.namespace, labels=dict(plan.labels),
                                     annotations={HOLDER_ANNOTATION: plan.job,
                                                  LABEL_PREFIX + "target": str(plan.target)}),
        # The stub wants datetimes; the client sends a str as is, and a datetime's isoformat() drops
        # zero microseconds, which the API's MicroTime refuses.
        spec=client.V1LeaseSpec(holder_identity=holder, acquire_time=now, renew_time=now,  # type: ignore[arg-type]
                                lease_duration_seconds=GRACE_SECONDS))


async def _holder_active(kube: Kube, namespace: str, lease: Any) -> bool:
    """Is any Job of the Lease's holder (its main Job or a helper: init, verify, retention) still active?"""
    labels = lease.metadata.labels or {}
    session = labels.get(LABEL_PREFIX + "session")
    if not session:
        return False
    found = await kube.call("list Jobs", kube.batch.list_namespaced_job, namespace,
                            label_selector=f"app.kubernetes.io/managed-by={MANAGED_BY},"
                                           f"{LABEL_PREFIX}session={session}")
    return any(not any(c.type in ("Complete", "Failed") and c.status == "True" for c in (j.status.conditions or []))
               and j.metadata.deletion_timestamp is None for j in found.items)


def _renewed_within(lease: Any, seconds: float) -> bool:
    renewed = lease.spec.renew_time or lease.spec.acquire_time
    if renewed is None:
        return False
    if renewed.tzinfo is None:
        renewed = renewed.replace(tzinfo=timezone.utc)
    return (_micro_now() - renewed).total_seconds() < seconds


async def claim_target(kube: Kube, who: ExecutionPlan | Claimant) -> Claim:
    """Hold the target for this run, or raise ``RunError`` (``target-busy``) naming who holds it."""
    plan = who if isinstance(who, Claimant) else Claimant.of_plan(who)
    for _ in range(3):  # the holder may give the Lease back between our create and our read
        try:
            return await _claim(kube, plan)
        except _Released:
            continue
    raise RunError(f"{plan.target} in {plan.namespace} changed hands three times while this run claimed it",
                   code="target-busy", hint="another run is starting and stopping on this target; try again")


class _Released(Exception):
    """The Lease went away while this run looked at it: claim again."""


async def _claim(kube: Kube, plan: Claimant) -> Claim:
    coord = client.CoordinationV1Api(kube.api)
    name, ns, holder = lease_name(plan), plan.namespace, plan.holder
    try:
        made = await kube.call(f"create Lease {ns}/{name}", coord.create_namespaced_lease, ns,
                               _lease_body(plan, holder))
        created = True
    except NotFound:  # only the namespace can be missing when creating
        raise namespace_missing(ns) from None
    except Conflict:
        created = False  # held: by this run (adoption), by a live run (busy) or by a stale one (take over)
    if created:
        held = Claim(ns, name, holder, resource_version=made.metadata.resource_version)
        try:
            return dataclasses.replace(held, orphans_failed=tuple(await fail_orphans(kube, plan)))
        except BaseException:
            await release(kube, held)  # claimed but could not go on: give it back at once
            raise
    try:
        lease = await kube.call(f"read Lease {ns}/{name}", coord.read_namespaced_lease, name, ns)
    except NotFound:
        raise _Released() from None
    theirs = lease.spec.holder_identity or ""
    mine = same_run(theirs, holder)
    if not mine and (await _holder_active(kube, ns, lease) or _renewed_within(lease, GRACE_SECONDS)):
        job = (lease.metadata.annotations or {}).get(HOLDER_ANNOTATION, "?")
        raise RunError(
            f"{plan.target} in {ns} is busy: run {theirs} holds it (Job {job}); one run per target at a time",
            code="target-busy",
            hint=f"wait for that run to end, or if it is gone for good delete its Job: kubectl -n {ns} delete job {job}")
    body = _lease_body(plan, holder)
    body.metadata.resource_version = lease.metadata.resource_version  # replace only what we read: atomic
    try:
        replaced = await kube.call(f"take over Lease {ns}/{name}", coord.replace_namespaced_lease, name, ns, body)
    except Conflict:
        raise RunError(f"{plan.target} in {ns} was claimed by another run at the same moment",
                       code="target-busy", hint="one run per target at a time; this one did nothing") from None
    except NotFound:
        raise _Released() from None
    orphans = await fail_orphans(kube, plan)
    return Claim(ns, name, holder, taken_over_from=None if mine else theirs,
                 orphans_failed=tuple(orphans), resource_version=replaced.metadata.resource_version)


async def renew(kube: Kube, claim: Claim) -> Claim:
    """Say the run is alive between its Jobs (before verification, recording, retention). A claim made
    or renewed less than a quarter of the grace period ago needs no renewal yet (and costs no request)."""
    if time.monotonic() - claim.renewed < GRACE_SECONDS / 4:
        return claim
    coord = client.CoordinationV1Api(kube.api)
    patched = await kube.call(f"renew Lease {claim.namespace}/{claim.lease}", coord.patch_namespaced_lease,
                              claim.lease, claim.namespace, {"spec": {"renewTime": now_micro_rfc3339()}})
    return dataclasses.replace(claim, resource_version=patched.metadata.resource_version, renewed=time.monotonic())


async def delete_leases(kube: Kube, namespace: str, label_selector: str) -> list[str]:
    """Release the claims of a run found by its labels (from a cancel or crash hook)."""
    coord = client.CoordinationV1Api(kube.api)
    found = await kube.call("list Leases", coord.list_namespaced_lease, namespace, label_selector=label_selector)
    deleted = []
    for lease in found.items:
        with contextlib.suppress(NotFound):
            await kube.call(f"delete Lease {namespace}/{lease.metadata.name}", coord.delete_namespaced_lease,
                            lease.metadata.name, namespace)
            deleted.append(f"Lease/{lease.metadata.name}")
    return deleted


async def release(kube: Kube, claim: Claim) -> None:
    """Give the target back (only if this run still holds it): delete the Lease as this run last wrote
    it; if it changed since (taken over, or relabelled), read it and delete it only if still ours."""
    coord = client.CoordinationV1Api(kube.api)
    what = f"delete Lease {claim.namespace}/{claim.lease}"
    if claim.resource_version:
        try:
            await kube.call(what, coord.delete_namespaced_lease, claim.lease, claim.namespace,
                            body=client.V1DeleteOptions(
                                preconditions=client.V1Preconditions(resource_version=claim.resource_version)))
            return
        except NotFound:
            return  # gone already
        except Conflict:
            pass  # changed since our write: look at who holds it now
    try:
        lease = await kube.call(f"read Lease {claim.namespace}/{claim.lease}", coord.read_namespaced_lease,
                                claim.lease, claim.namespace)
        if lease.spec.holder_identity != claim.holder:
            return
        await kube.call(what, coord.delete_namespaced_lease, claim.lease, claim.namespace,
                        body=client.V1DeleteOptions(
                            preconditions=client.V1Preconditions(resource_version=lease.metadata.resource_version)))
    except (NotFound, Conflict):
        pass  # gone already, or taken over: nothing of ours to give back


async def fail_orphans(kube: Kube, plan: Claimant) -> list[str]:
    """With the target held, a stashflow Snapshot of it still Pending/Running from another session has
    no run behind it any more: mark it Failed, saying so. Returns their names."""
    selector = (f"app.kubernetes.io/managed-by={MANAGED_BY},kubestash.com/app-ref-kind={label_value(plan.target.kind)},"
                f"kubestash.com/app-ref-name={label_value(plan.target.name)}")
    failed: list[str] = []
    try:
        snapshots = await resources.list_snapshots(kube, plan.namespace, selector)
    except NotFound:  # no Snapshot CRD yet (the first backup installs it): no Snapshot, no orphan
        return failed
    for snap in snapshots:
        status = snap.get("status") or {}
        name = snap["metadata"]["name"]
        if status.get("phase") not in (None, "Pending", "Running") or name == plan.snapshot:
            continue
        if plan.backup_session and (snap.get("spec") or {}).get("backupSession") == plan.backup_session:
            continue
        reason = ("orphaned: the run that made this Snapshot stopped before recording a result, and its Job is "
                  "no longer running")
        await resources.patch_snapshot_status(kube, plan.namespace, name,
                                              failed_status(status, reason, reason="BackupRunOrphaned"))
        failed.append(name)
    return failed
