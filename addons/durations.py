"""Durations as KubeStash writes them: Go's ``30s``/``1h30m`` and RetentionPeriod's ``1y2mo3w``."""

from __future__ import annotations

import re

_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_RETENTION_UNITS = {"y": 365 * 86400, "mo": 30 * 86400, "w": 7 * 86400, "d": 86400, "h": 3600, "m": 60}
_RETENTION_PART = re.compile(r"(\d+)(mo|y|w|d|h|m)")


def _sum_parts(value: str, part: re.Pattern[str], units: dict[str, float]) -> float | None:
    """The sum of ``<number><unit>`` parts that make up all of ``value``; None if anything else is there."""
    pos, total = 0, 0.0
    for match in part.finditer(value):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * units[match.group(2)]
        pos = match.end()
    return total if value and pos == len(value) else None


def parse_duration(text: str) -> float:
    """Seconds in a metav1.Duration (``90s``, ``1h30m``, ``2.5h``); a bare number is seconds."""
    value = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    total = _sum_parts(value, _GO_PART, _GO_UNITS)
    if total is None:
        raise ValueError(f'"{text}" is not a duration like 90s, 30m or 1h30m')
    return total


def parse_retention_period(text: str) -> int:
    """Seconds in a RetentionPeriod (``1y2mo3w4d5h6m``; ``m`` is minutes, ``mo`` months of 30 days)."""
    total = _sum_parts(text.strip(), _RETENTION_PART, _RETENTION_UNITS)
    if total is None:
        raise ValueError(f'"{text}" is not a retention period like 30d, 2mo or 1y2mo3w4d5h6m')
    return int(total)
