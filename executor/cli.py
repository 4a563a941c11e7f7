"""``stashflow-executor backup|restore [options] -- TOOL ARGS...``

backup:  TOOL's stdout → ``restic backup --stdin --stdin-filename FILENAME --json``
restore: ``restic dump SNAPSHOT /FILENAME`` → TOOL's stdin (or ``--to-file PATH``)

Every value is its own argument: the executor never runs a shell, and ``--extra-args`` (a
Function's free-form ``args`` parameter) is split into arguments the way a shell would split
words, without expanding anything. Secrets come from files (``--env-from-file NAME=PATH``, e.g.
a mounted Secret) into the tool's environment only; they are never arguments (``ps`` shows
those). restic gets the repository's own environment (``RESTIC_REPOSITORY``, ``RESTIC_PASSWORD``),
which the tool does not.

Exit 0 and a ``{"components": ...}`` termination message on success; otherwise exit 1 (2 for a
usage error) with the failing tool's own error line on stderr and in the termination message.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from typing import Any, Sequence

from . import manifest_cli, report, workload_cli
from .pipeline import Command, Ended, Pipeline

PROG = "stashflow-executor"
# What only restic may see: the repository's password and the storage provider's credentials.
RESTIC_ONLY = re.compile(r"^(RESTIC_|AWS_|AZURE_|GOOGLE_|B2_|OS_|ST_|RCLONE_)")
_ERROR_WORDS = re.compile(r"error|fatal|fail|denied|cannot|can't|could not|unable|refused|no such|not found|"
                          r"does not exist|unknown", re.I)
_SQL_ERROR = re.compile(r"\bERROR:")


class UsageError(Exception):
    """Bad options: the Function (or its parameters) is wrong, not the data."""


def error_line(tail: Sequence[str]) -> str:
    """The line that says what went wrong: the last that reads like an error, else the last one."""
    for line in reversed(tail):
        if _ERROR_WORDS.search(line):
            return line.strip()
    return tail[-1].strip() if tail else ""


class _Parser(argparse.ArgumentParser):
    """Bad options become a ``UsageError``: one line, on stderr and the termination message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see {self.prog} --help)")


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = top.add_subparsers(dest="mode", required=True)
    for mode in ("backup", "restore"):
        p = sub.add_parser(mode)
        p.add_argument("--component", default=os.environ.get("COMPONENT_NAME") or "dump",
                       help="Snapshot component reported (default $COMPONENT_NAME, else dump)")
        p.add_argument("--filename", required=True, help="the file's name inside the restic snapshot")
        p.add_argument("--cache-dir", help="restic's cache directory")
        p.add_argument("--enable-cache", default="true", help="false: restic runs with --no-cache")
        p.add_argument("--env-from-file", action="append", default=[], metavar="NAME=PATH",
                       help="set NAME in the tool's environment to the content of PATH (a Secret's key)")
        p.add_argument("--extra-args", default="", help="more arguments for the tool, split into words")
        p.add_argument("--termination-log", help=f"where to write the result (default {report.TERMINATION_LOG} "
                                                 "when it exists)")
        if mode == "backup":
            p.add_argument("--tag", action="append", default=[], help="restic snapshot tag (repeatable)")
            p.add_argument("--restic-host", help="host name recorded in the restic snapshot")
            p.add_argument("--allow-tool", action="append", default=[], metavar="NAME",
                           help="the tool must be one of these (repeatable)")
            p.add_argument("--mysql-databases", metavar="WORDS",
                           help="mysqldump/mariadb-dump: --databases WORDS..., or when empty --all-databases "
                                "--ignore-database=mysql (the system database's users go portably: --system=users)")
        else:
            p.add_argument("--snapshot", default="latest", help="restic snapshot to read (default latest)")
            p.add_argument("--to-file", help="write the restored file here instead of into a tool")
        p.add_argument("tool", nargs=argparse.REMAINDER, help="-- TOOL ARGS...")
    manifest_cli.add_parsers(sub)
    workload_cli.add_parsers(sub)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    try:
        opts = parser().parse_args(argv)
    except UsageError as exc:
        given = list(sys.argv[1:] if argv is None else argv)
        log = next((a.split("=", 1)[1] for a in given if a.startswith("--termination-log=")), None)
        _fail(argparse.Namespace(termination_log=log), f"{PROG}: {exc}")
        return 2
    if opts.mode.startswith("manifest-"):
        return manifest_cli.main(opts)
    if opts.mode.startswith("workload-"):
        return workload_cli.main(opts)
    started = time.monotonic()
    try:
        tool = _tool_argv(opts)
        tool_env = _tool_env(opts.env_from_file)
        if opts.mode == "backup":
            return backup(opts, tool, tool_env, started)
        return restore(opts, tool, tool_env, started)
    except UsageError as exc:
        _fail(opts, f"{PROG}: {exc}")
        return 2


# ------------------------------------------------------------------------------------- setup


def _tool_argv(opts: argparse.Namespace) -> list[str]:
    tool = list(opts.tool)
    if tool and tool[0] == "--":
        tool = tool[1:]
    try:
        tool += shlex.split(opts.extra_args)
        if getattr(opts, "mysql_databases", None) is not None:
            names = shlex.split(opts.mysql_databases)
            tool += ["--databases", *names] if names else ["--all-databases", "--ignore-database=mysql"]
    except ValueError as exc:
        raise UsageError(f"{exc}: the arguments cannot be split into words (unbalanced quotes?)") from None
    if opts.mode == "restore" and opts.to_file:
        if opts.tool and [a for a in opts.tool if a != "--"]:
            raise UsageError("give either --to-file or a tool after --, not both")
        return []
    if not tool:
        raise UsageError(f"no tool given: {PROG} {opts.mode} [options] -- TOOL ARGS...")
    allowed = getattr(opts, "allow_tool", None)
    if allowed and os.path.basename(tool[0]) not in allowed:
        raise UsageError(f'the tool "{tool[0]}" is not allowed here; use one of: {", ".join(allowed)}')
    return tool


def _tool_env(pairs: list[str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not RESTIC_ONLY.match(k)}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise UsageError(f'--env-from-file needs NAME=PATH, got "{pair}"')
        try:
            with open(path, encoding="utf-8") as f:
                value = f.read()
        except OSError as exc:
            raise UsageError(f"cannot read {name} from {path}: {exc.strerror} "
                             "(is the Secret mounted, and does it hold that key?)") from None
        env[name] = value[:-1] if value.endswith("\n") else value
    return env


def _restic_env(tool_env_names: list[str]) -> dict[str, str]:
    secret_names = {p.partition("=")[0] for p in tool_env_names}
    return {k: v for k, v in os.environ.items() if k not in secret_names}


def _cache_args(opts: argparse.Namespace) -> list[str]:
    if str(opts.enable_cache).strip().lower() in ("false", "0", "no"):
        return ["--no-cache"]
    return [f"--cache-dir={opts.cache_dir}"] if opts.cache_dir else []


def _fail(opts: argparse.Namespace, message: str) -> None:
    print(message, file=sys.stderr, flush=True)
    report.write_termination_message(message, getattr(opts, "termination_log", None))


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _on_signals(pipeline: Pipeline) -> None:
    """The Pod is being deleted (SIGTERM) or the user pressed ^C: stop without a snapshot."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda s, _f: pipeline.stop(s))


# ------------------------------------------------------------------------------------- backup


def backup(opts: argparse.Namespace, tool: list[str], tool_env: dict[str, str], started: float) -> int:
    restic_argv = ["restic", "backup", "--stdin", f"--stdin-filename={opts.filename}", "--json",
                   *_cache_args(opts), *[f"--tag={t}" for t in opts.tag if t and not t.endswith("=")]]
    if opts.restic_host:
        restic_argv.append(f"--host={opts.restic_host}")
    summary: dict[str, Any] = {}

    def restic_stdout(line: str) -> None:
        text = line.strip()
        if text.startswith("{"):
            try:
                data = json.loads(text)
            except ValueError:
                data = None
            if isinstance(data, dict):
                if data.get("message_type") == "summary":
                    summary.update(data)
                if data.get("message_type") in ("summary", "status"):
                    return
        if text:
            print(line, file=sys.stderr, flush=True)

    _say(f"{' '.join(shlex.quote(a) for a in tool[:1])} | restic backup --stdin --stdin-filename={opts.filename}")
    pipeline = Pipeline(Command(tool, tool_env), Command(restic_argv, _restic_env(opts.env_from_file),
                                                          interrupt=signal.SIGINT), consumer_stdout=restic_stdout)
    _on_signals(pipeline)
    dump, restic = pipeline.run()
    failure = _failure(dump, restic, pipeline, "backup")
    if failure is None and not summary.get("snapshot_id"):
        failure = "restic reported no snapshot: its --json summary is missing"
    if failure is not None:
        if summary.get("snapshot_id"):  # never leave a snapshot of a failed dump in the repository
            _forget(summary["snapshot_id"], opts)
        _fail(opts, failure)
        return 1
    seconds = time.monotonic() - started
    component = report.backup_component(summary, host_path="/" + opts.filename.lstrip("/"), seconds=seconds)
    stats = component["resticStats"][0]
    _say(f"restic snapshot {stats['id']} holds /{opts.filename.lstrip('/')}: {stats.get('size', '?')} dumped, "
         f"{stats.get('uploaded', '?')} new, in {component['duration']}")
    report.write_termination_message(report.components_message(opts.component, component), opts.termination_log)
    return 0


def _failure(producer: Ended, consumer: Ended, pipeline: Pipeline, what: str) -> str | None:
    """The message of the first cause: the side that failed on its own, not the one stopped for it."""
    if pipeline.stopped_by is not None:
        return f"{PROG}: stopped by {signal.Signals(pipeline.stopped_by).name} before the {what} finished"
    if not consumer.ok and not consumer.interrupted:
        return report.failure_message(consumer.describe(), error_line(consumer.stderr_tail))
    if not producer.ok:
        return report.failure_message(producer.describe(), error_line(producer.stderr_tail))
    return None


def _forget(snapshot_id: str, opts: argparse.Namespace) -> None:
    argv = ["restic", "forget", *_cache_args(opts), snapshot_id]
    done = subprocess.run(argv, env=_restic_env(opts.env_from_file), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _say(f"forgot restic snapshot {snapshot_id} of the failed dump" if done.returncode == 0
         else f"could not forget restic snapshot {snapshot_id} of the failed dump: {done.stdout.strip()}")


# ------------------------------------------------------------------------------------- restore


def restore(opts: argparse.Namespace, tool: list[str], tool_env: dict[str, str], started: float) -> int:
    path = "/" + opts.filename.lstrip("/")
    restic_argv = ["restic", "dump", *_cache_args(opts), opts.snapshot, path]
    restic_env = _restic_env(opts.env_from_file)
    if opts.to_file:
        return _restore_to_file(opts, restic_argv, restic_env, path, started)
    _say(f"restic dump {opts.snapshot} {path} | {shlex.quote(tool[0])}")
    pipeline = Pipeline(Command(restic_argv, restic_env, interrupt=signal.SIGINT),
                        Command(tool, tool_env, count=_SQL_ERROR))
    _on_signals(pipeline)
    restic, target = pipeline.run()
    failure = _failure(restic, target, pipeline, "restore")
    if failure is not None:
        _fail(opts, failure)
        return 1
    note = f" ({tool[0]} printed {target.counted} ERROR line(s) above; it exited 0)" if target.counted else ""
    return _restored(opts, path, started, note)


def _restore_to_file(opts: argparse.Namespace, restic_argv: list[str], env: dict[str, str], path: str,
                     started: float) -> int:
    """restic writes straight into a temporary file next to the destination, renamed when complete."""
    dest = os.path.abspath(opts.to_file)
    partial = f"{dest}.stashflow-partial"
    _say(f"restic dump {opts.snapshot} {path} > {dest}")
    try:
        with open(partial, "wb") as out:
            done = subprocess.run(restic_argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE)
            if done.returncode == 0:
                out.flush()
                os.fsync(out.fileno())
    except OSError as exc:
        _fail(opts, f"{PROG}: cannot write {partial}: {exc.strerror}")
        return 1
    lines = done.stderr.decode(errors="replace").splitlines()
    for line in lines:
        print(line, file=sys.stderr)
    if done.returncode != 0:
        os.unlink(partial)
        _fail(opts, report.failure_message(Ended("restic", done.returncode).describe(), error_line(lines)))
        return 1
    os.replace(partial, dest)
    return _restored(opts, path, started, f" into {dest}")


def _restored(opts: argparse.Namespace, path: str, started: float, note: str) -> int:
    seconds = time.monotonic() - started
    _say(f"restored {path} of restic snapshot {opts.snapshot}{note} in {report.go_duration(seconds)}")
    component = {"phase": "Succeeded", "driver": "Restic", "duration": report.go_duration(seconds),
                 "resticStats": [{"id": opts.snapshot, "hostPath": path}]}
    report.write_termination_message(report.components_message(opts.component, component), opts.termination_log)
    return 0


def _entry() -> None:
    """The zipapp's entry point (it does not exit with ``main``'s return value by itself)."""
    raise SystemExit(main())
