"""Reading what a Job reported, and turning it into Snapshot status (DESIGN.md §2).

Channels, first found wins: the termination message (one JSON object ``{"components": ...}``
in the Snapshot's own vocabulary), then restic's ``--json`` summary line in the container log.
A third, a KubeStash executor that writes the Snapshot itself, is read by ``record_snapshot``.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any, Iterable

# the executor's own result vocabulary (standard library only): one definition for both ends
from stashflow.executor.report import component_from_restic, format_bytes, go_duration

__all__ = ["aggregate", "component_from_restic", "failed_status", "failure_condition", "format_bytes",
           "from_termination_message", "go_duration", "nested_restic_stats", "now_rfc3339", "parse_bytes",
           "restic_snapshot_id", "restic_summary"]

_SIZE = re.compile(r"^\s*([0-9.]+)\s*([KMGTPE]i?B|B|bytes?)?\s*$", re.I)
_UNITS = {"b": 1, "byte": 1, "bytes": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4, "pib": 1024**5,
          "eib": 1024**6, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4, "pb": 1000**5, "eb": 1000**6}


def parse_bytes(text: str) -> float | None:
    """``1.134 MiB`` → bytes (None when unreadable), as KubeStash's ``ConvertSizeToByte``."""
    match = _SIZE.match(text or "")
    if not match:
        return None
    return float(match.group(1)) * _UNITS[(match.group(2) or "b").lower()]


def from_termination_message(message: str | None) -> dict[str, dict[str, Any]] | None:
    """``{"components": {...}}`` written to /dev/termination-log; None when absent or not JSON."""
    if not message or not message.lstrip().startswith("{"):
        return None
    try:
        data = json.loads(message)
    except ValueError:
        return None
    components = data.get("components") if isinstance(data, dict) else None
    if not isinstance(components, dict) or not all(isinstance(v, dict) for v in components.values()):
        return None
    return components


def restic_summary(lines: Iterable[str]) -> dict[str, Any] | None:
    """The last ``{"message_type": "summary"}`` line of ``restic ... --json`` output."""
    found = None
    for line in lines:
        text = line.strip()
        if text.startswith("{") and '"summary"' in text:
            try:
                data = json.loads(text)
            except ValueError:
                continue
            if isinstance(data, dict) and data.get("message_type") == "summary":
                found = data
    return found


def restic_snapshot_id(component: dict[str, Any]) -> str | None:
    """The restic snapshot of a component: flat ``id`` (older KubeStash) or nested ``summary.id``."""
    for stats in component.get("resticStats") or []:
        if stats.get("id"):
            return str(stats["id"])
        if (stats.get("summary") or {}).get("id"):
            return str(stats["summary"]["id"])
    return None


_SUMMARY_KEYS = ("id", "uploaded", "hostPath", "size", "startTime", "endTime")


def nested_restic_stats(component: dict[str, Any]) -> dict[str, Any]:
    """``resticStats`` in KubeStash's current form (``[{summary: {...}, progress: {...}}]``).

    KubeStash's Snapshot CRD prunes the older flat form (``[{id, hostPath, size, uploaded}]``),
    so flat entries are moved under ``summary`` when the cluster has that CRD."""
    stats = component.get("resticStats")
    if not stats:
        return component
    moved = []
    for entry in stats:
        if "summary" in entry or "progress" in entry:
            moved.append(entry)
        else:
            moved.append({"summary": {k: entry[k] for k in _SUMMARY_KEYS if k in entry}})
    return {**component, "resticStats": moved}


def aggregate(components: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Snapshot-level phase, size and integrity from its components (KubeStash's rules, §5)."""
    phases = [c.get("phase") for c in components.values()]
    if not components or any(p in (None, "Pending") for p in phases):
        phase = "Pending" if all(p in (None, "Pending") for p in phases) else "Running"
    elif "Failed" in phases:
        phase = "Failed"
    elif all(p == "Succeeded" for p in phases):
        phase = "Succeeded"
    else:
        phase = "Running"
    out: dict[str, Any] = {"phase": phase, "totalComponents": len(components)}
    sizes = [parse_bytes(c["size"]) for c in components.values() if c.get("size")]
    if len(components) == 1 and next(iter(components.values())).get("size"):
        out["size"] = next(iter(components.values()))["size"]  # exactly as reported
    elif sizes and all(s is not None for s in sizes):
        out["size"] = format_bytes(sum(sizes))  # type: ignore[arg-type]
    integrities = [c.get("integrity") for c in components.values()]
    if integrities and all(i is not None for i in integrities):
        out["integrity"] = all(integrities)
    return out


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def failure_condition(message: str, *, reason: str = "BackupExecutorTerminatedBeforeCompletion",
                      type_: str = "BackupIncomplete") -> dict[str, Any]:
    """The Snapshot condition KubeStash writes when a backup does not complete (§5)."""
    return {"type": type_, "status": "True" if type_ == "BackupIncomplete" else "False", "reason": reason,
            "message": message, "lastTransitionTime": now_rfc3339()}


def failed_status(status: dict[str, Any] | None, error: str, *,
                  reason: str = "BackupExecutorTerminatedBeforeCompletion") -> dict[str, Any]:
    """A status patch that ends an unfinished Snapshot Failed: each component Failed with ``error``,
    and a ``BackupIncomplete`` condition after the ones it had."""
    status = status or {}
    components = {c: {**v, "phase": "Failed", "error": error} for c, v in (status.get("components") or {}).items()}
    return {"phase": "Failed", "components": components, "lastUpdateTime": now_rfc3339(),
            "conditions": [*(status.get("conditions") or []),
                           failure_condition(f"Failed to complete backup. Reason: {error}", reason=reason)]}
