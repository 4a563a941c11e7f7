#!/usr/bin/env bash
# Set up .venv and run the whole test suite: import contracts, the type check, then pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
echo "[test] import contracts (lint-imports)" >&2
.venv/bin/lint-imports
echo "[test] type check (mypy)" >&2
bash scripts/typecheck.sh
echo "[test] pytest" >&2
exec .venv/bin/python -m pytest "$@"
