"""Why a run stops, and cleanup that must finish while it is being stopped.

Shared by the flows (a run's or a session's abort) and the steps that clean up after themselves
(``start-session`` gives the target back when it fails after claiming it)."""

from __future__ import annotations

import asyncio
import signal
from contextvars import ContextVar
from typing import Any, Awaitable, Callable, TypeVar

__all__ = ["STOP_REASON", "shielded", "stop_reason"]

T = TypeVar("T")

#: Who runs the flow may say why it stops it (the stashflow worker: "the stashflow worker W stopped
#: (SIGTERM)"): asked when the run is cancelled, for its Failed Snapshot.
STOP_REASON: ContextVar[Callable[[], str | None] | None] = ContextVar("stashflow_stop_reason", default=None)


def stop_reason(exc: BaseException, what: str = "run") -> str:
    """Why the run (or session) stopped, for its Failed Snapshot: the reason whoever cancelled it gave
    (``STOP_REASON``, or the cancellation's message), else a plain "cancelled"."""
    told = STOP_REASON.get()
    if told is not None and told():
        return str(told())
    if isinstance(exc, asyncio.CancelledError):
        return str(exc.args[0]) if exc.args and exc.args[0] else f"the {what} was cancelled"
    if isinstance(exc, KeyboardInterrupt):
        return f"the {what} was cancelled"
    signum = getattr(exc, "signal", None)  # Prefect's TerminationSignal: how a runner cancels a run (SIGTERM)
    if isinstance(signum, int):
        try:
            name = signal.Signals(signum).name
        except ValueError:  # not a signal this platform names
            name = str(signum)
        return f"the {what} was stopped by {name}: cancelled, or the process running it was shut down"
    return f"the {what} stopped: {exc}" if str(exc) else f"the {what} stopped: {type(exc).__name__}"


async def shielded(coro: Awaitable[T]) -> T:
    """Run cleanup to its end even while the surrounding task is being cancelled. For cleanup in an
    ``except`` that re-raises what stopped the run: a cancellation meanwhile only waits for it."""
    task: asyncio.Future[T] = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        return await task
