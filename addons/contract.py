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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .errors import InputError

CONTRACT_ANNOTATION = "stashflow.io/contract"
Contract = Literal["kubestash", "stashflow"]
CONTRACTS: tuple[Contract, ...] = ("kubestash", "stashflow")

#: The image of stashflow's own restic Jobs for a repository a KubeStash executor wrote (retention's
#: ``restic forget --prune``): the repository is restic either way, but KubeStash's images take only their
#: own flags. The built-in ``stashflow-pvc`` Functions' image (a test keeps the two the same).
RESTIC_IMAGE = "docker.io/restic/restic:0.14.0"

# --backupsession=${backupSession}, --restoresession=${restoreSession:=}: the session flag of KubeStash's images
_SESSION_REF = re.compile(r"^--(?:backupsession=\$\{backupSession|restoresession=\$\{restoreSession|"
                          r"backupverificationsession=\$\{backupVerificationSession)(?:[:=\-+?][^}]*)?\}$")

#: (message, hint) for each result code this module gives (the codes are in errors.CODES)
RESULT_CODES: dict[str, tuple[str, str]] = {
    "component-missing": (
        "the executor's Job ended and it never wrote its component",
        "the executor died before writing or found nothing to do: read the Pod's log (a KubeStash executor "
        "exits 1 when the BackupSession has no status.snapshots, an object is missing or RBAC refuses it)"),
    "component-unfinished": (  # Running, or written without a phase (progress only)
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


#: The ServiceAccount stashflow makes for a KubeStash executor when the plan's jobTemplate names none.
EXECUTOR_SERVICE_ACCOUNT = "stashflow-kubestash-executor"


def executor_account(addon_settings: Mapping[str, Any]) -> tuple[str, bool]:
    """The ServiceAccount a KubeStash executor's Job runs as: the plan's (or RestoreSession's)
    ``jobTemplate.spec.serviceAccountName`` (the user's, given its RBAC by the session), else the one
    stashflow makes; and whether stashflow makes it."""
    named = ((addon_settings.get("jobTemplate") or {}).get("spec") or {}).get("serviceAccountName")
    return (str(named), False) if named else (EXECUTOR_SERVICE_ACCOUNT, True)


def with_service_account(addon_settings: Mapping[str, Any], account: str) -> dict[str, Any]:
    """The addon settings with the executor's ServiceAccount in ``jobTemplate.spec``."""
    template = dict(addon_settings.get("jobTemplate") or {})
    template["spec"] = {**(template.get("spec") or {}), "serviceAccountName": account}
    return {**addon_settings, "jobTemplate": template}


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
        return chosen
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
    # A KubeStash executor writes Running before anything else: a component still Pending is the one
    # stashflow pre-created (Snapshot components, RestoreSession status.components), never touched.
    if not written or written.get("phase") == "Pending":
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
    return _result(component, written, backup=False)


def backup_results(snapshot: Mapping[str, Any], components: list[str] | tuple[str, ...]) -> tuple[ComponentResult, ...]:
    """Every expected component of one Snapshot (a session's tasks each write one)."""
    return tuple(backup_result(snapshot, c) for c in components)


# -- what must exist before a KubeStash executor's Job starts (EXECUTOR-CONTRACT.md's table) --------
@dataclass(frozen=True)
class Problem:
    """One object field a KubeStash executor would miss: the session side must fix it before the Job."""

    kind: str
    name: str
    field: str
    message: str

    def __str__(self) -> str:
        return f'{self.kind} "{self.name}" {self.field}: {self.message}'


def _get(obj: Mapping[str, Any] | None, path: str) -> Any:
    cur: Any = obj or {}
    for part in path.split("."):
        cur = cur.get(part) if isinstance(cur, Mapping) else None
    return cur


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "", meta.get("name") or ""


def _ref_problems(kind: str, name: str, field: str, ref: Any) -> list[Problem]:
    if not isinstance(ref, Mapping) or not ref.get("name"):
        return [Problem(kind, name, field, "missing: the executor reads it")]
    if not ref.get("namespace"):
        return [Problem(kind, name, f"{field}.namespace", "empty: KubeStash's webhook fills it and the executor "
                                                           "reads it as written (an empty one is a 404)")]
    return []


def _repository_problems(repo: Mapping[str, Any] | None, ns: str, name: str,
                         storages: dict[tuple[str, str], Mapping[str, Any]],
                         secrets: dict[tuple[str, str], set[str]], *, own_encryption: bool) -> list[Problem]:
    if repo is None:
        return [Problem("Repository", f"{ns}/{name}", "", "does not exist")]
    where = f"{ns}/{name}"
    out = [] if _get(repo, "spec.path") else [Problem("Repository", where, "spec.path", "missing")]
    out += _ref_problems("Repository", where, "spec.storageRef", _get(repo, "spec.storageRef"))
    if own_encryption:
        enc = _get(repo, "spec.encryptionSecret")
        out += _ref_problems("Repository", where, "spec.encryptionSecret", enc)
        out += _secret_problems(enc, secrets)
    ref = _get(repo, "spec.storageRef") or {}
    storage = storages.get((ref.get("namespace") or "", ref.get("name") or ""))
    if ref.get("name") and ref.get("namespace"):
        if storage is None:
            out.append(Problem("BackupStorage", f'{ref["namespace"]}/{ref["name"]}', "", "does not exist"))
        else:
            backend = _get(storage, "spec.storage") or {}
            provider = backend.get("provider")
            sw = f'{ref["namespace"]}/{ref["name"]}'
            if provider not in ("local", "s3", "gcs", "azure"):
                out.append(Problem("BackupStorage", sw, "spec.storage.provider", f"{provider!r} is not one the executors read"))
            elif provider == "local" and not _get(backend, "local.mountPath"):
                out.append(Problem("BackupStorage", sw, "spec.storage.local.mountPath", "missing"))
            elif provider != "local":
                secret = _get(backend, f"{provider}.secretName")
                if secret and (ref["namespace"], secret) not in secrets:
                    out.append(Problem("Secret", f'{ref["namespace"]}/{secret}', "", "the storage Secret does not exist"))
    return out


def _secret_problems(enc: Any, secrets: dict[tuple[str, str], set[str]]) -> list[Problem]:
    if not isinstance(enc, Mapping) or not enc.get("name") or not enc.get("namespace"):
        return []
    keys = secrets.get((enc["namespace"], enc["name"]))
    where = f'{enc["namespace"]}/{enc["name"]}'
    if keys is None:
        return [Problem("Secret", where, "", "the encryption Secret does not exist")]
    if "RESTIC_PASSWORD" not in keys:
        return [Problem("Secret", where, "data.RESTIC_PASSWORD", "missing: restic's password")]
    return []


def backup_preconditions(backup_session: Mapping[str, Any], backup_configuration: Mapping[str, Any] | None,
                         snapshots: Sequence[Mapping[str, Any]], repositories: Sequence[Mapping[str, Any]],
                         storages: Sequence[Mapping[str, Any]],
                         secrets: Mapping[tuple[str, str], Any]) -> tuple[Problem, ...]:
    """What a KubeStash backup executor would miss if its Job started now. ``secrets`` maps
    ``(namespace, name)`` to the Secret's keys (values are never needed). Empty: good to go."""
    ns, bs_name = _key(backup_session)
    where = f"{ns}/{bs_name}"
    out: list[Problem] = []
    invoker = _get(backup_session, "spec.invoker") or {}
    if (invoker.get("apiGroup"), invoker.get("kind")) != ("core.kubestash.com", "BackupConfiguration") or not invoker.get("name"):
        out.append(Problem("BackupSession", where, "spec.invoker",
                           "must be {apiGroup: core.kubestash.com, kind: BackupConfiguration, name}"))
    if not _get(backup_session, "spec.session"):
        out.append(Problem("BackupSession", where, "spec.session", "missing"))
    if _get(backup_session, "spec.backupTimeout") and not _get(backup_session, "status.backupDeadline"):
        out.append(Problem("BackupSession", where, "status.backupDeadline", "missing while spec.backupTimeout is set"))
    if backup_configuration is None or _key(backup_configuration) != (ns, invoker.get("name") or ""):
        out.append(Problem("BackupConfiguration", f"{ns}/{invoker.get('name') or ''}", "", "the invoker does not exist"))
    elif not _get(backup_configuration, "spec.target.name"):
        out.append(Problem("BackupConfiguration", f"{ns}/{invoker.get('name')}", "spec.target", "missing"))
    listed = _get(backup_session, "status.snapshots") or []
    if not listed:
        out.append(Problem("BackupSession", where, "status.snapshots",
                           "empty: the executor fails \"no snapshot found for backupsession\" (write it through "
                           "the status subresource before the Job)"))
    snaps = {_key(s): s for s in snapshots}
    repos = {_key(r): r for r in repositories}
    stores = {_key(s): s for s in storages}
    keys = {k: set(v) for k, v in secrets.items()}
    for i, entry in enumerate(listed):
        name = (entry or {}).get("name")
        snap = snaps.get((ns, name or ""))
        if not name or snap is None:
            out.append(Problem("BackupSession", where, f"status.snapshots[{i}].name", f"no Snapshot {ns}/{name}"))
            continue
        sw = f"{ns}/{name}"
        repo_name = _get(snap, "spec.repository")
        if not repo_name:
            out.append(Problem("Snapshot", sw, "spec.repository", "missing"))
            continue
        if entry.get("repository") and entry["repository"] != repo_name:
            out.append(Problem("BackupSession", where, f"status.snapshots[{i}].repository",
                               f"{entry['repository']!r} but the Snapshot's is {repo_name!r}"))
        if _get(snap, "spec.session") != _get(backup_session, "spec.session"):
            out.append(Problem("Snapshot", sw, "spec.session", "must be the BackupSession's spec.session (the data's directory)"))
        if _get(snap, "spec.version") != "v1":
            out.append(Problem("Snapshot", sw, "spec.version", "must be v1 (repository/v1/<session>/<component>)"))
        if _get(snap, "spec.backupSession") != bs_name:
            out.append(Problem("Snapshot", sw, "spec.backupSession", f"must be {bs_name!r}"))
        out += _repository_problems(repos.get((ns, repo_name)), ns, repo_name, stores, keys, own_encryption=True)
    return tuple(out)


def restore_preconditions(restore_session: Mapping[str, Any], component: str, snapshot: Mapping[str, Any] | None,
                          repositories: Sequence[Mapping[str, Any]], storages: Sequence[Mapping[str, Any]],
                          secrets: Mapping[tuple[str, str], Any]) -> tuple[Problem, ...]:
    """What a KubeStash restore executor (``--snapshot`` = ``spec.dataSource.snapshot``) would miss."""
    ns, name = _key(restore_session)
    where = f"{ns}/{name}"
    out: list[Problem] = []
    ds = _get(restore_session, "spec.dataSource") or {}
    for f in ("namespace", "repository", "snapshot"):
        if not ds.get(f):
            out.append(Problem("RestoreSession", where, f"spec.dataSource.{f}", "missing"))
    if ds.get("snapshot") == "latest":
        out.append(Problem("RestoreSession", where, "spec.dataSource.snapshot",
                           "latest: resolve it to a Snapshot name first, the executor never does"))
    enc = ds.get("encryptionSecret")
    out += _ref_problems("RestoreSession", where, "spec.dataSource.encryptionSecret", enc)
    keys = {k: set(v) for k, v in secrets.items()}
    out += _secret_problems(enc, keys)
    if (_get(restore_session, "status.components") or {}).get(component) is None:
        out.append(Problem("RestoreSession", where, f"status.components.{component}",
                           "not pre-created: the executor writes nothing into a nil map"))
    if snapshot is None:
        out.append(Problem("Snapshot", f"{ds.get('namespace')}/{ds.get('snapshot')}", "", "does not exist"))
        return tuple(out)
    sns, sname = _key(snapshot)
    comp = (_get(snapshot, "status.components") or {}).get(component) or {}
    ids = [(s.get("summary") or s).get("id") for s in comp.get("resticStats") or []]
    if not ids or not all(ids):
        out.append(Problem("Snapshot", f"{sns}/{sname}", f"status.components.{component}.resticStats",
                           "no restic snapshot id to restore"))
    repo_name = _get(snapshot, "spec.repository") or ""
    repos = {_key(r): r for r in repositories}
    out += _repository_problems(repos.get((sns, repo_name)), sns, repo_name, {_key(s): s for s in storages}, keys,
                                own_encryption=False)
    return tuple(out)
