"""What a stopped run's Failed Snapshot says (tasks/stopping.py ``stop_reason``)."""

from __future__ import annotations

import asyncio
import signal

from prefect.exceptions import TerminationSignal

from stashflow.tasks.stopping import stop_reason


def test_a_runner_cancelling_with_sigterm_says_so() -> None:
    # Prefect's runner cancels a run by SIGTERM, which the run sees as TerminationSignal (no message)
    reason = stop_reason(TerminationSignal(signal.SIGTERM))
    assert reason == "the run was stopped by SIGTERM: cancelled, or the process running it was shut down"


def test_cancellation_and_other_stops() -> None:
    assert stop_reason(asyncio.CancelledError("the deadline passed")) == "the deadline passed"
    assert stop_reason(asyncio.CancelledError(), "session") == "the session was cancelled"
    assert stop_reason(KeyboardInterrupt()) == "the run was cancelled"
    assert stop_reason(RuntimeError()) == "the run stopped: RuntimeError"
    assert stop_reason(RuntimeError("API gone")) == "the run stopped: API gone"
