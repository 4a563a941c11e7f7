"""Backup plans for the tests, written as KubeStash YAML."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import yaml

#: A daily cron half a day from when the suite started: a deployment's own schedule never fires while the
#: tests run. With "0 2 * * *" a suite that ran at 02:00 UTC had a worker claim that nightly run beside the
#: test's own (two runs started where the test counted one).
QUIET_AT = datetime.now(timezone.utc) + timedelta(hours=12)
QUIET_CRON = f"{QUIET_AT.minute} {QUIET_AT.hour} * * *"


def session(name: str, schedule: str = QUIET_CRON, *, task: str = "backup", addon: str = "scripted",
            suspend: bool = False, max_retry: int | None = None, delay: str | None = None,
            timeout: str | None = None, history: int | None = None, params: dict | None = None,
            starting_deadline: int | None = None) -> dict[str, Any]:
    s: dict[str, Any] = {"name": name, "scheduler": {"schedule": schedule},
                         "repositories": [{"name": f"data-{name}", "backend": "local", "directory": f"/t/{name}",
                                           "encryptionSecret": {"name": "pw"}}],
                         "addon": {"name": addon, "tasks": [{"name": task, **({"params": params} if params else {})}]}}
    if suspend:
        s["scheduler"]["suspend"] = True
    if starting_deadline is not None:
        s["scheduler"]["startingDeadlineSeconds"] = starting_deadline
    if max_retry is not None:
        s["retryConfig"] = {"maxRetry": max_retry, **({"delay": delay} if delay else {})}
    if timeout:
        s["backupTimeout"] = timeout
    if history is not None:
        s["sessionHistoryLimit"] = history
    return s


def write_plan(path: Path, namespace: str, sessions: list[dict[str, Any]], *, name: str = "plan",
               paused: bool = False, retention: dict | None = None, target: str = "data") -> Path:
    backend: dict[str, Any] = {"name": "local", "storageRef": {"name": "local", "namespace": namespace}}
    docs: list[dict[str, Any]] = [
        {"apiVersion": "core.kubestash.com/v1alpha1", "kind": "BackupConfiguration",
         "metadata": {"name": name, "namespace": namespace},
         "spec": {"target": {"kind": "PersistentVolumeClaim", "name": target}, "backends": [backend],
                  "sessions": sessions, **({"paused": True} if paused else {})}},
        {"apiVersion": "storage.kubestash.com/v1alpha1", "kind": "BackupStorage",
         "metadata": {"name": "local", "namespace": namespace},
         "spec": {"storage": {"provider": "local", "local": {"mountPath": "/repo", "hostPath": {"path": "/tmp"}}}}},
    ]
    if retention:
        backend["retentionPolicy"] = {"name": "keep", "namespace": namespace}
        docs.append({"apiVersion": "storage.kubestash.com/v1alpha1", "kind": "RetentionPolicy",
                     "metadata": {"name": "keep", "namespace": namespace}, "spec": retention})
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path
