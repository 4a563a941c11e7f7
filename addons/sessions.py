"""The objects of a session run, built as KubeStash builds them (REFERENCE.md §2.3–2.7, §4.1, §5).

Pure: plain data in, plain data out, no clock unless passed. A backup session run makes a
BackupSession ``<config>-<session>-<unix seconds>`` invoked by its BackupConfiguration, one Snapshot
per repository (``<repo>-<session prefix>-<digits>``, owned by its Repository) and finishes both
from the components the session's tasks wrote; the phases follow KubeStash's ``CalculatePhase``.
What KubeStash's executors read is filled in as its webhooks would: namespaces in every reference,
``status.snapshots`` before any Job starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .crd import CORE, STORAGE, VERSION
from .names import label_value, ulid, valid_name
from .render import LABEL_PREFIX, MANAGED_BY, Target, snapshot_name

__all__ = ["BackupSessionRef", "RepositoryRef", "backup_session", "backup_session_name", "calculate_phase",
           "condition", "finish_snapshot", "owned", "repository", "repository_status", "restore_phase",
           "session_labels", "session_snapshot", "snapshot_name", "NO_TARGET"]

INVOKER_LABEL = "kubestash.com/invoker-name"
REPO_LABEL = "kubestash.com/repo-name"
#: a plan without a target (KubeStash's cluster-wide backups): ``GetTargetRef()``'s answer
NO_TARGET = Target(kind="", name="na", api_group="na")
TERMINAL = ("Succeeded", "Failed")


def _time(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(type_: str, ok: bool, reason: str, message: str = "", when: datetime | None = None) -> dict[str, Any]:
    """A metav1.Condition as KubeStash writes them."""
    out = {"type": type_, "status": "True" if ok else "False", "reason": reason,
           "lastTransitionTime": _time(when or datetime.now(timezone.utc))}
    if message:
        out["message"] = message
    return out


def set_condition(conditions: list[dict[str, Any]], new: dict[str, Any]) -> list[dict[str, Any]]:
    """``conditions`` with ``new`` replacing the one of its type (kmapi ``SetCondition``)."""
    return [*(c for c in conditions if c.get("type") != new["type"]), new]


def backup_session_name(configuration: str, session: str, unix_seconds: int) -> str:
    """``GenerateBackupSessionName``: ``<config>-<session>-<unix seconds>``, ≤63 chars."""
    return valid_name(configuration, session, str(unix_seconds))


def app_ref(target: Target | None, namespace: str) -> dict[str, str]:
    """A TypedObjectReference to the target, its namespace filled; ``{apiGroup: na, name: na}`` without one."""
    if target is None or target == NO_TARGET:
        return {"apiGroup": "na", "name": "na"}
    return {**({"apiGroup": target.api_group} if target.api_group else {}), "kind": target.kind,
            "name": target.name, "namespace": namespace}


@dataclass(frozen=True)
class RepositoryRef:
    """One repository of a session: where its data goes (a BackupStorage and a directory)."""

    name: str
    storage: str
    storage_namespace: str
    directory: str = ""
    encryption_secret: str | None = None
    encryption_secret_namespace: str | None = None
    deletion_policy: str | None = None


@dataclass(frozen=True)
class BackupSessionRef:
    """Who runs: the BackupConfiguration, its session, the BackupSession's name and where."""

    configuration: str
    session: str
    name: str
    namespace: str
    target: Target | None = None
    extra_labels: dict[str, str] = field(default_factory=dict)


def session_labels(ref: BackupSessionRef) -> dict[str, str]:
    """Labels on the BackupSession and the Snapshots it makes: KubeStash's, and stashflow's own so that
    a session's objects (and its Jobs, which carry ``stashflow.io/session``) are found together."""
    labels = {INVOKER_LABEL: label_value(ref.configuration), "app.kubernetes.io/managed-by": MANAGED_BY,
              LABEL_PREFIX + "session": label_value(ref.name), LABEL_PREFIX + "plan-session": label_value(ref.session)}
    return {**labels, **{k: label_value(v) for k, v in ref.extra_labels.items()}}


def repository(ref: RepositoryRef, namespace: str, configuration: str, target: Target | None) -> dict[str, Any]:
    """The Repository a BackupConfiguration's ``sessions[].repositories[]`` entry makes (namespaces filled)."""
    spec: dict[str, Any] = {"appRef": app_ref(target, namespace),
                            "storageRef": {"name": ref.storage, "namespace": ref.storage_namespace},
                            "path": ref.directory or "/", "deletionPolicy": ref.deletion_policy or "Delete"}
    if spec["deletionPolicy"] not in ("Delete", "WipeOut"):  # Retain is the BackupConfiguration's word only
        spec["deletionPolicy"] = "Delete"
    if ref.encryption_secret:
        spec["encryptionSecret"] = {"name": ref.encryption_secret,
                                    "namespace": ref.encryption_secret_namespace or namespace}
    return {"apiVersion": f"{STORAGE}/{VERSION}", "kind": "Repository",
            "metadata": {"name": ref.name, "namespace": namespace,
                         "labels": {"app.kubernetes.io/managed-by": MANAGED_BY,
                                    "kubestash.com/invoker-kind": "BackupConfiguration",
                                    INVOKER_LABEL: label_value(configuration)}},
            "spec": spec}


def backup_session(ref: BackupSessionRef, *, backup_timeout: str | None = None, retry_left: int = 0) -> dict[str, Any]:
    """The BackupSession, as the trigger makes it: invoked by the BackupConfiguration (``owned`` names it
    the owner once the cluster has given it a uid)."""
    meta: dict[str, Any] = {"name": ref.name, "namespace": ref.namespace, "labels": session_labels(ref)}
    spec: dict[str, Any] = {"invoker": {"apiGroup": CORE, "kind": "BackupConfiguration", "name": ref.configuration},
                            "session": ref.session, "retryLeft": retry_left}
    if backup_timeout:
        spec["backupTimeout"] = backup_timeout
    return {"apiVersion": f"{CORE}/{VERSION}", "kind": "BackupSession", "metadata": meta, "spec": spec}


def owned(obj: dict[str, Any], applied: list[dict[str, Any]]) -> dict[str, Any]:
    """``obj`` owned as KubeStash owns it, by one of the objects just ``applied`` (as the cluster has them,
    with their uids): a BackupSession by its invoking BackupConfiguration, a Snapshot by its Repository.
    Unchanged when that owner is not among them."""
    if obj["kind"] == "BackupSession":
        want = ("BackupConfiguration", obj["spec"]["invoker"]["name"])
    elif obj["kind"] == "Snapshot":
        want = ("Repository", obj["spec"]["repository"])
    else:
        return obj
    for owner in applied:
        meta = owner.get("metadata") or {}
        if (owner.get("kind"), meta.get("name")) == want and meta.get("uid"):
            ref = {"apiVersion": owner["apiVersion"], "kind": want[0], "name": want[1], "uid": meta["uid"],
                   "controller": True, "blockOwnerDeletion": True}
            return {**obj, "metadata": {**obj["metadata"], "ownerReferences": [ref]}}
    return obj


def session_snapshot(ref: BackupSessionRef, repo: RepositoryRef, *, total_components: int, now: datetime,
                     snapshot_id: str | None = None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """The Pending Snapshot of one repository, created at the session's start (§5), owned by its Repository.
    Its components are written by the session's tasks."""
    name = snapshot_name(repo.name, ref.name)
    target = ref.target if ref.target is not None else NO_TARGET
    labels = {REPO_LABEL: label_value(repo.name), "kubestash.com/app-ref-kind": label_value(target.kind),
              "kubestash.com/app-ref-name": label_value(target.name),
              "kubestash.com/app-ref-namespace": label_value(ref.namespace if ref.target else ""),
              **session_labels(ref)}
    meta: dict[str, Any] = {"name": name, "namespace": ref.namespace, "labels": labels,
                            "annotations": dict(annotations or {})}
    return {
        "apiVersion": f"{STORAGE}/{VERSION}", "kind": "Snapshot", "metadata": meta,
        "spec": {"snapshotID": snapshot_id or ulid(now.timestamp()), "type": "FullBackup", "repository": repo.name,
                 "session": ref.session, "backupSession": ref.name, "version": "v1",
                 "appRef": app_ref(ref.target, ref.namespace), "deletionPolicy": "Delete"},
        "status": {"phase": "Pending", "snapshotTime": _time(now), "totalComponents": total_components,
                   "verificationStatus": "NotVerified"},
    }


def snapshot_phase(components: dict[str, dict[str, Any]], conditions: list[dict[str, Any]],
                   total_components: int) -> str:
    """Snapshot ``CalculatePhase``: a true ``BackupIncomplete`` fails it; then its components: none or all
    Pending → Pending, some not finished → Running, any Failed → Failed, all Succeeded → Succeeded
    (fewer than ``totalComponents``, all finished: a component is missing → Failed)."""
    if any(c.get("type") == "BackupIncomplete" and c.get("status") == "True" for c in conditions):
        return "Failed"
    if any(c.get("type") in ("SnapshotMetadataUploaded", "RecentSnapshotListUpdated") and c.get("status") == "False"
           for c in conditions):
        return "Failed"
    phases = [(c or {}).get("phase") for c in components.values()]
    if not phases or all(p in (None, "Pending") for p in phases):
        return "Pending"
    if not all(p in TERMINAL for p in phases):
        return "Running"
    if "Failed" in phases or len(phases) < total_components:
        return "Failed"
    return "Succeeded"


def finish_snapshot(status: dict[str, Any], expected: dict[str, str], *, now: datetime,
                    aggregate: dict[str, Any]) -> dict[str, Any]:
    """The status patch that ends a session's Snapshot: every ``expected`` component (name → why it would
    be missing) that no task wrote, or left unfinished, is Failed with that reason; then the phase,
    ``totalComponents`` and the ``BackupIncomplete`` condition. ``aggregate`` is size and integrity
    summed over the components (``tasks.results.aggregate``)."""
    components = {k: dict(v) for k, v in (status.get("components") or {}).items() if v}
    conditions = list(status.get("conditions") or [])
    for name, why in expected.items():
        found = components.get(name) or {}
        if found.get("phase") not in TERMINAL:
            components[name] = {**found, "phase": "Failed", "error": found.get("error") or why}
    failed = {n: c.get("error") or "failed" for n, c in components.items() if c.get("phase") == "Failed"}
    if failed and not any(c.get("type") == "BackupIncomplete" for c in conditions):
        conditions.append(condition("BackupIncomplete", True, "BackupExecutorTerminatedBeforeCompletion",
                                    "Failed to complete backup. Reason: " + "; ".join(
                                        f"{n}: {e}" for n, e in sorted(failed.items())), now))
    total = max(len(expected), len(components))
    out: dict[str, Any] = {"components": components, "conditions": conditions, "totalComponents": total,
                           "lastUpdateTime": _time(now)}
    out.update({k: v for k, v in aggregate.items() if k in ("size", "integrity")})
    out["phase"] = snapshot_phase(components, conditions, total)
    return out


def calculate_phase(status: dict[str, Any]) -> str:
    """BackupSession ``CalculatePhase`` on its status (REFERENCE.md §2.3): terminal only once the final
    step ran (``MetricsPushed``); skipped, failed steps, or its Snapshots' phases otherwise."""
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    if conditions.get("MetricsPushed") == "False":
        return "Failed"
    if conditions.get("BackupSkipped") == "True":
        return "Skipped"
    failed_step = any(conditions.get(t) == "False" for t in (
        "BackupExecutorEnsured", "SnapshotsEnsured", "PreBackupHooksExecutionSucceeded",
        "PostBackupHooksExecutionSucceeded", "SessionHistoryCleaned")) \
        or conditions.get("SnapshotCleanupIncomplete") == "True" \
        or any(r.get("phase") == "FailedToApply" for r in status.get("retentionPolicy") or [])
    if conditions.get("MetricsPushed") == "True" and failed_step:
        return "Failed"
    phases = [s.get("phase") for s in status.get("snapshots") or []]
    if not phases or all(p in (None, "Pending") for p in phases):
        phase = "Pending"
    elif not all(p in TERMINAL for p in phases):
        phase = "Running"
    elif "Failed" in phases:
        phase = "Failed"
    else:
        phase = "Succeeded"
    if phase in TERMINAL and "MetricsPushed" not in conditions:
        return "Running"  # the final steps (retention, history, the record) have not run yet
    return phase


def restore_phase(components: dict[str, dict[str, Any]]) -> str:
    """RestoreSession's phase from its components: one Failed fails it (KubeStash #243)."""
    phases = [(c or {}).get("phase") for c in components.values()]
    if not phases or all(p in (None, "Pending") for p in phases):
        return "Pending"
    if not all(p in TERMINAL for p in phases):
        return "Running"
    return "Failed" if "Failed" in phases else "Succeeded"


def repository_status(snapshots: list[dict[str, Any]], *, recent: int = 5) -> dict[str, Any]:
    """Repository status from its Snapshots (oldest first): last backup, count, size, integrity,
    recent Snapshots and component paths, as KubeStash keeps them; Ready once one succeeded."""
    succeeded = [s for s in snapshots if (s.get("status") or {}).get("phase") == "Succeeded"]
    out: dict[str, Any] = {"phase": "Ready" if succeeded else "NotReady", "snapshotCount": len(snapshots)}
    if succeeded:
        last = succeeded[-1]["status"]
        out["lastBackupTime"] = last.get("snapshotTime")
        for key in ("size", "integrity"):
            if last.get(key) is not None:
                out[key] = last[key]
    out["recentSnapshots"] = [
        {k: v for k, v in {"name": s["metadata"]["name"], "phase": (s.get("status") or {}).get("phase"),
                           "session": s["spec"].get("session"), "size": (s.get("status") or {}).get("size"),
                           "snapshotTime": (s.get("status") or {}).get("snapshotTime")}.items() if v is not None}
        for s in snapshots[-recent:]]
    out["componentPaths"] = sorted({c["path"] for s in snapshots
                                    for c in ((s.get("status") or {}).get("components") or {}).values()
                                    if c and c.get("path")})
    return out


def duration(seconds: float) -> str:
    """A Go duration string, as ``status.duration`` holds it (``1m5s``)."""
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return "".join(f"{v}{u}" for v, u in ((hours, "h"), (minutes, "m")) if v) + f"{secs}s"
