#!/usr/bin/env bash
# Issue 9's browser check, by hand (CI does not run it): bring up the local stack, run a backup that
# succeeds, one that fails and a restore, deploy the example plan, and save screenshots of the Prefect
# UI taken by Debian's headless Chromium: the deployment's run form, the failed run's graph, the
# fleet overview, a diagnosis. Usage: bash scripts/screenshots.sh [OUT]   (default run/screenshots/)
# Ports: STASHFLOW_SCREENSHOTS_PREFECT_PORT (default 4300), STASHFLOW_KUBE_*_PORT (localkube/lib.sh).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
if ! command -v chromium >/dev/null; then
  echo "[screenshots] installing Debian's chromium (apt-get)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium >&2
fi
exec .venv/bin/python scripts/screenshots.py "$@"
