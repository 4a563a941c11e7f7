"""The target's lock (flows/locks.py) against a real Prefect API: one holder at a time, given back
whatever way the block ends, nothing held for a limit that does not exist, and a lease that cannot
be renewed stops its holder."""

from __future__ import annotations

import asyncio
import uuid

import pytest


async def _limit(name: str, limit: int = 1):  # type: ignore[no-untyped-def]
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    async with get_client() as client:
        await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))


async def _active(name: str) -> int:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return (await client.read_global_concurrency_limit_by_name(name)).active_slots


def test_one_holder_at_a_time_and_the_slot_comes_back(prefect_api) -> None:  # type: ignore[no-untyped-def]
    from stashflow.flows import locks

    name = f"stashflow-target-lock-{uuid.uuid4().hex[:8]}"
    run = uuid.uuid4()

    async def scenario() -> list[object]:
        await _limit(name)
        seen: list[object] = []
        async with locks.hold(name, run) as lease:
            assert lease is not None and [limit.name for limit in lease.limits] == [name]
            seen.append(await _active(name))
            with pytest.raises(locks.Busy):
                async with locks.hold(name, uuid.uuid4()):
                    seen.append("entered while held")
        seen.append(await _active(name))
        with pytest.raises(RuntimeError):  # a block that fails gives the slot back too
            async with locks.hold(name, run):
                raise RuntimeError("the run failed")
        seen.append(await _active(name))
        async with locks.hold(name, uuid.uuid4()) as again:
            seen.append(again is not None)
        return seen

    assert asyncio.run(scenario()) == [1, 0, 0, True]


def test_a_limit_that_does_not_exist_holds_nothing(prefect_api) -> None:  # type: ignore[no-untyped-def]
    from stashflow.flows import locks

    async def scenario() -> list[object]:
        name = f"stashflow-no-such-lock-{uuid.uuid4().hex[:8]}"
        async with locks.hold(name, None) as first, locks.hold(name, None) as second:
            return [first, second]

    assert asyncio.run(scenario()) == [None, None]


def test_a_lease_that_cannot_be_renewed_cancels_its_holder(prefect_api, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from prefect.client.orchestration import get_client

    from stashflow.flows import locks

    monkeypatch.setattr(locks, "RETRY_SECONDS", 0.01)
    monkeypatch.setattr(locks, "RENEW_AT", 0.002)  # renewed every 0.6 s of its 300 s
    name = f"stashflow-lost-lock-{uuid.uuid4().hex[:8]}"

    async def holder() -> str:
        async with locks.hold(name, uuid.uuid4()) as lease:
            assert lease is not None
            async with get_client() as client:  # the lease ends behind its holder's back (as after an outage)
                await client.release_concurrency_slots_with_lease(lease.lease_id)
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError as stopped:
                return str(stopped.args[0] if stopped.args else "")
        return "not stopped"

    async def scenario() -> tuple[str, int]:
        await _limit(name)
        why = await asyncio.wait_for(holder(), timeout=20)
        return why, await _active(name)

    why, active = asyncio.run(scenario())
    assert "could not be renewed" in why and "another run of the target may start" in why
    assert active == 0
