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


class _BadValue(Exception):
    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.message, self.line = message, line


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
                key = self._construct(key_node)
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
        return self._construct(node)

    def _construct(self, node: yaml.Node) -> Any:
        """A scalar (or complex key) by its tag; a value its explicit tag cannot hold is a coded error."""
        try:
            return self.construct_object(node, deep=True)
        except yaml.YAMLError:
            raise
        except (ValueError, KeyError, TypeError, OverflowError, IndexError, AttributeError) as exc:
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            shown = repr(node.value) if isinstance(node.value, str) else "this value"
            raise _BadValue(f"{shown[:60]} is not a valid {tag} ({type(exc).__name__})",
                            node.start_mark.line + 1) from None


#: Deepest nesting read (Kubernetes objects stay far below; Python's recursion would not).
MAX_DEPTH = 100
#: Nodes that aliases may add to a document when expanded ("billion laughs" stops here).
MAX_ALIAS_NODES = 200_000


class _Limit(Exception):
    """A document past a reading limit; ``line`` is 1-based."""

    def __init__(self, message: str, line: int, hint: str) -> None:
        super().__init__(message)
        self.message, self.line, self.hint = message, line, hint


def _last_line(text: str) -> int:
    """The number of the file's last line (an error never points past it)."""
    return max(1, text.count("\n") + (0 if text.endswith("\n") else 1))


def _mark_line(exc: yaml.YAMLError, text: str) -> int:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return min(mark.line + 1, _last_line(text)) if mark is not None else 1


class _Frame:
    __slots__ = ("node", "anchor", "children", "size", "height")

    def __init__(self, node: yaml.Node, anchor: str | None) -> None:
        self.node, self.anchor = node, anchor
        self.children: list[yaml.Node] = []
        self.size, self.height = 1, 1


def _compose(text: str) -> list[yaml.Node | None]:
    """The documents' node graphs, composed from libyaml's events without recursion.

    PyYAML's composer recurses (RecursionError past ~500 levels) and lets aliases build
    graphs that expand without bound. Here nesting is capped at ``MAX_DEPTH`` (aliases
    counted expanded), an alias inside its own anchor is refused, and the nodes aliases
    add when expanded are counted against ``MAX_ALIAS_NODES``."""
    resolver = yaml.resolver.Resolver()
    docs: list[yaml.Node | None] = []
    stack: list[_Frame] = []
    anchors: dict[str, yaml.Node] = {}
    open_anchors: set[str] = set()
    size: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded nodes, expanded height)
    root: yaml.Node | None = None
    added = 0

    def line(event: yaml.Event) -> int:
        return event.start_mark.line + 1 if event.start_mark is not None else 1

    def register(anchor: str | None, node: yaml.Node, event: yaml.Event) -> None:
        if anchor is None:
            return
        if anchor in anchors or anchor in open_anchors:
            raise _Limit(f'the anchor "&{anchor}" is defined twice', line(event), "give each anchor its own name")
        anchors[anchor] = node

    def add(node: yaml.Node, nodes: int, height: int, event: yaml.Event) -> None:
        nonlocal root
        if not stack:
            root = node
            return
        top = stack[-1]
        top.children.append(node)
        top.size += nodes
        top.height = max(top.height, height + 1)
        if len(stack) + height > MAX_DEPTH:
            raise _Limit(f"the data is nested more than {MAX_DEPTH} levels deep", line(event),
                         "flatten the structure; Kubernetes objects need far fewer levels")

    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.DocumentStartEvent):
            anchors, open_anchors, root, added = {}, set(), None, 0
        elif isinstance(event, yaml.DocumentEndEvent):
            docs.append(root)
        elif isinstance(event, yaml.AliasEvent):
            if event.anchor in open_anchors:
                raise _Limit(f'the alias "*{event.anchor}" is inside its own anchor: the data would be infinite',
                             line(event), "an alias may only name a finished anchor")
            node = anchors.get(event.anchor)
            if node is None:
                raise _Limit(f'the alias "*{event.anchor}" names no anchor before it', line(event),
                             f'define "&{event.anchor}" before using it')
            nodes, height = size.get(id(node), (1, 1))
            added += nodes
            if added > MAX_ALIAS_NODES:
                raise _Limit(f"aliases expand this document to more than {MAX_ALIAS_NODES} values", line(event),
                             "write the data out, or use fewer nested aliases")
            add(node, nodes, height, event)
        elif isinstance(event, yaml.ScalarEvent):
            tag = event.tag
            if tag is None or tag == "!":
                tag = resolver.resolve(yaml.ScalarNode, event.value, event.implicit)
            node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, style=event.style)
            register(event.anchor, node, event)
            size[id(node)] = (1, 1)
            add(node, 1, 1, event)
        elif isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            if len(stack) >= MAX_DEPTH:
                raise _Limit(f"the data is nested more than {MAX_DEPTH} levels deep", line(event),
                             "flatten the structure; Kubernetes objects need far fewer levels")
            is_seq = isinstance(event, yaml.SequenceStartEvent)
            kind = yaml.SequenceNode if is_seq else yaml.MappingNode
            tag = event.tag
            if tag is None or tag == "!":
                tag = resolver.resolve(kind, None, event.implicit)
            node = kind(tag, [], event.start_mark, None, flow_style=event.flow_style)
            if event.anchor is not None:
                register(event.anchor, node, event)
                del anchors[event.anchor]
                open_anchors.add(event.anchor)
            stack.append(_Frame(node, event.anchor))
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            frame = stack.pop()
            node = frame.node
            node.end_mark = event.end_mark
            if isinstance(node, yaml.MappingNode):
                kids = frame.children
                node.value = list(zip(kids[0::2], kids[1::2]))
            else:
                node.value = frame.children
            size[id(node)] = (frame.size, frame.height)
            if frame.anchor is not None:
                open_anchors.discard(frame.anchor)
                anchors[frame.anchor] = node
            add(node, frame.size, frame.height, event)
    return docs


def parse_documents(text: str, file: str) -> Iterator[Document]:
    """Yield the non-empty documents of ``text``; raise ``LoadError(invalid-yaml)`` with the line."""
    builder = _Builder(file)
    try:
        nodes = _compose(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise LoadError(
            f"not valid YAML: {problem}",
            code="invalid-yaml",
            location=Location(file, _mark_line(exc, text)),
            hint="fix the syntax at that line",
        ) from None
    except _Limit as exc:
        raise LoadError(f"not valid YAML: {exc.message}", code="invalid-yaml",
                        location=Location(file, min(exc.line, _last_line(text))), hint=exc.hint) from None
    for index, node in enumerate(nodes):
        if node is None:
            continue
        lines: dict[FieldPath, int] = {}
        try:
            data = builder.build(node, (), lines)
        except yaml.YAMLError as exc:
            raise LoadError(
                f"cannot read a value: {getattr(exc, 'problem', None) or exc}",
                code="invalid-yaml",
                location=Location(file, _mark_line(exc, text)),
            ) from None
        except _BadValue as exc:
            raise LoadError(f"cannot read a value: {exc.message}", code="invalid-yaml",
                            location=Location(file, min(exc.line, _last_line(text))),
                            hint="remove the explicit tag or give a value of that type") from None
        if data is None:
            continue
        yield Document(data=data, file=file, index=index, lines=lines)


def yaml_files(path: Path) -> list[Path]:
    """The YAML files under ``path`` (itself if a file), sorted for stable output."""
    if path.is_dir():  # a dangling link or a special file is listed too: reading it reports why it fails
        return sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and not p.is_dir())
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
