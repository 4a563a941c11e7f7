"""Step 1 of every run: a task's inputs merged, checked and substituted (DESIGN.md §2).

Inputs are layered as KubeStash layers them (REFERENCE.md §3.4): the Addon's parameter
defaults, then the plan's ``params``, then its ``variables``, then the built-ins that
stashflow sets (``namespace``, ``backupSession``, ``snapshot``, ``PVC_NAME``...). A required
parameter without a value and a name that the task cannot use are errors, reported
together, each with where it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from . import template
from .catalog import Catalog
from .errors import Location, ResolutionError, StashflowError, did_you_mean, raise_all
from .model import Addon, Function, Task
from .source import FieldPath, format_path
from .versions import find_addon_version

#: Variables stashflow sets itself (REFERENCE.md §3.3); ``--var`` may set them explicitly.
BUILTIN_VARIABLES: dict[str, str] = {
    "namespace": "namespace of the run (the target's namespace)",
    "backupSession": "name of the backup session (one run of a plan's session)",
    "restoreSession": "name of the restore session",
    "backupVerificationSession": "name of the backup verification session",
    "snapshot": "the Snapshot this run records (backup) or restores from (restore)",
    "PVC_NAME": "the target PVC, when the target is a PersistentVolumeClaim",
    "DB_VERSION": "the database version; mapped onto the Function's availableVersions",
    "taskName": "the Addon task being run",
    "invokerKind": "BackupConfiguration or RestoreSession",
    "invokerName": "name of the plan that invoked the run",
    "POD_ORDINAL": "replica ordinal for per-pod (non-singleton) tasks",
    "INTERIM_VOLUME": "the name kubestash-interim-volume",
    "RESTIC_CACHE_VOLUME": "the name kubestash-tmp-volume",
    "RESTIC_SNAPSHOT_ID": "restores: the restic snapshot to read, from the Snapshot's resticStats",
    "interimDataDir": "mount path of the interim volume when there is one",
    "licenseApiService": "license API service (KubeStash operator setting; empty here)",
    "imageRegistry": "registry of the operator image (KubeStash; empty here)",
    "imageRepo": "repository of the operator image (KubeStash; empty here)",
    "imageTag": "tag of the operator image (KubeStash; empty here)",
}

#: Built-ins a plan must not set as parameters: stashflow owns their meaning.
RESERVED = {"namespace", "backupSession", "restoreSession", "snapshot", "PVC_NAME", "taskName",
            "invokerKind", "invokerName", "POD_ORDINAL", "INTERIM_VOLUME", "RESTIC_CACHE_VOLUME"}


@dataclass(frozen=True)
class Value:
    """A value the user gave, with where it was given (for errors) and whether it is secret."""

    value: str
    location: Location | None = None
    field: str | None = None
    secret: bool = False


def as_value(raw: Any, location: Location | None = None, field: str | None = None) -> Value:
    """A plan value as KubeStash reads it: scalars become strings (``true``, ``300``)."""
    if isinstance(raw, Value):
        return raw
    if isinstance(raw, bool):
        return Value("true" if raw else "false", location, field)
    if isinstance(raw, (int, float, str)):
        return Value(str(raw), location, field)
    if raw is None:
        return Value("", location, field)
    raise ResolutionError(
        f"a parameter value must be a string, number or boolean, not a {type(raw).__name__}",
        code="invalid-parameter",
        location=location,
        field=field,
        hint="write a list as one string in the form the Function expects, e.g. comma separated",
    )


@dataclass
class ResolvedTask:
    """The outcome of resolution: the task, its Function, inputs and substituted specs."""

    addon: Addon
    task: Task
    function: Function
    kind: Literal["backup", "restore"]
    task_path: FieldPath
    inputs: dict[str, str]
    container: dict[str, Any]  # the Function spec, substituted (without availableVersions)
    volume_templates: list[dict[str, Any]]  # the task's volumeTemplate entries, substituted
    secret_inputs: set[str] = field(default_factory=set)

    @property
    def flow_name(self) -> str:
        return f"{self.addon.name}/{self.task.name}"


def referenced_names(task: Task, function: Function | None) -> set[str]:
    """Names the Function and the task's volume templates reference."""
    found: set[str] = set()
    strings = list(template.walk_strings(function.spec.dump())) if function else []
    for volume in task.volume_template or []:
        strings += list(template.walk_strings(volume.dump()))
    for _, text in strings:
        if "${" in text:
            try:
                found.update(template.names(template.parse(text)))
            except template.TemplateSyntaxError:
                pass  # reported by the catalog check
    return found


def known_names(task: Task, function: Function | None) -> set[str]:
    """What a plan may set: the task's parameters and every name its templates reference."""
    return {p.name for p in task.parameters or []} | referenced_names(task, function)


def resolve_task(
    catalog: Catalog,
    addon_name: str,
    task_name: str,
    *,
    params: Mapping[str, Any] | None = None,
    variables: Mapping[str, Any] | None = None,
    builtins: Mapping[str, Any] | None = None,
) -> ResolvedTask:
    """Merge defaults ⊕ params ⊕ variables ⊕ built-ins, check them, substitute.

    ``params`` and ``variables`` may hold plain values or ``Value`` (with a location for
    errors). ``builtins`` are stashflow's own plus what ``--var`` sets.
    """
    addon, list_name, index, task = catalog.task(addon_name, task_name)
    task_path: FieldPath = ("spec", list_name, index)
    function = catalog.functions.get(task.function)
    if function is None:
        raise ResolutionError(
            f'task "{task.name}" uses Function "{task.function}", which is not in the catalog',
            code="unknown-function",
            location=addon.location(task_path + ("function",)),
            obj=addon.ref,
            field=format_path(task_path + ("function",)),
            hint=did_you_mean(task.function, catalog.functions),
        )
    problems: list[StashflowError] = []
    declared = {p.name for p in task.parameters or []}
    known = known_names(task, function)
    inputs: dict[str, str] = {p.name: p.default for p in task.parameters or [] if p.default is not None}
    given: dict[str, Value] = {}
    secret: set[str] = set()

    for layer, label in ((params or {}, "parameter"), (variables or {}, "variable")):
        for name, raw in layer.items():
            try:
                value = as_value(raw)
            except ResolutionError as exc:
                problems.append(exc)
                continue
            where: dict[str, Any] = dict(location=value.location, obj=f"task {addon.name}/{task.name}", field=value.field)
            if name in RESERVED:
                problems.append(ResolutionError(
                    f'"{name}" is a built-in variable that stashflow sets; it cannot be a {label}',
                    code="invalid-parameter", **where,
                    hint=f"set it with --var {name}=VALUE, or use --namespace/--target for those",
                ))
                continue
            if name not in known:
                problems.append(ResolutionError(
                    f'{label} "{name}" is not declared by the task nor used by Function "{function.name}"',
                    code="unknown-parameter", **where,
                    hint=did_you_mean(name, known) or f"the task's parameters: {', '.join(sorted(declared)) or 'none'}",
                ))
                continue
            inputs[name] = value.value
            given[name] = value
            if value.secret:
                secret.add(name)

    for name, raw in (builtins or {}).items():
        value = as_value(raw)
        if name not in BUILTIN_VARIABLES and name not in known:
            problems.append(ResolutionError(
                f'variable "{name}" is neither a built-in nor used by the task or Function "{function.name}"',
                code="unknown-variable", location=value.location, obj=f"task {addon.name}/{task.name}",
                field=value.field,
                hint=did_you_mean(name, set(BUILTIN_VARIABLES) | known)
                or "built-ins: " + ", ".join(sorted(BUILTIN_VARIABLES)),
            ))
            continue
        inputs[name] = value.value
        if value.secret:
            secret.add(name)

    for i, param in enumerate(task.parameters or []):
        if param.required and inputs.get(param.name, "") == "":
            problems.append(ResolutionError(
                f'required parameter "{param.name}" has no value'
                + (f" ({param.usage.rstrip('.')})" if param.usage else ""),
                code="missing-required-parameter",
                location=addon.location(task_path + ("parameters", i)),
                obj=addon.ref,
                field=format_path(task_path + ("parameters", i)),
                hint=f"give it with --param {param.name}=VALUE or in the plan's addon.tasks[].params",
            ))
    raise_all(problems)

    spec = function.spec.dump()
    available = spec.pop("availableVersions", None)
    if "DB_VERSION" in inputs and available and "DB_VERSION" in referenced_names(task, function):
        try:
            inputs["DB_VERSION"] = find_addon_version(available, inputs["DB_VERSION"])
        except ValueError as exc:
            raise ResolutionError(
                f'no image version for database version "{inputs["DB_VERSION"]}": {exc}',
                code="no-matching-version",
                location=function.location(("spec", "availableVersions")),
                obj=function.ref,
                field="spec.availableVersions",
                hint="pass the database's version with --var DB_VERSION=X.Y",
            ) from None

    container = _substitute(function, ("spec",), spec, inputs, problems, kube_fields=True)
    volumes = [
        _substitute(addon, task_path + ("volumeTemplate", i), v.dump(), inputs, problems)
        for i, v in enumerate(task.volume_template or [])
    ]
    raise_all(problems)
    kind: Literal["backup", "restore"] = "backup" if list_name == "backupTasks" else "restore"
    return ResolvedTask(addon, task, function, kind, task_path, inputs, container, volumes, secret)


#: Fields of a Function's spec that Kubernetes expands again (``$(VAR)``, ``$$``), by shape.
KUBE_EXPANDED = {("command", 0), ("args", 0), ("env", 0, "value"), ("runtimeSettings", "env", 0, "value"),
                 ("volumeMounts", 0, "subPathExpr")}


def kube_expanded(path: tuple) -> bool:
    """Does Kubernetes expand ``$(VAR)`` in the Function spec field at ``path``?"""
    return tuple(0 if isinstance(p, int) else p for p in path) in KUBE_EXPANDED


def _substitute(owner: Addon | Function, base: FieldPath, data: Any, inputs: Mapping[str, str],
                problems: list[StashflowError], *, kube_fields: bool = False) -> Any:
    """Substitute every string of ``data``; in the fields Kubernetes expands (``kube_fields``),
    values are escaped so that the program receives them byte for byte."""
    reported: set[str] = set()

    def one(path: tuple, text: str) -> str:
        try:
            return template.substitute(text, inputs, kube=kube_fields and kube_expanded(path))
        except template.MissingValue as exc:
            full = base + path
            if exc.name not in reported:
                reported.add(exc.name)
                hint = (f"give it with --var {exc.name}=VALUE" if exc.name in BUILTIN_VARIABLES
                        else f"give it with --param {exc.name}=VALUE")
                if exc.name == "DB_VERSION":
                    hint = "give the database version with --var DB_VERSION=X.Y"
                problems.append(ResolutionError(
                    f"${{{exc.name}}} has no value and no default (in {text!r})",
                    code="unresolved-variable",
                    location=owner.location(full),
                    obj=owner.ref,
                    field=format_path(full),
                    hint=hint,
                ))
            return text
        except template.TemplateSyntaxError as exc:
            problems.append(ResolutionError(f"{exc} in {text!r}", code="invalid-template",
                                            location=owner.location(base + path), obj=owner.ref,
                                            field=format_path(base + path)))
            return text

    return template.map_strings(data, one)
