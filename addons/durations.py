"""Durations as KubeStash writes them: Go's ``30s``/``1h30m`` and RetentionPeriod's ``1y2mo3w``.

Only ASCII digits count (Python's ``\\d`` also takes ``١``), a sign is refused (no deadline,
delay or retention is negative), and nothing may exceed Go's ``time.Duration`` (about 292
years), which is what the cluster side parses these into."""

from __future__ import annotations

import math
import re
from typing import Mapping

_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_GO_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)", re.ASCII)
_RETENTION_UNITS = {"y": 365 * 86400, "mo": 30 * 86400, "w": 7 * 86400, "d": 86400, "h": 3600, "m": 60}
_RETENTION_PART = re.compile(r"([0-9]+)(mo|y|w|d|h|m)", re.ASCII)

#: Go's largest time.Duration, in seconds (2562047h47m16.854775807s).
MAX_SECONDS = (2**63 - 1) / 1e9


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 40 else repr(text[:37]) + "..."


def _sum_parts(value: str, part: re.Pattern[str], units: Mapping[str, float]) -> float | None:
    """The sum of ``<number><unit>`` parts that make up all of ``value``; None if anything else is there."""
    pos, total = 0, 0.0
    for match in part.finditer(value):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * units[match.group(2)]
        pos = match.end()
    return total if value and pos == len(value) else None


def _checked(text: str, total: float | None, example: str) -> float:
    if total is None:
        if text.strip().startswith("-"):
            raise ValueError(f"{_shown(text)} is negative; a duration here must be 0 or more")
        raise ValueError(f"{_shown(text)} is not a {example}")
    if not math.isfinite(total) or total > MAX_SECONDS:
        raise ValueError(f"{_shown(text)} is longer than the longest duration Kubernetes reads (about 292 years)")
    return total


def parse_duration(text: str) -> float:
    """Seconds in a metav1.Duration (``90s``, ``1h30m``, ``2.5h``); a bare number is seconds."""
    value = text.strip()
    if re.fullmatch(r"[0-9]+(\.[0-9]+)?", value, re.ASCII):
        return _checked(text, float(value), "duration")
    return _checked(text, _sum_parts(value, _GO_PART, _GO_UNITS), "duration like 90s, 30m or 1h30m")


def deadline_seconds(text: str) -> int:
    """A deadline (``activeDeadlineSeconds``) in whole seconds: a fraction rounds UP (``0.1s`` → 1),
    so that a short deadline never silently becomes none; zero is refused (leave it out for none)."""
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ValueError(f"{_shown(text)} would end the run at once; give a positive duration, or none for no deadline")
    return math.ceil(seconds)


def whole_seconds(text: str) -> str:
    """A deadline as the flows read it: ``text`` itself when it is whole seconds (``1h``), else its
    seconds rounded up (``0.1s`` → ``1s``), so that no reader can truncate it to "no deadline"."""
    seconds = deadline_seconds(text)
    return text if parse_duration(text) == seconds else f"{seconds}s"


def parse_retention_period(text: str) -> int:
    """Seconds in a RetentionPeriod (``1y2mo3w4d5h6m``; ``m`` is minutes, ``mo`` months of 30 days)."""
    total = _sum_parts(text.strip(), _RETENTION_PART, _RETENTION_UNITS)
    return int(_checked(text, total, "retention period like 30d, 2mo or 1y2mo3w4d5h6m"))
