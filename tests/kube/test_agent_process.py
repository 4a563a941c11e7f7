"""The node agent as a process (``python -m localkube.nodeagent``), as the README's main job runs it."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from kubernetes_asyncio import client

from localkube.cluster import Cluster, _alive
from localkube.helpers import create_job, job_body, job_condition, job_pods, pod_log, wait_job_finished


def test_cli_agent_runs_jobs_and_down_sh_stops_it_by_pid(kube_cluster: Cluster, namespace: str) -> None:
    pidfile = kube_cluster.settings.run_dir / "pids" / "node-agent.pid"
    proc = subprocess.Popen([sys.executable, "-m", "localkube.nodeagent", "--node-name", "cli-node",
                             "--namespace", namespace, "--pidfile", str(pidfile)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "node agent cli-node ready" in line, line
        assert pidfile.read_text() == str(proc.pid)

        async def body() -> None:
            async with kube_cluster.api_client() as api:
                job = job_body("cli", command=["sh", "-c", "echo ran by $(cat /proc/1/comm) on $NODE"])
                pod_spec = job["spec"]["template"]["spec"]
                pod_spec["nodeName"] = "cli-node"  # so that only this agent takes it
                pod_spec["containers"][0]["env"] = [
                    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]
                await create_job(api, namespace, job)
                assert job_condition(await wait_job_finished(api, namespace, "cli")) == "Complete"
                (pod,) = await job_pods(api, namespace, "cli")
                assert await pod_log(api, namespace, pod.metadata.name, "main") == "ran by sh on cli-node\n"
        asyncio.run(body())
        kube_cluster.down("node-agent")
        assert proc.wait(10) == 0
        assert not pidfile.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

        async def delete_node() -> None:
            async with kube_cluster.api_client() as api:
                await client.CoreV1Api(api).delete_node("cli-node")
        asyncio.run(delete_node())
    assert not _alive(proc.pid)
