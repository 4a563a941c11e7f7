"""Making sure a restic repository exists before the first backup into it.

``restic backup`` fails on a repository that was never initialised, and ``restic init``
fails on one that was; without a shell there is no ``init || true``. A Function that says
``stashflow.io/repository-init: restic`` (an annotation) gets an init Job first: the
backup Job's own pod (same image, volumes and restic environment) running ``restic init``,
where "already exists" counts as success. It runs only while no Succeeded Snapshot has the
repository's full location (URL and storage volume), so after the first backup into a
repository it costs nothing, and a new directory or storage is always initialised.
"""

from __future__ import annotations

import contextlib
import copy
import re
from typing import Any, Callable

from stashflow.addons.errors import NotFound, RunError
from stashflow.addons.names import valid_name
from stashflow.addons.render import LABEL_PREFIX, REPOSITORY_LOCATION_LABEL, ExecutionPlan

from . import resources
from .kube import Kube
from .wait import JobOutcome, JobWaiter

INIT_ANNOTATION = LABEL_PREFIX + "repository-init"
_ALREADY = re.compile(r"config file already exists|already initialized", re.I)


def wants_init(plan: ExecutionPlan) -> bool:
    annotations = plan.resolved.function.metadata.annotations or {}
    return plan.kind == "backup" and annotations.get(INIT_ANNOTATION) == "restic" and any(
        e.get("name") == "RESTIC_REPOSITORY" for e in plan.job["spec"]["template"]["spec"]["containers"][0].get("env", []))


async def known_initialised(kube: Kube, plan: ExecutionPlan) -> bool:
    """A Succeeded Snapshot already wrote to this very repository: same URL, same storage volume
    (``stashflow.io/repository-location``), whatever the repository's name or directory."""
    if not plan.repository_location:
        return False
    selector = f"{REPOSITORY_LOCATION_LABEL}={plan.repository_location}"
    return any((snap.get("status") or {}).get("phase") == "Succeeded"
               for snap in await resources.list_snapshots(kube, plan.namespace, selector))


def restic_container(plan: ExecutionPlan, name: str, args: list[str]) -> dict[str, Any]:
    """The backup container (image, env, mounts) running ``restic ARGS`` instead of the Function."""
    base = plan.job["spec"]["template"]["spec"]["containers"][0]
    return {**copy.deepcopy(base), "name": name, "command": ["restic"], "args": args}


def helper_job(plan: ExecutionPlan, suffix: str, role: str, containers: list[dict[str, Any]], *,
               init_containers: list[dict[str, Any]] | None = None, deadline: int = 300) -> dict[str, Any]:
    """A Job of the same kind as the backup's (its pod, volumes, labels), doing restic work for it."""
    job = copy.deepcopy(plan.job)
    job["metadata"]["name"] = valid_name(plan.job_name, suffix)
    job["metadata"]["labels"][LABEL_PREFIX + "role"] = role
    pod = job["spec"]["template"]
    pod["metadata"]["labels"][LABEL_PREFIX + "role"] = role
    pod["spec"]["containers"] = containers
    if init_containers:
        pod["spec"]["initContainers"] = init_containers
    job["spec"]["activeDeadlineSeconds"] = deadline
    return job


async def run_helper_job(kube: Kube, plan: ExecutionPlan, job: dict[str, Any], on_log: Callable[[str, str], None],
                         *, stuck_after: float = 120) -> JobOutcome:
    """Create, wait for and delete a helper Job; it is never kept, its log is in the run's logs."""
    name = job["metadata"]["name"]
    await resources.create_or_adopt(kube, job)
    try:
        return await JobWaiter(kube, plan.namespace, name, timeout=job["spec"]["activeDeadlineSeconds"] + 30,
                               stuck_after=stuck_after, on_log=on_log).wait()
    finally:
        with contextlib.suppress(NotFound):
            await kube.call(f"delete Job {plan.namespace}/{name}", kube.batch.delete_namespaced_job, name,
                            plan.namespace, propagation_policy="Foreground")


def init_job(plan: ExecutionPlan) -> dict[str, Any]:
    """The backup Job's pod, running ``restic init`` instead of the Function."""
    return helper_job(plan, "init", "repository-init", [restic_container(plan, "restic-init", ["init"])])


async def ensure_repository(kube: Kube, plan: ExecutionPlan, on_log: Callable[[str, str], None]) -> str:
    """``"not-needed"``, ``"known"``, ``"initialized"`` or ``"exists"``; a failed init raises ``RunError``."""
    if not wants_init(plan):
        return "not-needed"
    if await known_initialised(kube, plan):
        return "known"
    outcome = await run_helper_job(kube, plan, init_job(plan), on_log, stuck_after=60)
    if outcome.succeeded:
        return "initialized"
    lines = outcome.logs() + list(outcome.termination_messages().values())
    if any(_ALREADY.search(line) for line in lines):
        return "exists"
    diagnosis = outcome.diagnosis
    raise RunError(f"cannot initialise the restic repository: {diagnosis.summary() if diagnosis else outcome.phase}",
                   code=diagnosis.code if diagnosis else "job-failed", diagnosis=diagnosis,
                   hint="check the storage, the encryption Secret and the repository path")



VERIFY_ANNOTATION = LABEL_PREFIX + "verify"
_STATS_SIZE = re.compile(r'"total_size"\s*:\s*(\d+)')


def wants_verify(plan: ExecutionPlan) -> bool:
    annotations = plan.resolved.function.metadata.annotations or {}
    return annotations.get(VERIFY_ANNOTATION) == "restic" and wants_init(plan)


def verify_job(plan: ExecutionPlan) -> dict[str, Any]:
    """The backup Job's pod checking the repository: ``restic check`` (an init container: it must
    pass) then ``restic stats --mode raw-data --json`` (the repository's size). No shell."""
    base = plan.job["spec"]["template"]["spec"]["containers"][0]
    cache = [a for a in base.get("args", []) if a.startswith("--cache-dir=")]
    return helper_job(
        plan, "verify", "verify",
        [restic_container(plan, "restic-stats", ["stats", "--mode", "raw-data", "--json", "--no-lock", *cache])],
        init_containers=[restic_container(plan, "restic-check", ["check", *cache])], deadline=1800)


async def verify_repository(kube: Kube, plan: ExecutionPlan, on_log: Callable[[str, str], None]) -> dict:
    """What was learnt about the repository after the backup, as KubeStash records it:
    ``{"integrity": True, "size": "1.234 MiB"}``. When ``restic check`` fails, or the check
    cannot run at all, ``{"integrity": False | None, "error": why, "code": ...}``: a backup into a
    repository that cannot be verified is not called good."""
    from .results import format_bytes

    outcome = await run_helper_job(kube, plan, verify_job(plan), on_log)
    if outcome.succeeded:
        found: dict = {"integrity": True}
        sizes = [int(m.group(1)) for line in outcome.logs("restic-stats") for m in [_STATS_SIZE.search(line)] if m]
        if sizes:
            found["size"] = format_bytes(sizes[-1])
        return found
    diagnosis = outcome.diagnosis
    if diagnosis is not None and diagnosis.container == "restic-check" and diagnosis.category == "exit-code":
        errors = [line for line in outcome.logs("restic-check") if line.strip()][-5:]
        return {"integrity": False, "code": "repository-corrupt",
                "error": "restic check found errors in the repository" + (": " + " / ".join(errors) if errors else "")}
    reason = diagnosis.summary() if diagnosis else outcome.phase
    return {"integrity": None, "code": "repository-check-failed",
            "error": f"the repository could not be checked after the backup: {reason}"}
