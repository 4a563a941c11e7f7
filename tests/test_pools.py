"""`deploy` and a worker starting on the same new pool at once (deployments/pools.py).

The race itself cannot be forced on a real Prefect server (whoever creates the pool first wins in
microseconds), so a small fake client plays it: the pool is missing when read, exists when created."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from stashflow.addons.errors import InputError
from stashflow.deployments.pools import PoolType, ensure_pool


class RacedClient:
    """Read: missing; create: someone (a `stashflow worker --pool P`) made it meanwhile, with ``kind``."""

    def __init__(self, kind: str) -> None:
        self.kind, self.reads = kind, 0

    async def read_work_pool(self, name: str) -> SimpleNamespace:
        self.reads += 1
        if self.reads == 1:
            raise ObjectNotFound(http_exc=Exception("missing"))
        return SimpleNamespace(name=name, type=self.kind)

    async def create_work_pool(self, pool: object) -> None:
        raise ObjectAlreadyExists(http_exc=Exception("exists"))


def test_a_pool_made_meanwhile_is_used() -> None:
    client = RacedClient("stashflow")
    assert asyncio.run(ensure_pool(client, "nightly", None)) is None  # not created by deploy, and no error
    assert client.reads == 2


def test_a_pool_made_meanwhile_of_another_type_is_refused() -> None:
    with pytest.raises(InputError, match="exists with type stashflow, not kubernetes"):
        asyncio.run(ensure_pool(RacedClient("stashflow"), "nightly", PoolType.KUBERNETES))
