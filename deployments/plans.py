"""BackupConfigurations → one deployment per (plan, session), run by the ``backup-session`` flow.

``scheduler.schedule`` → a cron schedule (a ``CRON_TZ=`` or ``TZ=`` prefix sets the time zone,
UTC otherwise); ``paused`` on the plan or ``scheduler.suspend`` → a paused deployment;
``backupTimeout`` → the run's deadline; ``retryConfig`` → new attempts; ``sessionHistoryLimit``
→ finished Jobs kept; the backend's RetentionPolicy → retention after each backup; the
repository (BackupStorage + directory + encryptionSecret) → where the data goes. Everything a
plan names must be in the plan files; a missing one is an error with its file and line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stashflow.addons.catalog import Catalog
from stashflow.addons.durations import whole_seconds
from stashflow.addons.errors import CatalogError, StashflowError, raise_all
from stashflow.addons.model import BackupConfiguration, BackupStorage, KubeObject, RetentionPolicy
from stashflow.addons.names import label_value
from stashflow.addons.source import format_path
from stashflow.addons.render import Target
from stashflow.flows.naming import target_tag
from stashflow.flows.parameters import Storage, from_task_reference
from stashflow.flows.plan_check import (
    NO_TARGET,
    check_plans,
    cron_problem,
    late_after,
    plan_target,
    session_hooks,
    split_schedule,
)
from stashflow.flows.session_flows import ENTRYPOINT, FLOW_NAME
from stashflow.flows.session_parameters import SessionParameters, SessionRepository, SessionTask
from stashflow.flows.policies import held_unit, lock_name

MANAGED_TAG = "stashflow"


@dataclass
class DeploymentSpec:
    """One deployment to create or update: one session of a plan, run by the ``backup-session`` flow."""

    name: str  # unique per flow: <namespace>-<plan>-<session>
    flow: str  # backup-session
    addon: str
    tasks: list[str]
    entrypoint: str  # module path of the flow object
    parameters: dict[str, Any]
    cron: str
    timezone: str
    paused: bool
    tags: list[str]
    lock: str
    description: str
    plan_tag: str
    work_pool: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def full_name(self) -> str:
        return f"{self.flow}/{self.name}"


def schedule_problem(cron: str, timezone: str) -> str | None:
    """Why Prefect would refuse this schedule or never run it, or None (the shared check's rule)."""
    return cron_problem(cron, timezone)


def plan_tag(plan: BackupConfiguration) -> str:
    return f"plan:{plan.namespace or 'default'}.{plan.name}"


def _lookup(catalog: Catalog, model: type[KubeObject], ref: Any, default_ns: str, plan: BackupConfiguration, path: tuple,
            problems: list[StashflowError]) -> Any:
    if ref is None:
        problems.append(CatalogError(f"no {model.KIND} is named", code="missing-field", location=plan.location(path),
                                     obj=plan.ref, field=format_path(path)))
        return None
    found = catalog.get(model, ref.name, ref.namespace or default_ns)
    if found is None:
        problems.append(CatalogError(f'{model.KIND} "{ref.namespace or default_ns}/{ref.name}" is not in the plan files',
                                     code="unknown-object", location=plan.location(path), obj=plan.ref,
                                     field=format_path(path), hint=f"add the file that defines the {model.KIND}"))
    return found


def plan_deployments(catalog: Catalog, *, work_pool: str | None = None, kubeconfig: str | None = None,
                     checked: bool = False) -> list[DeploymentSpec]:
    """One deployment per session of every BackupConfiguration in the catalog; all problems raised together.

    The plans are checked by ``check_plans``, the check ``stashflow validate`` runs: what
    validates deploys, and what does not, does not."""
    if not checked:  # the catalog of `deploy` is checked by the same function as it is loaded
        raise_all(check_plans(catalog))
    problems: list[StashflowError] = []
    specs: list[DeploymentSpec] = []
    for plan in catalog.of_kind(BackupConfiguration):
        namespace = plan.namespace or "default"
        target_text = plan_target(plan)
        target = None if target_text == NO_TARGET else target_text
        target_ns = (plan.spec.target.namespace if plan.spec.target else None) or namespace
        backends = {b.name: (i, b) for i, b in enumerate(plan.spec.backends or [])}
        for s_index, session in enumerate(plan.spec.sessions or []):
            base = ("spec", "sessions", s_index)
            if session.scheduler is None or session.addon is None:
                problems.append(CatalogError("a session needs a scheduler and an addon", code="missing-field",
                                             location=plan.location(base), obj=plan.ref, field=format_path(base)))
                continue
            repositories = _repositories(catalog, plan, session, s_index, backends, namespace, problems)
            if not repositories:
                continue
            cron, timezone = split_schedule(session.scheduler.schedule)
            problem = schedule_problem(cron, timezone)
            if problem:
                spath = base + ("scheduler", "schedule")
                problems.append(CatalogError(f'"{session.scheduler.schedule}" is not a schedule: {problem}',
                                             code="invalid-value", location=plan.location(spath), obj=plan.ref,
                                             field=format_path(spath),
                                             hint='five cron fields, optionally "CRON_TZ=Zone " first; '
                                                  "a sixth field in front counts seconds"))
                continue
            paused = bool(plan.spec.paused) or bool(session.scheduler.suspend)
            retry = session.retry_config
            info = session.addon.dump()
            addon_settings = {k: v for k, v in info.items() if k in ("jobTemplate", "containerRuntimeSettings")}
            tasks = []
            for t_index, ref in enumerate(session.addon.tasks or []):
                try:
                    catalog.task(session.addon.name, ref.name)
                except StashflowError as exc:
                    problems.append(CatalogError(exc.message, code=exc.code,
                                                 location=plan.location(base + ("addon", "tasks", t_index, "name")),
                                                 obj=plan.ref, field=format_path(base + ("addon", "tasks", t_index, "name")),
                                                 hint=exc.hint))
                    continue
                # each task its own settings: a later task never inherits an earlier one's addonVolumes
                task_params, advanced = from_task_reference(ref, {})
                tasks.append(SessionTask(name=ref.name, params={**task_params, **advanced["extra_params"]},
                                         variables=advanced["variables"],
                                         addon_volumes=advanced["addon"].get("addonVolumes") or []))
            if len(tasks) < len(session.addon.tasks or []) or not tasks:
                continue
            schedule: dict[str, Any] = {"late_after_seconds": late_after(cron, timezone)}
            if retry:
                schedule["max_retry"] = retry.max_retry if retry.max_retry is not None else 1
                if retry.delay:
                    schedule["retry_delay"] = retry.delay
            if session.scheduler.starting_deadline_seconds is not None:
                schedule["starting_deadline_seconds"] = session.scheduler.starting_deadline_seconds
            limits: dict[str, Any] = {
                "history_limit": session.session_history_limit if session.session_history_limit is not None else 1}
            if session.backup_timeout:  # whole seconds, rounded up: 0.1s is 1 s, never "no deadline"
                limits["timeout"] = whole_seconds(session.backup_timeout)
            run = SessionParameters.model_validate(dict(
                configuration=plan.name, session=session.name, namespace=target_ns, target=target,
                addon=session.addon.name, tasks=tasks, repositories=repositories, limits=limits, schedule=schedule,
                hooks=session_hooks(catalog, session.hooks, namespace),
                cluster={"kubeconfig": kubeconfig},
                advanced={"addon": addon_settings, "configuration": plan.spec.dump()}))
            tag = plan_tag(plan)
            where = f"{target} in {target_ns}" if target else f"{target_ns} (no target)"
            specs.append(DeploymentSpec(
                name=label_value(f"{namespace}-{plan.name}-{session.name}"),
                flow=FLOW_NAME, addon=session.addon.name, tasks=[t.name for t in tasks], entrypoint=ENTRYPOINT,
                parameters=run.to_flow(), cron=cron, timezone=timezone, paused=paused,
                tags=[MANAGED_TAG, tag, f"session:{session.name}",
                      target_tag(target_ns, target) if target else f"target:{target_ns}/none",
                      f"addon:{session.addon.name}", *(f"task:{t.name}" for t in tasks)],
                lock=lock_name(target_ns, held_unit(plan.name, Target.parse(target) if target else None)),
                description=f"session {session.name} of BackupConfiguration {namespace}/{plan.name}: "
                            f"{session.addon.name} {', '.join(t.name for t in tasks)} of {where} into "
                            f"{', '.join(r.name for r in repositories)}",
                plan_tag=tag, work_pool=work_pool,
            ))
    raise_all(problems)
    return specs


def _repositories(catalog: Catalog, plan: BackupConfiguration, session: Any, s_index: int,
                  backends: dict[str, tuple[int, Any]], namespace: str,
                  problems: list[StashflowError]) -> list[SessionRepository]:
    """Every repository of a session, with its BackupStorage and its backend's RetentionPolicy."""
    base = ("spec", "sessions", s_index)
    repos = session.repositories or []
    if not repos:
        problems.append(CatalogError("a session needs a repository", code="missing-field",
                                     location=plan.location(base), obj=plan.ref,
                                     field=format_path(base + ("repositories",))))
        return []
    out = []
    for r_index, repo in enumerate(repos):
        backend_entry = backends.get(repo.backend or "") or (next(iter(backends.values())) if len(backends) == 1
                                                              else None)
        if backend_entry is None:
            path = base + ("repositories", r_index, "backend")
            problems.append(CatalogError(f'repository "{repo.name}" names backend "{repo.backend}", which the plan '
                                         "does not define", code="unknown-object", location=plan.location(path),
                                         obj=plan.ref, field=format_path(path)))
            continue
        b_index, backend = backend_entry
        bpath = ("spec", "backends", b_index)
        storage = _lookup(catalog, BackupStorage, backend.storage_ref, namespace, plan, bpath + ("storageRef",),
                          problems)
        policy = _lookup(catalog, RetentionPolicy, backend.retention_policy, namespace, plan,
                         bpath + ("retentionPolicy",), problems) if backend.retention_policy else None
        if storage is None:
            continue
        out.append(SessionRepository(
            name=repo.name, storage=Storage.of(storage), directory=(repo.directory or "").strip("/"),
            encryption_secret=repo.encryption_secret.name if repo.encryption_secret else None,
            deletion_policy=repo.deletion_policy, retention_policy=policy.name if policy is not None else None,
            retention=policy.spec.dump() if policy is not None else None))
    return out if len(out) == len(repos) else []
