"""The component result, in the Snapshot's vocabulary, on the container's termination message.

stashflow reads ``{"components": {NAME: {...}}}`` from ``/dev/termination-log`` (at most 4096
bytes). The formats (restic's byte units, Go's duration form, a component from restic's summary) are
defined here, where the executor needs them with the standard library only (it runs in the
Function's image), and ``stashflow.tasks.results`` uses these same functions.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

TERMINATION_LOG = "/dev/termination-log"
LIMIT = 4096


def format_bytes(n: float) -> str:
    """restic's and KubeStash's form: ``512 B``, ``637.225 KiB``, ``1.134 MiB``."""
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        n /= 1024
        if n < 1024:
            return f"{n:.3f} {unit}"
    return f"{n / 1024:.3f} EiB"


def go_duration(seconds: float) -> str:
    """Go's ``time.Duration.String()`` form: ``9.223082787s``, ``1m5.5s``, ``2h0m0s``."""
    if seconds < 60:
        return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    sec = f"{secs:.9f}".rstrip("0").rstrip(".")
    return f"{hours}h{minutes}m{sec}s" if hours else f"{minutes}m{sec}s"


def component_from_restic(summary: dict[str, Any], *, host_path: str | None, driver: str = "Restic",
                          seconds: float | None = None) -> dict[str, Any]:
    """A Snapshot component from restic's backup summary (REFERENCE.md §7 ``extractBackupInfo``); its
    duration is ``seconds`` when given, else restic's own ``total_duration``."""
    stats: dict[str, Any] = {"id": summary.get("snapshot_id", "")}
    if host_path:
        stats["hostPath"] = host_path
    if "total_bytes_processed" in summary:
        stats["size"] = format_bytes(summary["total_bytes_processed"])
    if "data_added" in summary:
        stats["uploaded"] = format_bytes(summary["data_added"])
    component: dict[str, Any] = {"phase": "Succeeded", "driver": driver, "resticStats": [stats]}
    if seconds is None and "total_duration" in summary:
        seconds = float(summary["total_duration"])
    if seconds is not None:
        component["duration"] = go_duration(seconds)
    return component


def backup_component(summary: dict[str, Any], *, host_path: str, seconds: float) -> dict[str, Any]:
    """A Succeeded component from restic's backup summary. The component's own ``size`` (the
    repository's) is left to stashflow's verification, as for the PVC Functions."""
    return component_from_restic(summary, host_path=host_path, seconds=seconds)


def write_termination_message(text: str, path: str | None = None) -> None:
    """Write the message where the kubelet reads it. The default file exists only in a container
    (the kubelet mounts it); run by hand without ``--termination-log``, nothing is written."""
    data = text.encode()[:LIMIT]
    if path is None:
        path = TERMINATION_LOG
        if not os.path.isfile(path):
            return
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as exc:
        print(f"stashflow-executor: cannot write the termination message to {path}: {exc.strerror}", file=sys.stderr)


def components_message(name: str, component: dict[str, Any]) -> str:
    return json.dumps({"components": {name: component}}, separators=(",", ":"))


def failure_message(headline: str, error_line: str) -> str:
    """One line, the tool's own error last (stashflow's diagnosis shows the message's last line)."""
    text = f"{headline}: {error_line}" if error_line else headline
    return text[:LIMIT]
