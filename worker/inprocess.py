"""One flow run inside this process, through Prefect's own async flow engine.

The engine reports states, logs, task runs and artifacts to the API exactly as it does in a
flow-run subprocess; only the process is shared. Two things differ from a subprocess, and this
module is where they are handled:

- **Cancelling one run.** Prefect cancels a subprocess with SIGTERM plus a process-wide "cancel"
  intent, which the engine reads (``prefect.flow_engine._termination_intent``) when the run's task
  is interrupted. In a shared process an intent cannot be process-wide, so it is kept per run in a
  ``ContextVar`` (each run is its own asyncio task with its own context) and the engine's lookup is
  wrapped to read it first. A run asked to cancel then takes the engine's own path: Cancelling
  (its ``on_cancellation`` hooks run) → Cancelled. Any other interruption stays a crash
  (Crashed, ``on_crashed`` hooks), as in a subprocess.
- **Signals.** The engine installs a SIGTERM handler only on the main thread; the worker runs its
  event loop on another thread, so SIGTERM stays the worker's (see ``cli.py``).
"""

from __future__ import annotations

import asyncio
import threading
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from prefect import flow_engine
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import Abort, Pause, TerminationSignal
from prefect.flows import Flow
from prefect.states import State

from stashflow.flows import engine


@dataclass
class RunControl:
    """What the worker asked of one running flow run."""

    flow_run_id: UUID
    cancel_requested: bool = False  # from the UI/API: the run ends Cancelled
    stop_reason: str | None = None  # the worker is stopping: the run ends Crashed with this reason


CONTROL: ContextVar[RunControl | None] = ContextVar("stashflow_run_control", default=None)
_patch_lock = threading.Lock()
_patched = False


def _install_intent_lookup() -> None:
    """Make the engine's termination-intent lookup per run (once per process)."""
    global _patched
    with _patch_lock:
        if _patched:
            return
        process_wide = flow_engine._termination_intent

        def per_run_intent() -> Any:
            control = CONTROL.get()
            if control is not None and control.cancel_requested:
                return "cancel"
            return process_wide()

        flow_engine._termination_intent = per_run_intent
        _patched = True


async def run_flow_run(flow: Flow[..., Any], flow_run: FlowRun, control: RunControl) -> State | None:
    """Run ``flow_run`` to its end with Prefect's async engine; return its final state, or None when
    the engine ended it without one here (aborted by the API, cancelled: the API has the state)."""
    _install_intent_lookup()
    CONTROL.set(control)
    engine.STOP_REASON.set(lambda: control.stop_reason)  # the Failed Snapshot says why the worker stopped it
    try:
        outcome = flow_engine.run_flow(flow, flow_run=flow_run, return_type="state")
        if asyncio.iscoroutine(outcome):
            outcome = await outcome
        return outcome if isinstance(outcome, State) else None
    except (Abort, Pause):
        return None  # the API refused the run's transition (e.g. it was claimed or cancelled meanwhile)
    except TerminationSignal:
        return None  # cancelled through the engine: Cancelling → Cancelled is recorded already
