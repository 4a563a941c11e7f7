"""How a target is spelled where a person reads it: run names, tags, the fleet overview."""

from __future__ import annotations

from stashflow.addons.errors import InputError
from stashflow.addons.render import Target

KIND_SHORT = {"PersistentVolumeClaim": "pvc", "Deployment": "deploy", "StatefulSet": "sts", "DaemonSet": "ds"}


def short_target(namespace: str, target: str) -> str:
    """``demo/pvc/data``: what a person reads in a run name or a tag (the UI cuts long ones)."""
    try:
        parsed = Target.parse(target)
    except InputError:
        return f"{namespace}/{target}"
    return f"{namespace}/{KIND_SHORT.get(parsed.kind, parsed.kind.lower())}/{parsed.name}"


def target_tag(namespace: str, target: str) -> str:
    return f"target:{short_target(namespace, target)}"
