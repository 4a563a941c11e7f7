"""Applying a RetentionPolicy after a backup: Snapshots that fall out are deleted, and for
restic repositories stashflow manages, their data too, by a Job like the backup's own.

A repository a KubeStash executor wrote is restic too, in the layout its Snapshots' component paths
name: its data is forgotten the same way, per repository, by stashflow's own restic image
(``contract.RESTIC_IMAGE``) in the backup's pod (storage volume, restic's environment), never by the
upstream image, which takes only its own flags."""

from __future__ import annotations

import contextlib
import hashlib
from datetime import datetime, timezone
from typing import Any, Callable

from prefect import get_run_logger, task

from stashflow.addons.contract import RESTIC_IMAGE, contract_of
from stashflow.addons.errors import NotFound, RunError
from stashflow.addons.model import RetentionPolicy
from stashflow.addons.render import ExecutionPlan
from stashflow.addons.retention import Decision, Item, apply, parse_time
from stashflow.addons.template import kube_escape

from . import resources
from .kube import Kube, current
from .repository import helper_job, restic_container, run_helper_job, wants_init
from .results import restic_snapshot_id
from .steps import STEP


def items_of(snapshots: list[dict[str, Any]]) -> list[Item]:
    return [Item(s["metadata"]["name"], (s.get("status") or {}).get("phase") or "Pending",
                 parse_time((s.get("status") or {}).get("snapshotTime") or s["metadata"]["creationTimestamp"]))
            for s in snapshots]


def kubestash_written(plan: ExecutionPlan) -> bool:
    """The backup's Function is a KubeStash executor with a restic repository stashflow can reach."""
    env = plan.job["spec"]["template"]["spec"]["containers"][0].get("env", [])
    return plan.kind == "backup" and contract_of(plan.resolved.function) == "kubestash" and any(
        e.get("name") == "RESTIC_REPOSITORY" for e in env)


def manages_data(plan: ExecutionPlan) -> bool:
    """Whether retention deletes the restic data of the Snapshots that fall out, not only the objects."""
    return wants_init(plan) or kubestash_written(plan)


def forget_job(plan: ExecutionPlan, component_path: str, ids: list[str]) -> dict[str, Any]:
    """The backup Job's pod running ``restic forget --prune`` on one component repository."""
    # ids and paths come from Snapshot objects: data, escaped against Kubernetes' $(VAR) expansion
    container = restic_container(plan, "restic-forget", ["forget", "--prune", *map(kube_escape, ids)])
    if kubestash_written(plan):  # stashflow's own restic, not the executor's image
        container["image"] = RESTIC_IMAGE
    own_path = kube_escape(plan.snapshot["status"]["components"][plan.component]["path"] if plan.snapshot else "")
    for env in container.get("env", []):
        if env.get("name") == "RESTIC_REPOSITORY" and own_path and env["value"].endswith(own_path):
            env["value"] = env["value"][: -len(own_path)] + kube_escape(component_path)
    suffix = "forget-" + hashlib.sha256(component_path.encode()).hexdigest()[:6]
    return helper_job(plan, suffix, "retention", [container], deadline=1800)


async def _forget(kube: Kube, plan: ExecutionPlan, component_path: str, ids: list[str],
                  on_log: Callable[[str, str], None]) -> None:
    outcome = await run_helper_job(kube, plan, forget_job(plan, component_path, ids), on_log)
    if not outcome.succeeded:
        d = outcome.diagnosis
        raise RunError(f"retention could not delete restic data in {component_path}: {d.summary() if d else outcome.phase}",
                       code=d.code if d else "job-failed", diagnosis=d, hint="the Snapshots were kept; see the log")


@task(name="apply-retention", **STEP)
async def apply_retention(plan: ExecutionPlan, policy: dict[str, Any]) -> dict[str, list[str]]:
    """After a backup: keep what the policy keeps among the repository's Snapshots, delete the rest."""
    kube, logger = current(), get_run_logger()
    retention = RetentionPolicy.model_validate(
        {"apiVersion": "storage.kubestash.com/v1alpha1", "kind": "RetentionPolicy", "metadata": {"name": "plan"},
         "spec": policy.get("spec", policy)})
    snapshots = await resources.list_snapshots(kube, plan.namespace, f"kubestash.com/repo-name={plan.repository}")
    decision: Decision = apply(retention, items_of(snapshots), datetime.now(timezone.utc))
    by_name = {s["metadata"]["name"]: s for s in snapshots}
    if decision.delete and manages_data(plan):  # a restic repository stashflow reaches: delete the data too
        ids_by_path: dict[str, list[str]] = {}
        for name in decision.delete:
            for component in ((by_name[name].get("status") or {}).get("components") or {}).values():
                restic_id = restic_snapshot_id(component)
                if restic_id and component.get("path"):
                    ids_by_path.setdefault(component["path"], []).append(restic_id)
        for path, ids in ids_by_path.items():
            await _forget(kube, plan, path, ids, lambda source, line: logger.info("%s | %s", source, line))
    for name in decision.delete:
        with contextlib.suppress(NotFound):
            await kube.call(f"delete Snapshot {name}", kube.custom.delete_namespaced_custom_object,
                            "storage.kubestash.com", "v1alpha1", plan.namespace, "snapshots", name)
        logger.info("retention: deleted Snapshot %s (%s)", name, "; ".join(decision.reasons[name]))
    logger.info("retention: kept %d Snapshot(s) of repository %s, deleted %d", len(decision.keep), plan.repository,
                len(decision.delete))
    return {"keep": decision.keep, "delete": decision.delete}
