"""Kubernetes names and labels that the API server accepts, built the way KubeStash builds them."""

from __future__ import annotations

import hashlib
import os
import re
import time

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

MAX_NAME = 63  # Job names end up in the pod label job-name, so they are capped like labels


def is_dns1123_label(name: str) -> bool:
    return len(name) <= 63 and bool(_DNS1123_LABEL.match(name))


def is_dns1123_subdomain(name: str) -> bool:
    return len(name) <= 253 and bool(_DNS1123_SUBDOMAIN.match(name))


def name_problem(name: str, *, max_len: int = 253, label: bool = False) -> str | None:
    """Why ``name`` is not a valid object name, or None."""
    if not name:
        return "the name is empty"
    if len(name) > max_len:
        return f"the name is {len(name)} characters long, the limit is {max_len}"
    ok = is_dns1123_label(name) if label else is_dns1123_subdomain(name)
    if not ok:
        kind = "DNS-1123 label" if label else "DNS-1123 subdomain"
        return f'"{name}" is not a valid {kind} (lowercase letters, digits and "-", starting and ending alphanumeric)'
    return None


def valid_name(*parts: str) -> str:
    """kmodules ``ValidNameWithPrefixNSuffix``: join with ``-``; past 63 chars keep the
    first 32 and last 31, then trim ``-``. KubeStash names Snapshots and Jobs this way."""
    out = "-".join(p for p in parts if p)
    if len(out) > MAX_NAME:
        out = out[:32] + out[-31:]
    return out.strip("-")


def label_value(value: str) -> str:
    """``value`` if it is a valid label value, else a valid ≤63-char form with a hash suffix."""
    if len(value) <= 63 and _LABEL_VALUE.match(value):
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:8]
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", value)[: 63 - 9].strip("-_.")
    return f"{cleaned}-{digest}" if cleaned else digest


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def ulid(now: float | None = None, randomness: bytes | None = None) -> str:
    """A ULID (48-bit ms time + 80 random bits, Crockford base32), like Snapshot.spec.snapshotID."""
    ms = int((time.time() if now is None else now) * 1000)
    rand = randomness if randomness is not None else os.urandom(10)
    value = (ms << 80) | int.from_bytes(rand[:10], "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def has_control(text: str) -> bool:
    """Whether ``text`` holds a control character (newline, ESC, NUL, ...)."""
    return bool(_CONTROL.search(text))


def escape_controls(text: str) -> str:
    """``text`` with control characters written as ``\\n``, ``\\x1b``...: one line, nothing a terminal acts on."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def path_problem(text: str, *, segment: bool = False) -> str | None:
    """Why ``text`` cannot be a path inside a storage (or, with ``segment``, one component of one), or None.

    A path is relative to the storage: one leading ``/`` is allowed (KubeStash writes
    ``directory: /demo``), but no ``..`` or ``.``, no empty segment (``a//b``), no backslash
    and no control character, so that it cannot leave the storage or mean two places."""
    if has_control(text):
        return f'"{escape_controls(text)}" holds a control character'
    if "\\" in text:
        return f'"{text}" holds a backslash'
    if segment:
        if not text:
            return "the name is empty"
        if "/" in text:
            return f'"{text}" holds "/": it is one path segment'
        if text in (".", ".."):
            return f'"{text}" is not a name: it would leave its folder'
        return None
    body = text[1:] if text.startswith("/") else text
    if not body:
        return None
    if body.endswith("/"):
        body = body[:-1]
    for part in body.split("/"):
        if part in ("", ".", ".."):
            what = "an empty segment" if part == "" else f'"{part}"'
            return f'"{text}" has {what}: a directory stays inside the storage (e.g. demo/data)'
    return None
