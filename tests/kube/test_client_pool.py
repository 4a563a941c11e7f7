"""Kubernetes clients shared by the runs of one process (tasks/kube.py ``shared_connections``), against the
real apiserver: runs starting together share one client, a client past its age serves no new run and
is closed when its last run ends, and outside the pool each run has (and closes) its own."""

from __future__ import annotations

import asyncio

from localkube.cluster import Cluster

from stashflow.tasks.kube import Kube, connect, shared_connections


def closed(kube: Kube) -> bool:
    return bool(kube.api.rest_client.pool_manager.closed)


def test_runs_share_a_client_which_is_renewed_and_closed_when_unused(kube_cluster: Cluster) -> None:
    kubeconfig = str(kube_cluster.kubeconfig)

    async def run(seen: list[Kube], go: asyncio.Event, want: int = 1, ready: asyncio.Event | None = None) -> None:
        async with connect(kubeconfig) as kube:
            seen.append(kube)
            await kube.call("list namespaces", kube.core.list_namespace)
            if ready is not None and len(seen) >= want:
                ready.set()
            await go.wait()

    async def body() -> None:
        async with shared_connections() as pool:
            first: list[Kube] = []
            go, ready = asyncio.Event(), asyncio.Event()
            early = [asyncio.create_task(run(first, go, 20, ready)) for _ in range(20)]
            await ready.wait()
            assert len({id(k.api) for k in first}) == 1  # twenty runs, one client
            pool.MAX_AGE = 0.0  # the client is now too old for new runs
            later: list[Kube] = []
            ready = asyncio.Event()
            late = asyncio.create_task(run(later, go, 1, ready))
            await ready.wait()
            assert later[0].api is not first[0].api
            assert not closed(first[0])  # still used by the early runs
            go.set()
            await asyncio.gather(*early, late)
            assert closed(first[0]) and not closed(later[0])  # the old one went with its last run
        assert closed(later[0])  # the pool closes what it holds

        # without a pool: a client per run, closed with it
        outside: list[Kube] = []
        done = asyncio.Event()
        done.set()
        await asyncio.gather(run(outside, done), run(outside, done))
        assert outside[0].api is not outside[1].api and closed(outside[0]) and closed(outside[1])
    asyncio.run(body())
