"""The one error tree of stashflow, with the stable codes users and scripts match on.

Every error a user can cause carries a code (``CODES`` lists them all, with what they
mean), a location (file and line, where there is one), the object and the field path it
concerns, and a hint saying what to do next. ``str(err)`` is the one-line form that the
CLI prints::

    catalog/addon.yaml:12: unknown-function: Addon "pg" spec.backupTasks[0].function: ...

Tree (every layer raises these; none defines its own base):

    StashflowError
    ├── InputError            bad input files or arguments; nothing was sent to a cluster
    │   ├── LoadError         a file cannot be read, parsed or checked against the schema
    │   ├── CatalogError      Addons/Functions that do not fit together
    │   └── ResolutionError   a task's parameters cannot be resolved
    ├── ClusterError          the Kubernetes API refused or failed (``status``)
    │   ├── NotFound          404
    │   ├── Conflict          409
    │   ├── Forbidden         401, 403
    │   ├── Invalid           422
    │   └── Unavailable       no answer, 429, 5xx (after retries)
    └── RunError              a backup or restore run failed (``diagnosis``)
    Problems                  several of the above at once (``.problems``)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

#: Every stable code, with a short description. Codes never change meaning once released.
CODES: dict[str, str] = {
    # loading
    "read-error": "a file or folder cannot be read",
    "invalid-yaml": "a file is not valid YAML",
    "invalid-object": "a YAML document is not a Kubernetes object (a mapping)",
    "duplicate-key": "a mapping has the same key twice",
    "missing-field": "a required field is absent",
    "missing-name": "an object has no metadata.name",
    "invalid-name": "a name is not a valid Kubernetes name (DNS-1123, length)",
    "unknown-kind": "an object's kind is not one stashflow reads",
    "unknown-api-version": "a known kind with an apiVersion stashflow does not read",
    "invalid-type": "a field has the wrong type (e.g. a number where a string is expected)",
    "invalid-value": "a field has a value outside the allowed set",
    "duplicate-object": "two objects of the same kind have the same name",
    # catalog cross references
    "unknown-addon": "an Addon name that the catalog does not have",
    "unknown-task": "a task name that the Addon does not have",
    "unknown-function": "a Function name that the catalog does not have",
    "unknown-volume": "a volumeMount names a volume that the task does not define",
    "duplicate-task": "two tasks of one Addon have the same name",
    "duplicate-parameter": "a task declares the same parameter twice",
    "duplicate-volume": "a task declares the same volume template twice",
    "invalid-template": "a ${...} expression that cannot be parsed",
    "unknown-object": "a reference to a BackupStorage, Repository, Secret... that is not there",
    # resolution
    "missing-required-parameter": "a required parameter has no value",
    "unknown-parameter": "a parameter the task neither declares nor references",
    "unknown-variable": "a variable that is neither built in nor referenced by the task",
    "unresolved-variable": "a ${name} without a default and without a value",
    "invalid-parameter": "a parameter value that is not a string, number or boolean",
    "no-matching-version": "no availableVersions entry fits the database version",
    "invalid-argument": "a command-line argument that cannot be used",
    "invalid-path": "a directory or session name that would leave the storage (.., empty segment, control character)",
    "invalid-duration": "a duration or retention period that cannot be read, is negative or too long",
    "write-error": "an output file cannot be written (missing folder, a directory, disk full)",
    "prefect-unavailable": "the Prefect API did not answer",
    "interrupted": "the command was stopped by a signal (SIGINT, SIGTERM)",
    "internal-error": "an unexpected error inside stashflow (a bug: report it with the output of -v)",
    # the Kubernetes API (stashflow.tasks.kube)
    "api-forbidden": "the API refused for lack of RBAC permission (403)",
    "api-not-found": "the namespace, object or resource type does not exist (404)",
    "api-invalid": "the API rejected an object as invalid (422)",
    "api-conflict": "an object exists that this run did not make (409)",
    "api-unavailable": "the API did not answer after retries (429, 5xx, connection errors)",
    "api-error": "any other API error",
    # runs (stashflow.tasks)
    "job-exit-code": "the backup/restore container exited with a non-zero code",
    "job-oom-killed": "the container was killed for exceeding its memory limit",
    "job-image-pull": "the container image could not be pulled",
    "job-unschedulable": "no node could take the Pod",
    "job-deadline-exceeded": "the Job ran past its activeDeadlineSeconds",
    "job-evicted": "the Pod was evicted from its node",
    "job-config-error": "the container could not be created (missing Secret, ConfigMap, bad config)",
    "job-failed": "the Job failed for a reason stashflow cannot classify",
    "run-timeout": "the run did not finish before its deadline",
    "no-result": "the Job succeeded but reported no result on any channel",
    # KubeStash's executors (addons/contract.py): the result is the component they write, not the exit code
    "component-missing": "a KubeStash executor's Job ended without writing its Snapshot/RestoreSession component (absent or still the pre-created Pending)",
    "component-unfinished": "a KubeStash executor's Job ended with its component still Running (killed mid-run)",
    "component-failed": "a KubeStash executor wrote its component Failed (it exits 0 on failure)",
    "snapshot-not-found": "no Snapshot to restore from",
    "repository-not-found": "the repository a restore reads is not there (no Repository object, and the Snapshot "
                            "records no storage of its own): found before anything was created",
    "repository-corrupt": "restic check found errors in the repository after the backup: the backup is not good",
    "repository-check-failed": "the repository could not be checked after the backup: the backup is not known good",
    "target-busy": "another run of the same target is under way in the cluster (its Job is still active)",
    "namespace-not-found": "the run's namespace does not exist (found before anything was created)",
    "pvc-not-found": "a PersistentVolumeClaim the run needs does not exist (found before anything was created)",
    "secret-not-found": "a Secret the run needs does not exist (found before anything was created)",
    "unsupported": "a KubeStash feature stashflow does not run (said where it is met, before anything runs)",
    "hook-failed": "a hook's action failed (exit code, HTTP status, closed port) after its retries",
    "hook-timeout": "a hook's action did not finish within its timeout",
    "hook-no-pod": "no Running Pod matches a Pod-executor hook's selector",
    "target-not-found": "the workload to back up or restore does not exist, or mounts no data volume (found before "
                        "anything was created)",
    "serviceaccount-not-found": "the ServiceAccount the run's Pod runs as does not exist (found before anything was "
                                "created)",
}


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _one_line(text: str) -> str:
    """Control characters written as ``\\n``, ``\\x1b``...: an error is one line, and a name holding
    ESC or NUL never reaches the terminal raw."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


@dataclass(frozen=True)
class Location:
    """Where an error was found: a file (or ``<command line>``) and a 1-based line (0: unknown)."""

    file: str
    line: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


class StashflowError(Exception):
    """Base of every error stashflow raises on purpose.

    ``code`` is stable; ``location``, ``obj`` (e.g. ``Addon "pg"``) and ``field`` (e.g.
    ``spec.backupTasks[0].function``) say where; ``hint`` says what to do next.
    """

    default_code = "error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        location: Location | None = None,
        obj: str | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.code = code or self.default_code
        if self.code not in CODES and self.code != self.default_code:
            raise ValueError(f"unregistered error code {self.code!r}")  # a bug, not user error
        self.message = message
        self.location = location
        self.obj = obj
        self.field = field
        self.hint = hint
        super().__init__(self.format())

    def format(self) -> str:
        """``FILE:LINE: CODE: OBJECT FIELD: message (hint)``, the CLI's one-line form."""
        where = f"{self.location}: " if self.location else ""
        subject = " ".join(p for p in (self.obj, self.field) if p)
        subject = f"{subject}: " if subject else ""
        hint = f" ({self.hint})" if self.hint else ""
        return _one_line(f"{where}{self.code}: {subject}{self.message}{hint}")

    def __str__(self) -> str:
        return self.format()


class InputError(StashflowError):
    """Bad input: files, plans or arguments. Nothing was created in a cluster."""

    default_code = "invalid-value"


class LoadError(InputError):
    """A file cannot be read, parsed, or checked against the object schemas."""


class CatalogError(InputError):
    """Addons and Functions that do not fit together."""


class ResolutionError(InputError):
    """A task's parameters cannot be resolved into an execution plan."""


class ClusterError(StashflowError):
    """The Kubernetes API refused or failed. ``status`` is the HTTP status (0: no answer)."""

    default_code = "api-error"

    def __init__(self, message: str, *, status: int = 0, **kwargs: Any) -> None:
        self.status = status
        super().__init__(message, **kwargs)


class NotFound(ClusterError):
    """404: the namespace, object or resource type does not exist."""

    default_code = "api-not-found"


class Conflict(ClusterError):
    """409: the object exists already, or changed since it was read."""

    default_code = "api-conflict"


class Forbidden(ClusterError):
    """401/403: the identity stashflow runs as may not do this."""

    default_code = "api-forbidden"


class Invalid(ClusterError):
    """422: the API server rejected the object; its message names the field."""

    default_code = "api-invalid"


class Unavailable(ClusterError):
    """No answer, 429 or 5xx after retries: the cluster, not the request, is the problem."""

    default_code = "api-unavailable"


class RunError(StashflowError):
    """A backup or restore run failed; ``diagnosis`` (when set) says why, with a log tail."""

    default_code = "job-failed"

    def __init__(self, message: str, *, diagnosis: object = None, **kwargs: Any) -> None:
        self.diagnosis = diagnosis
        super().__init__(message, **kwargs)


class Problems(InputError):
    """Several problems found in one pass; each is in ``problems``, in file order."""

    default_code = "invalid-value"

    def __init__(self, problems: Iterable[StashflowError]) -> None:
        self.problems = list(problems)
        first = self.problems[0] if self.problems else None
        super().__init__(
            f"{len(self.problems)} problems",
            code=first.code if first else None,
            location=first.location if first else None,
            obj=first.obj if first else None,
            field=first.field if first else None,
            hint=first.hint if first else None,
        )

    def format(self) -> str:
        return "\n".join(p.format() for p in self.problems)

    def __iter__(self) -> Iterator[StashflowError]:
        return iter(self.problems)


def raise_all(problems: list[StashflowError]) -> None:
    """Raise the single problem as itself, several as ``Problems``, none not at all."""
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise Problems(problems)


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """A hint naming the closest candidate, or None when nothing is close."""
    import difflib

    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in candidates}
        if name.lower() in lowered:
            close = [lowered[name.lower()]]
    return f'did you mean "{close[0]}"?' if close else None
