"""Build the executor as one executable file (a Python zipapp): what the images install.

``python -m stashflow.executor.bundle DEST`` writes DEST (e.g. ``/usr/local/bin/stashflow-executor``)
atomically. It needs only ``python3`` where it runs, as the executor itself.
"""

from __future__ import annotations

import os
import sys
import tempfile
import zipapp
from pathlib import Path

HERE = Path(__file__).resolve().parent
INTERPRETER = "/usr/bin/env python3"


def build(dest: str | os.PathLike[str]) -> Path:
    """Write the zipapp to ``dest`` (replaced atomically, mode 0755); return its path."""
    dest = Path(dest)
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / "src" / "stashflow" / "executor"
        package.mkdir(parents=True)
        (package.parent / "__init__.py").write_text("")
        for source in sorted(HERE.glob("*.py")):
            if source.name != "bundle.py":
                (package / source.name).write_bytes(source.read_bytes())
        partial = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
        zipapp.create_archive(Path(tmp) / "src", partial, interpreter=INTERPRETER,
                              main="stashflow.executor.cli:_entry")
        partial.chmod(0o755)
        os.replace(partial, dest)
    return dest


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m stashflow.executor.bundle DEST", file=sys.stderr)
        raise SystemExit(2)
    print(build(sys.argv[1]))
