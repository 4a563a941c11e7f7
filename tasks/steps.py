"""The five steps of every run, each a Prefect task with its own state and logs.

resolve-parameters → provision-volumes → launch-job → wait-for-job → record-snapshot
(DESIGN.md §2). They share the run's Kubernetes client through ``kube.current()`` rather
than as parameters, and they are idempotent: a retried step adopts what an earlier attempt
created. API retries happen inside ``Kube.call``; the Prefect tasks themselves do not retry.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from stashflow.addons.catalog import Catalog
from stashflow.addons.contract import contract_of
from stashflow.addons.errors import InputError, NotFound, RunError
from stashflow.addons.model import AddonInfo, AddonVolumeInfo, BackupStorage
from stashflow.addons.render import (
    COMPONENT_BY_TASK,
    FLOW_RUN_LABEL,
    LABEL_PREFIX,
    ExecutionPlan,
    RenderRequest,
    RepositoryContext,
    Target,
    check_objects,
    render_plan,
)
from stashflow.addons.resolve import Value
from stashflow.addons.restore_source import ANN_DIRECTORY, ANN_SECRET, ANN_STORAGE, ANN_STORAGE_OBJECT

from stashflow.addons.workloads import ANNOTATION as WORKLOAD_ANNOTATION

from . import claim, resources, workloads
from . import preflight as preflight_check
from .claim import Claim
from .kube import current
from .repository import ensure_repository, wants_verify
from .repository import verify_repository as check_repository
from .results import aggregate, component_from_restic, failure_condition, from_termination_message, \
    nested_restic_stats, now_rfc3339, restic_snapshot_id, restic_summary
from .wait import JobOutcome, JobWaiter

STEP: dict[str, Any] = dict(cache_policy=NO_CACHE, persist_result=False)


@dataclass
class RunSpec:
    """What one flow run was asked to do: the render request, and what the run itself needs
    to finish it (where the data goes, which Snapshot a restore reads, run limits)."""

    request: RenderRequest  # without repository and addon settings: resolve-parameters adds them
    storage: BackupStorage | str | None = None  # the object (flows), or a name in the catalog
    repository: str | None = None
    directory: str = ""
    encryption_secret: str | None = None
    snapshot: str | None = None  # restores: a Snapshot name, or "latest"
    stuck_after: float = 180.0
    history_limit: int = 1
    follow_logs: bool = False  # stream the Job's log live (else its tail, read only when needed)
    addon_info: dict[str, Any] | None = None  # the plan's addon: jobTemplate, containerRuntimeSettings, addonVolumes

    @property
    def namespace(self) -> str:
        return self.request.namespace

    @property
    def target(self) -> Target:
        return self.request.target


def _storage(catalog: Catalog, spec: RunSpec, name_or_object: str | dict[str, Any] | BackupStorage | None
             ) -> BackupStorage | None:
    if name_or_object is None or isinstance(name_or_object, BackupStorage):
        return name_or_object
    if isinstance(name_or_object, dict):
        return BackupStorage.model_validate(name_or_object)
    found = catalog.get(BackupStorage, name_or_object, spec.namespace) or catalog.get(BackupStorage, name_or_object)
    if found is None:
        raise InputError(f'no BackupStorage "{name_or_object}" in the catalog paths', code="unknown-object",
                         field="storage", hint="add its file to the catalog paths, or pass the object itself")
    return found


async def _restore_source(spec: RunSpec) -> tuple[dict[str, Any], str]:
    """The Snapshot a restore reads, and the component to read from it."""
    kube = current()
    if spec.snapshot in (None, "", "latest"):
        if not spec.repository:
            raise InputError('a restore of "latest" needs the repository name', code="invalid-argument",
                             field="repository", hint="pass repository=<the backed-up target's repository>")
        found = await resources.latest_snapshot(kube, spec.namespace, spec.repository)
        if found is None:
            raise RunError(f'repository "{spec.repository}" has no Succeeded Snapshot in namespace {spec.namespace}',
                           code="snapshot-not-found", hint="run a backup first, or name a Snapshot")
    else:
        try:
            found = await resources.read(kube, "Snapshot", spec.namespace, spec.snapshot)
        except NotFound:
            raise RunError(f'no Snapshot "{spec.snapshot}" in namespace {spec.namespace}', code="snapshot-not-found",
                           hint="list them with `stashflow snapshots -n NAMESPACE`") from None
    status = found.get("status") or {}
    if status.get("phase") != "Succeeded":
        raise RunError(f'Snapshot "{found["metadata"]["name"]}" is {status.get("phase") or "not finished"}, not Succeeded',
                       code="snapshot-not-found", hint="restore from a Succeeded Snapshot")
    components = status.get("components") or {}
    if not components:
        raise RunError(f'Snapshot "{found["metadata"]["name"]}" has no components', code="snapshot-not-found")
    return found, restore_component(spec.request.task, list(components), found["metadata"]["name"])


def restore_component(task: str, components: list[str], snapshot: str) -> str:
    """Which component of a Snapshot a restore task reads: the only one, else the one its task writes
    (``logical-backup-restore`` → ``dump``; ``config-backup-restore`` → what ``config-backup`` writes)."""
    if len(components) == 1:
        return components[0]
    stem = task[: -len("-restore")] if task.endswith("-restore") else task
    for name in (COMPONENT_BY_TASK.get(task), COMPONENT_BY_TASK.get(stem), stem):
        if name in components:
            return name
    raise RunError(f'Snapshot "{snapshot}" has components {", ".join(sorted(components))}; none of them is the one '
                   f"restore task {task} reads", code="snapshot-not-found",
                   hint="restore each component with the restore task of the backup task that wrote it")


def _mounts_target_volumes(catalog: Catalog, spec: RunSpec) -> bool:
    _, _, _, task_ = catalog.task(spec.request.addon, spec.request.task)
    function = catalog.functions.get(task_.function)
    return function is not None and (function.metadata.annotations or {}).get(WORKLOAD_ANNOTATION) == "true"


@task(name="resolve-parameters", **STEP)
async def resolve_parameters(spec: RunSpec, catalog: Catalog, check: bool = False) -> ExecutionPlan:
    """Defaults ⊕ params ⊕ variables ⊕ built-ins → the execution plan (every object of the run). With
    ``check``, what the Job will need (its namespace, PVCs, Secrets, ServiceAccount) is there: a run fails
    in seconds, before creating anything (in this step, not one of its own: each task run costs the worker
    and the Prefect server three events, and a fleet's runs start on the same minute)."""
    logger = get_run_logger()
    storage = _storage(catalog, spec, spec.storage)
    repository: RepositoryContext | None = None
    component = None
    builtins = dict(spec.request.builtins)
    _, list_name, _, _ = catalog.task(spec.request.addon, spec.request.task)
    if list_name == "restoreTasks":
        snapshot, component = await _restore_source(spec)
        annotations = snapshot["metadata"].get("annotations") or {}
        if storage is None and annotations.get(ANN_STORAGE_OBJECT):
            storage = BackupStorage.model_validate(json.loads(annotations[ANN_STORAGE_OBJECT]))
        storage = storage or _storage(catalog, spec, annotations.get(ANN_STORAGE))
        comp = snapshot["status"]["components"][component]
        repository = RepositoryContext(
            name=snapshot["spec"].get("repository") or spec.repository or spec.target.name, storage=storage,
            directory=spec.directory or annotations.get(ANN_DIRECTORY, ""),
            encryption_secret=spec.encryption_secret or annotations.get(ANN_SECRET),
            component_path=comp.get("path"), restic_snapshot_id=restic_snapshot_id(comp))
        builtins.setdefault("snapshot", Value(snapshot["metadata"]["name"]))
        logger.info("restoring from Snapshot %s (component %s, restic snapshot %s)", snapshot["metadata"]["name"],
                    component, repository.restic_snapshot_id or "latest")
    elif storage is not None or spec.repository or spec.encryption_secret:
        repository = RepositoryContext(name=spec.repository or spec.target.name, storage=storage,
                                       directory=spec.directory, encryption_secret=spec.encryption_secret)
    info = spec.addon_info or {}
    pods = None
    if _mounts_target_volumes(catalog, spec):
        pods = await workloads.target_volumes(current(), spec.request.target, spec.request.namespace)
        logger.info("%s: %s", spec.request.target, "; ".join(
            f"{p.pod}: {', '.join(m.mount_path for m in p.mounts)}" for p in pods))
    request = dataclasses.replace(
        spec.request, builtins=builtins, repository=repository, component=component, target_volumes=pods,
        addon_info=AddonInfo.model_validate({"name": spec.request.addon, **{k: v for k, v in info.items()
                                                                             if k != "addonVolumes"}}) if info else None,
        addon_volumes=[AddonVolumeInfo.model_validate(v) for v in info.get("addonVolumes") or []],
    )
    plan = render_plan(catalog, request)
    check_objects(plan.objects())
    if plan.snapshot is not None and storage is not None:
        stored = {"apiVersion": storage.api_version, "kind": storage.kind,
                  "metadata": {k: v for k, v in (("name", storage.name), ("namespace", storage.namespace)) if v},
                  "spec": {"storage": storage.spec.storage.dump() if storage.spec.storage else {}}}
        where = {ANN_STORAGE: storage.name, ANN_DIRECTORY: spec.directory, ANN_SECRET: spec.encryption_secret,
                 ANN_STORAGE_OBJECT: json.dumps(stored, separators=(",", ":"), sort_keys=True)}
        plan.snapshot["metadata"]["annotations"].update({k: v for k, v in where.items() if v})
    secret = plan.resolved.secret_inputs
    shown = ", ".join(f"{k}={'***' if k in secret else json.dumps(v, ensure_ascii=False)}"
                      for k, v in sorted(plan.resolved.inputs.items()))
    logger.info("%s for %s in %s: Job %s; parameters: %s", plan.resolved.flow_name, spec.target, spec.namespace,
                plan.job_name, shown or "none")
    if check:
        unchecked = await preflight_check.check(current(), plan)
        if unchecked:
            logger.info("not checked (no permission): %s", ", ".join(f"{n.kind}/{n.name}" for n in unchecked))
    return plan


@task(name="claim-target", **STEP)
async def claim_target(plan: ExecutionPlan) -> Claim:
    """Hold the target in the cluster for this run (one run per target, whatever started it)."""
    return log_claim(await claim.claim_target(current(), plan), plan.target)


def log_claim(held: Claim, target: object) -> Claim:
    """Say what claiming the target found: a run that stopped without releasing it, orphaned Snapshots."""
    logger = get_run_logger()
    if held.taken_over_from:
        logger.warning("took %s over from run %s, which stopped without releasing it", target, held.taken_over_from)
    for name in held.orphans_failed:
        logger.warning("Snapshot %s had no run behind it any more: marked Failed", name)
    return held


@task(name="provision-volumes", **STEP)
async def provision_volumes(plan: ExecutionPlan) -> list[str]:
    """Create (or adopt) the PVCs of the task's volumeClaimTemplates; initialise the restic
    repository first when the Function asks for it (``stashflow.io/repository-init``)."""
    logger = get_run_logger()
    if plan.snapshot is not None and await resources.ensure_snapshot_crd(current()) == "installed":
        logger.info("installed stashflow's Snapshot CRD: the cluster had none")
    names = []
    for pvc in plan.pvcs:
        obj, adopted = await resources.create_or_adopt(current(), pvc)
        names.append(obj["metadata"]["name"])
        logger.info("%s PVC %s", "adopted" if adopted else "created", obj["metadata"]["name"])
    state = await ensure_repository(current(), plan, lambda source, line: logger.info("%s | %s", source, line))
    if state != "not-needed":
        logger.info("restic repository of %s: %s", plan.repository, state)
    return names


@task(name="launch-job", **STEP)
async def launch_job(plan: ExecutionPlan, pvcs: list[str]) -> dict[str, Any]:
    """Record the Snapshot as Pending, then create (or adopt) the Job; the Job owns the PVCs."""
    kube, logger = current(), get_run_logger()
    if plan.snapshot_name is not None and plan.within_session:
        try:  # the session made it before any Job: this run only writes its component into it
            await resources.read(kube, "Snapshot", plan.namespace, plan.snapshot_name)
        except NotFound:
            raise RunError(f"the session's Snapshot {plan.snapshot_name} is not in namespace {plan.namespace}",
                           code="snapshot-not-found", hint="a task within a session runs from its session's flow, "
                                                           "which creates the Snapshot first") from None
    elif plan.snapshot is not None and plan.snapshot_name is not None:  # render sets both or neither
        snapshot, adopted = await resources.create_or_adopt(kube, plan.snapshot)
        if not adopted or not (snapshot.get("status") or {}).get("phase"):
            await resources.patch_snapshot_status(kube, plan.namespace, plan.snapshot_name, plan.snapshot["status"])
        logger.info("Snapshot %s is Pending", plan.snapshot_name)
    job, adopted = await resources.create_or_adopt(kube, plan.job)
    logger.info("%s Job %s", "adopted existing" if adopted else "created", plan.job_name)
    if adopted and FLOW_RUN_LABEL in plan.labels:  # so this run's cancel/crash hook finds it
        await resources.relabel(kube, plan.job, {FLOW_RUN_LABEL: plan.labels[FLOW_RUN_LABEL]})
        if plan.snapshot is not None:
            await resources.relabel(kube, plan.snapshot, {FLOW_RUN_LABEL: plan.labels[FLOW_RUN_LABEL]})
    if pvcs:
        await resources.own_by_job(kube, plan.namespace, pvcs, job)
    return job


@task(name="wait-for-job", **STEP)
async def wait_for_job(plan: ExecutionPlan, timeout: float, stuck_after: float, secrets: list[str] | None = None,
                       follow_logs: bool = False) -> JobOutcome:
    """Watch the Job to its end; its log lines go into this run's logs (streamed with ``follow_logs``,
    else the tail when the Job failed or reported its result there)."""
    logger = get_run_logger()
    hidden = [s for s in secrets or [] if s]

    def on_log(source: str, line: str) -> None:
        for secret in hidden:
            line = line.replace(secret, "***")
        logger.info("%s | %s", source, line)

    waiter = JobWaiter(current(), plan.namespace, plan.job_name, timeout=timeout, stuck_after=stuck_after,
                       on_log=on_log, follow_logs=follow_logs)
    outcome = await waiter.wait()
    logger.info("Job %s ended: %s%s", plan.job_name, outcome.phase,
                f" ({outcome.diagnosis.summary()})" if outcome.diagnosis else "")
    if not outcome.succeeded:
        raise JobFailed(outcome)  # this step is where the run failed: it ends Failed in the run's graph
    return outcome


class JobFailed(Exception):
    """``wait-for-job`` saw the Job fail. The step ends Failed (so the Prefect UI shows where the run
    failed); the flow catches it and goes on with ``outcome`` to record the Failed Snapshot."""

    def __init__(self, outcome: JobOutcome) -> None:
        self.outcome = outcome
        diagnosis = outcome.diagnosis
        super().__init__(f"{diagnosis.code}: {diagnosis.summary()}" if diagnosis else f"the Job ended {outcome.phase}")


@task(name="verify-repository", **STEP)
async def verify_repository(plan: ExecutionPlan) -> dict[str, Any]:
    """After a backup into a restic repository stashflow manages: its integrity and size."""
    logger = get_run_logger()
    if not wants_verify(plan):
        return {}
    found = await check_repository(current(), plan, lambda source, line: logger.info("%s | %s", source, line))
    if found.get("integrity") is False:
        logger.warning("restic check found errors in the repository of %s", plan.repository)
    return found


#: Where a run's result came from, as its log line says it.
CHANNELS = {"termination-message": "as the container's termination message reported it",
            "restic-log": "from restic's --json summary in the container's log",
            "snapshot": "as the executor wrote it on the Snapshot",
            "none": "no result was reported by the Job"}


def components_of(plan: ExecutionPlan, outcome: JobOutcome, executor_status: dict[str, Any] | None
                  ) -> tuple[dict[str, dict[str, Any]], str]:
    """The run's components, from the first channel that has them, and which channel that was."""
    for message in outcome.termination_messages().values():
        found = from_termination_message(message)
        if found:
            return found, "termination-message"
    summary = restic_summary(outcome.logs())
    if summary is not None:
        host_path = plan.resolved.inputs.get("paths")
        return {plan.component: component_from_restic(summary, host_path=host_path,
                                                      driver=plan.resolved.task.driver or "Restic")}, "restic-log"
    executor = (executor_status or {}).get("components") or {}
    if any((c or {}).get("phase") in ("Succeeded", "Failed") for c in executor.values()):
        return executor, "snapshot"
    return {}, "none"


@task(name="record-snapshot", **STEP)
async def record_snapshot(plan: ExecutionPlan, outcome: JobOutcome, started: float,
                          verified: dict[str, Any] | None = None) -> dict[str, Any]:
    """Finish the Snapshot from what the Job reported; a failed run records a Failed Snapshot."""
    kube, logger = current(), get_run_logger()
    summary: dict[str, Any] = {"job": plan.job_name, "phase": "Succeeded" if outcome.succeeded else "Failed",
                               "namespace": plan.namespace, "target": str(plan.target)}
    if plan.snapshot is None or plan.snapshot_name is None:  # render sets both or neither
        return summary
    snapshot, snapshot_name = plan.snapshot, plan.snapshot_name

    async def recreated() -> dict[str, Any]:
        if plan.within_session:
            raise RunError(f"the session's Snapshot {plan.snapshot_name} was deleted during the run",
                           code="snapshot-not-found", hint="the session records what is left") from None
        # deleted while the run went on: the data is in the repository, so record it again
        logger.warning("Snapshot %s was deleted during the run; creating it again", plan.snapshot_name)
        summary["recreated"] = True
        return (await resources.create_or_adopt(kube, snapshot))[0]

    async def write(status: dict[str, Any]) -> None:
        try:
            await resources.patch_snapshot_status(kube, plan.namespace, snapshot_name, status)
        except NotFound:
            await recreated()
            await resources.patch_snapshot_status(kube, plan.namespace, snapshot_name, status)

    # this run wrote the Snapshot's status when it made it (provision-volumes) and, outside a session and
    # unless a KubeStash executor writes its components, nothing else writes it during the run: no need to
    # read it back (a Snapshot deleted meanwhile is found by the write)
    existing = kube.seen.get(f"Snapshot/{plan.namespace}/{plan.snapshot_name}")
    if existing is None or plan.within_session or contract_of(plan.resolved.function) == "kubestash":
        try:
            existing = await resources.read(kube, "Snapshot", plan.namespace, plan.snapshot_name)
        except NotFound:
            existing = await recreated()
    components, channel = components_of(plan, outcome, existing.get("status"))
    base = plan.snapshot["status"]["components"][plan.component]
    duration = f"{time.time() - started:.3f}s"
    conditions = list((existing.get("status") or {}).get("conditions") or [])
    if outcome.succeeded and not components:
        outcome.phase = "Failed"
        components = {plan.component: {**base, "phase": "Failed",
                                       "error": "the Job succeeded but reported no result: no termination message, "
                                                "no restic --json summary, no Snapshot status"}}
        summary["error_code"] = "no-result"
    elif not outcome.succeeded:
        reason = outcome.diagnosis.summary() if outcome.diagnosis else outcome.phase
        failed = {**base, **components.get(plan.component, {}), "phase": "Failed", "error": reason}
        components = {**components, plan.component: failed}
        conditions.append(failure_condition(f"Failed to complete backup. Reason: {reason}"))
    if verified and verified.get("error") and outcome.succeeded:
        # the data went in, but the repository fails its check: not a backup anyone can trust
        error = verified["error"]
        components = {**components, plan.component: {**base, **components.get(plan.component, {}),
                                                     "phase": "Failed", "integrity": verified.get("integrity"),
                                                     "error": error}}
        components[plan.component] = {k: v for k, v in components[plan.component].items() if v is not None}
        conditions.append(failure_condition(error, type_="SnapshotVerified", reason="RepositoryCorrupt"
                                            if verified.get("integrity") is False else "RepositoryCheckFailed"))
        summary.update(error_code=verified["code"], error=error)
    elif verified and plan.component in components and outcome.succeeded:
        components[plan.component] = {**verified, **components[plan.component]}  # the container's word first
    prefix = base["path"].rsplit("/", 1)[0]  # repository/v1/<session>
    components = {name: {"path": f"{prefix}/{name}", "driver": base["driver"], "duration": duration, **c}
                  for name, c in components.items()}
    if plan.within_session:  # its own components only: the session finishes the Snapshot's phase and size
        own = {n: (nested_restic_stats(c) if await resources.snapshot_schema(kube) == "kubestash" else c)
               for n, c in components.items()}
        failed_here = not outcome.succeeded or bool(summary.get("error_code"))
        patch: dict[str, Any] = {"components": own, "lastUpdateTime": now_rfc3339()}
        if failed_here:
            patch["conditions"] = conditions
        await write(patch)
        phase = "Failed" if failed_here else aggregate(components)["phase"]
        logger.info("Snapshot %s: component %s %s (result from %s)", plan.snapshot_name, plan.component, phase,
                    channel)
        summary.update(snapshot=plan.snapshot_name, phase=phase, components=components, channel=channel)
        return summary
    stale = {name: None for name in ((existing.get("status") or {}).get("components") or {}) if name not in components}
    status = {**aggregate(components), "components": {**components, **stale}, "lastUpdateTime": now_rfc3339(),
              "conditions": conditions}
    if not outcome.succeeded or summary.get("error_code"):
        status["phase"] = "Failed"
    if await resources.snapshot_schema(kube) == "kubestash":  # its schema holds only the nested form
        status["components"] = {n: (nested_restic_stats(c) if c else c) for n, c in status["components"].items()}
    await write(status)
    logger.info("Snapshot %s: %s, %s", plan.snapshot_name, status["phase"], CHANNELS.get(channel, channel))
    summary.update(snapshot=plan.snapshot_name, phase=status["phase"], components=components, channel=channel,
                   size=status.get("size"), integrity=status.get("integrity"))
    return summary
