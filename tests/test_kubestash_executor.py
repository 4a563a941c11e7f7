"""The KubeStash-contract test executor's pure parts: upstream flag parsing, stats formatting, URLs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kubestash_executor import executor as ex
from kubestash_executor.ks_restic import backend_for, format_bytes, go_duration, progress_of, summary_stats
from localkube.images import program_for, repository_of

EXECUTOR = Path(ex.__file__)


def test_upstream_flags_parse_as_pflag_does() -> None:
    args = ["--namespace=demo", "--backupsession=bc-frequent-1", "--enable-cache=true", "--scratch-dir=/kubestash-tmp",
            "--exclude=", "--paths=/a,/b"]
    opts = ex.parse_flags(ex.FLAGS["pvc"]["backup"], args)
    assert (opts["namespace"], opts["backupsession"], opts["enable-cache"], opts["paths"], opts["exclude"]) == \
        ("demo", "bc-frequent-1", True, ["/a", "/b"], [])
    pg = ex.parse_flags(ex.FLAGS["postgres"]["backup"], ["--wait-timeout=300", "--pg-args=", "--backup-cmd=pg_dumpall",
                                                         "--user=postgres", "--enable-cache", "--scratch-dir", "/x"])
    assert (pg["wait-timeout"], pg["backup-cmd"], pg["user"], pg["enable-cache"], pg["scratch-dir"]) == \
        (300, "pg_dumpall", "postgres", True, "/x")


@pytest.mark.parametrize("mode, cmd, arg, message", [
    ("pvc", "backup", "--enable-cache=", 'invalid argument "" for "--enable-cache" flag'),
    ("pvc", "restore", "--paths=/a", "unknown flag: --paths"),
    ("postgres", "backup", "--wait-timeout=soon", 'invalid argument "soon" for "--wait-timeout"'),
])
def test_bad_flags_exit_1_before_touching_the_api(mode: str, cmd: str, arg: str, message: str) -> None:
    done = subprocess.run([sys.executable, str(EXECUTOR), mode, cmd, arg], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 1 and message in done.stderr


def test_no_api_credentials_exit_1() -> None:
    done = subprocess.run([sys.executable, str(EXECUTOR), "pvc", "backup", "--backupsession=x"],
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 1 and "unable to load in-cluster configuration" in done.stderr


def test_stats_are_kubestash_strings() -> None:
    assert [format_bytes(n) for n in (12, 1024, 1025, 1189085, 5 << 30)] == \
        ["12 B", "1024 B", "1.001 KiB", "1.134 MiB", "5.000 GiB"]
    assert [go_duration(s) for s in (9.223082787, 65.5, 0.5234, 3725.0)] == \
        ["9.223082787s", "1m5.5s", "523.4ms", "1h2m5s"]
    out = '{"message_type":"status","percent_done":0.5}\n{"message_type":"summary","snapshot_id":"abc",' \
          '"total_bytes_processed":1189085,"data_added":652518}\n'
    assert summary_stats(out, "/kubestash-data", "t0", "t1") == {"summary": {
        "id": "abc", "hostPath": "/kubestash-data", "size": "1.134 MiB", "uploaded": "637.225 KiB",
        "startTime": "t0", "endTime": "t1"}}
    p = progress_of({"seconds_elapsed": 10, "percent_done": 0.25, "total_files": 4, "files_done": 1,
                     "total_bytes": 4096, "bytes_done": 2048})
    assert p == {"secondsElapsed": 10, "percentDone": "25.00%", "totalFiles": 4, "filesDone": 1,
                 "total": "4.000 KiB", "speed": "204 B/s", "backupDone": "2.000 KiB"}


def test_component_url_follows_kubestash_layout() -> None:
    local = {"spec": {"storage": {"provider": "local", "local": {"mountPath": "/bs", "hostPath": {"path": "/x"}}}}}
    assert backend_for(local, "/demo/pvc/repository/v1/frequent/dump", {}).url == "/bs/demo/pvc/repository/v1/frequent/dump"
    s3 = {"spec": {"storage": {"provider": "s3", "s3": {"endpoint": "https://minio:9000", "bucket": "b", "prefix": "p",
                                                          "region": "us-east-1", "secretName": "s3"}}}}
    b = backend_for(s3, "demo/repository/v1/s/dump", {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "k"})
    assert b.url == "s3:https://minio:9000/b/p/demo/repository/v1/s/dump"
    assert b.env == {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "k", "AWS_DEFAULT_REGION": "us-east-1"}


def test_the_agent_picks_the_program_by_image_repository() -> None:
    assert repository_of("ghcr.io/kubedb/postgres-restic-plugin:v0.30.0-rc.0_16.4") == "ghcr.io/kubedb/postgres-restic-plugin"
    assert repository_of("localhost:5000/x/y@sha256:abc") == "localhost:5000/x/y"
    argv = program_for("ghcr.io/kubestash/pvc:v0.28.0")
    assert argv is not None and argv[-1] == "pvc" and Path(argv[-2]) == EXECUTOR.resolve()
    assert program_for("ghcr.io/kubedb/postgres-restic-plugin:v0.30.0-rc.0_16.4")[-1] == "postgres"  # type: ignore[index]
    assert program_for("debian:bookworm") is None
