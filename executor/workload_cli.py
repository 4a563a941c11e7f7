"""``stashflow-executor workload-backup|workload-restore``: a workload's volumes, one restic snapshot per Pod.

stashflow mounts each Pod's data volumes at ``/stashflow-workload/<pod><mountPath>`` and describes
them in ``$STASHFLOW_WORKLOAD_PODS`` (``addons/workloads.py``). ``--paths`` are paths as the
workload's containers see them (KubeStash workload-addon's ``paths``); each is backed up per Pod
with ``--host=<pod>`` and tagged with the Snapshot's name, so a restore puts every Pod's data back
into that Pod's own volumes. A backup that fails for one Pod forgets the snapshots it made for the
others: a Snapshot is all of the workload or nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import sys
import time
from dataclasses import dataclass
from typing import Any

from . import report

PROG = "stashflow-executor"
ENV = "STASHFLOW_WORKLOAD_PODS"


class WorkloadError(ValueError):
    """Options or paths that do not fit the workload."""


@dataclass(frozen=True)
class Pod:
    name: str
    root: str
    mounts: tuple[str, ...]

    def translate(self, path: str) -> str:
        """A container path → where this Job mounts it; it must be on one of the Pod's data volumes."""
        clean = posixpath.normpath("/" + path.strip().lstrip("/"))
        for mount in sorted(self.mounts, key=len, reverse=True):
            base = mount.rstrip("/") or "/"
            if clean == base or clean.startswith(base.rstrip("/") + "/"):
                return self.root + clean
        raise WorkloadError(f"{path} is not on a data volume of the workload (Pod {self.name} mounts "
                            f"{', '.join(self.mounts) or 'none'}); give paths under those")


def add_parsers(sub: Any) -> None:
    for mode in ("workload-backup", "workload-restore"):
        p = sub.add_parser(mode)
        p.add_argument("--component", default=os.environ.get("COMPONENT_NAME") or "dump")
        p.add_argument("--cache-dir")
        p.add_argument("--enable-cache", default="true")
        p.add_argument("--termination-log")
        p.add_argument("--snapshot-name", required=True, help="the Snapshot's name: tags each Pod's restic snapshot")
        p.add_argument("--exclude", default="", help="comma-separated patterns (container paths or restic patterns)")
        if mode == "workload-backup":
            p.add_argument("--paths", required=True, help="comma-separated paths inside the workload's containers")
            p.add_argument("--tag", action="append", default=[])
        else:
            p.add_argument("--include", default="", help="comma-separated patterns to restore (default everything)")


def _words(text: str) -> list[str]:
    return [w.strip() for w in (text or "").split(",") if w.strip()]


def _pods() -> list[Pod]:
    raw = os.environ.get(ENV)
    if not raw:
        raise WorkloadError(f"${ENV} is not set: stashflow sets it for Functions annotated stashflow.io/target-volumes")
    try:
        return [Pod(p["pod"], p["root"], tuple(p["mounts"])) for p in json.loads(raw)]
    except (ValueError, KeyError, TypeError) as exc:
        raise WorkloadError(f"${ENV} cannot be read: {exc}") from None


def _patterns(pod: Pod, words: list[str], flag: str) -> list[str]:
    """Container paths become this Job's paths; other patterns (``*.tmp``) go to restic as they are."""
    return [f"{flag}={pod.root + posixpath.normpath(w) if w.startswith('/') else w}" for w in words]


def _fail(opts: argparse.Namespace, message: str) -> int:
    print(message, file=sys.stderr, flush=True)
    report.write_termination_message(message, opts.termination_log)
    return 1


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def main(opts: argparse.Namespace) -> int:
    started = time.monotonic()
    try:
        pods = _pods()
        if opts.mode == "workload-backup":
            return backup(opts, pods, started)
        return restore(opts, pods, started)
    except WorkloadError as exc:
        _fail(opts, f"{PROG}: {opts.mode}: {exc}")
        return 2


def backup(opts: argparse.Namespace, pods: list[Pod], started: float) -> int:
    from .cli import error_line
    from .manifest_cli import _cache_args, _restic

    paths = _words(opts.paths)
    if not paths:
        raise WorkloadError("no --paths given: which directories of the workload's containers to back up")
    plans = [(pod, [pod.translate(p) for p in paths]) for pod in pods]  # every path checked before any backup
    done: list[tuple[Pod, dict[str, Any]]] = []
    tags = [f"--tag={t}" for t in opts.tag if t and not t.endswith("=")] + [f"--tag=snapshot={opts.snapshot_name}"]
    for pod, where in plans:
        _say(f"Pod {pod.name}: restic backup {' '.join(where)}")
        code, out, err = _restic(["restic", "backup", "--json", *_cache_args(opts), f"--host={pod.name}", *tags,
                                  *_patterns(pod, _words(opts.exclude), "--exclude"), *where])
        summary = next((d for d in map(_json, out) if d.get("message_type") == "summary"), {})
        if code != 0 or not summary.get("snapshot_id"):
            _forget([s["snapshot_id"] for _, s in done], opts)
            line = error_line(err) or "its --json summary is missing"
            return _fail(opts, report.failure_message(f"restic exited with code {code} for Pod {pod.name}", line))
        done.append((pod, summary))
    stats = []
    for pod, summary in done:
        one = report.component_from_restic(summary, host_path=pod.root)["resticStats"][0]
        stats.append(one)
        _say(f"Pod {pod.name}: restic snapshot {one['id'][:8]}, {one.get('size', '?')} ({one.get('uploaded', '?')} new)")
    component = {"phase": "Succeeded", "driver": "Restic", "duration": report.go_duration(time.monotonic() - started),
                 "resticStats": stats}
    report.write_termination_message(report.components_message(opts.component, component), opts.termination_log)
    return 0


def _json(line: str) -> dict[str, Any]:
    try:
        data = json.loads(line) if line.startswith("{") else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _forget(ids: list[str], opts: argparse.Namespace) -> None:
    from .manifest_cli import _cache_args, _restic

    if ids:
        code, _, _ = _restic(["restic", "forget", *_cache_args(opts), *ids])
        _say(f"forgot the {len(ids)} snapshot(s) of the other Pods" if code == 0
             else f"could not forget the snapshots {', '.join(ids)} of the failed backup")


def restore(opts: argparse.Namespace, pods: list[Pod], started: float) -> int:
    from .cli import error_line
    from .manifest_cli import _cache_args, _restic

    stats = []
    for pod in pods:
        code, out, err = _restic(["restic", "snapshots", "--json", *_cache_args(opts), f"--host={pod.name}",
                                  f"--tag=snapshot={opts.snapshot_name}"])
        if code != 0:
            return _fail(opts, report.failure_message(f"restic exited with code {code}", error_line(err)))
        found = json.loads("\n".join(out) or "[]")
        if not found:
            return _fail(opts, f"{PROG}: workload-restore: Snapshot {opts.snapshot_name} has no backup of Pod {pod.name} "
                               "(was the workload scaled up since?)")
        snap = found[-1]["id"]
        _say(f"Pod {pod.name}: restic restore {snap[:8]} into {pod.root}")
        code, _, err = _restic(["restic", "restore", *_cache_args(opts), snap, "--target=/",
                                *_patterns(pod, _words(opts.include), "--include"),
                                *_patterns(pod, _words(opts.exclude), "--exclude")])
        if code != 0:
            return _fail(opts, report.failure_message(f"restic exited with code {code} for Pod {pod.name}",
                                                      error_line(err)))
        stats.append({"id": snap, "hostPath": pod.root})
    component = {"phase": "Succeeded", "driver": "Restic", "duration": report.go_duration(time.monotonic() - started),
                 "resticStats": stats}
    _say(f"restored {len(pods)} Pod(s) in {component['duration']}")
    report.write_termination_message(report.components_message(opts.component, component), opts.termination_log)
    return 0
