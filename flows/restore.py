"""RestoreSessions (KubeStash's restore request) → the ``restore-session`` flow's parameters.

``dataSource.snapshot`` names a Snapshot or ``latest`` (of ``dataSource.repository``);
``addon.tasks[]`` are the restore tasks to run, in order; ``restoreTimeout`` is the deadline;
``addon.jobTemplate``/``containerRuntimeSettings`` and each task's ``params``/``variables``/
``addonVolumes`` apply as they do for backups. Where the data is comes from the Snapshot.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from stashflow.addons.catalog import Catalog
from stashflow.addons.durations import whole_seconds
from stashflow.addons.errors import CatalogError, StashflowError, raise_all
from stashflow.addons.model import RestoreSession
from stashflow.addons.source import format_path

from .parameters import RunParameters, from_task_reference
from .plan_check import session_hooks


def restore_runs(catalog: Catalog, session: RestoreSession) -> list[tuple[str, str, dict[str, Any]]]:
    """``(addon, task, flow parameters)`` for each task of the RestoreSession, checked against the catalog."""
    problems: list[StashflowError] = []
    spec = session.spec
    namespace = session.namespace or "default"

    def problem(message: str, path: tuple, code: str = "missing-field", hint: str | None = None) -> None:
        problems.append(CatalogError(message, code=code, location=session.location(path), obj=session.ref,
                                     field=format_path(path), hint=hint))

    if spec.target is None:
        problem("a RestoreSession needs a target to restore into", ("spec", "target"))
    source = spec.data_source
    if source is None or not source.snapshot:
        problem("dataSource.snapshot names the Snapshot to restore, or latest", ("spec", "dataSource"))
    elif source.snapshot == "latest" and not source.repository:
        problem('dataSource.snapshot "latest" needs dataSource.repository', ("spec", "dataSource", "repository"))
    if spec.addon is None or not spec.addon.tasks:
        problem("addon.name and addon.tasks[] say which restore task runs", ("spec", "addon"))
    raise_all(problems)
    assert spec.target is not None and source is not None and spec.addon is not None
    group = f".{spec.target.api_group}" if spec.target.api_group else ""
    target = f"{spec.target.kind or 'PersistentVolumeClaim'}{group}/{spec.target.name}"
    info = spec.addon.dump()
    settings = {k: v for k, v in info.items() if k in ("jobTemplate", "containerRuntimeSettings")}
    runs = []
    for i, ref in enumerate(spec.addon.tasks or []):
        path = ("spec", "addon", "tasks", i, "name")
        try:
            _, list_name, _, _ = catalog.task(spec.addon.name, ref.name)
        except StashflowError as exc:
            problem(exc.message, path, exc.code, exc.hint)
            continue
        if list_name != "restoreTasks":
            problem(f'"{ref.name}" is a backup task; a RestoreSession runs restore tasks', path, "invalid-value")
            continue
        task_params, advanced = from_task_reference(ref, settings)
        try:
            run = RunParameters.model_validate(dict(
                target=target, namespace=spec.target.namespace or namespace, task_params=task_params,
                snapshot=source.snapshot,
                repository={"name": source.repository,
                            "encryption_secret": source.encryption_secret.name if source.encryption_secret else None},
                limits={"timeout": whole_seconds(spec.restore_timeout)} if spec.restore_timeout else {},
                advanced={**advanced, "invoker": {"kind": "RestoreSession", "name": session.name}}))
        except ValidationError as exc:
            first = exc.errors()[0]
            problem(first["msg"], ("spec",), "invalid-value")
            continue
        runs.append((spec.addon.name, ref.name, run.to_flow("restore")))
    raise_all(problems)
    return runs


def restore_session_parameters(catalog: Catalog, session: RestoreSession) -> dict[str, Any]:
    """The ``restore-session`` flow's parameters for a RestoreSession (checked by ``restore_runs`` first): every
    RestoreSession runs as one, whatever contract its Functions speak, so it has its object, its components
    and its hooks."""
    restore_runs(catalog, session)  # the same checks, the same coded errors
    spec = session.spec
    assert spec.target is not None and spec.data_source is not None and spec.addon is not None
    namespace = session.namespace or "default"
    group = f".{spec.target.api_group}" if spec.target.api_group else ""
    info = spec.addon.dump()
    settings = {k: v for k, v in info.items() if k in ("jobTemplate", "containerRuntimeSettings")}
    tasks = []
    for ref in spec.addon.tasks or []:
        task_params, advanced = from_task_reference(ref, settings)
        tasks.append({"name": ref.name, "params": {**task_params, **advanced["extra_params"]},
                      "variables": advanced["variables"],
                      "addon_volumes": advanced["addon"].get("addonVolumes") or []})
    source = spec.data_source
    return {"name": session.name, "namespace": spec.target.namespace or namespace,
            "target": f"{spec.target.kind or 'PersistentVolumeClaim'}{group}/{spec.target.name}",
            "addon": spec.addon.name, "tasks": tasks,
            "data_source": {"repository": source.repository, "snapshot": source.snapshot,
                            "namespace": getattr(source, "namespace", None),
                            "encryption_secret": source.encryption_secret.name if source.encryption_secret else None},
            "limits": {"timeout": whole_seconds(spec.restore_timeout)} if spec.restore_timeout else {},
            "addon_settings": settings,
            "hooks": [h.model_dump(mode="json") for h in session_hooks(catalog, spec.hooks, namespace)]}
