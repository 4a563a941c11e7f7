"""Prints the fuzzer's figures at the end of the run, whatever the capture mode."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The fuzz cases pass --catalog explicitly; a catalog set by other suites must not leak into them.
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _builtin_catalog(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STASHFLOW_CATALOG", os.pathsep.join([str(REPO / "addons" / "catalog")]))


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    from .harness import FIGURES

    if not FIGURES.cases:
        return
    terminalreporter.section("stashflow fuzzer")
    for line in FIGURES.lines():
        terminalreporter.write_line(line)


@pytest.fixture(scope="session", autouse=True)
def _warm_imports() -> None:
    """Import Prefect and the flows once before the cases: a case's time bound is for stashflow's
    work on the input, not for the first import of Prefect (seconds on a busy machine)."""
    from stashflow.deployments import plans  # noqa: F401 - imports the flows and Prefect's schedules
    from stashflow.flows.plan_check import cron_problem

    cron_problem("0 2 * * *", "UTC")
