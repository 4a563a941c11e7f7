"""Flow tests: a real Prefect API (one test harness per session) and the local control plane."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
# Settings before Prefect is imported: quiet, no telemetry, a patient server start on 2 cores.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ["STASHFLOW_CATALOG"] = os.pathsep.join([str(REPO / "addons" / "catalog"),
                                                   str(REPO / "tests" / "data" / "flow-catalog.yaml"),
                                                   str(REPO / "tests" / "data" / "session-catalog.yaml")])


@pytest.fixture(autouse=True)
def kubestash_schemas(request: pytest.FixtureRequest) -> None:
    """Run tests write to KubeStash's own CRDs (when ../shared has them), so its schemas check what
    stashflow writes; stashflow's own CRD is tested on its own in test_install.py."""
    from support import HAVE_SHARED

    if HAVE_SHARED:
        request.getfixturevalue("kubestash_crds")


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """A real Prefect API server (temporary SQLite DB) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


#: The flat option names the tests use, and the group of the flow's typed parameters each belongs to
#: (stashflow.flows.parameters): the tests say what they mean, the flow gets its real shape.
GROUPED = {"repository": ("repository", "name"), "storage": ("repository", "storage"),
           "directory": ("repository", "directory"), "encryption_secret": ("repository", "encryption_secret"),
           "timeout": ("limits", "timeout"), "stuck_after": ("limits", "stuck_after"),
           "history_limit": ("limits", "history_limit"), "logs": ("limits", "logs"), "exclusive": ("schedule", "exclusive"),
           "max_retry": ("schedule", "max_retry"), "retry_delay": ("schedule", "retry_delay"),
           "kubeconfig": ("cluster", "kubeconfig"), "context": ("cluster", "context"),
           "credentials_block": ("cluster", "credentials_block"),
           "session": ("advanced", "session"), "plan_session": ("advanced", "plan_session"),
           "attempt": ("advanced", "attempt"), "db_version": ("advanced", "db_version")}


def flow_parameters(**flat: Any) -> dict[str, Any]:
    """Flat test options → the flow's parameters (a BackupStorage object becomes ``repository.storage``)."""
    out: dict[str, Any] = {}
    for name, value in flat.items():
        if name not in GROUPED:
            out[name] = value
            continue
        group, field = GROUPED[name]
        if name == "storage" and isinstance(value, dict) and "spec" in value:
            value = {"name": value["metadata"]["name"], "namespace": value["metadata"].get("namespace"),
                     "spec": value["spec"]}
        out.setdefault(group, {})[field] = value
    return out


def run_flow(addon: str, task: str, **parameters: Any):  # type: ignore[no-untyped-def]
    """Run the flow of ``addon``/``task`` in-process; returns its final Prefect state."""
    from stashflow.flows.addon_flows import flow_for

    return asyncio.run(flow_for(addon, task)(**flow_parameters(**parameters), return_state=True))


async def read_flow_run(flow_run_id: Any):  # type: ignore[no-untyped-def]
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return await client.read_flow_run(flow_run_id)


@pytest.fixture(scope="session")
def prefect_env(prefect_api) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Environment for subprocesses that must reach the same Prefect API (stashflow run, serve)."""
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "PREFECT_LOGGING_LEVEL": "INFO"}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The fault matrix as a table, when its tests ran (tests/runs/test_fault_matrix.py)."""
    import sys

    matrix = sys.modules.get(__package__ + ".test_fault_matrix" if __package__ else "test_fault_matrix")
    rows = getattr(matrix, "ROWS", None)
    if not rows:
        return
    tr = terminalreporter
    tr.section("fault matrix")
    head = ("fault", "end state", "code", "Snapshot", "Jobs left", "PVCs left", "duplicate Pods")
    table = [head] + [(r.fault, r.state, r.code, r.snapshot, str(r.jobs_left), str(r.pvcs_left), str(r.duplicates))
                      for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for row in table:
        tr.write_line("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
