"""stashflow-executor's workload modes on their own, with Debian's restic and a local repository:
one restic snapshot per Pod, restored into each Pod's own directory; a backup that fails for one Pod
leaves no snapshot of the others. (The flow, with a real StatefulSet, is tests/runs/objects/.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from localkube.helpers import apt_install

PASSWORD = "pw 'with' $HOME"


@pytest.fixture
def repo(tmp_path: Path) -> dict[str, str]:
    apt_install("restic")
    env = {**os.environ, "RESTIC_REPOSITORY": str(tmp_path / "repo"), "RESTIC_PASSWORD": PASSWORD,
           "RESTIC_CACHE_DIR": str(tmp_path / "cache")}
    subprocess.run(["restic", "init"], env=env, check=True, capture_output=True)
    return env


def pods_env(env: dict[str, str], roots: dict[str, Path]) -> dict[str, str]:
    """What stashflow gives the Job: each Pod's volumes mounted under its root (here: host folders)."""
    described = [{"pod": pod, "root": str(root), "mounts": ["/var/lib/app"]} for pod, root in roots.items()]
    return {**env, "STASHFLOW_WORKLOAD_PODS": json.dumps(described)}


def executor(env: dict[str, str], tmp_path: Path, *args: str) -> tuple[int, str, str]:
    log = tmp_path / "termination-log"
    log.write_text("")
    done = subprocess.run([sys.executable, "-m", "stashflow.executor", *args, f"--termination-log={log}"],
                          env=env, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stderr, log.read_text()


def snapshots(env: dict[str, str]) -> list[dict]:
    return json.loads(subprocess.run(["restic", "snapshots", "--json"], env=env, check=True, capture_output=True,
                                     text=True).stdout)


def test_each_pod_backed_up_on_its_own_and_restored_into_its_own_volume(repo: dict[str, str], tmp_path: Path) -> None:
    roots = {f"db-{i}": tmp_path / f"db-{i}" for i in range(2)}
    for i, root in enumerate(roots.values()):
        (root / "var/lib/app/sub").mkdir(parents=True)
        (root / "var/lib/app/sub/data.bin").write_bytes(os.urandom(1000 + i))
        (root / "var/lib/app/skip.tmp").write_text("x")
    before = {pod: (root / "var/lib/app/sub/data.bin").read_bytes() for pod, root in roots.items()}
    env = pods_env(repo, roots)
    code, err, message = executor(env, tmp_path, "workload-backup", "--snapshot-name=db-s1", "--paths=/var/lib/app",
                                  "--exclude=*.tmp")
    assert code == 0, err
    stats = json.loads(message)["components"]["dump"]["resticStats"]
    assert [s["hostPath"] for s in stats] == [str(r) for r in roots.values()]
    assert sorted(s["hostname"] for s in snapshots(repo)) == ["db-0", "db-1"]
    assert all("snapshot=db-s1" in s["tags"] for s in snapshots(repo))
    for root in roots.values():
        (root / "var/lib/app/sub/data.bin").unlink()
        (root / "var/lib/app/skip.tmp").unlink()
    code, err, message = executor(env, tmp_path, "workload-restore", "--snapshot-name=db-s1")
    assert code == 0, err
    for pod, root in roots.items():
        assert (root / "var/lib/app/sub/data.bin").read_bytes() == before[pod]
        assert not (root / "var/lib/app/skip.tmp").exists()
    code, err, message = executor(env, tmp_path, "workload-restore", "--snapshot-name=other")
    assert code == 1 and message == ("stashflow-executor: workload-restore: Snapshot other has no backup of Pod db-0 "
                                     "(was the workload scaled up since?)")


def test_a_backup_that_fails_for_one_pod_keeps_no_snapshot_of_the_others(repo: dict[str, str], tmp_path: Path) -> None:
    roots = {"db-0": tmp_path / "db-0", "db-1": tmp_path / "db-1"}
    (roots["db-0"] / "var/lib/app").mkdir(parents=True)
    (roots["db-0"] / "var/lib/app/a").write_text("a")  # db-1's volume is not there: restic fails for it
    code, err, message = executor(pods_env(repo, roots), tmp_path, "workload-backup", "--snapshot-name=s",
                                  "--paths=/var/lib/app")
    assert code == 1
    assert message.startswith("restic exited with code 1 for Pod db-1: ") and "do not exist" in message, message
    assert "forgot the 1 snapshot(s) of the other Pods" in err
    assert snapshots(repo) == []


def test_a_path_off_the_workloads_volumes_is_refused_before_any_backup(repo: dict[str, str], tmp_path: Path) -> None:
    code, err, message = executor(pods_env(repo, {"db-0": tmp_path}), tmp_path, "workload-backup",
                                  "--snapshot-name=s", "--paths=/etc")
    assert code == 2 and "Traceback" not in err
    assert message == ("stashflow-executor: workload-backup: /etc is not on a data volume of the workload "
                       "(Pod db-0 mounts /var/lib/app); give paths under those")
    assert snapshots(repo) == []
