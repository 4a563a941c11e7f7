"""Benchmark: one short Job through stashflow and through prefect-kubernetes, same cluster and agent.

For each run it prints: the time from the Job's completion (seen by an independent watch in
this process) to the flow's completion, the total overhead (flow wall time minus the Pod's
scripted 1 s of work), and the API requests made (every kubernetes_asyncio request, counted
at the REST client, for both). Goals: completion seen within 0.1 s; overhead at least 5x
lower than prefect-kubernetes' poll-based wait (its default 5 s interval).

Run: .venv/bin/python bench/job_overhead.py [--runs N]   (starts and stops the local control plane)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ["STASHFLOW_CATALOG"] = os.pathsep.join([str(REPO / "addons" / "catalog"),
                                                   str(REPO / "tests" / "data" / "flow-catalog.yaml")])
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")

from kubernetes_asyncio import client, watch  # noqa: E402
from kubernetes_asyncio.client import rest  # noqa: E402

from localkube.cluster import Cluster  # noqa: E402
from localkube.nodeagent import NodeAgent, succeed  # noqa: E402  (NodeAgent: type only)

WORK_SECONDS = 1.0
REQUESTS = {"n": 0}
TRACE: list[str] = []
LAST_STASHFLOW: list[str] = []  # with --trace: "METHOD path" of every counted request
_original_request = rest.RESTClientObject.request


NOT_COUNTED: set[threading.Thread] = set()  # the node agent's and the observer's threads: not the tools'


async def _counting_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
    if threading.current_thread() not in NOT_COUNTED:
        REQUESTS["n"] += 1
        method, url = (list(args) + [kwargs.get("method"), kwargs.get("url")])[:2]
        TRACE.append(f"{method} {str(url).split('://', 1)[-1].split('/', 1)[-1]}")
    return await _original_request(self, *args, **kwargs)


rest.RESTClientObject.request = _counting_request  # both tools go through here


async def completion_watch(cluster: Cluster, namespace: str, seen: dict[str, float], stop: asyncio.Event) -> None:
    """An independent observer: when each Job's Complete condition first appears."""
    configuration = await cluster.load_config()
    async with client.ApiClient(configuration) as api:
        batch = client.BatchV1Api(api)
        while not stop.is_set():
            w = watch.Watch()
            try:
                async for event in w.stream(batch.list_namespaced_job, namespace, timeout_seconds=5):
                    job = event["raw_object"]
                    for c in (job.get("status") or {}).get("conditions") or []:
                        if c["type"] == "Complete" and c["status"] == "True":
                            seen.setdefault(job["metadata"]["name"], time.monotonic())
                    if stop.is_set():
                        break
            finally:
                await w.close()


def job_manifest(name: str) -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [
                {"name": "work", "image": "example.org/work:1", "command": ["/bin/true"]}]}}}}


async def one_stashflow(cluster: Cluster, namespace: str, i: int) -> tuple[str, float, int, float]:
    from stashflow.flows.addon_flows import flow_for

    before = REQUESTS["n"]
    TRACE.clear()
    start = time.monotonic()
    state = await flow_for("scripted", "backup")(target="PersistentVolumeClaim/data", namespace=namespace,
                                                 cluster={"kubeconfig": str(cluster.kubeconfig)},
                                                 advanced={"session": f"bench-{i}"},
                                                 return_state=True)
    end = time.monotonic()
    if not state.is_completed():
        raise SystemExit(f"stashflow run failed: {state.message}")
    LAST_STASHFLOW[:] = TRACE
    return f"bench-{i}-backup", end, REQUESTS["n"] - before, end - start


async def one_prefect_kubernetes(cluster: Cluster, namespace: str, i: int) -> tuple[str, float, int, float]:
    from prefect_kubernetes.credentials import KubernetesClusterConfig, KubernetesCredentials
    from prefect_kubernetes.flows import run_namespaced_job_async
    from prefect_kubernetes.jobs import KubernetesJob

    name = f"pk-{i}"
    credentials = KubernetesCredentials(cluster_config=KubernetesClusterConfig.from_file(str(cluster.kubeconfig)))
    job = KubernetesJob(v1_job=job_manifest(name), credentials=credentials, namespace=namespace)
    before = REQUESTS["n"]
    start = time.monotonic()
    await run_namespaced_job_async(job)
    end = time.monotonic()
    return name, end, REQUESTS["n"] - before, end - start


async def bench(cluster: Cluster, agent: NodeAgent, runs: int) -> dict[str, list[tuple[float, float, int]]]:
    async with cluster.api_client() as api:
        namespace = f"bench-{int(time.time())}"
        await client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
    agent.script(lambda pod: True, succeed(after=WORK_SECONDS, message='{"components": {"backup": '
                                                                        '{"phase": "Succeeded"}}}'))
    seen: dict[str, float] = {}
    stop = asyncio.Event()
    # the observer has its own thread and loop, so a flow that blocks its loop cannot delay it
    observer = threading.Thread(target=lambda: asyncio.run(completion_watch(cluster, namespace, seen, stop)))
    NOT_COUNTED.update({observer, agent._thread})
    observer.start()
    await asyncio.sleep(1.0)
    results: dict[str, list[tuple[float, float, int]]] = {"stashflow": [], "prefect-kubernetes": []}
    for i in range(runs):
        for label, fn in (("stashflow", one_stashflow), ("prefect-kubernetes", one_prefect_kubernetes)):
            job, end, requests, wall = await fn(cluster, namespace, i)
            await asyncio.sleep(0.3)
            completed = seen.get(job)
            lag = end - completed if completed else float("nan")
            results[label].append((lag, wall - WORK_SECONDS, requests))
    stop.set()
    await asyncio.to_thread(observer.join)
    async with cluster.api_client() as api:
        await client.CoreV1Api(api).delete_namespace(namespace)
    return results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--trace", action="store_true", help="list the requests of the last stashflow run")
    args = parser.parse_args()
    from prefect.testing.utilities import prefect_test_harness

    cluster = Cluster()
    cluster.up()
    agent = cluster.node_agent(state_dir=Path(tempfile.mkdtemp(prefix="bench-agent-"))).start()
    try:
        with prefect_test_harness(server_startup_timeout=180):
            results = asyncio.run(bench(cluster, agent, args.runs))
    finally:
        agent.stop()
        if cluster.started_here:
            cluster.down()
    print(f"one Job doing {WORK_SECONDS:.1f}s of work, {args.runs} runs each (median; all runs in brackets)")
    print(f"{'':20} {'completion -> flow end':>24} {'overhead per run':>18} {'API requests':>14}")
    medians = {}
    for label, rows in results.items():
        lags, overheads, requests = zip(*rows)
        medians[label] = statistics.median(overheads)
        print(f"{label:20} {statistics.median(lags):>22.3f}s {statistics.median(overheads):>17.3f}s "
              f"{statistics.median(requests):>14.0f}   [{', '.join(f'{x:.2f}' for x in overheads)}]")
    ratio = medians["prefect-kubernetes"] / medians["stashflow"] if medians["stashflow"] > 0 else float("inf")
    if args.trace:
        print("requests of the last stashflow run:", *LAST_STASHFLOW, sep="\n  ")
    print(f"overhead ratio prefect-kubernetes / stashflow: {ratio:.1f}x (goal >= 5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
