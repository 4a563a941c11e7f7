"""The process's CRD cache (tasks/objects.py) against the real apiserver: runs starting together read
each CRD once, not once each."""

from __future__ import annotations

import asyncio
from typing import Any

from localkube.cluster import Cluster

from stashflow.addons.crd import KINDS
from stashflow.tasks.kube import Kube
from stashflow.tasks.objects import ensure_crd, forget_crds, read_crd


class CountingKube(Kube):
    """A real Kube that tallies its CRD reads (the requests this test is about)."""

    crd_reads = 0

    async def call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if what == "read CRD":
            CountingKube.crd_reads += 1
        return await super().call(what, fn, *args, **kwargs)


def test_runs_starting_together_read_a_crd_once(kube_cluster: Cluster) -> None:
    async def body() -> None:
        async with kube_cluster.api_client() as api:
            await ensure_crd(Kube(api), "Snapshot")  # present, as after `stashflow install`
            forget_crds()
            CountingKube.crd_reads = 0
            runs = [CountingKube(api) for _ in range(30)]  # each run has its own Kube (its own `seen`)
            found = await asyncio.gather(*(read_crd(kube, KINDS["Snapshot"].crd_name) for kube in runs))
            assert {f.metadata.name for f in found} == {KINDS["Snapshot"].crd_name}
            assert CountingKube.crd_reads == 1
            states = await asyncio.gather(*(ensure_crd(kube, "Snapshot") for kube in runs))
            assert states == ["present"] * len(runs) and CountingKube.crd_reads == 1
            forget_crds()  # past the cache, one read again
            await read_crd(CountingKube(api), KINDS["Snapshot"].crd_name)
            assert CountingKube.crd_reads == 2
    asyncio.run(body())
