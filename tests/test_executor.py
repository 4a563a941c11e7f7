"""stashflow-executor on its own, with Debian's restic and a local repository (no cluster).

The "dump tools" here are small Python programs: the executor's contract is about any program
that writes a dump to stdout or reads one from stdin, and these make each way of ending (success,
a non-zero exit mid-stream, a kill by signal, an error before any output) exact and repeatable.
The real database tools run through the flows in tests/runs/databases/."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from localkube.helpers import apt_install
from stashflow.tasks.results import from_termination_message

PASSWORD = "pw 'with' $HOME"
DATA = b"".join(hashlib.sha256(str(i).encode()).digest() for i in range(100_000))  # 3.2 MB, incompressible


@pytest.fixture(scope="module")
def restic() -> str:
    apt_install("restic")
    return "restic"


@pytest.fixture
def repo(tmp_path: Path, restic: str) -> dict[str, str]:
    env = {**os.environ, "RESTIC_REPOSITORY": str(tmp_path / "repo"), "RESTIC_PASSWORD": PASSWORD,
           "RESTIC_CACHE_DIR": str(tmp_path / "cache")}
    subprocess.run(["restic", "init"], env=env, check=True, capture_output=True)
    return env


def executor(env: dict[str, str], tmp_path: Path, *args: str) -> tuple[int, str, str]:
    """Run the executor as the console script does; returns exit code, stderr, termination message."""
    log = tmp_path / "termination-log"
    log.write_text("")
    done = subprocess.run([sys.executable, "-m", "stashflow.executor", *args[:1], f"--termination-log={log}", *args[1:]],
                          env=env, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stderr, log.read_text()


def snapshots(env: dict[str, str]) -> list[dict]:
    return json.loads(subprocess.run(["restic", "snapshots", "--json"], env=env, check=True, capture_output=True,
                                     text=True).stdout)


def tool(code: str) -> list[str]:
    return ["--", sys.executable, "-c", "import os, sys, hashlib, signal\n" + code]


WRITE = "sys.stdout.buffer.write(b''.join(hashlib.sha256(str(i).encode()).digest() for i in range(100_000)))\n"


def test_backup_streams_into_restic_and_reports_the_snapshot(repo, tmp_path) -> None:
    rc, err, message = executor(repo, tmp_path, "backup", "--filename=dump.sql", "--tag=backupsession=s-1",
                                *tool(WRITE))
    assert rc == 0, err
    components = from_termination_message(message)
    assert components is not None
    dump = components["dump"]
    assert dump["phase"] == "Succeeded" and dump["driver"] == "Restic" and dump["duration"].endswith("s")
    (stats,) = dump["resticStats"]
    (only,) = snapshots(repo)
    assert only["id"].startswith(stats["id"]) and only["paths"] == ["/dump.sql"] and only["tags"] == ["backupsession=s-1"]
    assert stats["hostPath"] == "/dump.sql" and stats["size"] == "3.052 MiB"
    stored = subprocess.run(["restic", "dump", "latest", "/dump.sql"], env=repo, capture_output=True, check=True).stdout
    assert stored == DATA


@pytest.mark.parametrize("ending, described, line", [
    ("sys.stdout.flush(); print('pg_dump: error: query failed: server closed the connection', file=sys.stderr); "
     "print('pg_dump: detail: more words', file=sys.stderr); sys.exit(3)",
     "exited with code 3", "pg_dump: error: query failed: server closed the connection"),
    ("sys.stdout.flush(); print('dying now', file=sys.stderr); sys.stderr.flush(); os.kill(os.getpid(), signal.SIGKILL)",
     "was killed by SIGKILL", "dying now"),
])
def test_a_tool_that_dies_mid_stream_fails_the_backup_and_leaves_no_snapshot(repo, tmp_path, ending, described,
                                                                               line) -> None:
    rc, err, message = executor(repo, tmp_path, "backup", "--filename=dump.sql", *tool(WRITE + ending))
    assert rc == 1
    assert message == f"{os.path.basename(sys.executable)} {described}: {line}"
    assert err.rstrip().endswith(message)
    assert snapshots(repo) == []  # restic saw no end-of-file: it committed nothing
    # and it cleaned up after itself: no lock left behind
    assert subprocess.run(["restic", "list", "locks", "--no-lock"], env=repo, capture_output=True, text=True,
                          check=True).stdout == ""


def test_restic_failing_is_reported_with_restics_words(repo, tmp_path) -> None:
    env = {**repo, "RESTIC_PASSWORD": "wrong"}
    rc, err, message = executor(env, tmp_path, "backup", "--filename=dump.sql", *tool(WRITE))
    assert rc == 1
    assert message.startswith("restic exited with code 1: ") and "wrong password" in message, message


def test_restore_streams_restic_dump_into_the_tool(repo, tmp_path) -> None:
    assert executor(repo, tmp_path, "backup", "--filename=dump.sql", *tool(WRITE))[0] == 0
    out = tmp_path / "restored"
    rc, err, message = executor(repo, tmp_path, "restore", "--filename=dump.sql", "--snapshot=latest",
                                *tool(f"open({str(out)!r}, 'wb').write(sys.stdin.buffer.read())"))
    assert rc == 0, err
    assert out.read_bytes() == DATA
    assert (from_termination_message(message) or {})["dump"]["phase"] == "Succeeded"
    # and into a file
    rc, err, _ = executor(repo, tmp_path, "restore", "--filename=dump.sql", f"--to-file={tmp_path / 'file.rdb'}")
    assert rc == 0, err
    assert (tmp_path / "file.rdb").read_bytes() == DATA


def test_a_restore_tool_that_fails_fails_the_restore(repo, tmp_path) -> None:
    assert executor(repo, tmp_path, "backup", "--filename=dump.sql", *tool(WRITE))[0] == 0
    rc, _, message = executor(repo, tmp_path, "restore", "--filename=dump.sql",
                              *tool("sys.stdin.buffer.read(1000); print('psql: error: disk full', file=sys.stderr); "
                                    "sys.exit(2)"))
    assert rc == 1 and message.endswith("exited with code 2: psql: error: disk full"), message
    rc, _, message = executor(repo, tmp_path, "restore", "--filename=missing.sql", *tool("sys.stdin.buffer.read()"))
    assert rc == 1 and message == 'restic exited with code 2: cannot dump file: path "/missing.sql" not found in snapshot'


def test_values_are_arguments_and_secrets_only_environment(repo, tmp_path) -> None:
    """--extra-args is split into words, nothing expanded; a secret file reaches the tool's environment
    only, and the repository's password never reaches the tool."""
    secret = tmp_path / "password"
    secret.write_text("s3cret $(id) 'q'\n")
    seen = tmp_path / "seen.json"
    code = (f"json_ = __import__('json'); open({str(seen)!r}, 'w').write(json_.dumps("
            "{'argv': sys.argv[1:], 'pw': os.environ.get('PGPASSWORD'), 'restic': os.environ.get('RESTIC_PASSWORD')}));"
            "print('-- dump')")
    rc, err, _ = executor(repo, tmp_path, "backup", "--filename=d", f"--env-from-file=PGPASSWORD={secret}",
                          """--extra-args=--exclude-database="a b" $HOME;rm -rf / 'x'""", *tool(code))
    assert rc == 0, err
    found = json.loads(seen.read_text())
    assert found == {"argv": ["--exclude-database=a b", "$HOME;rm", "-rf", "/", "x"], "pw": "s3cret $(id) 'q'",
                     "restic": None}


@pytest.mark.parametrize("args, says", [
    (["backup", "--filename=d", "--allow-tool=pg_dump", "--", "rm", "-rf", "/"], 'the tool "rm" is not allowed'),
    (["backup", "--filename=d", "--env-from-file=PGPASSWORD=/no/such/file", "--", "true"],
     "cannot read PGPASSWORD from /no/such/file"),
    (["backup", "--filename=d", "--extra-args=it's", "--", "true"], "cannot be split into words"),
    (["restore", "--filename=d"], "no tool given"),
    (["backup", "--no-such-option", "--", "true"], "the following arguments are required: --filename"),
])
def test_usage_errors_say_what_is_wrong_and_exit_2(repo, tmp_path, args, says) -> None:
    rc, err, message = executor(repo, tmp_path, *args)
    assert rc == 2 and says in message and says in err and "Traceback" not in err, err
    assert snapshots(repo) == []


def test_a_tool_that_cannot_start_fails_cleanly(repo, tmp_path) -> None:
    rc, err, message = executor(repo, tmp_path, "backup", "--filename=d", "--", "/no/such/pg_dumpall")
    assert rc == 1 and "cannot start /no/such/pg_dumpall" in message and "Traceback" not in err
    assert snapshots(repo) == []


def test_the_zipapp_runs_with_the_systems_python(repo, tmp_path) -> None:
    """What the images install (and the DB tests put on this machine): one file, python3 only."""
    from stashflow.executor.bundle import build

    app = build(tmp_path / "stashflow-executor")
    log = tmp_path / "tl"
    done = subprocess.run(["/usr/bin/python3", str(app), "backup", "--filename=d", f"--termination-log={log}",
                           "--", "/bin/echo", "hello"], env=repo, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (from_termination_message(log.read_text()) or {})["dump"]["phase"] == "Succeeded"


def test_sigterm_mid_stream_stops_the_backup_without_a_snapshot(repo, tmp_path) -> None:
    """What a Pod's deletion does: the executor (PID 1 of the container) gets SIGTERM mid-stream."""
    started = tmp_path / "streaming"
    log = tmp_path / "termination-log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "stashflow.executor", "backup", f"--termination-log={log}", "--filename=d",
         *tool(WRITE + f"sys.stdout.flush(); open({str(started)!r}, 'w').close(); signal.pause()")],
        env=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 60
    while not started.exists() and time.monotonic() < end and proc.poll() is None:
        time.sleep(0.05)  # polling for the tool's marker file, not timing
    assert started.exists()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert log.read_text() == "stashflow-executor: stopped by SIGTERM before the backup finished", err
    assert snapshots(repo) == []
