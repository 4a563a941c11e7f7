"""The process's shared Job/Pod watches (tasks/watch_hub.py) against the real apiserver and job
controller: many waiting runs, one list and one watch per kind and namespace."""

from __future__ import annotations

import asyncio

from localkube.cluster import Cluster
from localkube.helpers import create_job, job_body
from localkube.nodeagent import NodeAgent, fail, succeed

from stashflow.tasks.kube import Kube
from stashflow.tasks.wait import JobWaiter
from stashflow.tasks.watch_hub import SELECTOR, hub_for


def managed(name: str) -> dict:
    body = job_body(name)
    labels = {"app.kubernetes.io/managed-by": "stashflow"}
    body["metadata"]["labels"] = labels
    body["spec"]["template"]["metadata"]["labels"] = labels
    return body


def test_many_waiters_share_one_watch_per_kind(kube_cluster: Cluster, namespace: str, node_agent: NodeAgent) -> None:
    names = [f"job-{i}" for i in range(6)]
    node_agent.script("job-5", fail(3, message="boom"))
    for name in names[:5]:
        node_agent.script(name, succeed(message=f'{{"n": "{name}"}}', after=1.0))

    async def body() -> None:
        async with kube_cluster.api_client() as api:
            kube = Kube(api)
            for name in names:
                await create_job(api, namespace, managed(name))
            waiters = [JobWaiter(kube, namespace, name, timeout=120) for name in names]
            outcomes = await asyncio.gather(*(w.wait() for w in waiters))
            assert [o.phase for o in outcomes] == ["Complete"] * 5 + ["Failed"]
            assert [o.termination_messages()["main"] for o in outcomes[:5]] == [f'{{"n": "{n}"}}' for n in names[:5]]
            assert outcomes[5].diagnosis is not None and outcomes[5].diagnosis.exit_code == 3
            hub = hub_for(kube)
            # six runs, one namespace: one list and one watch of Jobs, and of Pods (none per run)
            assert hub.requests == 4
            # a run that starts later gets the finished Job from the cache, without a request
            late = await JobWaiter(kube, namespace, names[0], timeout=30).wait()
            assert late.phase == "Complete" and hub.requests == 4
            assert SELECTOR == "app.kubernetes.io/managed-by=stashflow"
    asyncio.run(body())
