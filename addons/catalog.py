"""Loading Addons, Functions and plans from files, and checking that they fit together.

Loading never stops at the first problem: every file is read, every object checked, and
``Catalog.problems`` lists what is wrong in file order, so that ``stashflow validate``
reports all of it at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, TypeVar

from pydantic import ValidationError

from . import template
from .errors import (
    CatalogError,
    LoadError,
    Location,
    StashflowError,
    did_you_mean,
    raise_all,
)
from .model import KINDS, Addon, AddonInfo, BackupConfiguration, Function, KubeObject, RestoreSession, Task
from .names import name_problem
from .source import Document, FieldPath, format_path, read_documents, yaml_files

#: Plain Kubernetes kinds that may sit beside plans (a Secret with the restic password...).
#: They are kept, not checked: the API server checks them.
PASSTHROUGH_KINDS = {
    ("v1", "Secret"),
    ("v1", "ConfigMap"),
    ("v1", "Namespace"),
    ("v1", "PersistentVolumeClaim"),
    ("v1", "PersistentVolume"),
    ("v1", "ServiceAccount"),
}

#: The project's own catalog, shipped inside the package.
BUILTIN_CATALOG = Path(__file__).parent / "catalog"

T = TypeVar("T", bound=KubeObject)


def _error_code(error_type: str) -> str:
    if error_type == "missing":
        return "missing-field"
    if error_type in ("literal_error", "enum"):
        return "invalid-value"
    if error_type == "invalid_duration":
        return "invalid-duration"
    if error_type.endswith("_type") or error_type in ("model_attributes_type", "is_instance_of"):
        return "invalid-type"
    return "invalid-value"


def _describe(value: Any) -> str:
    kind = {bool: "boolean", int: "number", float: "number", str: "string", list: "list", dict: "mapping"}.get(
        type(value), type(value).__name__
    )
    if isinstance(value, (dict, list)):
        return f"a {kind}"
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    return f"{kind} {shown}"


def _type_hint(error_type: str) -> str | None:
    if error_type == "string_type":
        return 'quote the value: every parameter and most fields are strings, e.g. "300" or "true"'
    if error_type == "bool_type":
        return "write true or false without quotes"
    if error_type == "int_type":
        return "write a whole number without quotes"
    return None


@dataclass
class Catalog:
    """Everything loaded from a set of paths, indexed by kind and name."""

    addons: dict[str, Addon] = field(default_factory=dict)
    functions: dict[str, Function] = field(default_factory=dict)
    objects: dict[str, dict[tuple[str, str], KubeObject]] = field(default_factory=dict)
    passthrough: list[dict[str, Any]] = field(default_factory=list)
    problems: list[StashflowError] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    # -- reading -------------------------------------------------------------------------

    def add_paths(self, paths: Iterable[str | Path]) -> "Catalog":
        """Read files and folders (recursively, *.yaml and *.yml), collecting problems."""
        for raw in paths:
            path = Path(raw)
            if not path.exists():
                self.problems.append(
                    LoadError("no such file or folder", code="read-error", location=Location(str(raw), 0))
                )
                continue
            files = yaml_files(path)
            if not files:
                self.problems.append(LoadError("the folder holds no .yaml or .yml file", code="read-error",
                                               location=Location(str(raw), 0),
                                               hint="give the files themselves, or the folder that holds them"))
            for file in files:
                self.files.append(str(file))
                try:
                    docs = read_documents(file)
                except LoadError as exc:
                    self.problems.append(exc)
                    continue
                for doc in docs:
                    self._add_document(doc)
        return self

    def _add_document(self, doc: Document) -> None:
        data = doc.data
        if not isinstance(data, dict):
            self.problems.append(
                LoadError(
                    f"a document must be a mapping with apiVersion, kind and metadata, not {_describe(data)}",
                    code="invalid-object",
                    location=doc.location(),
                )
            )
            return
        api_version, kind = data.get("apiVersion"), data.get("kind")
        for key, value in (("apiVersion", api_version), ("kind", kind)):
            if not isinstance(value, str) or not value:
                self.problems.append(
                    LoadError(
                        f"{key} is missing" if value is None else f"{key} must be a string, not {_describe(value)}",
                        code="missing-field" if value is None else "invalid-type",
                        location=doc.location((key,)),
                        field=key,
                    )
                )
                return
        assert isinstance(api_version, str) and isinstance(kind, str)  # the loop above returned otherwise
        model = KINDS.get((api_version, kind))
        if model is None:
            self._unknown_kind(doc, api_version, kind)
            return
        try:
            obj = model.model_validate(data)
        except ValidationError as exc:
            name = (data.get("metadata") or {}).get("name") if isinstance(data.get("metadata"), dict) else None
            ref = f'{kind} "{name}"' if name else kind
            for err in exc.errors():
                path: FieldPath = tuple(err["loc"])
                msg = err["msg"].removeprefix("Value error, ")
                self.problems.append(
                    LoadError(
                        f"{msg[0].lower()}{msg[1:]}"
                        + (f", got {_describe(err['input'])}" if err["type"] not in ("missing", "invalid_duration")
                           else ""),
                        code=_error_code(err["type"]),
                        location=doc.location(path),
                        obj=ref,
                        field=format_path(path),
                        hint=_type_hint(err["type"]),
                    )
                )
            return
        obj._doc = doc
        if not obj.metadata.name:
            self.problems.append(
                LoadError(
                    "metadata.name is missing",
                    code="missing-name",
                    location=doc.location(("metadata",)),
                    obj=kind,
                    field="metadata.name",
                    hint="every object needs a name",
                )
            )
            return
        problem = name_problem(obj.name)
        if not problem and obj.NAMESPACED and obj.namespace is not None:
            problem = name_problem(obj.namespace, max_len=63, label=True)
            if problem:
                self.problems.append(LoadError(problem, code="invalid-name", location=obj.location(("metadata", "namespace")),
                                               obj=obj.ref, field="metadata.namespace"))
                return
        if problem:
            self.problems.append(
                LoadError(problem, code="invalid-name", location=obj.location(("metadata", "name")), obj=obj.ref, field="metadata.name")
            )
            return
        self._index(obj)

    def _unknown_kind(self, doc: Document, api_version: str, kind: str) -> None:
        if (api_version, kind) in PASSTHROUGH_KINDS:
            self.passthrough.append(doc.data)
            return
        known_versions = sorted(v for v, k in KINDS if k == kind)
        if known_versions:
            self.problems.append(
                LoadError(
                    f'{kind} is read as apiVersion {" or ".join(known_versions)}, not "{api_version}"',
                    code="unknown-api-version",
                    location=doc.location(("apiVersion",)),
                    obj=kind,
                    field="apiVersion",
                )
            )
            return
        kinds = sorted({k for _, k in KINDS})
        self.problems.append(
            LoadError(
                f'stashflow does not read kind "{kind}" ({api_version}); it reads {", ".join(kinds)}',
                code="unknown-kind",
                location=doc.location(("kind",)),
                field="kind",
                hint=did_you_mean(kind, kinds),
            )
        )

    def _index(self, obj: KubeObject) -> None:
        if isinstance(obj, Addon):
            table: dict[Any, Any] = self.addons
            key: Any = obj.name
        elif isinstance(obj, Function):
            table, key = self.functions, obj.name
        else:
            table = self.objects.setdefault(obj.kind, {})
            key = (obj.namespace or "", obj.name)
        if key in table:
            first = table[key]
            self.problems.append(
                LoadError(
                    f"defined twice; the first is at {first.location()}",
                    code="duplicate-object",
                    location=obj.location(("metadata", "name")),
                    obj=obj.ref,
                    hint="names are unique per kind (and namespace); rename or remove one",
                )
            )
            return
        table[key] = obj

    # -- looking up ----------------------------------------------------------------------

    def of_kind(self, model: type[T]) -> list[T]:
        """Every loaded object of a namespaced kind, in load order."""
        return list(self.objects.get(model.KIND, {}).values())  # type: ignore[arg-type]

    def get(self, model: type[T], name: str, namespace: str | None = None) -> T | None:
        table = self.objects.get(model.KIND, {})
        found = table.get((namespace or "", name))
        if found is None and namespace is None:
            found = next((o for (_, n), o in table.items() if n == name), None)
        return found  # type: ignore[return-value]

    def addon(self, name: str) -> Addon:
        try:
            return self.addons[name]
        except KeyError:
            raise CatalogError(
                f'the catalog has no Addon "{name}"',
                code="unknown-addon",
                obj=f'Addon "{name}"',
                hint=did_you_mean(name, self.addons) or f"known Addons: {', '.join(sorted(self.addons)) or 'none'}",
            ) from None

    def task(self, addon_name: str, task_name: str) -> tuple[Addon, str, int, Task]:
        """The task named ``task_name`` in either list of the Addon: ``(addon, list, index, task)``."""
        addon = self.addon(addon_name)
        found = addon.find_task(task_name)
        if found is None:
            names = [t.name for _, _, t in addon.tasks()]
            raise CatalogError(
                f'Addon "{addon_name}" has no task "{task_name}"',
                code="unknown-task",
                location=addon.location(("spec",)),
                obj=addon.ref,
                hint=did_you_mean(task_name, names) or f"its tasks: {', '.join(names) or 'none'}",
            )
        return (addon, *found)

    def task_function(self, addon_name: str, task_name: str) -> Function:
        """The Function the Addon's task runs."""
        return self.function(self.task(addon_name, task_name)[3].function)

    def function(self, name: str) -> Function:
        try:
            return self.functions[name]
        except KeyError:
            raise CatalogError(
                f'the catalog has no Function "{name}"',
                code="unknown-function",
                hint=did_you_mean(name, self.functions),
            ) from None

    # -- checking ------------------------------------------------------------------------

    def check(self) -> "Catalog":
        """Cross-reference checks; problems are appended to ``problems``."""
        for function in self.functions.values():
            self.problems.extend(check_function_templates(function))
        for addon in self.addons.values():
            self.problems.extend(check_addon(addon, self.functions))
        for plan in self.of_kind(BackupConfiguration) + self.of_kind(RestoreSession):
            self.problems.extend(check_plan_addons(plan, self))
        self.problems.sort(key=lambda p: (p.location.file, p.location.line) if p.location else ("", 0))
        return self

    def raise_for_problems(self) -> "Catalog":
        raise_all(self.problems)
        return self

    @property
    def task_count(self) -> int:
        return sum(len(a.tasks()) for a in self.addons.values())


def load(paths: Iterable[str | Path], *, check: bool = True, strict: bool = True) -> Catalog:
    """Load and check ``paths``; with ``strict`` raise the problems instead of returning them."""
    catalog = Catalog().add_paths(paths)
    if check:
        catalog.check()
    if strict:
        catalog.raise_for_problems()
    return catalog


def check_function_templates(function: Function) -> list[StashflowError]:
    """Every ``${...}`` in the Function must parse."""
    problems: list[StashflowError] = []
    for path, text in template.walk_strings(function.spec.dump(), ("spec",)):
        problems.extend(_template_problems(function, path, text))
    return problems


def _template_problems(obj: KubeObject, path: FieldPath, text: str) -> list[StashflowError]:
    if "${" not in text:
        return []
    try:
        template.parse(text)
    except template.TemplateSyntaxError as exc:
        return [
            CatalogError(
                f"{exc} in {text!r}",
                code="invalid-template",
                location=obj.location(path),
                obj=obj.ref,
                field=format_path(path),
            )
        ]
    return []


def check_addon(addon: Addon, functions: dict[str, Function]) -> list[StashflowError]:
    """Task names unique, Functions present, mounts naming the task's volumes, templates parsing."""
    problems: list[StashflowError] = []
    seen_tasks: dict[str, str] = {}
    for list_name, index, task in addon.tasks():
        base: FieldPath = ("spec", list_name, index)

        def err(code: str, message: str, path: FieldPath, hint: str | None = None) -> None:
            problems.append(
                CatalogError(message, code=code, location=addon.location(path), obj=addon.ref, field=format_path(path), hint=hint)
            )

        if task.name in seen_tasks:
            err("duplicate-task", f'task "{task.name}" is defined twice (also at {seen_tasks[task.name]})', base + ("name",),
                "task names are unique across backupTasks and restoreTasks: each becomes the flow <addon>/<task>")
        else:
            seen_tasks[task.name] = format_path(base)
        problem = name_problem(task.name, max_len=63, label=True)
        if problem:
            err("invalid-name", problem, base + ("name",), "task names become container and flow names")

        function = functions.get(task.function)
        if function is None:
            err("unknown-function", f'Function "{task.function}" is not in the catalog', base + ("function",),
                did_you_mean(task.function, functions) or "add its file to the catalog paths")

        seen_params: set[str] = set()
        for i, param in enumerate(task.parameters or []):
            if param.name in seen_params:
                err("duplicate-parameter", f'parameter "{param.name}" is declared twice', base + ("parameters", i, "name"))
            seen_params.add(param.name)

        volume_names: set[str] = set()
        for i, volume in enumerate(task.volume_template or []):
            if volume.name in volume_names:
                err("duplicate-volume", f'volume template "{volume.name}" is declared twice', base + ("volumeTemplate", i, "name"))
            volume_names.add(volume.name)
            for path, text in template.walk_strings(volume.dump(), base + ("volumeTemplate", i)):
                problems.extend(_template_problems(addon, path, text))

        mounts = [(base + ("volumeMounts", i), m) for i, m in enumerate(task.volume_mounts or [])]
        if function is not None:
            mounts += [(("function", task.function, "spec", "volumeMounts", i), m)
                       for i, m in enumerate(function.spec.volume_mounts or [])]
        for path, mount in mounts:
            if mount.name not in volume_names:
                where = base + ("volumeMounts",) if path[0] == "spec" else base + ("function",)
                err("unknown-volume",
                    f'volumeMount "{mount.name}" at {mount.mount_path} names no volume of the task'
                    + ("" if path[0] == "spec" else f' (the mount comes from Function "{task.function}")'),
                    path if path[0] == "spec" else where,
                    did_you_mean(mount.name, volume_names) or f"the task's volumes: {', '.join(sorted(volume_names)) or 'none'}")
    return problems


def check_plan_addons(plan: BackupConfiguration | RestoreSession, catalog: Catalog) -> list[StashflowError]:
    """A plan's addon and task names must be in the catalog (parameters are checked at resolution)."""
    problems: list[StashflowError] = []
    infos: list[tuple[FieldPath, AddonInfo | None]]
    if isinstance(plan, BackupConfiguration):
        infos = [(("spec", "sessions", i, "addon"), s.addon) for i, s in enumerate(plan.spec.sessions or [])]
    else:
        infos = [(("spec", "addon"), plan.spec.addon)]
    for path, info in infos:
        if info is None:
            problems.append(CatalogError("no addon is given", code="missing-field", location=plan.location(path[:-1]),
                                         obj=plan.ref, field=format_path(path)))
            continue
        addon = catalog.addons.get(info.name)
        if addon is None:
            problems.append(CatalogError(f'Addon "{info.name}" is not in the catalog', code="unknown-addon",
                                         location=plan.location(path + ("name",)), obj=plan.ref,
                                         field=format_path(path + ("name",)), hint=did_you_mean(info.name, catalog.addons)))
            continue
        for j, ref in enumerate(info.tasks or []):
            if addon.find_task(ref.name) is None:
                names = [t.name for _, _, t in addon.tasks()]
                problems.append(CatalogError(f'Addon "{addon.name}" has no task "{ref.name}"', code="unknown-task",
                                             location=plan.location(path + ("tasks", j, "name")), obj=plan.ref,
                                             field=format_path(path + ("tasks", j, "name")),
                                             hint=did_you_mean(ref.name, names) or f"its tasks: {', '.join(names)}"))
    return problems
