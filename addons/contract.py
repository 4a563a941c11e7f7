"""Which executor contract a Function speaks, and what a KubeStash executor's run came to.

Two contracts (README "How KubeStash's images are run", EXECUTOR-CONTRACT.md):

* ``stashflow``: the Function's container gets restic's environment (``RESTIC_REPOSITORY``,
  ``RESTIC_PASSWORD``...) and reports on its termination message / restic's ``--json`` summary;
  a non-zero exit is a failure.
* ``kubestash``: KubeStash's own images. They get only ``--backupsession``/``--restoresession``
  (and ``--snapshot``), walk BackupSession → BackupConfiguration → Snapshot → Repository →
  BackupStorage → Secrets through the API, and write ``Snapshot.status.components[<c>]`` (restore:
  ``RestoreSession.status.components[<c>]``). They usually **exit 0 on failure**, so their result is
  read from the component, never from the exit code.

Rule (``contract_of``): the annotation ``stashflow.io/contract: kubestash|stashflow`` on the Function
wins; otherwise a Function that takes the session as KubeStash's images do, an argument
``--backupsession=${backupSession...}``, ``--restoresession=${restoreSession...}`` or
``--backupverificationsession=${backupVerificationSession...}``, speaks ``kubestash`` (it can only find
its work through those objects), and any other speaks ``stashflow``. Every upstream Function does the
first; every built-in stashflow Function the second (they use ``${backupSession}`` only as a restic
tag, ``--tag=backupsession=...``).

Pure: plain dicts in, frozen results out; no network.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .errors import InputError

CONTRACT_ANNOTATION = "stashflow.io/contract"
Contract = Literal["kubestash", "stashflow"]
CONTRACTS: tuple[Contract, ...] = ("kubestash", "stashflow")

# --backupsession=${backupSession}, --restoresession=${restoreSession:=}: the session flag of KubeStash's images
_SESSION_REF = re.compile(r"^--(?:backupsession=\$\{backupSession|restoresession=\$\{restoreSession|"
                          r"backupverificationsession=\$\{backupVerificationSession)(?:[:=\-+?][^}]*)?\}$")

#: (message, hint) for each result code this module gives (the codes are in errors.CODES)
RESULT_CODES: dict[str, tuple[str, str]] = {
    "component-missing": (
        "the executor's Job ended and it never wrote its component",
        "the executor died before writing or found nothing to do: read the Pod's log (a KubeStash executor "
        "exits 1 when the BackupSession has no status.snapshots, an object is missing or RBAC refuses it)"),
    "component-unfinished": (
        "the executor's Job ended with its component still {phase}",
        "the executor was killed mid-run (deadline, eviction, OOM): its data is not a complete backup; "
        "read the Pod's log and run again"),
    "component-failed": (
        "the executor wrote its component Failed: {error}",
        "KubeStash's executors exit 0 on failure: the component's error is the reason"),
    "repository-corrupt": (
        "the executor's restic check found errors in the component's repository",
        "the repository is damaged: run `restic check` on it and repair it, or back up into a new directory"),
}


def _as_dict(obj: Any) -> Mapping[str, Any]:
    if isinstance(obj, Mapping):
        return obj
    dump = getattr(obj, "dump", None)
    if callable(dump):
        return dump()
    raise TypeError(f"expected a Function (model or dict), not {type(obj).__name__}")


def contract_of(function: Any) -> Contract:
    """The contract a Function speaks (rule in the module docstring). An annotation naming neither
    contract is an ``invalid-value`` error at that annotation."""
    fn = _as_dict(function)
    meta = fn.get("metadata") or {}
    name = meta.get("name") or "?"
    chosen = (meta.get("annotations") or {}).get(CONTRACT_ANNOTATION)
    if chosen is not None:
        if chosen not in CONTRACTS:
            raise InputError(f'"{chosen}" is not a contract', code="invalid-value", obj=f'Function "{name}"',
                             field=f"metadata.annotations[{CONTRACT_ANNOTATION}]",
                             hint="use kubestash (the image reads KubeStash's objects) or stashflow "
                                  "(the image reads restic's environment)")
        return chosen  # type: ignore[return-value]
    spec = fn.get("spec") or {}
    words = [*(spec.get("command") or []), *(spec.get("args") or [])]
    return "kubestash" if any(_SESSION_REF.match(str(w)) for w in words) else "stashflow"


@dataclass(frozen=True)
class ComponentResult:
    """One component of a KubeStash executor's run, as it wrote it. ``code`` is None when it is good."""

    component: str
    phase: str | None  # as written; None when the component is missing
    code: str | None
    message: str
    hint: str | None = None
    error: str | None = None  # the executor's own error text
    duration: str | None = None
    size: str | None = None
    integrity: bool | None = None
    restic_ids: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.code is None


def _result(component: str, written: Mapping[str, Any] | None, *, backup: bool) -> ComponentResult:
    if not written:
        msg, hint = RESULT_CODES["component-missing"]
        return ComponentResult(component, None, "component-missing", msg, hint)
    phase = written.get("phase")
    error = written.get("error") or None
    common = dict(error=error, duration=written.get("duration"),
                  size=written.get("size") if backup else None,
                  integrity=written.get("integrity") if backup else None,
                  restic_ids=tuple(str((s.get("summary") or s).get("id")) for s in written.get("resticStats") or []
                                   if (s.get("summary") or s).get("id")) if backup else ())
    if phase == "Failed":
        msg, hint = RESULT_CODES["component-failed"]
        return ComponentResult(component, phase, "component-failed",
                               msg.format(error=error or "no error given"), hint, **common)  # type: ignore[arg-type]
    if phase != "Succeeded":
        msg, hint = RESULT_CODES["component-unfinished"]
        return ComponentResult(component, phase, "component-unfinished", msg.format(phase=phase or "without a phase"),
                               hint, **common)  # type: ignore[arg-type]
    if backup and written.get("integrity") is False:
        msg, hint = RESULT_CODES["repository-corrupt"]
        return ComponentResult(component, phase, "repository-corrupt", msg, hint, **common)  # type: ignore[arg-type]
    return ComponentResult(component, phase, None, f'component "{component}" {phase}', None,
                           **common)  # type: ignore[arg-type]


def backup_result(snapshot: Mapping[str, Any], component: str) -> ComponentResult:
    """The result of a backup executor's Job that has ended (Complete or Failed alike: the exit code
    says nothing), read from ``Snapshot.status.components[component]``."""
    written = ((snapshot.get("status") or {}).get("components") or {}).get(component)
    return _result(component, written, backup=True)


def restore_result(restore_session: Mapping[str, Any], component: str) -> ComponentResult:
    """The result of a restore executor's Job that has ended, from ``RestoreSession.status.components``.
    The ``Pending`` entry stashflow pre-creates (the executor writes nothing into a nil map) counts as
    never written."""
    written = ((restore_session.get("status") or {}).get("components") or {}).get(component)
    if written and written.get("phase") == "Pending" and len(written) == 1:
        written = None
    return _result(component, written, backup=False)


def backup_results(snapshot: Mapping[str, Any], components: list[str] | tuple[str, ...]) -> tuple[ComponentResult, ...]:
    """Every expected component of one Snapshot (a session's tasks each write one)."""
    return tuple(backup_result(snapshot, c) for c in components)
