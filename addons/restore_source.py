"""Whether a restore can start from what its RestoreSession names, decided before anything runs.

A restore reads a Snapshot (a name, or ``latest`` of a repository) that must exist, be ``Succeeded`` and
have components; and the Snapshot's repository must be reachable: through its Repository object (what
KubeStash's executors walk), or, for stashflow's own Functions, through the storage the Snapshot records
itself (``stashflow.io/storage*`` annotations) or because stashflow made it (its Function names its
repository itself). A problem here is a coded
error before any Job, hook or claim: the ``restore-session`` flow records it on the RestoreSession
(``Failed``, condition ``ValidationPassed`` False) and stops. Pure: plain dicts in, no network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .render import LABEL_PREFIX, MANAGED_BY

#: Annotations on a Snapshot that say where its data is, so a restore needs only its name.
ANN_STORAGE = LABEL_PREFIX + "storage"
ANN_DIRECTORY = LABEL_PREFIX + "directory"
ANN_SECRET = LABEL_PREFIX + "encryption-secret"
ANN_STORAGE_OBJECT = LABEL_PREFIX + "storage-object"  # the BackupStorage as JSON (Secret names only, no secrets)


@dataclass(frozen=True)
class SourceProblem:
    """Why the restore cannot start: a code of ``errors.CODES``, the reason, what to do."""

    code: str
    message: str
    hint: str


@dataclass(frozen=True)
class RestoreSource:
    """What the cluster holds for a restore: the Snapshot found (None: none), the Repository object of its
    repository (None: absent), and whether the repository has any Snapshot at all (for ``latest``)."""

    namespace: str
    snapshot_name: str  # as the RestoreSession gives it: a name, or latest
    repository_name: str | None  # dataSource.repository
    snapshot: dict[str, Any] | None
    repository: dict[str, Any] | None
    repository_has_snapshots: bool = False


def _knows_its_data(snapshot: dict[str, Any]) -> bool:
    """The Snapshot says where its data is without a Repository object: it records its storage, or stashflow
    made it (a Function that names its repository itself records none, and restores the same way)."""
    meta = snapshot.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    return bool(annotations.get(ANN_STORAGE_OBJECT) or annotations.get(ANN_STORAGE)) or \
        (meta.get("labels") or {}).get("app.kubernetes.io/managed-by") == MANAGED_BY


def repository_of(source: RestoreSource) -> str | None:
    """The repository the restore reads: the Snapshot's own, else the one the RestoreSession names."""
    return ((source.snapshot or {}).get("spec") or {}).get("repository") or source.repository_name


def source_problem(source: RestoreSource, needs_repository_object: bool) -> SourceProblem | None:
    """The first reason the restore cannot start, or None. ``needs_repository_object``: a task's executor
    speaks KubeStash's contract (it walks Snapshot → Repository → BackupStorage)."""
    ns, snap = source.namespace, source.snapshot
    listing = f"list them with `stashflow snapshots -n {ns}`"
    if snap is None:
        if source.snapshot_name not in ("", "latest"):
            return SourceProblem("snapshot-not-found", f'no Snapshot "{source.snapshot_name}" in namespace {ns}',
                                 listing)
        if source.repository is None and not source.repository_has_snapshots:
            return SourceProblem("repository-not-found",
                                 f'Repository "{source.repository_name}" does not exist in namespace {ns} '
                                 "and no Snapshot names it",
                                 "check dataSource.repository (and dataSource.namespace), or back it up first")
        return SourceProblem("snapshot-not-found",
                             f'repository "{source.repository_name}" has no Succeeded Snapshot in namespace {ns}',
                             "run a backup first, or name a Snapshot")
    name = (snap.get("metadata") or {}).get("name") or source.snapshot_name
    status = snap.get("status") or {}
    if status.get("phase") != "Succeeded":
        return SourceProblem("snapshot-not-found",
                             f'Snapshot "{name}" is {status.get("phase") or "not finished"}, not Succeeded',
                             f"restore from a Succeeded Snapshot ({listing})")
    if not status.get("components"):
        return SourceProblem("snapshot-not-found", f'Snapshot "{name}" has no components', listing)
    repository = repository_of(source)
    if source.repository is None and (needs_repository_object or not _knows_its_data(snap)):
        why = ("its restore executor reads the data's place from it" if needs_repository_object
               else "the Snapshot records no storage of its own and stashflow did not make it")
        return SourceProblem("repository-not-found",
                             f'Repository "{repository}" of Snapshot "{name}" does not exist in namespace {ns} ({why})',
                             "apply the Repository again (its BackupConfiguration's plan does), or restore from a "
                             "Snapshot of another repository")
    return None


__all__ = ["ANN_DIRECTORY", "ANN_SECRET", "ANN_STORAGE", "ANN_STORAGE_OBJECT", "RestoreSource", "SourceProblem", "repository_of", "source_problem"]
