"""Benchmark: load and validate the whole upstream catalog (goal: under 100 ms).

Run: .venv/bin/python bench/catalog_load.py [PATH...] [--repeat N]
Each round starts from cold parse caches, so it measures what `stashflow validate` does
once the interpreter is up. The interpreter and import time are printed separately.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

t0 = time.perf_counter()
from stashflow.addons import template  # noqa: E402
from stashflow.addons.catalog import Catalog  # noqa: E402

IMPORT_S = time.perf_counter() - t0
DEFAULT = Path(__file__).resolve().parent.parent.parent / "shared" / "kubestash" / "catalog"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("paths", nargs="*", default=[str(DEFAULT)])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    times = []
    catalog = Catalog()
    for _ in range(args.repeat):
        template.parse.cache_clear()
        start = time.perf_counter()
        catalog = Catalog().add_paths(args.paths).check()
        times.append((time.perf_counter() - start) * 1000)
    if catalog.problems:
        print("\n".join(p.format() for p in catalog.problems), file=sys.stderr)
        return 1
    print(f"catalog: {len(catalog.addons)} Addons, {catalog.task_count} tasks, {len(catalog.functions)} Functions, "
          f"{len(catalog.files)} files")
    print(f"import stashflow.addons: {IMPORT_S * 1000:.0f} ms (once)")
    print(f"load+validate over {args.repeat} rounds: min {min(times):.1f} ms, median {statistics.median(times):.1f} ms, "
          f"max {max(times):.1f} ms (goal < 100 ms)")
    return 0 if statistics.median(times) < 100 else 2


if __name__ == "__main__":
    sys.exit(main())
