#!/usr/bin/env bash
# The main job on the local defaults. Sets up .venv, then checks the catalog and renders
# the objects of a PVC backup with the project's own catalog.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
sf=.venv/bin/stashflow
catalog="${STASHFLOW_CATALOG:-$root/addons/catalog}"
echo "[main] stashflow validate $catalog" >&2
"$sf" validate "$catalog"
echo "[main] stashflow render stashflow-pvc logical-backup (what a run creates)" >&2
"$sf" render stashflow-pvc logical-backup --catalog "$catalog" --namespace demo --target PersistentVolumeClaim/data
