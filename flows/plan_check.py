"""The one check of plans (BackupConfigurations) and RestoreSessions, shared by every command.

``validate``, ``deploy``, ``deploy --write``, ``serve`` and ``restore`` all call ``check_plans``:
a plan that ``validate`` accepts is one that ``deploy`` accepts, and the reverse. Beyond the
shape (the models check types, counts and durations when the files are read), it checks what
would make every run of the plan fail in the cluster: a schedule Prefect refuses or that can
never fire, names the API server refuses, paths that leave the storage, parameters the task
cannot take. It does that by rendering each run offline, as the run itself will.

It lives in ``flows`` because a schedule is checked by Prefect's own cron reader: the one that
will run it.
"""

from __future__ import annotations

from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

from stashflow.addons.catalog import Catalog
from stashflow.addons.durations import deadline_seconds
from stashflow.addons.errors import CatalogError, Problems, StashflowError
from stashflow.addons.hooks import HookPlan, Phase, plan_hook
from stashflow.addons.model import (AddonInfo, BackupConfiguration, BackupStorage, Function, KubeObject,
                                    RestoreSession, RetentionPolicy)
from stashflow.addons.model.hook import HookTemplate
from stashflow.addons.names import name_problem, path_problem, valid_name
from stashflow.addons.render import RenderRequest, RepositoryContext, Target, check_objects, render_plan
from stashflow.addons.resolve import as_value
from stashflow.addons.source import FieldPath, format_path

from .session_parameters import SessionHook

#: When a sample run of a plan is rendered (pins the session name, so the check is repeatable).
SAMPLE_TIME = datetime(2024, 1, 1, tzinfo=timezone.utc)


def split_schedule(schedule: str) -> tuple[str, str]:
    """``"CRON_TZ=Europe/Berlin 0 2 * * *"`` → (``"0 2 * * *"``, ``"Europe/Berlin"``)."""
    import re

    match = re.match(r"^\s*(?:CRON_TZ|TZ)=(\S+)\s+(.*)$", schedule)
    return (match.group(2).strip(), match.group(1)) if match else (schedule.strip(), "UTC")


def next_fires(cron: str, tz: str, count: int = 2) -> list[datetime]:
    """The next ``count`` times the schedule fires, by the cron reader Prefect's scheduler uses."""
    from zoneinfo import ZoneInfo

    from prefect._vendor.croniter import croniter

    it = croniter(cron, datetime.now(ZoneInfo(tz)))
    return [it.get_next(datetime) for _ in range(count)]


@lru_cache(maxsize=1024)
def cron_problem(cron: str, tz: str) -> str | None:
    """Why Prefect would refuse this schedule or never run it, or None (cached: Prefect's time
    zone check lists the zone files each time)."""
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        CronSchedule(cron=cron, timezone=tz)
    except ValidationError as exc:
        return "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
    except Exception as exc:  # noqa: BLE001 - Prefect's validators raise what their parsers raise
        return str(exc)
    try:
        next_fires(cron, tz)
    except Exception as exc:  # noqa: BLE001 - CroniterBadDateError and kin
        return f"it never fires ({type(exc).__name__}: {exc})"
    return None


def late_after(cron: str, tz: str) -> float:
    """How late a scheduled run may start and still count as on time: half the schedule's
    interval, at most 60 s (a 5-minute schedule: 60 s; an every-10-seconds one: 5 s)."""
    first, second = next_fires(cron, tz)
    return min(60.0, (second - first).total_seconds() / 2)


class _Collector:
    """Problems of one plan, each located in the plan's file."""

    def __init__(self, plan: BackupConfiguration | RestoreSession, catalog: Catalog) -> None:
        self.plan, self.catalog = plan, catalog
        self.problems: list[StashflowError] = []

    def add(self, message: str, path: FieldPath, code: str = "invalid-value", hint: str | None = None) -> None:
        self.problems.append(CatalogError(message, code=code, location=self.plan.location(path), obj=self.plan.ref,
                                          field=format_path(path), hint=hint))

    def name(self, value: str | None, path: FieldPath, *, label: bool = False, what: str = "name") -> None:
        if value is None:
            return
        problem = name_problem(value, max_len=63 if label else 253, label=label)
        if problem:
            self.add(problem, path, "invalid-name", f"the API server refuses this {what}")

    def path(self, value: str | None, path: FieldPath, *, segment: bool = False) -> None:
        if value is None:
            return
        problem = path_problem(value, segment=segment)
        if problem:
            self.add(problem, path, "invalid-path", "a path stays inside the storage: no .., no empty segment")

    def rendered(self, request: RenderRequest, path: FieldPath) -> None:
        """Render the run offline; what the render or the API's rules refuse is a problem at ``path``."""
        try:
            plan = render_plan(self.catalog, request)
            check_objects(plan.objects())
        except StashflowError as exc:
            for problem in (exc.problems if isinstance(exc, Problems) else [exc]):
                self.relocate(problem, path)

    def relocate(self, problem: StashflowError, path: FieldPath) -> None:
        """Keep a problem's own file location (a Function, a parameter's line); else the plan's."""
        loc = problem.location
        if loc is not None and loc.line > 0 and not loc.file.startswith("<"):
            self.problems.append(problem)
            return
        field = " ".join(p for p in (format_path(path), problem.obj, problem.field) if p)
        self.problems.append(CatalogError(problem.message, code=problem.code, location=self.plan.location(path),
                                          obj=self.plan.ref, field=field, hint=problem.hint))


def _params(c: _Collector, raw: dict[str, Any] | None, path: FieldPath) -> dict[str, Any]:
    out = {}
    for name, value in (raw or {}).items():
        where = c.plan.location(path + (name,))
        try:
            out[name] = as_value(value, where, format_path(path + (name,)))
        except StashflowError as exc:
            c.problems.append(CatalogError(exc.message, code=exc.code, location=where, obj=c.plan.ref,
                                           field=format_path(path + (name,)), hint=exc.hint))
    return out


def _variables(c: _Collector, raw: list[dict[str, Any]] | None, path: FieldPath) -> dict[str, Any]:
    out = {}
    for i, var in enumerate(raw or []):
        name, value = var.get("name"), var.get("value")
        if not isinstance(name, str) or not name:
            c.add("a variable needs a name (a string)", path + (i, "name"), "missing-field" if name is None else
                  "invalid-type")
            continue
        if "value" not in var:
            c.add(f'variable "{name}" has no value (valueFrom is not read by stashflow)', path + (i,), "missing-field",
                  "give value: \"...\"")
            continue
        if not isinstance(value, str):
            c.add(f'variable "{name}" must be a string, not {type(value).__name__}', path + (i, "value"),
                  "invalid-type", 'quote the value, e.g. "300"')
            continue
        out[name] = as_value(value, c.plan.location(path + (i, "value")), format_path(path + (i, "value")))
    return out


def check_backup_plan(plan: BackupConfiguration, catalog: Catalog) -> list[StashflowError]:
    """Every problem of one BackupConfiguration that would stop a deployment or fail each of its runs."""
    c = _Collector(plan, catalog)
    namespace = plan.namespace or "default"
    c.name(plan.namespace, ("metadata", "namespace"), label=True, what="namespace")
    target_text = plan_target(plan)
    target_ns = (plan.spec.target.namespace if plan.spec.target else None) or namespace
    if target_text != NO_TARGET:  # a cluster-wide plan (kubedump) has none: its BackupConfiguration is held instead
        assert plan.spec.target is not None
        c.name(plan.spec.target.namespace, ("spec", "target", "namespace"), label=True, what="namespace")
        c.name(plan.spec.target.name, ("spec", "target", "name"), what="object name")
    try:
        target = Target.parse(target_text)
    except StashflowError as exc:
        c.add(exc.message, ("spec", "target"), "invalid-value", exc.hint)
        return c.problems
    backends = {b.name: (i, b) for i, b in enumerate(plan.spec.backends or [])}
    if not plan.spec.sessions:
        c.add("the plan has no sessions", ("spec", "sessions"), "missing-field")
    seen_sessions: dict[str, int] = {}
    for s_index, session in enumerate(plan.spec.sessions or []):
        base: FieldPath = ("spec", "sessions", s_index)
        c.path(session.name, base + ("name",), segment=True)
        if session.name in seen_sessions:
            c.add(f'session "{session.name}" is defined twice (also sessions[{seen_sessions[session.name]}])',
                  base + ("name",), "duplicate-object", "session names are unique per plan: each is a deployment")
        seen_sessions.setdefault(session.name, s_index)
        check_hooks(c, catalog, session.hooks, namespace, base + ("hooks",))
        if session.scheduler is None or session.addon is None:
            c.add("a session needs a scheduler and an addon", base, "missing-field")
            continue
        repos = session.repositories or []
        if not repos:
            c.add("a session needs a repository", base + ("repositories",), "missing-field")
            continue
        stored = []  # every repository gets its own copy: each is checked, and each task rendered into it
        seen_repos: dict[str, int] = {}
        for r_index, repo in enumerate(repos):
            rpath = base + ("repositories", r_index)
            c.name(repo.name, rpath + ("name",), what="repository name")
            if repo.name in seen_repos:
                c.add(f'repository "{repo.name}" is named twice in the session (also repositories[{seen_repos[repo.name]}])',
                      rpath + ("name",), "duplicate-object", "each repository of a session gets its own Snapshot")
            seen_repos.setdefault(repo.name, r_index)
            c.path(repo.directory, rpath + ("directory",))
            if repo.encryption_secret is not None:
                c.name(repo.encryption_secret.name, rpath + ("encryptionSecret", "name"), what="Secret name")
            backend_entry = backends.get(repo.backend or "") or (next(iter(backends.values())) if len(backends) == 1
                                                                  else None)
            if backend_entry is None:
                c.add(f'repository "{repo.name}" names backend "{repo.backend}", which the plan does not define',
                      rpath + ("backend",), "unknown-object")
                continue
            b_index, backend = backend_entry
            bpath: FieldPath = ("spec", "backends", b_index)
            storage = _lookup(c, catalog, BackupStorage, backend.storage_ref, namespace, bpath + ("storageRef",))
            if backend.retention_policy is not None:
                _lookup(c, catalog, RetentionPolicy, backend.retention_policy, namespace, bpath + ("retentionPolicy",))
            if storage is not None:
                stored.append((repo, storage))
        if len(stored) < len(repos):
            continue
        spath = base + ("scheduler", "schedule")
        cron, tz = split_schedule(session.scheduler.schedule)
        problem = cron_problem(cron, tz)
        if problem:
            c.add(f'"{session.scheduler.schedule}" is not a schedule: {problem}', spath, "invalid-value",
                  'five cron fields, optionally "CRON_TZ=Zone " first; a sixth field in front counts seconds')
        timeout = deadline_seconds(session.backup_timeout) if session.backup_timeout else None
        info = session.addon
        for t_index, ref in enumerate(info.tasks or []):
            tpath = base + ("addon", "tasks", t_index)
            addon = catalog.addons.get(info.name)
            found = addon.find_task(ref.name) if addon else None
            if found is None:
                continue  # unknown-addon / unknown-task: reported by Catalog.check
            list_name = found[0]
            if list_name != "backupTasks":
                c.add(f'"{ref.name}" is a restore task; a BackupConfiguration runs backup tasks', tpath + ("name",))
                continue
            params = _params(c, ref.params, tpath + ("params",))
            variables = _variables(c, ref.variables, tpath + ("variables",))
            if c.problems:
                continue  # render only a plan that is otherwise right: one cause, one line
            for repo, storage in stored:
                request = RenderRequest(
                    addon=info.name, task=ref.name, namespace=target_ns, target=target, params=params,
                    builtins=variables, session=valid_name(plan.name, session.name, str(int(SAMPLE_TIME.timestamp()))),
                    plan_session=session.name, invoker_kind="BackupConfiguration", invoker_name=plan.name,
                    timeout_seconds=timeout,
                    repository=RepositoryContext(name=repo.name, storage=storage,
                                                 directory=(repo.directory or "").strip("/"),
                                                 encryption_secret=repo.encryption_secret.name
                                                 if repo.encryption_secret else None),
                    addon_info=AddonInfo.model_validate({k: v for k, v in info.dump().items() if k != "tasks"}),
                    addon_volumes=list(ref.addon_volumes or []), now=SAMPLE_TIME, snapshot_id="0" * 26,
                    within_session=True,
                )
                c.rendered(request, tpath)
    return c.problems


#: A session's or RestoreSession's hook lists: (attribute, field name, phase).
HOOK_LISTS: tuple[tuple[str, str, Phase], ...] = (
    ("pre_backup", "preBackup", "preBackup"), ("post_backup", "postBackup", "postBackup"),
    ("pre_restore", "preRestore", "preRestore"), ("post_restore", "postRestore", "postRestore"))


def hook_function(catalog: Catalog, template: HookTemplate) -> Function | None:
    """The Function a HookTemplate's Function executor names, when the catalog has it."""
    executor = template.spec.executor
    if executor is None or executor.type != "Function" or executor.function is None:
        return None
    return catalog.functions.get(executor.function.name)


def check_hooks(c: _Collector, catalog: Catalog, hooks: Any, namespace: str, path: FieldPath) -> list[HookPlan]:
    """Each hook's template found and its plan made: what a run cannot do is a problem now."""
    plans = []
    for attr, name, phase in HOOK_LISTS:
        for i, info in enumerate(getattr(hooks, attr, None) or []):
            hpath = path + (name, i)
            template = _lookup(c, catalog, HookTemplate, info.hook_template, namespace, hpath + ("hookTemplate",))
            if template is None:
                continue
            try:
                plans.append(plan_hook(info, template, phase, namespace, hook_function(catalog, template)))
            except StashflowError as exc:
                c.relocate(exc, hpath)
    return plans


def session_hooks(catalog: Catalog, hooks: Any, namespace: str) -> list[SessionHook]:
    """A session's or RestoreSession's hooks with their HookTemplates, carried whole into the flow's
    parameters (checked by ``check_hooks`` already: a template that is not there was reported)."""
    out = []
    for attr, _, phase in HOOK_LISTS:
        for info in getattr(hooks, attr, None) or []:
            ref = info.hook_template
            template = catalog.get(HookTemplate, ref.name, ref.namespace or namespace) if ref else None
            if template is not None:
                function = hook_function(catalog, template)
                out.append(SessionHook(phase=phase, hook=info.dump(), template=template.dump(),
                                       function=function.dump() if function else {}))
    return out


#: What a session's tasks are run for when the plan has no target (KubeStash's ``{apiGroup: na, name: na}``).
NO_TARGET = "na.na/na"


def plan_target(plan: BackupConfiguration) -> str:
    """The plan's target as KIND[.GROUP]/NAME, or ``NO_TARGET`` for a cluster-wide plan (no target, or
    KubeStash's ``{apiGroup: na, kind: ..., name: na}``)."""
    ref = plan.spec.target
    if ref is None or not ref.name or (ref.name == "na" and ref.api_group == "na"):
        return NO_TARGET
    group = f".{ref.api_group}" if ref.api_group else ""
    return f"{ref.kind or 'PersistentVolumeClaim'}{group}/{ref.name}"


def _lookup(c: _Collector, catalog: Catalog, model: type[KubeObject], ref: Any, default_ns: str, path: FieldPath) -> Any:
    if ref is None:
        c.add(f"no {model.KIND} is named", path, "missing-field")
        return None
    found = catalog.get(model, ref.name, ref.namespace or default_ns)
    if found is None:
        c.add(f'{model.KIND} "{ref.namespace or default_ns}/{ref.name}" is not in the plan files', path,
              "unknown-object", f"add the file that defines the {model.KIND}")
    return found


def check_restore_session(session: RestoreSession, catalog: Catalog) -> list[StashflowError]:
    """Every problem of one RestoreSession that would stop ``stashflow restore`` or fail its runs."""
    from .restore import restore_runs

    c = _Collector(session, catalog)
    spec = session.spec
    c.name(session.namespace, ("metadata", "namespace"), label=True, what="namespace")
    if spec.target is not None:
        c.name(spec.target.namespace, ("spec", "target", "namespace"), label=True, what="namespace")
        c.name(spec.target.name, ("spec", "target", "name"), what="object name")
    source = spec.data_source
    if source is not None:
        if source.snapshot and source.snapshot != "latest":
            c.name(source.snapshot, ("spec", "dataSource", "snapshot"), what="Snapshot name")
        c.name(source.repository, ("spec", "dataSource", "repository"), what="repository name")
        if source.encryption_secret is not None:
            c.name(source.encryption_secret.name, ("spec", "dataSource", "encryptionSecret", "name"),
                   what="Secret name")
    check_hooks(c, catalog, spec.hooks, session.namespace or "default", ("spec", "hooks"))
    addon = catalog.addons.get(spec.addon.name) if spec.addon else None
    if spec.addon is not None and (addon is None or any(addon.find_task(t.name) is None for t in spec.addon.tasks or [])):
        return c.problems  # unknown-addon / unknown-task: reported by Catalog.check
    if c.problems:
        return c.problems
    try:
        runs = restore_runs(catalog, session)
    except StashflowError as exc:
        return [*(exc.problems if isinstance(exc, Problems) else [exc])]
    assert spec.addon is not None and spec.target is not None
    for i, (addon_name, task, params) in enumerate(runs):
        tpath: FieldPath = ("spec", "addon", "tasks", i)
        ref = spec.addon.tasks[i] if spec.addon.tasks and i < len(spec.addon.tasks) else None
        raw = (ref.params or {}) if ref else {}
        request = RenderRequest(
            addon=addon_name, task=task, namespace=params["namespace"], target=Target.parse(params["target"]),
            params=_params(c, raw, tpath + ("params",)),
            builtins={**_variables(c, ref.variables if ref else None, tpath + ("variables",)),
                      "snapshot": as_value(params["snapshot"] if params["snapshot"] != "latest" else "latest")},
            session=valid_name(session.name, str(int(SAMPLE_TIME.timestamp()))),
            invoker_kind="RestoreSession", invoker_name=session.name,
            timeout_seconds=deadline_seconds(params["limits"]["timeout"])
            if (params.get("limits") or {}).get("timeout") else None,
            repository=RepositoryContext(name=(params.get("repository") or {}).get("name") or "repository",
                                         encryption_secret=(params.get("repository") or {}).get("encryption_secret"),
                                         component_path="repository/v1/session/component", restic_snapshot_id="latest"),
            addon_info=AddonInfo.model_validate({k: v for k, v in spec.addon.dump().items() if k != "tasks"}),
            addon_volumes=list(ref.addon_volumes or []) if ref else [], now=SAMPLE_TIME,
        )
        c.rendered(request, tpath)
    return c.problems


def check_plans(catalog: Catalog) -> list[StashflowError]:
    """Every problem of the catalog's plans and RestoreSessions, in file order."""
    problems: list[StashflowError] = []
    for plan in catalog.of_kind(BackupConfiguration):
        problems += check_backup_plan(plan, catalog)
    for session in catalog.of_kind(RestoreSession):
        problems += check_restore_session(session, catalog)
    unique = list({p.format(): p for p in problems}.values())  # two sessions sharing a backend: one line
    unique.sort(key=lambda p: (p.location.file, p.location.line) if p.location else ("", 0))
    return unique


__all__ = ["check_plans", "check_backup_plan", "check_restore_session", "cron_problem", "late_after", "split_schedule"]
