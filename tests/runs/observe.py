"""Reading the cluster and the Prefect API from flow tests."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from typing import Any, Callable

from kubernetes_asyncio import client

from localkube.cluster import Cluster


def api(cluster: Cluster, fn: Callable[[client.ApiClient], Any]) -> Any:
    """Run ``fn(api_client)`` (a coroutine function) against the cluster, synchronously."""
    async def go() -> Any:
        async with cluster.api_client() as c:
            return await fn(c)
    return asyncio.run(go())


def snapshot(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return api(cluster, lambda c: client.CustomObjectsApi(c).get_namespaced_custom_object(
        "storage.kubestash.com", "v1alpha1", namespace, "snapshots", name))


def snapshots(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    found = api(cluster, lambda c: client.CustomObjectsApi(c).list_namespaced_custom_object(
        "storage.kubestash.com", "v1alpha1", namespace, "snapshots"))
    return found["items"]


def jobs(cluster: Cluster, namespace: str, selector: str = "app.kubernetes.io/managed-by=stashflow") -> list[Any]:
    return api(cluster, lambda c: client.BatchV1Api(c).list_namespaced_job(namespace, label_selector=selector)).items


def pvcs(cluster: Cluster, namespace: str, selector: str = "app.kubernetes.io/managed-by=stashflow") -> list[Any]:
    return api(cluster, lambda c: client.CoreV1Api(c).list_namespaced_persistent_volume_claim(
        namespace, label_selector=selector)).items


def eventually(check: Callable[[], Any], timeout: float = 60.0, interval: float = 0.2) -> Any:
    """Poll ``check`` until it returns something truthy (for the cluster's own asynchrony: GC, finalizers)."""
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"not true within {timeout}s: {check.__doc__ or check}")
        time.sleep(interval)


def sigterm_once_a_job_exists(proc: subprocess.Popen, cluster: Cluster, namespace: str) -> tuple[str, str]:
    """As a user's Ctrl-C or a worker's stop: SIGTERM to the CLI once its run made a Job; its output."""
    try:
        eventually(lambda: jobs(cluster, namespace), timeout=120)
        proc.send_signal(signal.SIGTERM)
        return proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()


def nothing_left(cluster: Cluster, namespace: str) -> bool:
    """No Job and no PVC of stashflow's in the namespace (deletion finished, finalizers done)."""
    return not jobs(cluster, namespace) and not pvcs(cluster, namespace)


async def _prefect(fn: Callable[[Any], Any]) -> Any:
    from prefect.client.orchestration import get_client

    async with get_client() as c:
        return await fn(c)


def prefect(fn: Callable[[Any], Any]) -> Any:
    return asyncio.run(_prefect(fn))


def flow_run_logs(flow_run_id: Any) -> list[str]:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    logs = prefect(lambda c: c.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))))
    return [log.message for log in logs]


def flow_run_artifacts(flow_run_id: Any) -> list[Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return prefect(lambda c: c.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))))


def artifacts_by_key(key: str) -> list[Any]:
    """Every version of the artifact with ``key``, newest first."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    return prefect(lambda c: c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                              sort=ArtifactSort.CREATED_DESC))
