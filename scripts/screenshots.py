"""What a platform engineer sees in the Prefect UI, photographed by headless Chromium (issue 9's check).

Brings up the local stack (``scripts/local_stack.py``, as the main job does) with a Prefect server
of its own, then through the stashflow CLI: a successful backup of PVC ``demo/data``, a failing one
(restic is given a path that does not exist in the PVC: the Job fails, so ``wait-for-job`` fails
with ``job-exit-code``), a restore of ``latest`` into PVC ``demo/restored``, and ``stashflow deploy
deployments/examples/pvc-backups.yaml --work-pool stashflow``. Then saves, in OUT (default
``run/screenshots/``):

- ``1-run-form.png``: the custom-run form of the example plan's nightly deployment;
- ``2-failed-run.png``: the failed backup's flow run page (its task graph and logs);
- ``3-fleet.png``: the ``stashflow-fleet`` artifact (and ``3-fleet-wide.png``, 2400 px wide, its
  every column);
- ``4-diagnosis.png``: the failed backup's ``failure-…`` artifact.

Usage: ``bash scripts/screenshots.sh [OUT]``; ``STASHFLOW_SCREENSHOTS_PREFECT_PORT`` (default 4300)
and the ``STASHFLOW_KUBE_*_PORT`` variables choose the ports; ``KEEP=1`` leaves the stack up.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from chromium import WIDTH, Chromium
from local_stack import REPO, LocalStack, say, tree

from stashflow.flows.artifacts import FLEET_KEY, target_key

NAMESPACE = "demo"
PREFECT_PORT = int(os.environ.get("STASHFLOW_SCREENSHOTS_PREFECT_PORT", "4300"))
PLAN = REPO / "deployments" / "examples" / "pvc-backups.yaml"
WHO = "screenshots"


def api(stack: LocalStack, path: str, body: dict[str, Any]) -> Any:
    """POST to the Prefect server's REST API (its ``/filter`` endpoints)."""
    request = urllib.request.Request(f"{stack.prefect_url}/api/{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def newest_artifact(stack: LocalStack, key: str) -> str:
    found = api(stack, "artifacts/filter", {"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1})
    if not found:
        raise SystemExit(f"[{WHO}] no artifact with key {key}: the runs did not write it")
    return found[0]["id"]


def runs(stack: LocalStack) -> None:
    """The successful backup, the failing one, the restore, the example plan's deployments."""
    data, restored = stack.prepare(NAMESPACE)
    common = stack.run_args(NAMESPACE)
    # README step 2; also installs the Snapshot CRD, without which a first backup fails in claim-target
    stack.stashflow("install", "--namespace", NAMESPACE, "--kubeconfig", stack.kubeconfig)
    backup = ["run", "stashflow-pvc", "logical-backup", "--target", "PersistentVolumeClaim/data", "--storage", "local",
              "--directory", "demo/data", "--encryption-secret", "restic-password", "--repository", "data", *common]
    stack.stashflow(*backup)
    say("the next backup must fail: restic is given a path that is not in the PVC", WHO)
    if stack.stashflow(*backup, "--param", "paths=/kubestash-data/no-such-directory", check=False) == 0:
        raise SystemExit(f"[{WHO}] the backup of a missing path succeeded; it must fail")
    stack.stashflow("run", "stashflow-pvc", "logical-backup-restore", "--target", "PersistentVolumeClaim/restored",
                    "--snapshot", "latest", "--repository", "data", *common)
    if tree(data) != tree(restored):
        raise SystemExit(f"[{WHO}] the restored files differ from the originals")
    stack.stashflow("deploy", str(PLAN), "--work-pool", "stashflow", "--kubeconfig", stack.kubeconfig)


def pages(stack: LocalStack) -> list[tuple[str, str, str, int]]:
    """(file name, UI URL, JS that is true once the page shows its content, window width) for each screenshot."""
    deployments = api(stack, "deployments/filter", {"sort": "NAME_ASC"})
    nightly = next((d for d in deployments if d["name"].endswith("nightly")), None)
    if nightly is None:
        raise SystemExit(f"[{WHO}] no nightly deployment after stashflow deploy: {[d['name'] for d in deployments]}")
    failed = api(stack, "flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": ["FAILED"]}}},
                                             "sort": "START_TIME_DESC", "limit": 1})
    if not failed:
        raise SystemExit(f"[{WHO}] no failed flow run on the Prefect server")
    fleet = newest_artifact(stack, FLEET_KEY)
    failure = newest_artifact(stack, target_key("failure", NAMESPACE, "PersistentVolumeClaim", "data"))
    ui, text = stack.prefect_url, "document.body.innerText"
    return [
        ("1-run-form.png", f"{ui}/deployments/deployment/{nightly['id']}/run",
         f"document.querySelectorAll('input, select, textarea').length > 3 && {text}.includes('target')", WIDTH),
        ("2-failed-run.png", f"{ui}/runs/flow-run/{failed[0]['id']}",
         f"document.querySelector('canvas') && {text}.includes('wait-for-job')", WIDTH),
        ("3-fleet.png", f"{ui}/artifacts/artifact/{fleet}", f"{text}.includes('last success')", WIDTH),
        # at 1600 px the table scrolls sideways and hides its last columns: the whole table as well
        ("3-fleet-wide.png", f"{ui}/artifacts/artifact/{fleet}", f"{text}.includes('last success')", 2400),
        ("4-diagnosis.png", f"{ui}/artifacts/artifact/{failure}", f"{text}.includes('job-exit-code')", WIDTH),
    ]


def main() -> int:
    started = time.monotonic()
    out = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else REPO / "run" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    run_dir = REPO / "run" / "screenshots-stack"
    stack = LocalStack(run_dir, PREFECT_PORT, who=WHO)
    if not stack.prefect_running():
        shutil.rmtree(run_dir / "prefect", ignore_errors=True)  # a fresh Prefect database: only this run's runs
    try:
        with stack:
            runs(stack)
            saved = []
            with Chromium() as browser:
                for name, url, ready, width in pages(stack):
                    say(f"{url} -> {name}", WHO)
                    if not browser.screenshot(url, out / name, ready=ready, width=width):
                        say(f"{name}: the page did not settle in time; saved what it showed", WHO)
                    saved.append(out / name)
    except subprocess.CalledProcessError as exc:
        say(f"failed: {' '.join(exc.cmd[:4])} ... exited {exc.returncode} (its error is above)", WHO)
        return 1
    for file in saved:
        print(file)
    say(f"done in {time.monotonic() - started:.0f}s", WHO)
    return 0


if __name__ == "__main__":
    sys.exit(main())
