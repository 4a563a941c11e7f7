"""localkube's podrun joins a volume's mountPath to the Pod's root as runc does: symlinks on the way
are resolved inside that root. Joined naively, Debian's absolute link /var/run -> /run sent the
ServiceAccount token's mount (/var/run/secrets/kubernetes.io/serviceaccount) to the host's /run."""

from __future__ import annotations

import os
from pathlib import Path

from localkube.podrun import in_root


def test_mount_targets_resolve_symlinks_inside_the_pods_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "var").mkdir(parents=True)
    (root / "run").mkdir()
    os.symlink("/run", root / "var" / "run")  # absolute: must mean the Pod's /run, not the host's
    (root / "data").mkdir()
    os.symlink("../data", root / "var" / "lib")  # relative
    os.symlink("/loop", root / "loop")
    token = "/var/run/secrets/kubernetes.io/serviceaccount"
    assert in_root(str(root), token) == str(root / "run/secrets/kubernetes.io/serviceaccount")
    assert in_root(str(root), "/var/lib/app/x") == str(root / "data/app/x")
    assert in_root(str(root), "/../../etc/./passwd") == str(root / "etc/passwd")  # never above the root
    try:
        in_root(str(root), "/loop/x")
    except OSError as exc:
        assert "too many levels of symbolic links" in str(exc)
    else:
        raise AssertionError("a symlink loop must fail")
