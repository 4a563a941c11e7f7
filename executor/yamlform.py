"""Kubernetes objects as YAML, written and read with the standard library only.

The executor runs in a Function's image without PyYAML, so it writes one strict form of YAML and
reads that form back: block mappings and sequences indented by two spaces, and every scalar that
is not a plain word written as a JSON string (JSON's strings, numbers, ``true``/``false``/``null``
are YAML too). Any YAML reader reads these files; ``load`` reads only this form (and JSON), and
says at which line a file is not in it.
"""

from __future__ import annotations

import json
import re
from typing import Any

_PLAIN = re.compile(r"^[A-Za-z_/][A-Za-z0-9_./-]*$")
# words a YAML 1.1 reader would not take as strings
_SPECIAL = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~", "nan", "inf"}
# what JSON leaves raw but YAML does not print or reads as a line break: escaped as \\uXXXX
_UNPRINTABLE = re.compile("[\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff\ud800-\udfff]")
_NUMBER = re.compile(r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$")


class FormError(ValueError):
    """A file that is not in the form ``dump`` writes."""


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in _SPECIAL:
        return text
    return _UNPRINTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(text, ensure_ascii=False))


def _key(key: Any) -> str:
    return _scalar(str(key))


def _lines(value: Any, indent: int) -> list[str]:
    pad = " " * indent
    out: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                out.append(f"{pad}{_key(key)}:")
                out += _lines(item, indent + 2)
            else:
                out.append(f"{pad}{_key(key)}: {_inline(item)}")
    else:
        for item in value:
            if isinstance(item, (dict, list)) and item:
                inner = _lines(item, indent + 2)
                out.append(f"{pad}- {inner[0].lstrip()}")
                out += inner[1:]
            else:
                out.append(f"{pad}- {_inline(item)}")
    return out


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _scalar(value)


def dump(obj: dict[str, Any]) -> str:
    """One object as YAML text."""
    return "\n".join(_lines(obj, 0)) + "\n"


# --------------------------------------------------------------------------------------- reading


_DECODER = json.JSONDecoder()


def _parse_scalar(text: str, lineno: int) -> Any:
    if text.startswith('"'):
        try:
            value, end = _DECODER.raw_decode(text)
        except ValueError:
            raise FormError(f"line {lineno}: an unterminated quoted string") from None
        if text[end:].strip():
            raise FormError(f"line {lineno}: text after a quoted string")
        return value
    if text == "{}":
        return {}
    if text == "[]":
        return []
    if text == "null" or text == "~":
        return None
    if text in ("true", "false"):
        return text == "true"
    if _NUMBER.match(text):
        return json.loads(text)
    if text[:1] in "'&*!|>{[%@`":
        raise FormError(f"line {lineno}: {text[:20]!r} is YAML this reader does not take (write it as a JSON string)")
    return text


def _split_key(text: str, lineno: int) -> tuple[str, str] | None:
    """``key: rest`` → (key, rest); None when the text is a scalar, not a mapping entry."""
    if text.startswith('"'):
        try:
            key, end = _DECODER.raw_decode(text)
        except ValueError:
            raise FormError(f"line {lineno}: an unterminated quoted string") from None
        rest = text[end:]
        if not rest.startswith(":"):
            return None
        return str(key), rest[1:].strip()
    if text.endswith(":"):
        return text[:-1], ""
    key, sep, rest = text.partition(": ")
    return (key, rest.strip()) if sep else None


class _Reader:
    def __init__(self, text: str) -> None:
        self.lines: list[tuple[int, str, int]] = []
        for number, raw in enumerate(text.split("\n"), 1):
            stripped = raw.rstrip()
            content = stripped.lstrip(" ")
            if not content or content.startswith("#") or (content == "---" and not self.lines):
                continue
            if "\t" in stripped[: len(stripped) - len(content)]:
                raise FormError(f"line {number}: a tab in the indentation")
            self.lines.append((len(stripped) - len(content), content, number))

    def block(self, i: int, indent: int) -> tuple[Any, int]:
        _, content, _ = self.lines[i]
        if content == "-" or content.startswith("- "):
            return self.sequence(i, indent)
        return self.mapping(i, indent)

    def _nested(self, i: int, indent: int, allow_same_indent_sequence: bool) -> tuple[Any, int]:
        """The block after ``key:`` or ``-`` on line i-1, or null when there is none."""
        if i < len(self.lines):
            nxt, content, _ = self.lines[i]
            if nxt > indent or (allow_same_indent_sequence and nxt == indent
                                and (content == "-" or content.startswith("- "))):
                return self.block(i, nxt)
        return None, i

    def sequence(self, i: int, indent: int) -> tuple[list[Any], int]:
        out: list[Any] = []
        while i < len(self.lines):
            at, content, number = self.lines[i]
            if at != indent or not (content == "-" or content.startswith("- ")):
                break
            rest = content[1:].strip()
            if not rest:
                value, i = self._nested(i + 1, indent, False)
            elif rest == "-" or rest.startswith("- ") or _split_key(rest, number) is not None:
                self.lines[i] = (indent + 2, rest, number)  # "- key: v" / "- - x" start a block at indent+2
                value, i = self.block(i, indent + 2)
            else:
                value, i = _parse_scalar(rest, number), i + 1
            out.append(value)
        return out, i

    def mapping(self, i: int, indent: int) -> tuple[dict[str, Any], int]:
        out: dict[str, Any] = {}
        while i < len(self.lines):
            at, content, number = self.lines[i]
            if at < indent:
                break
            if at > indent:
                raise FormError(f"line {number}: unexpected indentation")
            if content == "-" or content.startswith("- "):
                break
            entry = _split_key(content, number)
            if entry is None:
                raise FormError(f"line {number}: expected `key: value`")
            key, rest = entry
            if key in out:
                raise FormError(f"line {number}: the key {key!r} appears twice")
            if rest:
                out[key], i = _parse_scalar(rest, number), i + 1
            else:
                out[key], i = self._nested(i + 1, indent, True)
        return out, i


def load(text: str) -> dict[str, Any]:
    """One object from text ``dump`` wrote (or from JSON)."""
    if text.lstrip().startswith("{"):
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise FormError(f"not JSON: {exc}") from None
    else:
        reader = _Reader(text)
        if not reader.lines:
            raise FormError("empty")
        value, end = reader.block(0, reader.lines[0][0])
        if end != len(reader.lines):
            raise FormError(f"line {reader.lines[end][2]}: unexpected indentation")
    if not isinstance(value, dict):
        raise FormError("not a mapping (a Kubernetes object)")
    return value
