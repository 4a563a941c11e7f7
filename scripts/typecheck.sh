#!/usr/bin/env bash
# Type-check the shipped layers with mypy (settings: [tool.mypy] in pyproject.toml).
# The layers install as stashflow.<folder> through setuptools' editable finder, which mypy cannot see,
# so this links run/typecheck/stashflow/<folder> to each folder and checks the package `stashflow` there.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
tree=run/typecheck/stashflow
rm -rf "$tree" && mkdir -p "$tree"
layers="$(sed -n 's/^LAYERS = (\(.*\))$/\1/p' setup.py | tr -d '",')"  # setup.py's list, not a second one
[ -n "$layers" ] || { echo "[typecheck] no LAYERS = (...) line in setup.py" >&2; exit 1; }
for layer in $layers; do
  ln -s "../../../$layer" "$tree/$layer"
done
# A regular package here, not a namespace one: else mypy takes the YAML folder addons/catalog/ for the
# module stashflow.addons.catalog instead of addons/catalog.py.
touch "$tree/__init__.py"
# Errors name run/typecheck/stashflow/<folder>/...; print the repo's own path instead.
.venv/bin/mypy "$@" | sed 's#^run/typecheck/stashflow/##'
