"""The node agent's Pod root: a mount path is resolved inside the Pod's root, following its symlinks
there (Debian's /var/run -> /run), so the ServiceAccount token lands where the Pod looks for it."""

from __future__ import annotations

import os
from pathlib import Path

from localkube.podrun import in_root


def test_symlinks_resolve_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "run").mkdir(parents=True)
    (root / "var").mkdir()
    os.symlink("/run", root / "var" / "run")            # absolute: relative to the Pod's root, not the host's
    os.symlink("../etc", root / "var" / "conf")          # relative
    r = str(root)
    assert in_root(r, "/var/run/secrets/kubernetes.io/serviceaccount") == f"{r}/run/secrets/kubernetes.io/serviceaccount"
    assert in_root(r, "/var/conf/app") == f"{r}/etc/app"
    assert in_root(r, "/kubestash-tmp") == f"{r}/kubestash-tmp"
    assert in_root(r, "/a/../b/./c") == f"{r}/b/c"
    assert in_root(r, "/../../etc") == f"{r}/etc"  # never above the root
