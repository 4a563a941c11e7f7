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
- **A run claimed before its time.** The worker claims runs up to ``--prefetch-seconds`` early; the
  engine then waits in its Running proposal until the API lets the run start (Prefect's
  ``WaitForScheduledTime``). A worker stopping meanwhile gives the engine the "reschedule" intent
  (Prefect's own, for a supervisor that reschedules): it exits without a state, and the worker
  hands the run back Scheduled. Nothing had run, so nothing is crashed or cleaned up.
- **Signals.** The engine installs a SIGTERM handler only on the main thread; the worker runs its
  event loop on another thread, so SIGTERM stays the worker's (see ``cli.py``).
- **What the engine starts per run to watch it** (``SharedWatch``). For each deployment run the
  engine starts a thread with its own event loop, API client and events subscription to notice a
  suspension from the UI, and for each flow run (a session's subflows too) a heartbeat thread. A
  process of 200 runs had 400 such threads and 200 subscriptions that the server filters every
  event for. Here one suspension observer (one subscription) watches every run of the process and
  one thread sends every run's heartbeat; what reaches the API is the same.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from prefect import flow_engine
from prefect._flow_run_suspension import FlowRunSuspensionRequest, mark_flow_run_suspension_requested
from prefect._internal.observers import FlowRunSuspendingObserver
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import Abort, Pause, TerminationSignal
from prefect.flows import Flow
from prefect.states import State

from stashflow.tasks import stopping


@dataclass
class RunControl:
    """What the worker asked of one running flow run."""

    flow_run_id: UUID
    cancel_requested: bool = False  # from the UI/API: the run ends Cancelled
    stop_reason: str | None = None  # the worker is stopping: the run ends Crashed with this reason
    started: bool = False  # the flow's body began (Running was accepted); before it, a stop hands the run back


@dataclass
class _Beat:
    """One registered flow run: its engine, its heartbeat event's template, its context, when it is due."""

    engine: Any
    resource: Any
    related: Any
    context: contextvars.Context
    due: float


class _Heartbeats:
    """One thread that sends the heartbeat event of every flow run registered, each at the engine's
    interval (Prefect's own sends one per run, from a thread per run)."""

    def __init__(self) -> None:
        self._runs: dict[int, _Beat] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="stashflow-heartbeats", daemon=True)
        self._thread.start()

    def add(self, engine: Any) -> int:
        resource, related = engine._build_heartbeat_event_template()
        key = id(engine)
        with self._lock:  # due at once: Prefect's loop also sends the first heartbeat on entry
            self._runs[key] = _Beat(engine, resource, related, contextvars.copy_context(), time.monotonic())
        self._wake.set()
        return key

    def remove(self, key: int) -> None:
        with self._lock:
            self._runs.pop(key, None)

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    def _loop(self) -> None:
        while not self._closed:
            now = time.monotonic()
            with self._lock:
                due = [beat for beat in self._runs.values() if beat.due <= now]
            for beat in due:
                every = beat.engine.heartbeat_seconds
                beat.due = now + (every if every is not None else 30)
                run = beat.engine.flow_run
                if run is not None and run.state is not None and run.state.is_final():
                    continue
                try:  # in the run's own context: its settings (API URL) reach the events client
                    beat.context.run(beat.engine._emit_flow_run_heartbeat, beat.resource, beat.related)
                except Exception:  # noqa: BLE001 - as Prefect's own loop: a lost heartbeat is not the run's end
                    beat.engine.logger.debug("Failed to emit heartbeat", exc_info=True)
            self._wake.wait(1.0)
            self._wake.clear()


class SharedWatch:
    """The suspension observer and heartbeat thread of every flow run in this process (see the
    module docstring). Entered once by the worker; runs given it through ``run_flow_run`` use it."""

    def __init__(self) -> None:
        self.suspension: FlowRunSuspendingObserver | None = None
        self.heartbeats: _Heartbeats | None = None

    async def __aenter__(self) -> SharedWatch:
        def on_suspended(flow_run_id: UUID, state: State) -> None:  # the run's engine raises Pause at its next step
            mark_flow_run_suspension_requested(flow_run_id, state)

        observer = FlowRunSuspendingObserver(on_suspended=on_suspended)
        self.suspension = await observer.__aenter__()
        self.heartbeats = _Heartbeats()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        if self.heartbeats is not None:
            self.heartbeats.close()
        if self.suspension is not None:
            await self.suspension.__aexit__(*exc_info)


CONTROL: ContextVar[RunControl | None] = ContextVar("stashflow_run_control", default=None)
SHARED: ContextVar[SharedWatch | None] = ContextVar("stashflow_shared_watch", default=None)
_patch_lock = threading.Lock()
_patched = False


def _install_patches() -> None:
    """Make the engine's termination intent per run, and its per-run suspension observer and heartbeat
    thread the process's shared ones when the run has them (once per process; a run without them, or
    outside the worker, gets Prefect's own)."""
    global _patched
    with _patch_lock:
        if _patched:
            return
        process_wide = flow_engine._termination_intent
        own_observer = flow_engine.observe_flow_run_suspension
        own_heartbeats = flow_engine._send_heartbeats

        def per_run_intent() -> Any:
            control = CONTROL.get()
            if control is not None and control.cancel_requested:
                return "cancel"
            if control is not None and control.stop_reason is not None and not control.started:
                return "reschedule"  # still waiting for its time: the engine leaves the state to the worker
            return process_wide()

        @contextmanager
        def observe_suspension(flow_run_id: UUID, suspension_request: FlowRunSuspensionRequest,
                               polling_interval: float = 10) -> Iterator[None]:
            shared = SHARED.get()
            if shared is None or shared.suspension is None:
                with own_observer(flow_run_id, suspension_request, polling_interval):
                    yield
                return
            shared.suspension.add_in_flight_flow_run_id(flow_run_id)
            try:
                yield
            finally:
                shared.suspension.remove_in_flight_flow_run_id(flow_run_id)

        @contextmanager
        def send_heartbeats(engine: Any, join_on_exit: bool = True) -> Iterator[None]:
            control = CONTROL.get()  # entered when the flow's body begins, after Running was accepted
            if control is not None:
                control.started = True
            shared = SHARED.get()
            if shared is None or shared.heartbeats is None or engine.heartbeat_seconds is None:
                with own_heartbeats(engine, join_on_exit):
                    yield
                return
            key = shared.heartbeats.add(engine)
            try:
                yield
            finally:
                shared.heartbeats.remove(key)

        flow_engine._termination_intent = per_run_intent
        flow_engine.observe_flow_run_suspension = observe_suspension
        flow_engine._send_heartbeats = send_heartbeats
        _patched = True


async def run_flow_run(flow: Flow[..., Any], flow_run: FlowRun, control: RunControl,
                       shared: SharedWatch | None = None) -> State | None:
    """Run ``flow_run`` to its end with Prefect's async engine; return its final state, or None when
    the engine ended it without one here (aborted by the API, cancelled: the API has the state)."""
    _install_patches()
    CONTROL.set(control)
    SHARED.set(shared)
    stopping.STOP_REASON.set(lambda: control.stop_reason)  # the Failed Snapshot says why the worker stopped it
    try:
        outcome = flow_engine.run_flow(flow, flow_run=flow_run, return_type="state")
        if asyncio.iscoroutine(outcome):
            outcome = await outcome
        return outcome if isinstance(outcome, State) else None
    except (Abort, Pause):
        return None  # the API refused the run's transition (e.g. it was claimed or cancelled meanwhile)
    except TerminationSignal:
        return None  # cancelled through the engine: Cancelling → Cancelled is recorded already
