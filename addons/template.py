"""KubeStash's ``${var:=default}`` substitution, applied to string values.

KubeStash runs gomodules.xyz/envsubst over the JSON text of a whole object, so a value
holding ``"`` or ``\\`` breaks the JSON (REFERENCE.md §3.1). stashflow parses each string
once and splits it into literal text and variable references; values are inserted as
data, never parsed again. The rules, measured against the vendored Go package (§3.2):

=================================  ===========  ================  =================
template                           key absent   key present ""    key present "v"
=================================  ===========  ================  =================
``${x}``                           error        ""                v
``${x:=d}`` ``${x:-d}`` ``${x=d}``   d            "" (no default)   v
``${x:+d}`` ``${x:?d}``              error        d                 v
``${x,,}`` ``${x^^}`` ``${#x}``      error        applied to ""     applied
``${x-d}`` ``${x+d}``                parse error ("missing closing brace")
``$x``, ``$(x)``                   left as they are
``$$``                             ``$`` (so ``$${x}`` gives the text ``${x}``)
=================================  ===========  ================  =================

A default runs to the first ``}`` that closes it and may itself hold ``${...}``
(``${x:=${y:=z}}``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Iterator, Mapping, Union

_DEFAULT_OPS = (":=", ":-", "=")
_ALT_OPS = (":+", ":?")
_CASE_OPS = (",,", "^^", ",", "^")


class TemplateSyntaxError(ValueError):
    """A ``${...}`` that cannot be parsed; ``position`` is the offset of its ``$``."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.position = position


class MissingValue(KeyError):
    """A variable without a value and without a default operator."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


@dataclass(frozen=True)
class Var:
    """A ``${name<op>default}`` reference; ``default`` is itself parsed."""

    name: str
    op: str = ""
    default: "Template" = ()
    length: bool = False


Part = Union[str, Var]
Template = tuple[Part, ...]


def _is_name_char(ch: str) -> bool:
    return ch == "_" or ch.isalnum()


#: Deepest ``${x:=${y:=...}}`` nesting parsed (evaluation recurses once per level).
MAX_NESTING = 32


def _parse(text: str, pos: int, nested: bool, depth: int = 0) -> tuple[Template, int]:
    """Parse from ``pos``; in a default (``nested``) stop at the closing ``}``."""
    parts: list[Part] = []
    literal: list[str] = []
    n = len(text)
    while pos < n:
        ch = text[pos]
        if nested and ch == "}":
            break
        if ch == "$" and pos + 1 < n and text[pos + 1] == "$":
            literal.append("$")
            pos += 2
            continue
        if ch == "$" and pos + 1 < n and text[pos + 1] == "{":
            if literal:
                parts.append("".join(literal))
                literal = []
            var, pos = _parse_var(text, pos, depth + 1)
            parts.append(var)
            continue
        literal.append(ch)
        pos += 1
    if literal:
        parts.append("".join(literal))
    return tuple(parts), pos


def _parse_var(text: str, start: int, depth: int = 1) -> tuple[Var, int]:
    if depth > MAX_NESTING:
        raise TemplateSyntaxError(f"${{...}} defaults are nested more than {MAX_NESTING} deep", start)
    pos = start + 2
    n = len(text)
    length = False
    if pos < n and text[pos] == "#":
        length = True
        pos += 1
    name_start = pos
    while pos < n and _is_name_char(text[pos]):
        pos += 1
    name = text[name_start:pos]
    if not name:
        raise TemplateSyntaxError("a ${...} needs a variable name", start)
    if pos >= n:
        raise TemplateSyntaxError(f"missing closing brace in ${{{name}", start)
    if text[pos] == "}":
        return Var(name, length=length), pos + 1
    if length:
        raise TemplateSyntaxError(f"missing closing brace after ${{#{name}", start)
    for op in _DEFAULT_OPS + _ALT_OPS:
        if text.startswith(op, pos):
            default, end = _parse(text, pos + len(op), nested=True, depth=depth)
            if end >= n:
                raise TemplateSyntaxError(f"missing closing brace in ${{{name}{op}...", start)
            return Var(name, op, default), end + 1
    for op in _CASE_OPS:
        if text.startswith(op, pos):
            end = pos + len(op)
            if end < n and text[end] == "}":
                return Var(name, op), end + 1
            raise TemplateSyntaxError(f"missing closing brace after ${{{name}{op}", start)
    if text[pos] in "-+":
        raise TemplateSyntaxError(
            f"missing closing brace in ${{{name}{text[pos]}...}} (use := or :- for a default)", start
        )
    raise TemplateSyntaxError(
        f"unsupported expression ${{{name}{text[pos]}...}}: stashflow supports "
        "${x}, ${x:=d}, ${x:-d}, ${x=d}, ${x:+d}, ${x:?d}, ${x,,}, ${x^^}, ${x,}, ${x^} and ${#x}",
        start,
    )


@lru_cache(maxsize=4096)
def parse(text: str) -> Template:
    """Parse a string into literal parts and ``Var`` references (cached: catalogs repeat)."""
    parts, _ = _parse(text, 0, nested=False)
    return parts


def names(template: Template) -> Iterator[str]:
    """Every variable name referenced, defaults included."""
    for part in template:
        if isinstance(part, Var):
            yield part.name
            yield from names(part.default)


def required_names(template: Template) -> Iterator[str]:
    """Names that have no default, so that resolution fails without a value."""
    for part in template:
        if isinstance(part, Var) and part.op not in _DEFAULT_OPS:
            yield part.name


def _apply_case(op: str, value: str) -> str:
    if op == ",,":
        return value.lower()
    if op == "^^":
        return value.upper()
    if op == ",":
        return value[:1].lower() + value[1:]
    return value[:1].upper() + value[1:]


def evaluate(template: Template, inputs: Mapping[str, str], *, kube: bool = False) -> str:
    """Substitute ``inputs``; raise ``MissingValue`` for a name that needs a value.

    ``kube=True`` is for fields that Kubernetes expands again (``$(VAR)`` and ``$$`` in a
    container's ``command``, ``args`` and ``env[].value``): values come out escaped, so the
    program receives them byte for byte, and no value can pull another variable (a Secret)
    in; the template's own text keeps its ``$(VAR)`` references (``kube_literal``)."""
    out: list[str] = []
    for part in template:
        if isinstance(part, str):
            out.append(kube_literal(part) if kube else part)
            continue
        present = part.name in inputs
        if part.op in _DEFAULT_OPS and not present:
            out.append(evaluate(part.default, inputs, kube=kube))
            continue
        if not present:
            raise MissingValue(part.name)
        value = inputs[part.name]
        if part.op in _ALT_OPS and value == "":
            out.append(evaluate(part.default, inputs, kube=kube))
            continue
        if part.length:
            value = str(len(value))
        elif part.op in _CASE_OPS:
            value = _apply_case(part.op, value)
        out.append(kube_escape(value) if kube else value)
    return "".join(out)


def substitute(text: str, inputs: Mapping[str, str], *, kube: bool = False) -> str:
    """Parse and evaluate one string (``kube``: see ``evaluate``)."""
    if "$" not in text:
        return text
    return evaluate(parse(text), inputs, kube=kube)


def kube_escape(value: str) -> str:
    """A value that Kubernetes' ``$(VAR)`` expansion turns back into itself: ``$`` → ``$$``."""
    return value.replace("$", "$$")


def kube_literal(text: str) -> str:
    """Template text that means the same to Kubernetes whatever value follows it.

    Alone, a trailing ``$`` and a ``$(`` without its ``)`` are plain text to Kubernetes; with a
    value after them they could start a reference (``$`` + ``(SECRET)``), so they are escaped.
    Complete ``$(VAR)`` references and ``$$`` are kept: a Function may use them on purpose."""
    if "$" not in text:
        return text
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch != "$":
            out.append(ch)
            i += 1
        elif i + 1 == n:
            out.append("$$")
            i += 1
        elif text[i + 1] == "$":
            out.append("$$")
            i += 2
        elif text[i + 1] == "(" and ")" not in text[i + 2:]:
            out.append("$$(")
            i += 2
        else:
            out.append("$")
            i += 1
    return "".join(out)


def walk_strings(obj: Any, path: tuple = ()) -> Iterator[tuple[tuple, str]]:
    """Every string value in nested dicts/lists, with its path (keys are not templates)."""
    if isinstance(obj, str):
        yield path, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from walk_strings(value, path + (key,))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from walk_strings(value, path + (i,))


def map_strings(obj: Any, fn: Callable[[tuple, str], str], path: tuple = ()) -> Any:
    """A copy of ``obj`` with ``fn(path, s)`` applied to every string value."""
    if isinstance(obj, str):
        return fn(path, obj)
    if isinstance(obj, dict):
        return {key: map_strings(value, fn, path + (key,)) for key, value in obj.items()}
    if isinstance(obj, list):
        return [map_strings(value, fn, path + (i,)) for i, value in enumerate(obj)]
    return obj
