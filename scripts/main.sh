#!/usr/bin/env bash
# The main job on the local defaults: set up .venv, bring up a local Kubernetes control plane,
# the node agent and a Prefect server, back up a PVC with restic through the stashflow flows,
# restore it into an empty PVC, compare, show the Snapshot, stop everything. KEEP=1 keeps it up.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py
