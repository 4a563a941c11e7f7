"""Paths and helpers shared by the tests."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
SHARED = REPO.parent / "shared"
UPSTREAM_CATALOG = SHARED / "kubestash" / "catalog"
UPSTREAM_EXAMPLES = SHARED / "kubestash" / "examples"
HAVE_SHARED = UPSTREAM_CATALOG.is_dir()
NEEDS_SHARED_REASON = "the upstream KubeStash files in ../shared are not present on this machine"


def run_cli(*args: str) -> tuple[int, str, str]:
    """Run ``stashflow`` in-process; returns (exit code, stdout, stderr)."""
    from stashflow.flows.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse usage errors
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def run_cli_process(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed ``stashflow`` command as a separate process."""
    return subprocess.run([str(Path(sys.executable).parent / "stashflow"), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
