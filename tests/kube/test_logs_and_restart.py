"""Logs through the apiserver (live follow), apiserver restarts (410 Gone), KubeStash CRDs."""

from __future__ import annotations

import asyncio

import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from localkube.cluster import Cluster
from localkube.helpers import create_job, job_body, job_condition, job_pods, pod_log, wait_job_finished, wait_pod
from localkube.nodeagent import NodeAgent, succeed


def test_follow_streams_lines_while_the_container_runs(kube_cluster: Cluster, namespace: str,
                                                       node_agent: NodeAgent) -> None:
    lines = [f"line {i}" for i in range(5)]
    node_agent.script("talker", succeed(logs=lines, log_interval=0.3, after=0.3))

    async def body() -> None:
        async with kube_cluster.api_client() as api:
            core = client.CoreV1Api(api)
            await create_job(api, namespace, job_body("talker"))
            pod = await wait_pod(api, namespace, "talker", lambda p: p.status.phase == "Running", what="Running")
            resp = await core.read_namespaced_pod_log(pod.metadata.name, namespace, container="main",
                                                      follow=True, _preload_content=False)
            assert resp.status == 200
            got: list[str] = []
            phase_at_first_line = None
            async for raw in resp.content:
                got.append(raw.decode().rstrip("\n"))
                if phase_at_first_line is None:
                    phase_at_first_line = (await core.read_namespaced_pod(pod.metadata.name, namespace)).status.phase
            assert got == lines  # the stream ends by itself when the container ends
            assert phase_at_first_line == "Running"  # the first line arrived while it still ran
            job = await wait_job_finished(api, namespace, "talker")
            assert job_condition(job) == "Complete"
            # The kubelet's query options pass through the apiserver.
            assert await pod_log(api, namespace, pod.metadata.name, "main", tail_lines=2) == "line 3\nline 4\n"
            assert await pod_log(api, namespace, pod.metadata.name, "main", limit_bytes=8) == "line 0\nl"
            stamped = await pod_log(api, namespace, pod.metadata.name, "main", timestamps=True)
            assert stamped.splitlines()[0].endswith("Z line 0")
            # Errors look like the kubelet's: unknown container (apiserver), no previous attempt (agent).
            with pytest.raises(ApiException) as e:
                await pod_log(api, namespace, pod.metadata.name, "nope")
            assert e.value.status == 400
            with pytest.raises(ApiException) as e:
                await pod_log(api, namespace, pod.metadata.name, "main", previous=True)
            assert e.value.status == 400 and "previous terminated container" in str(e.value)
    asyncio.run(body())


def test_restarting_the_apiserver_gives_410_and_the_agent_carries_on(kube_cluster: Cluster, namespace: str,
                                                                     node_agent: NodeAgent) -> None:
    async def before() -> str:
        async with kube_cluster.api_client() as api:
            await create_job(api, namespace, job_body("before"))
            await wait_job_finished(api, namespace, "before")
            return (await client.BatchV1Api(api).list_namespaced_job(namespace)).metadata.resource_version

    async def after(old_rv: str) -> None:
        async with kube_cluster.api_client() as api:
            batch = client.BatchV1Api(api)
            # A fresh watch cache after the restart no longer reaches back to RV 1.
            with pytest.raises(ApiException) as e:
                async with watch.Watch() as w:
                    async for _ in w.stream(batch.list_namespaced_job, namespace, resource_version="1",
                                            timeout_seconds=5):
                        pass
            assert e.value.status == 410
            # Data survived (same etcd), and the agent reconnected: new Jobs still run.
            assert [j.metadata.name for j in (await batch.list_namespaced_job(namespace)).items] == ["before"]
            await create_job(api, namespace, job_body("after"))
            assert job_condition(await wait_job_finished(api, namespace, "after")) == "Complete"
            assert int((await batch.read_namespaced_job("after", namespace)).metadata.resource_version) > int(old_rv)

    rv = asyncio.run(before())
    pid_before = kube_cluster.pids()["kube-apiserver"]
    kube_cluster.restart_apiserver()
    assert kube_cluster.pids()["kube-apiserver"] != pid_before
    asyncio.run(after(rv))


def test_kubestash_crds_validate_objects(kube_cluster: Cluster, namespace: str, kubestash_crds: list[str]) -> None:
    assert "repositories.storage.kubestash.com" in kubestash_crds

    async def body() -> None:
        async with kube_cluster.api_client() as api:
            co = client.CustomObjectsApi(api)
            repo = {"apiVersion": "storage.kubestash.com/v1alpha1", "kind": "Repository",
                    "metadata": {"name": "demo"},
                    "spec": {"storageRef": {"name": "local", "namespace": namespace}, "path": "/demo"}}
            created = await co.create_namespaced_custom_object("storage.kubestash.com", "v1alpha1", namespace,
                                                               "repositories", repo)
            assert created["spec"]["deletionPolicy"] == "Delete"  # the schema's default, applied by the apiserver
            bad = {**repo, "metadata": {"name": "bad"}, "spec": {**repo["spec"], "deletionPolicy": "Sometimes"}}
            with pytest.raises(ApiException) as e:
                await co.create_namespaced_custom_object("storage.kubestash.com", "v1alpha1", namespace,
                                                         "repositories", bad)
            assert e.value.status == 422 and "deletionPolicy" in e.value.body
    asyncio.run(body())


def test_job_pods_are_garbage_collected_with_their_job(kube_cluster: Cluster, namespace: str,
                                                       node_agent: NodeAgent) -> None:
    async def body() -> None:
        async with kube_cluster.api_client() as api:
            await create_job(api, namespace, job_body("gc"))
            await wait_job_finished(api, namespace, "gc")
            assert len(await job_pods(api, namespace, "gc")) == 1
            await client.BatchV1Api(api).delete_namespaced_job("gc", namespace, propagation_policy="Background")

            async def gone() -> bool:
                return not await job_pods(api, namespace, "gc")
            from localkube.helpers import wait_until
            await wait_until(gone, 30, what="the garbage collector to delete the Job's pods")
    asyncio.run(body())
