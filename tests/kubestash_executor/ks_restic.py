"""restic as KubeStash's wrapper (``gomodules.xyz/restic``, vendored in kubestash/apimachinery
``pkg/restic``) runs it: one restic repository per component, its URL from the BackupStorage, the
password from the encryption Secret, JSON summaries turned into KubeStash's stats strings."""

from __future__ import annotations

import json
import os
import posixpath
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

DEFAULT_HOST = "host-0"  # restic.DefaultHost


class ResticError(Exception):
    pass


def format_bytes(c: int) -> str:
    """``pkg/restic/util.go`` formatBytes: ``1.134 MiB``, ``637.225 KiB``, ``12 B``."""
    b = float(c)
    for shift, unit in ((40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")):
        if c > 1 << shift:
            return f"{b / (1 << shift):.3f} {unit}"
    return f"{c} B"


def go_duration(seconds: float) -> str:
    """Go's ``time.Duration.String()``: ``9.223082787s``, ``1m5.5s``, ``523.4ms``."""
    ns = int(round(seconds * 1e9))
    if ns == 0:
        return "0s"
    if ns < 1_000_000_000:
        for unit, div in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if ns >= div:
                return f"{ns / div:.9f}".rstrip("0").rstrip(".") + unit
    h, rem = divmod(ns, 3600 * 10**9)
    m, rem = divmod(rem, 60 * 10**9)
    s = f"{rem / 1e9:.9f}".rstrip("0").rstrip(".") + "s"
    return (f"{h}h" if h else "") + (f"{m}m" if h or m else "") + s


@dataclass
class Backend:
    """One component's restic repository: ``RESTIC_REPOSITORY`` and the env the provider needs."""

    url: str
    env: dict[str, str] = field(default_factory=dict)


def backend_for(storage: dict[str, Any], directory: str, secret: dict[str, str]) -> Backend:
    """``setupEnvsForBackend``: the URL of ``directory`` inside the BackupStorage's backend."""
    spec = (storage.get("spec") or {}).get("storage") or {}
    provider = spec.get("provider")
    directory = directory.strip("/")
    if provider == "local":
        local = spec.get("local") or {}
        if not local.get("mountPath"):
            raise ResticError("local backend has no mountPath")
        return Backend(posixpath.join(local["mountPath"], directory))
    if provider == "s3":
        s3 = spec.get("s3") or {}
        env = {k: secret[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if k in secret}
        if s3.get("region"):
            env["AWS_DEFAULT_REGION"] = s3["region"]
        if "CA_CERT_DATA" in secret:
            env["CA_CERT_DATA"] = secret["CA_CERT_DATA"]
        endpoint = (s3.get("endpoint") or "s3.amazonaws.com").rstrip("/")
        return Backend(f"s3:{endpoint}/" + posixpath.join(s3.get("bucket", ""), s3.get("prefix", ""), directory), env)
    if provider == "gcs":
        gcs = spec.get("gcs") or {}
        env = {k: secret[k] for k in ("GOOGLE_PROJECT_ID", "GOOGLE_SERVICE_ACCOUNT_JSON_KEY") if k in secret}
        return Backend(f"gs:{gcs.get('bucket', '')}:/" + posixpath.join(gcs.get("prefix", ""), directory), env)
    if provider == "azure":
        az = spec.get("azure") or {}
        env = {"AZURE_ACCOUNT_NAME": az.get("storageAccount", "")}
        if "AZURE_ACCOUNT_KEY" in secret:
            env["AZURE_ACCOUNT_KEY"] = secret["AZURE_ACCOUNT_KEY"]
        return Backend(f"azure:{az.get('container', '')}:/" + posixpath.join(az.get("prefix", ""), directory), env)
    raise ResticError(f'unsupported backend provider "{provider}"')


class Restic:
    """restic for one backend; ``deadline`` (monotonic) is the task's one timeout budget."""

    def __init__(self, backend: Backend, password: str, scratch_dir: str, enable_cache: bool,
                 deadline: float | None = None) -> None:
        self.backend = backend
        self.scratch_dir = scratch_dir
        self.deadline = deadline
        tmp = os.path.join(scratch_dir, "tmp")
        os.makedirs(tmp, exist_ok=True)
        self.env = {**os.environ, **backend.env, "RESTIC_REPOSITORY": backend.url, "RESTIC_PASSWORD": password,
                    "TMPDIR": tmp, "RESTIC_PROGRESS_FPS": "0.1"}
        if "GOOGLE_SERVICE_ACCOUNT_JSON_KEY" in backend.env:
            key = os.path.join(scratch_dir, "gcs-sa.json")
            with open(key, "w") as f:
                f.write(backend.env["GOOGLE_SERVICE_ACCOUNT_JSON_KEY"])
            self.env["GOOGLE_APPLICATION_CREDENTIALS"] = key
        self.cache = (["--cache-dir", os.path.join(scratch_dir, "restic-cache"), "--cleanup-cache"]
                      if enable_cache else ["--no-cache"])
        if "CA_CERT_DATA" in backend.env:
            ca = os.path.join(scratch_dir, "ca.crt")
            with open(ca, "w") as f:
                f.write(backend.env["CA_CERT_DATA"])
            self.cache += ["--cacert", ca]

    def _timeout(self) -> float | None:
        if self.deadline is None:
            return None
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise ResticError("deadline exceeded")
        return left

    def run(self, args: list[str], *, stdin: Any = None, on_line: Callable[[dict], None] | None = None,
            what: str = "") -> tuple[str, str]:
        """Run ``restic ARGS``; return (stdout, stderr); a non-zero exit raises with restic's error."""
        timeout = self._timeout()
        proc = subprocess.Popen(["restic", *args, *self.cache], env=self.env, stdin=stdin or subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        err: list[str] = []
        t = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
        t.start()
        out: list[str] = []
        timer = threading.Timer(timeout, proc.kill) if timeout else None
        if timer:
            timer.start()
        try:
            for line in proc.stdout:  # type: ignore[union-attr]
                out.append(line)
                if on_line and line.startswith("{"):
                    try:
                        on_line(json.loads(line))
                    except ValueError:
                        pass
            rc = proc.wait()
        finally:
            if timer:
                timer.cancel()
        t.join()
        stderr = "".join(err)
        if rc != 0:
            if timeout and self.deadline is not None and time.monotonic() >= self.deadline:
                raise ResticError("deadline exceeded")
            raise ResticError(_error_text(what or f"restic {args[0]}", stderr))
        return "".join(out), stderr

    def ensure_repository(self) -> None:
        """``restic snapshots --no-lock``, and ``restic init`` when that finds no repository."""
        try:
            self.run(["snapshots", "--no-lock", "--json"], what="restic snapshots")
        except ResticError as e:
            text = str(e)
            if "Is there a repository at the following location?" in text or "unable to open config file" in text:
                self.run(["init"], what="restic init")
            else:
                raise

    def backup_paths(self, paths: Iterable[str], excludes: list[str], host: str,
                     on_status: Callable[[dict], None]) -> list[dict[str, Any]]:
        stats = []
        for path in paths:
            start = utc_now()
            args = ["backup", path, "--json", "--host", host]
            for ex in excludes:
                args += ["--exclude", ex]
            out, _ = self.run(args, on_line=_status_filter(on_status), what="restic backup")
            stats.append(self.full_id(summary_stats(out, path, start, utc_now())))
        return stats

    def full_id(self, stat: dict[str, Any]) -> dict[str, Any]:
        """Newer restic prints the full snapshot id in its summary, Debian's 0.14 a short one: record the full one."""
        sid = stat["summary"]["id"]
        if sid and len(sid) < 64:
            out, _ = self.run(["snapshots", "--json", "--no-lock", sid], what="restic snapshots")
            found = json.loads(out or "[]")
            if found:
                stat["summary"]["id"] = found[0]["id"]
        return stat

    def verify(self) -> tuple[bool, str]:
        """``VerifyRepositoryIntegrity``: ``restic check`` (integrity) and ``restic stats --mode raw-data`` (size)."""
        out, err = self.run(["check", "--no-lock"], what="restic check")
        integrity = any(line.strip() == "no errors were found" for line in (out + err).splitlines())
        out, _ = self.run(["stats", "--mode", "raw-data", "--json", "--no-lock"], what="restic stats")
        size = format_bytes(int(json.loads(out).get("total_size") or 0))
        return integrity, size


def _status_filter(on_status: Callable[[dict], None]) -> Callable[[dict], None]:
    def f(msg: dict) -> None:
        if msg.get("message_type") == "status":
            on_status(msg)
    return f


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def summary_stats(out: str, host_path: str, start: str, end: str) -> dict[str, Any]:
    """``extractBackupInfo``: restic's ``summary`` line as ``resticStats[].summary``."""
    for line in out.splitlines():
        if line.startswith("{"):
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("message_type") == "summary":
                return {"summary": {"id": msg.get("snapshot_id", ""), "hostPath": host_path,
                                    "size": format_bytes(int(msg.get("total_bytes_processed") or 0)),
                                    "uploaded": format_bytes(int(msg.get("data_added") or 0)),
                                    "startTime": start, "endTime": end}}
    raise ResticError("restic backup printed no summary")


def progress_of(msg: dict, backup: bool = True) -> dict[str, Any]:
    """A restic ``status`` line as KubeStash's ``progress`` (``pkg/progress``)."""
    elapsed = int(msg.get("seconds_elapsed") or 0)
    done = int(msg.get("bytes_done") or msg.get("bytes_restored") or 0)
    out = {"secondsElapsed": elapsed, "percentDone": f"{float(msg.get('percent_done') or 0) * 100:.2f}%",
           "totalFiles": int(msg.get("total_files") or 0),
           "filesDone": int(msg.get("files_done") or msg.get("files_restored") or 0),
           "total": format_bytes(int(msg.get("total_bytes") or 0)),
           "speed": format_bytes(done // elapsed if elapsed else done) + "/s"}
    out["backupDone" if backup else "restoreDone"] = format_bytes(done)
    return out


def _error_text(what: str, stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    fatal = [ln for ln in lines if ln.startswith("Fatal:")]
    detail = (fatal or lines[-3:] or ["no output"])
    return f"{what} failed: " + "; ".join(detail)[:900]
