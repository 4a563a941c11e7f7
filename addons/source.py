"""Reading YAML while remembering where every field came from.

PyYAML's constructors drop line numbers, so errors could only name a file. Here each
document is composed by libyaml (fast) and turned into plain Python data by a small walker
that records the line of every field path. Values follow Kubernetes' YAML reading
(sigs.k8s.io/yaml): timestamps stay strings, duplicate keys are an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from .errors import LoadError, Location

try:  # libyaml is ~6x faster; PyYAML without it still works
    _Loader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on the PyYAML build
    _Loader = yaml.SafeLoader

FieldPath = tuple[str | int, ...]


def format_path(path: FieldPath) -> str:
    """``("spec", "backupTasks", 0, "function")`` → ``spec.backupTasks[0].function``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


@dataclass
class Document:
    """One YAML document: its data, the file it came from, and a line per field path."""

    data: Any
    file: str
    index: int  # 0-based position of the document in its file
    lines: dict[FieldPath, int] = field(default_factory=dict)

    def line(self, path: FieldPath) -> int:
        """The line of ``path``, or of its nearest ancestor that has one."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 0)

    def location(self, path: FieldPath = ()) -> Location:
        return Location(self.file, self.line(path))


class _Builder(yaml.constructor.SafeConstructor):
    """Turns composed nodes into plain data, recording lines; scalars typed as SafeLoader does."""

    def __init__(self, file: str) -> None:
        super().__init__()
        self.file = file

    def build(self, node: yaml.Node, path: FieldPath, lines: dict[FieldPath, int]) -> Any:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)  # YAML merge keys (<<)
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, str):
                    key = str(key).lower() if isinstance(key, bool) else str(key)
                if key in out:
                    raise LoadError(
                        f'the key "{key}" appears twice in this mapping',
                        code="duplicate-key",
                        location=Location(self.file, key_node.start_mark.line + 1),
                        field=format_path(path + (key,)),
                    )
                lines[path + (key,)] = key_node.start_mark.line + 1
                out[key] = self.build(value_node, path + (key,), lines)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,), lines) for i, item in enumerate(node.value)]
        if node.tag == "tag:yaml.org,2002:timestamp":
            return node.value  # Kubernetes keeps timestamps as strings
        return self.construct_object(node, deep=True)


def _mark_line(exc: yaml.YAMLError) -> int:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return mark.line + 1 if mark is not None else 0


def parse_documents(text: str, file: str) -> Iterator[Document]:
    """Yield the non-empty documents of ``text``; raise ``LoadError(invalid-yaml)`` with the line."""
    builder = _Builder(file)
    try:
        nodes = list(yaml.compose_all(text, Loader=_Loader))
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise LoadError(
            f"not valid YAML: {problem}",
            code="invalid-yaml",
            location=Location(file, _mark_line(exc)),
            hint="fix the syntax at that line",
        ) from None
    for index, node in enumerate(nodes):
        if node is None:
            continue
        lines: dict[FieldPath, int] = {}
        try:
            data = builder.build(node, (), lines)
        except yaml.YAMLError as exc:
            raise LoadError(
                f"cannot read a value: {getattr(exc, 'problem', exc)}",
                code="invalid-yaml",
                location=Location(file, _mark_line(exc)),
            ) from None
        if data is None:
            continue
        yield Document(data=data, file=file, index=index, lines=lines)


def yaml_files(path: Path) -> list[Path]:
    """The YAML files under ``path`` (itself if a file), sorted for stable output."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
    return [path]


def read_documents(path: Path, display: str | None = None) -> list[Document]:
    """All documents of one file; ``display`` is the name used in error messages."""
    name = display or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LoadError("no such file or folder", code="read-error", location=Location(name, 0)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LoadError(f"cannot read: {exc}", code="read-error", location=Location(name, 0)) from None
    return list(parse_documents(text, name))
