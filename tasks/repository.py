"""Making sure a restic repository exists before the first backup into it.

``restic backup`` fails on a repository that was never initialised, and ``restic init``
fails on one that was; without a shell there is no ``init || true``. A Function that says
``stashflow.io/repository-init: restic`` (an annotation) gets an init Job first: the
backup Job's own pod (same image, volumes and restic environment) running ``restic init``,
where "already exists" counts as success. It runs only while the repository has no
Succeeded Snapshot at that path, so after the first backup it costs nothing.
"""

from __future__ import annotations

import copy
import re
from typing import Callable

from stashflow.addons.errors import ClusterError, RunError
from stashflow.addons.names import valid_name
from stashflow.addons.render import LABEL_PREFIX, ExecutionPlan

from . import resources
from .kube import Kube
from .wait import JobWaiter

INIT_ANNOTATION = LABEL_PREFIX + "repository-init"
_ALREADY = re.compile(r"config file already exists|already initialized", re.I)


def wants_init(plan: ExecutionPlan) -> bool:
    annotations = plan.resolved.function.metadata.annotations or {}
    return plan.kind == "backup" and annotations.get(INIT_ANNOTATION) == "restic" and any(
        e.get("name") == "RESTIC_REPOSITORY" for e in plan.job["spec"]["template"]["spec"]["containers"][0].get("env", []))


async def known_initialised(kube: Kube, plan: ExecutionPlan) -> bool:
    """A Succeeded Snapshot already wrote to this repository path."""
    assert plan.snapshot is not None and plan.repository is not None
    path = plan.snapshot["status"]["components"][plan.component]["path"]
    for snap in await resources.list_snapshots(kube, plan.namespace, f"kubestash.com/repo-name={plan.repository}"):
        status = snap.get("status") or {}
        if status.get("phase") == "Succeeded" and any(
                (c or {}).get("path") == path for c in (status.get("components") or {}).values()):
            return True
    return False


def init_job(plan: ExecutionPlan) -> dict:
    """The backup Job's pod, running ``restic init`` instead of the Function."""
    job = copy.deepcopy(plan.job)
    job["metadata"]["name"] = valid_name(plan.job_name, "init")
    job["metadata"]["labels"][LABEL_PREFIX + "role"] = "repository-init"
    pod = job["spec"]["template"]
    pod["metadata"]["labels"][LABEL_PREFIX + "role"] = "repository-init"
    container = pod["spec"]["containers"][0]
    container["name"] = "restic-init"
    container["command"] = ["restic"]
    container["args"] = ["init"]
    job["spec"]["activeDeadlineSeconds"] = 300
    return job


async def ensure_repository(kube: Kube, plan: ExecutionPlan, on_log: Callable[[str, str], None]) -> str:
    """``"not-needed"``, ``"known"``, ``"initialized"`` or ``"exists"``; a failed init raises ``RunError``."""
    if not wants_init(plan):
        return "not-needed"
    if await known_initialised(kube, plan):
        return "known"
    job = init_job(plan)
    name = job["metadata"]["name"]
    await resources.create_or_adopt(kube, job)
    try:
        outcome = await JobWaiter(kube, plan.namespace, name, timeout=330, stuck_after=60, on_log=on_log).wait()
    finally:  # the init Job is never kept: its log is in the run's logs
        try:
            await kube.call(f"delete Job {plan.namespace}/{name}", kube.batch.delete_namespaced_job, name,
                            plan.namespace, propagation_policy="Foreground")
        except ClusterError as exc:
            if exc.status != 404:
                raise
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


def verify_job(plan: ExecutionPlan) -> dict:
    """The backup Job's pod checking the repository: ``restic check`` (an init container: it must
    pass) then ``restic stats --mode raw-data --json`` (the repository's size). No shell."""
    job = copy.deepcopy(plan.job)
    job["metadata"]["name"] = valid_name(plan.job_name, "verify")
    job["metadata"]["labels"][LABEL_PREFIX + "role"] = "verify"
    pod = job["spec"]["template"]
    pod["metadata"]["labels"][LABEL_PREFIX + "role"] = "verify"
    base = pod["spec"]["containers"][0]
    cache = [a for a in base.get("args", []) if a.startswith("--cache-dir=")]
    check = {**base, "name": "restic-check", "command": ["restic"], "args": ["check", *cache]}
    stats = {**base, "name": "restic-stats", "command": ["restic"],
             "args": ["stats", "--mode", "raw-data", "--json", "--no-lock", *cache]}
    pod["spec"]["initContainers"] = [check]
    pod["spec"]["containers"] = [stats]
    job["spec"]["activeDeadlineSeconds"] = 1800
    return job


async def verify_repository(kube: Kube, plan: ExecutionPlan, on_log: Callable[[str, str], None]) -> dict:
    """``{"integrity": bool, "size": "1.234 MiB"}`` (what was learnt), as KubeStash records them."""
    from .results import format_bytes

    job = verify_job(plan)
    name = job["metadata"]["name"]
    await resources.create_or_adopt(kube, job)
    try:
        outcome = await JobWaiter(kube, plan.namespace, name, timeout=1830, stuck_after=120, on_log=on_log).wait()
    finally:
        try:
            await kube.call(f"delete Job {plan.namespace}/{name}", kube.batch.delete_namespaced_job, name,
                            plan.namespace, propagation_policy="Foreground")
        except ClusterError as exc:
            if exc.status != 404:
                raise
    found: dict = {}
    if outcome.succeeded:
        found["integrity"] = True
        sizes = [int(m.group(1)) for line in outcome.logs("restic-stats") for m in [_STATS_SIZE.search(line)] if m]
        if sizes:
            found["size"] = format_bytes(sizes[-1])
    elif outcome.diagnosis is not None and outcome.diagnosis.container == "restic-check" \
            and outcome.diagnosis.category == "exit-code":
        found["integrity"] = False  # restic check found errors
    return found
