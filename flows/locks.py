"""A slot of a Prefect global concurrency limit, held on a lease: how a run holds its target.

Prefect's ``concurrency()`` takes the same slot through the same API, with more around each call: a
queue service with an API client of its own per limit name (here one per target, so one per run),
and a thread that renews the lease at once and then every 225 s on a sync client. At a fleet's
minute that was 200 services, 200 clients, 200 threads and 200 renewals before the first Job
(``bench/fanout.py``). Here the run's own client takes the slot, renews it from a task on the run's
loop a quarter of the lease before it ends, and gives it back: two requests for a run shorter than
the renewal interval. What Prefect shows is the same (the slot, its lease, the
``prefect.concurrency-limit.acquired``/``released`` events), and the lease names its flow run.

A lease that cannot be renewed (the API is away for longer than the lease) no longer keeps other
runs out, so the run holding it is cancelled, as Prefect's ``raise_on_lease_renewal_failure`` does.
A process that dies holding a slot holds it until the lease expires.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from uuid import UUID

import httpx
from prefect import get_run_logger
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.client.schemas.responses import ConcurrencyLimitWithLeaseResponse
from prefect.concurrency._events import emit_concurrency_acquisition_events, emit_concurrency_release_events
from prefect.exceptions import MissingContextError

from stashflow.tasks.stopping import shielded

__all__ = ["LEASE_SECONDS", "Busy", "LeaseLost", "hold"]

#: How long a slot stays held without a renewal (Prefect's default). A run renews it every
#: ``LEASE_SECONDS * RENEW_AT``; a process that dies holding it frees it after this long.
LEASE_SECONDS = 300.0
RENEW_AT = 0.75
RENEW_ATTEMPTS = 3  # as Prefect: a renewal is retried twice, RETRY_SECONDS and twice that apart, then it is lost
RETRY_SECONDS = 1.0


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The run's logger (its lines reach the UI), else this module's."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("stashflow.locks")


class Busy(Exception):
    """Every slot of the limit is held (by another run of the same target)."""


class LeaseLost(Exception):
    """The lease could not be renewed: the slot may be another run's now."""


@asynccontextmanager
async def hold(name: str, flow_run_id: UUID | None,
               lease_seconds: float = LEASE_SECONDS) -> AsyncIterator[ConcurrencyLimitWithLeaseResponse | None]:
    """Hold one slot of the limit ``name`` while the block runs; gives the lease, or None when no such
    limit exists (nothing to hold). Raises ``Busy`` at once, without waiting, when no slot is free."""
    holder = ConcurrencyLeaseHolder(type="flow_run", id=flow_run_id) if flow_run_id else None
    async with get_client() as client:
        try:
            response = await client.increment_concurrency_slots_with_lease(
                names=[name], slots=1, mode="concurrency", lease_duration=lease_seconds, holder=holder)
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code == 423:  # Locked: no slot free
                raise Busy(name) from None
            raise
        lease = ConcurrencyLimitWithLeaseResponse.model_validate(response.json())
        if not lease.limits:
            yield None
            return
        acquired = emit_concurrency_acquisition_events(lease.limits, 1)
        holding = asyncio.current_task()
        renewer = asyncio.create_task(_keep(client, lease.lease_id, lease_seconds, holding),
                                      name=f"lease-{name}")
        try:
            yield lease
        finally:
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)
            try:
                await shielded(client.release_concurrency_slots_with_lease(lease.lease_id))
            except Exception as exc:  # noqa: BLE001 - never the run's outcome: the slot frees itself
                _logger().warning("the lock %s was not given back (%s): it frees itself when its lease ends, within "
                               "%.0f s", name, exc, lease_seconds)
            emit_concurrency_release_events(lease.limits, 1, acquired)


async def _keep(client: PrefectClient, lease_id: UUID, lease_seconds: float,
                holding: asyncio.Task[object] | None) -> None:
    """Renew the lease before it ends, for as long as the block runs; cancel the block if it is lost."""
    while True:
        await asyncio.sleep(lease_seconds * RENEW_AT)
        for attempt in range(RENEW_ATTEMPTS):
            try:
                await client.renew_concurrency_lease(lease_id=lease_id, lease_duration=lease_seconds)
                break
            except Exception as exc:  # noqa: BLE001 - any failure: try again, then give the run up
                if attempt == RENEW_ATTEMPTS - 1:
                    lost = LeaseLost(f"the target's lock (lease {lease_id}) could not be renewed: {exc}; "
                                     "another run of the target may start, so this one stops")
                    _logger().error("%s", lost)
                    if holding is not None:
                        holding.cancel(msg=str(lost))
                    return
                await asyncio.sleep(RETRY_SECONDS * 2 ** attempt)
