#!/usr/bin/env bash
# Create .venv in the repo root with stashflow (editable) and its test tools.
# Idempotent: a second run only re-checks the install.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

say() { printf '[setup] %s\n' "$*" >&2; }

if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  say "stashflow needs Python >= 3.11; found: $(python3 --version 2>&1 || echo none)"
  exit 1
fi
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  say "installing python3-venv (Debian)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  python3 -m venv .venv
fi
stamp=.venv/.stashflow-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing stashflow and its dependencies into .venv (about a minute the first time)"
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v 'is ignored: it is neither' >&2 || true
  .venv/bin/python -c 'import stashflow.flows.cli' || { say "install failed"; exit 1; }
  touch "$stamp"
fi
say "ready: $root/.venv/bin/stashflow"
