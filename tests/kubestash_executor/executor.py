"""A test stand-in for KubeStash's executor images that speaks their contract
(../shared/kubestash/EXECUTOR-CONTRACT.md): the same command line, the same object walk through the
API as the Pod's ServiceAccount, real restic into the repository at KubeStash's layout, and the same
status writes. The node agent runs it for the upstream images (``localkube/images.py``), because no
image can be pulled here.

    executor.py MODE backup  --namespace=NS --backupsession=BS --enable-cache=true --scratch-dir=DIR [task flags]
    executor.py MODE restore --namespace=NS --restoresession=RS --snapshot=SNAP ...

MODE is the image it stands for: ``pvc``, ``workload`` (kubestash/pvc, kubestash/workload: component
``dump``, files of ``--paths``), ``postgres`` (kubedb/postgres-restic-plugin: ``dump``, pg_dumpall or
pg_dump piped into ``restic backup --stdin --stdin-filename dumpfile.sql``), ``kubedbmanifest`` and
``manifest`` (component ``manifest``: the target's objects as files).

Exit codes, as upstream: once the Snapshot (RestoreSession) it reports to is known, a failure is
written into the component (``phase: Failed``, ``error``) and the process **exits 0**. A failure
before that (bad flags, no BackupSession, ``status.snapshots`` empty, no RestoreSession or Snapshot)
exits 1 with the error on stderr and writes nothing. Secret values are never printed.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ks_api import ApiError, Kube, path_of  # noqa: E402
from ks_restic import (  # noqa: E402
    DEFAULT_HOST, Backend, Restic, ResticError, backend_for, format_bytes, go_duration, progress_of, summary_stats,
    utc_now,
)

CORE, STORAGE, APPCATALOG = "core.kubestash.com", "storage.kubestash.com", "appcatalog.appscode.com"
V1A1 = "v1alpha1"
PG_DUMP_FILE = "dumpfile.sql"
PROGRESS_EVERY = 10.0  # seconds between progress patches, as pkg/progress

#: component each executor writes (apimachinery apis/constant.go Component*)
COMPONENT = {"pvc": "dump", "workload": "dump", "postgres": "dump", "kubedbmanifest": "manifest",
             "manifest": "manifest"}

_COMMON = {"namespace": ("str", "default"), "enable-cache": ("bool", False), "scratch-dir": ("str", "/tmp"),
           "kubeconfig": ("str", ""), "master": ("str", "")}
_BACKUP = {**_COMMON, "backupsession": ("str", "")}
_RESTORE = {**_COMMON, "restoresession": ("str", ""), "snapshot": ("str", "")}
_PG = {"wait-timeout": ("int", 300), "pg-args": ("str", ""), "user": ("str", "")}
#: the flags each image's ``backup``/``restore`` command takes (from the catalog's Functions)
FLAGS: dict[str, dict[str, dict[str, tuple[str, Any]]]] = {
    "pvc": {"backup": {**_BACKUP, "paths": ("slice", []), "exclude": ("slice", [])}, "restore": dict(_RESTORE)},
    "workload": {"backup": {**_BACKUP, "paths": ("slice", []), "exclude": ("slice", [])},
                 "restore": {**_RESTORE, "exclude": ("slice", []), "include": ("slice", [])}},
    "postgres": {"backup": {**_BACKUP, **_PG, "backup-cmd": ("str", "")}, "restore": {**_RESTORE, **_PG}},
    "kubedbmanifest": {"backup": dict(_BACKUP), "restore": dict(_RESTORE)},
    "manifest": {"backup": {**_BACKUP, "include-rbac-resources": ("bool", False)},
                 "restore": {**_RESTORE, "include-rbac-resources": ("bool", False),
                             "override-resources": ("bool", False)}},
}


class FlagError(Exception):
    pass


class Fatal(Exception):
    """A failure before any component is known: exit 1, nothing written."""


class Failure(Exception):
    """A failure of the task: written into the component, exit 0."""


_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def parse_flags(spec: dict[str, tuple[str, Any]], argv: list[str]) -> dict[str, Any]:
    """pflag's rules: ``--name=value`` or ``--name value``; a bare bool flag is true; a bool parses as
    strconv.ParseBool (``--enable-cache=`` is an error); a slice is comma separated (empty: none)."""
    out = {name: (list(d) if isinstance(d, list) else d) for name, (_, d) in spec.items()}
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("--"):
            raise FlagError(f'unknown command "{arg}"')
        name, eq, value = arg[2:].partition("=")
        if name not in spec:
            raise FlagError(f"unknown flag: --{name}")
        kind = spec[name][0]
        if not eq:
            if kind == "bool":
                value = "true"
            elif i < len(argv):
                value = argv[i]
                i += 1
            else:
                raise FlagError(f"flag needs an argument: --{name}")
        if kind == "bool":
            if value not in _TRUE | _FALSE:
                raise FlagError(f'invalid argument "{value}" for "--{name}" flag: strconv.ParseBool: '
                                f'parsing "{value}": invalid syntax')
            out[name] = value in _TRUE
        elif kind == "int":
            try:
                out[name] = int(value)
            except ValueError:
                raise FlagError(f'invalid argument "{value}" for "--{name}" flag: strconv.ParseInt: '
                                f'parsing "{value}": invalid syntax') from None
        elif kind == "slice":
            out[name] = [v for v in value.split(",")] if value else []
        else:
            out[name] = value
    return out


def log(msg: str) -> None:
    print(f"I{time.strftime('%m%d %H:%M:%S', time.gmtime())} {msg}", flush=True)


def _deadline(timeout: Any, deadline: str | None) -> float | None:
    """``GetRemainingTimeoutDuration``: None without a timeout; past the deadline: deadline exceeded."""
    if not timeout or not deadline:
        return None
    when = datetime.fromisoformat(deadline.replace("Z", "+00:00"))
    left = (when - datetime.now(timezone.utc)).total_seconds()
    if left <= 0:
        raise Failure("deadline exceeded")
    return time.monotonic() + left


def _secret_data(obj: dict[str, Any]) -> dict[str, str]:
    import base64

    return {k: base64.b64decode(v).decode(errors="replace") for k, v in (obj.get("data") or {}).items()}


@dataclass
class Target:
    """One Snapshot the executor reports to, and the restic repository of its component."""

    snapshot: str
    namespace: str
    component_path: str = ""
    restic: Restic | None = None
    error: str = ""
    stats: list[dict[str, Any]] = field(default_factory=list)


class Executor:
    def __init__(self, kube: Kube, mode: str, command: str, opts: dict[str, Any]) -> None:
        self.kube, self.mode, self.command, self.opts = kube, mode, command, opts
        self.ns = opts["namespace"]
        self.component = COMPONENT[mode]
        self.scratch = opts["scratch-dir"]

    # -- reading --------------------------------------------------------------------------------
    def get(self, group: str, plural: str, namespace: str, name: str, what: str) -> dict[str, Any]:
        try:
            return self.kube.get(path_of(group, V1A1 if group else "v1", plural, namespace, name))
        except ApiError as e:
            raise Failure(f'failed to get {what} "{namespace}/{name}": {e.message}') from None

    def repository_backend(self, repo_ns: str, repo_name: str, component_path: str,
                           encryption: dict[str, Any] | None, deadline: float | None) -> Restic:
        """Repository → BackupStorage → storage Secret, and the encryption Secret (``RESTIC_PASSWORD``)."""
        repo = self.get(STORAGE, "repositories", repo_ns, repo_name, "Repository")
        spec = repo.get("spec") or {}
        ref = spec.get("storageRef") or {}
        storage = self.get(STORAGE, "backupstorages", ref.get("namespace", ""), ref.get("name", ""), "BackupStorage")
        enc = encryption if encryption is not None else (spec.get("encryptionSecret") or {})
        if not enc.get("name"):  # restores read the RestoreSession's, never the Repository's
            raise Failure("RestoreSession has no spec.dataSource.encryptionSecret" if encryption is not None
                          else f'Repository "{repo_ns}/{repo_name}" has no encryptionSecret')
        password = _secret_data(self.get("", "secrets", enc.get("namespace", ""), enc["name"], "Secret")) \
            .get("RESTIC_PASSWORD")
        if not password:
            raise Failure(f'Secret "{enc.get("namespace", "")}/{enc["name"]}" has no key RESTIC_PASSWORD')
        backend_spec = (storage.get("spec") or {}).get("storage") or {}
        provider = backend_spec.get("provider") or ""
        secret_name = (backend_spec.get(provider) or {}).get("secretName")
        secret = _secret_data(self.get("", "secrets", ref.get("namespace", ""), secret_name, "Secret")) \
            if secret_name else {}
        directory = os.path.join(spec.get("path") or "", component_path)
        try:
            backend: Backend = backend_for(storage, directory, secret)
        except ResticError as e:
            raise Failure(str(e)) from None
        return Restic(backend, password, self.scratch, self.opts["enable-cache"], deadline)

    def app_target(self, target: dict[str, Any], default_ns: str) -> dict[str, Any]:
        """The object a database task is about: its AppBinding, waiting on KubeDB's DatabaseReady."""
        ns = target.get("namespace") or default_ns
        group, kind, name = target.get("apiGroup", ""), target.get("kind", ""), target.get("name", "")
        if kind == "AppBinding":
            return self.get(APPCATALOG, "appbindings", ns, name, "AppBinding")
        if group == "kubedb.com":
            db = self.get("kubedb.com", kind.lower() + "es" if kind.endswith("s") else kind.lower() + "s", ns, name, kind)
            ready = [c for c in (db.get("status") or {}).get("conditions") or [] if c.get("type") == "DatabaseReady"]
            if not ready or ready[0].get("status") != "True":
                raise Failure(f'{kind} "{ns}/{name}" is not ready (condition DatabaseReady is not True)')
            return self.get(APPCATALOG, "appbindings", ns, name, "AppBinding")
        raise Failure(f"unsupported target {kind}.{group} {ns}/{name}: expected an AppBinding or a kubedb.com database")

    # -- writing --------------------------------------------------------------------------------
    def patch_snapshot(self, t: Target, body: dict[str, Any]) -> None:
        try:
            self.kube.merge_patch(path_of(STORAGE, V1A1, "snapshots", t.namespace, t.snapshot, "status"),
                                  {"status": {"components": {self.component: body}}})
        except ApiError as e:
            log(f'failed to update Snapshot "{t.namespace}/{t.snapshot}" status: {e.message}')

    # -- backup ---------------------------------------------------------------------------------
    def backup(self) -> int:
        name = self.opts["backupsession"]
        try:
            bs = self.kube.get(path_of(CORE, V1A1, "backupsessions", self.ns, name))
        except ApiError as e:
            raise Fatal(f'failed to get BackupSession "{self.ns}/{name}": {e.message}') from None
        invoker = (bs.get("spec") or {}).get("invoker") or {}
        try:
            bc = self.kube.get(path_of(CORE, V1A1, "backupconfigurations", self.ns, invoker.get("name", "")))
        except ApiError as e:
            raise Fatal(f'failed to get BackupConfiguration "{self.ns}/{invoker.get("name", "")}": {e.message}') from None
        snaps = [s.get("name") for s in (bs.get("status") or {}).get("snapshots") or [] if s.get("name")]
        if not snaps:
            raise Fatal(f'no snapshot found for backupsession "{self.ns}/{name}"')
        targets = [Target(s, self.ns) for s in snaps]
        started = time.monotonic()
        for t in targets:
            self.patch_snapshot(t, {"phase": "Running"})
        try:
            deadline = _deadline((bs.get("spec") or {}).get("backupTimeout"), (bs.get("status") or {}).get("backupDeadline"))
        except Failure as e:
            deadline = None
            for t in targets:
                t.error = str(e)
        for t in targets:
            if t.error:
                continue
            try:
                snap = self.get(STORAGE, "snapshots", t.namespace, t.snapshot, "Snapshot")
                spec = snap.get("spec") or {}
                t.component_path = os.path.join("repository", spec.get("version") or "v1", spec.get("session") or "",
                                                self.component)
                t.restic = self.repository_backend(t.namespace, spec.get("repository", ""), t.component_path, None, deadline)
                t.restic.ensure_repository()
            except (Failure, ResticError) as e:
                t.error = str(e)
        live = [t for t in targets if not t.error]
        if live:
            try:
                self.do_backup(bc, live)
            except (Failure, ResticError) as e:
                for t in live:
                    t.error = t.error or str(e)
        for t in targets:
            body: dict[str, Any] = {"duration": go_duration(time.monotonic() - started), "driver": "Restic",
                                    "path": t.component_path or None}
            if not t.error and t.restic is not None:
                try:
                    integrity, size = t.restic.verify()
                    body.update(integrity=integrity, size=size)
                except ResticError as e:
                    t.error = str(e)
            if t.error:
                body.update(phase="Failed", error=t.error)
                log(f'backup of component "{self.component}" into Snapshot "{t.snapshot}" failed: {t.error}')
            else:
                body.update(phase="Succeeded", resticStats=t.stats)
                log(f'backup of component "{self.component}" into Snapshot "{t.snapshot}" succeeded')
            self.patch_snapshot(t, {k: v for k, v in body.items() if v is not None})
        return 0

    def _progress(self, t: Target) -> Callable[[dict], None]:
        last = [0.0]

        def on_status(msg: dict) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_EVERY:
                last[0] = now
                self.patch_snapshot(t, {"driver": "Restic", "resticStats": [{"progress": progress_of(msg)}]})
        return on_status

    def do_backup(self, bc: dict[str, Any], targets: list[Target]) -> None:
        if self.mode in ("pvc", "workload"):
            paths = self.opts["paths"]
            if not paths:
                raise Failure("no path given to backup: --paths is empty")
            for t in targets:
                try:
                    t.stats = t.restic.backup_paths(paths, self.opts["exclude"], DEFAULT_HOST, self._progress(t))  # type: ignore[union-attr]
                except ResticError as e:
                    t.error = str(e)
        elif self.mode == "postgres":
            conn = self.pg_connection((bc.get("spec") or {}).get("target") or {})
            cmd = self.opts["backup-cmd"]
            if cmd not in ("pg_dump", "pg_dumpall"):
                raise Failure(f"invalid pg backup command: expected pg_dump or pg_dumpall, but instead got {cmd}")
            argv = [cmd, "-U", conn.user, "-h", conn.host, "-p", str(conn.port), *shlex.split(self.opts["pg-args"])]
            self.pg_wait(conn)
            self.pipe_backup(argv, conn.env(), targets, PG_DUMP_FILE)
        else:
            directory = os.path.join(self.scratch, "manifest")
            os.makedirs(directory, exist_ok=True)
            for obj in self.manifests((bc.get("spec") or {}).get("target") or {}):
                fname = f"{obj['kind']}-{obj['metadata']['name']}.yaml".lower()
                with open(os.path.join(directory, fname), "w") as f:
                    json.dump(obj, f, indent=2, sort_keys=True)  # JSON is YAML
            for t in targets:
                try:
                    t.stats = t.restic.backup_paths([directory], [], DEFAULT_HOST, self._progress(t))  # type: ignore[union-attr]
                except ResticError as e:
                    t.error = str(e)

    def pipe_backup(self, argv: list[str], env: dict[str, str], targets: list[Target], filename: str) -> None:
        """``argv``'s stdout into one ``restic backup --stdin`` per repository (tee'd); a failed dump
        interrupts restic before it sees the end of its input, so no partial snapshot is committed."""
        start = utc_now()
        prod = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **env})
        cons = []
        for t in targets:
            r = t.restic
            assert r is not None
            timeout = r._timeout()
            p = subprocess.Popen(["restic", "backup", "--stdin", "--stdin-filename", filename, "--json", "--host",
                                  DEFAULT_HOST, *r.cache], env=r.env, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            cons.append((t, p, timeout))
        outs: dict[int, list[bytes]] = {}
        threads = []
        for i, (_, p, _) in enumerate(cons):
            for stream, key in ((p.stdout, 2 * i), (p.stderr, 2 * i + 1)):
                th = threading.Thread(target=lambda s=stream, k=key: outs.__setitem__(k, [s.read()]), daemon=True)
                th.start()
                threads.append(th)
        perr: list[bytes] = []
        pt = threading.Thread(target=lambda: perr.append(prod.stderr.read()), daemon=True)  # type: ignore[union-attr]
        pt.start()
        broken: set[int] = set()
        while True:
            chunk = prod.stdout.read(1 << 16)  # type: ignore[union-attr]
            if not chunk:
                break
            for i, (_, p, _) in enumerate(cons):
                if i in broken:
                    continue
                try:
                    p.stdin.write(chunk)  # type: ignore[union-attr]
                except BrokenPipeError:
                    broken.add(i)
        rc = prod.wait()
        pt.join()
        if rc != 0:
            for _, p, _ in cons:
                p.kill()
                p.wait()
            err = [ln for ln in b"".join(perr).decode(errors="replace").splitlines() if ln.strip()]
            raise Failure(f"{argv[0]} exited with code {rc}: " + " ".join(err[-2:])[:900])
        for _, p, _ in cons:
            try:
                p.stdin.close()  # type: ignore[union-attr]
            except BrokenPipeError:
                pass
        for i, (t, p, timeout) in enumerate(cons):
            try:
                prc = p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                t.error = "deadline exceeded"
                continue
            for th in threads:
                th.join()
            out = b"".join(outs.get(2 * i, [])).decode(errors="replace")
            err = b"".join(outs.get(2 * i + 1, [])).decode(errors="replace")
            if prc != 0:
                from ks_restic import _error_text

                t.error = _error_text("restic backup", err)
                continue
            try:
                t.stats = [r.full_id(summary_stats(out, filename, start, utc_now()))
                           for r in [t.restic] if r is not None]
            except ResticError as e:
                t.error = str(e)

    # -- PostgreSQL (kubedb/postgres-restic-plugin) ---------------------------------------------
    @dataclass
    class PgConn:
        host: str
        port: int
        user: str
        password: str

        def env(self) -> dict[str, str]:
            return {"PGPASSWORD": self.password}

    def pg_connection(self, target: dict[str, Any]) -> "Executor.PgConn":
        """AppBinding (``clientConfig``) + its Secret (``username``/``password``), as the plugin reads them."""
        ab = self.app_target(target, self.ns)
        ab_ns = ab["metadata"]["namespace"]
        spec = ab.get("spec") or {}
        secret_name = (spec.get("secret") or {}).get("name")
        if not secret_name:
            raise Failure(f'AppBinding "{ab_ns}/{ab["metadata"]["name"]}" has no spec.secret')
        data = _secret_data(self.get("", "secrets", ab_ns, secret_name, "Secret"))
        user = self.opts.get("user") or data.get("username") or data.get("POSTGRES_USER") or "postgres"
        password = data.get("password") or data.get("POSTGRES_PASSWORD")
        if password is None:
            raise Failure(f'Secret "{ab_ns}/{secret_name}" has no key password')
        cc = spec.get("clientConfig") or {}
        if cc.get("url"):  # kmodules AppBinding.Hostname()/Port(): the URL wins over the Service
            u = urllib.parse.urlsplit(cc["url"])
            host, port = u.hostname or "", u.port or 5432
        else:
            svc = cc.get("service") or {}
            host, port = f"{svc.get('name', '')}.{ab_ns}.svc", int(svc.get("port") or 5432)
        return self.PgConn(host, port, user, password)

    def pg_wait(self, conn: "Executor.PgConn") -> None:
        """waitForDBReady: until the server accepts connections, at most ``--wait-timeout`` seconds."""
        end = time.monotonic() + max(int(self.opts["wait-timeout"]), 1)
        while True:
            try:
                with socket.create_connection((conn.host, conn.port), timeout=5):
                    return
            except OSError as e:
                if time.monotonic() >= end:
                    raise Failure(f"database {conn.host}:{conn.port} is not ready after "
                                  f"{self.opts['wait-timeout']}s: {e.strerror or e}") from None
            time.sleep(1)

    # -- manifests (kubedbmanifest, manifest) ---------------------------------------------------
    def manifests(self, target: dict[str, Any]) -> list[dict[str, Any]]:
        """The target and what it needs to come back: a database's (or AppBinding's) auth Secret and AppBinding."""
        objs = []
        ns = target.get("namespace") or self.ns
        if target.get("kind") == "AppBinding" or target.get("apiGroup") == "kubedb.com":
            ab = self.app_target(target, self.ns)
            if target.get("apiGroup") == "kubedb.com":
                kind = target["kind"]
                objs.append(self.get("kubedb.com", kind.lower() + ("es" if kind.endswith("s") else "s"), ns,
                                     target["name"], kind))
            objs.append(ab)
            secret_name = ((ab.get("spec") or {}).get("secret") or {}).get("name")
            if secret_name:
                objs.append(self.get("", "secrets", ns, secret_name, "Secret"))
        else:
            plural = {"Deployment": "deployments", "StatefulSet": "statefulsets", "DaemonSet": "daemonsets",
                      "PersistentVolumeClaim": "persistentvolumeclaims"}.get(target.get("kind", ""))
            if not plural:
                raise Failure(f"unsupported target kind {target.get('kind')!r}")
            group = target.get("apiGroup", "")
            objs.append(self.kube_get_versioned(group, plural, ns, target.get("name", "")))
        return [_sanitize(o) for o in objs]

    def kube_get_versioned(self, group: str, plural: str, ns: str, name: str) -> dict[str, Any]:
        try:
            return self.kube.get(path_of(group, "v1", plural, ns, name))
        except ApiError as e:
            raise Failure(f'failed to get {plural} "{ns}/{name}": {e.message}') from None

    # -- restore --------------------------------------------------------------------------------
    def patch_restore(self, rs_name: str, enabled: bool, body: dict[str, Any]) -> None:
        if not enabled:
            return
        try:
            self.kube.merge_patch(path_of(CORE, V1A1, "restoresessions", self.ns, rs_name, "status"),
                                  {"status": {"components": {self.component: body}}})
        except ApiError as e:
            log(f'failed to update RestoreSession "{self.ns}/{rs_name}" status: {e.message}')

    def restore(self) -> int:
        name = self.opts["restoresession"]
        try:
            rs = self.kube.get(path_of(CORE, V1A1, "restoresessions", self.ns, name))
        except ApiError as e:
            raise Fatal(f'failed to get RestoreSession "{self.ns}/{name}": {e.message}') from None
        ds = (rs.get("spec") or {}).get("dataSource") or {}
        snap_ns = ds.get("namespace") or self.ns
        try:
            snap = self.kube.get(path_of(STORAGE, V1A1, "snapshots", snap_ns, self.opts["snapshot"]))
        except ApiError as e:
            raise Fatal(f'failed to get Snapshot "{snap_ns}/{self.opts["snapshot"]}": {e.message}') from None
        # Upstream writes only into an existing map: nil status.components ⇒ nothing is written.
        enabled = (rs.get("status") or {}).get("components") is not None
        if not enabled:
            log(f'RestoreSession "{self.ns}/{name}" has no status.components: its status is not updated')
        started = time.monotonic()
        self.patch_restore(name, enabled, {"phase": "Running"})
        try:
            deadline = _deadline((rs.get("spec") or {}).get("restoreTimeout"),
                                 (rs.get("status") or {}).get("restoreDeadline"))
            comp = ((snap.get("status") or {}).get("components") or {}).get(self.component)
            if not comp:
                raise Failure(f'Snapshot "{snap_ns}/{self.opts["snapshot"]}" has no component "{self.component}"')
            spec = snap.get("spec") or {}
            path = comp.get("path") or os.path.join("repository", spec.get("version") or "v1", spec.get("session") or "",
                                                   self.component)
            restic = self.repository_backend(snap_ns, spec.get("repository", ""), path, ds.get("encryptionSecret") or {},
                                             deadline)
            ids = [(s.get("summary") or s) for s in comp.get("resticStats") or []]
            if not ids or not all(i.get("id") for i in ids):
                raise Failure(f'component "{self.component}" of Snapshot "{snap_ns}/{self.opts["snapshot"]}" has no restic snapshot id')
            target = (rs.get("spec") or {}).get("target") or spec.get("appRef") or {}
            self.do_restore(restic, ids, target)
        except (Failure, ResticError) as e:
            log(f'restore of component "{self.component}" failed: {e}')
            self.patch_restore(name, enabled, {"phase": "Failed", "error": str(e),
                                               "duration": go_duration(time.monotonic() - started)})
            return 0
        log(f'restore of component "{self.component}" succeeded')
        self.patch_restore(name, enabled, {"phase": "Succeeded", "duration": go_duration(time.monotonic() - started)})
        return 0

    def do_restore(self, restic: Restic, ids: list[dict[str, Any]], target: dict[str, Any]) -> None:
        if self.mode in ("pvc", "workload"):
            for s in ids:
                args = ["restore", s["id"], "--target", "/"]
                for inc in self.opts.get("include") or []:
                    args += ["--include", inc]
                for ex in self.opts.get("exclude") or []:
                    args += ["--exclude", ex]
                restic.run(args, what="restic restore")
        elif self.mode == "postgres":
            conn = self.pg_connection(target)
            self.pg_wait(conn)
            dump = subprocess.Popen(["restic", "dump", ids[0]["id"], "/" + PG_DUMP_FILE, *restic.cache], env=restic.env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            psql = subprocess.Popen(["psql", "-U", conn.user, "-h", conn.host, "-p", str(conn.port),
                                     *shlex.split(self.opts["pg-args"])], stdin=dump.stdout,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    env={**os.environ, **conn.env()})
            dump.stdout.close()  # type: ignore[union-attr]
            perr = psql.stderr.read().decode(errors="replace")  # type: ignore[union-attr]
            prc = psql.wait()
            derr = dump.stderr.read().decode(errors="replace")  # type: ignore[union-attr]
            drc = dump.wait()
            if drc != 0:
                from ks_restic import _error_text

                raise Failure(_error_text("restic dump", derr))
            if prc != 0:
                lines = [ln for ln in perr.splitlines() if ln.strip()]
                raise Failure(f"psql exited with code {prc}: " + " ".join(lines[-2:])[:900])
        else:
            into = os.path.join(self.scratch, "restore")
            os.makedirs(into, exist_ok=True)
            for s in ids:
                restic.run(["restore", s["id"], "--target", into], what="restic restore")
            src = os.path.join(into, (ids[0].get("hostPath") or "").lstrip("/"))
            for fname in sorted(os.listdir(src)):
                with open(os.path.join(src, fname)) as f:
                    obj = json.load(f)
                self.apply(obj)

    def apply(self, obj: dict[str, Any]) -> None:
        """Create the object unless it exists (``--override-resources`` patches it instead)."""
        api = obj["apiVersion"]
        group, _, version = api.rpartition("/")
        kind = obj["kind"]
        plural = {"Secret": "secrets", "AppBinding": "appbindings", "Deployment": "deployments",
                  "StatefulSet": "statefulsets", "DaemonSet": "daemonsets",
                  "PersistentVolumeClaim": "persistentvolumeclaims"}.get(kind) or \
            kind.lower() + ("es" if kind.endswith("s") else "s")
        ns = obj["metadata"].get("namespace") or self.ns
        obj["metadata"]["namespace"] = ns
        base = ("/api/" + version) if not group else f"/apis/{group}/{version}"
        coll = f"{base}/namespaces/{ns}/{plural}"
        try:
            self.kube.create(coll, obj)
        except ApiError as e:
            if e.status != 409:
                raise Failure(f'failed to create {kind} "{ns}/{obj["metadata"]["name"]}": {e.message}') from None
            if self.opts.get("override-resources"):
                self.kube.merge_patch(f"{coll}/{obj['metadata']['name']}", obj)


def _sanitize(obj: dict[str, Any]) -> dict[str, Any]:
    """kubedump's sanitizer: drop what the apiserver owns."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items()
            if k not in ("uid", "resourceVersion", "managedFields", "creationTimestamp", "generation",
                         "selfLink", "ownerReferences", "finalizers")}
    out = {k: v for k, v in obj.items() if k != "status"}
    out["metadata"] = meta
    return out


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in FLAGS or argv[1] not in ("backup", "restore"):
        print(f"Error: usage: executor.py {{{'|'.join(FLAGS)}}} {{backup|restore}} [flags]", file=sys.stderr)
        return 1
    mode, command = argv[0], argv[1]
    try:
        opts = parse_flags(FLAGS[mode][command], argv[2:])
    except FlagError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    try:
        kube = Kube.connect(opts["kubeconfig"], opts["master"])
        ex = Executor(kube, mode, command, opts)
        return ex.backup() if command == "backup" else ex.restore()
    except (Fatal, ApiError) as e:
        print(f"F{time.strftime('%m%d %H:%M:%S', time.gmtime())} {e}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
