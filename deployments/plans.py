"""BackupConfigurations → one deployment per (plan, session, addon task) (DESIGN.md §3).

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
from stashflow.addons.model import BackupConfiguration, BackupStorage, RetentionPolicy
from stashflow.addons.names import label_value
from stashflow.addons.source import format_path
from stashflow.addons.render import Target
from stashflow.flows.addon_flows import entrypoint
from stashflow.flows.naming import target_tag
from stashflow.flows.parameters import RunParameters, Storage, from_task_reference
from stashflow.flows.plan_check import check_plans, cron_problem, late_after, split_schedule
from stashflow.flows.policies import lock_name

MANAGED_TAG = "stashflow"


@dataclass
class DeploymentSpec:
    """One deployment to create or update."""

    name: str  # unique per flow: <namespace>-<plan>-<session>
    flow: str  # <addon>:<task>
    addon: str
    task: str
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


def _lookup(catalog: Catalog, model: type, ref: Any, default_ns: str, plan: BackupConfiguration, path: tuple,
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
    """Every deployment the catalog's BackupConfigurations ask for; all problems raised together.

    The plans are checked by ``check_plans``, the check ``stashflow validate`` runs: what
    validates deploys, and what does not, does not."""
    if not checked:  # the catalog of `deploy` is checked by the same function as it is loaded
        raise_all(check_plans(catalog))
    problems: list[StashflowError] = []
    specs: list[DeploymentSpec] = []
    for plan in catalog.of_kind(BackupConfiguration):
        namespace = plan.namespace or "default"
        target_ref = plan.spec.target
        if target_ref is None:
            problems.append(CatalogError("the plan has no target", code="missing-field", location=plan.location(("spec",)),
                                         obj=plan.ref, field="spec.target"))
            continue
        group = f".{target_ref.api_group}" if target_ref.api_group else ""
        target = f"{target_ref.kind or 'PersistentVolumeClaim'}{group}/{target_ref.name}"
        target_ns = target_ref.namespace or namespace
        backends = {b.name: (i, b) for i, b in enumerate(plan.spec.backends or [])}
        for s_index, session in enumerate(plan.spec.sessions or []):
            base = ("spec", "sessions", s_index)
            if session.scheduler is None or session.addon is None:
                problems.append(CatalogError("a session needs a scheduler and an addon", code="missing-field",
                                             location=plan.location(base), obj=plan.ref, field=format_path(base)))
                continue
            repos = session.repositories or []
            if not repos:
                problems.append(CatalogError("a session needs a repository", code="missing-field",
                                             location=plan.location(base), obj=plan.ref,
                                             field=format_path(base + ("repositories",))))
                continue
            repo = repos[0]
            backend_entry = backends.get(repo.backend or "") or (next(iter(backends.values())) if len(backends) == 1
                                                                  else None)
            if backend_entry is None:
                problems.append(CatalogError(f'repository "{repo.name}" names backend "{repo.backend}", which the plan '
                                             "does not define", code="unknown-object",
                                             location=plan.location(base + ("repositories", 0, "backend")),
                                             obj=plan.ref, field=format_path(base + ("repositories", 0, "backend"))))
                continue
            b_index, backend = backend_entry
            bpath = ("spec", "backends", b_index)
            storage = _lookup(catalog, BackupStorage, backend.storage_ref, namespace, plan, bpath + ("storageRef",),
                              problems)
            policy = _lookup(catalog, RetentionPolicy, backend.retention_policy, namespace, plan,
                             bpath + ("retentionPolicy",), problems) if backend.retention_policy else None
            if storage is None:
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
                task_params, advanced = from_task_reference(ref, addon_settings)
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
                run = RunParameters(
                    target=target, namespace=target_ns,
                    task_params=task_params,
                    retention=policy.spec.dump() if policy is not None else None,
                    repository={"name": repo.name, "storage": Storage.of(storage),
                                "directory": (repo.directory or "").strip("/"),
                                "encryption_secret": repo.encryption_secret.name if repo.encryption_secret else None},
                    limits=limits, schedule=schedule, cluster={"kubeconfig": kubeconfig},
                    advanced={**advanced, "plan_session": session.name,
                              "invoker": {"kind": "BackupConfiguration", "name": plan.name}})
                params = run.to_flow("backup")
                flow = f"{session.addon.name}:{ref.name}"
                tag = plan_tag(plan)
                specs.append(DeploymentSpec(
                    name=label_value(f"{namespace}-{plan.name}-{session.name}"),
                    flow=flow, addon=session.addon.name, task=ref.name,
                    entrypoint=entrypoint(session.addon.name, ref.name), parameters=params, cron=cron,
                    timezone=timezone, paused=paused,
                    tags=[MANAGED_TAG, tag, f"session:{session.name}", target_tag(target_ns, target),
                          f"addon:{session.addon.name}", f"task:{ref.name}"],
                    lock=lock_name(target_ns, Target.parse(target)),
                    description=f"{flow} of {target} in {target_ns}, from BackupConfiguration {namespace}/{plan.name} "
                                f"session {session.name}",
                    plan_tag=tag, work_pool=work_pool,
                ))
    raise_all(problems)
    return specs

