"""Hooks run for real (tasks/hooks.py): Pods the node agent runs, exec through the API (the agent's
kubelet /exec), HTTP and TCP to the Pod's IP, retries, timeouts, one Pod or all of them."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client

from localkube.cluster import Cluster
from localkube.helpers import wait_until
from localkube.nodeagent import NodeAgent, run
from stashflow.addons.hooks import HookPlan
from stashflow.tasks.hooks import HookFailed, execute_hook
from stashflow.tasks.kube import connect

pytestmark = pytest.mark.cluster
LOG = logging.getLogger("test-hooks")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pod(name: str, labels: dict[str, str], script: str, data: Path, port: int | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "app", "image": "debian:bookworm", "command": ["sh", "-c", script],
                                 "volumeMounts": [{"name": "data", "mountPath": "/data"}]}
    if port:
        container["ports"] = [{"name": "web", "containerPort": port}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
            "spec": {"restartPolicy": "Never", "containers": [container], "automountServiceAccountToken": False,
                     "volumes": [{"name": "data", "hostPath": {"path": str(data), "type": "Directory"}}]}}


def hook(kind: str, action: dict[str, Any], namespace: str, **fields: Any) -> HookPlan:
    return HookPlan(name="h", phase=fields.pop("phase", "preBackup"), namespace=namespace,
                    executor=fields.pop("executor", "Pod"), kind=kind, action=action,  # type: ignore[arg-type]
                    selector=fields.pop("selector", "app=web"), **fields)


@pytest.fixture
def web(kube_cluster: Cluster, namespace: str, node_agent: NodeAgent, host_tmp: Path):  # type: ignore[no-untyped-def]
    """Two Running Pods labelled app=web; web-0 serves host_tmp over HTTP on ``port``."""
    node_agent.default = run()
    port = _free_port()
    (host_tmp / "ok.txt").write_text("fine\n")

    async def start() -> None:
        async with kube_cluster.api_client() as api:
            core = client.CoreV1Api(api)
            await core.create_namespaced_pod(namespace, pod(
                "web-0", {"app": "web"}, f"exec python3 -m http.server {port} --bind 127.0.0.1 --directory /data",
                host_tmp, port))
            await core.create_namespaced_pod(namespace, pod("web-1", {"app": "web"}, "exec sleep 600", host_tmp))

            async def running() -> bool | None:
                pods = (await core.list_namespaced_pod(namespace, label_selector="app=web")).items
                return len(pods) == 2 and all(p.status.phase == "Running" for p in pods) or None
            await wait_until(running, timeout=60)

            def serving() -> bool:
                with socket.socket() as s:
                    return s.connect_ex(("127.0.0.1", port)) == 0
            await wait_until(lambda: asyncio.to_thread(lambda: serving() or None), timeout=60)
    asyncio.run(start())
    return port, host_tmp


def outcome(kube_cluster: Cluster, plan: HookPlan) -> Any:
    async def go() -> Any:
        async with connect(str(kube_cluster.kubeconfig)) as kube:
            return await execute_hook(kube, plan, LOG)
    return asyncio.run(go())


def failure(kube_cluster: Cluster, plan: HookPlan) -> HookFailed:
    with pytest.raises(HookFailed) as err:
        outcome(kube_cluster, plan)
    return err.value


def test_exec_runs_in_the_pods_container_as_data(kube_cluster: Cluster, namespace: str, web) -> None:  # type: ignore[no-untyped-def]
    _, data = web
    value = "it's $(HOME) and $x; `rm -rf /`"
    done = outcome(kube_cluster, hook("exec", {"command": ["sh", "-c", 'printf %s "$1" > /data/marker; hostname',
                                                           "sh", value]}, namespace))
    assert done.phase == "Succeeded" and done.where == ("web-0",)  # ExecuteOnOne: the first by name
    assert (data / "marker").read_text() == value  # byte-equal: no shell, no $(VAR) expansion on the way


def test_exec_on_all_pods(kube_cluster: Cluster, namespace: str, web) -> None:  # type: ignore[no-untyped-def]
    _, data = web
    done = outcome(kube_cluster, hook("exec", {"command": ["sh", "-c", "hostname > /data/ran-$(hostname)"]},
                                      namespace, on_all=True))
    assert done.where == ("web-0", "web-1")
    assert sorted(p.name for p in data.glob("ran-*")) == ["ran-web-0", "ran-web-1"]


def test_a_failing_exec_is_retried_then_fails_with_its_output(kube_cluster: Cluster, namespace: str, web) -> None:  # type: ignore[no-untyped-def]
    _, data = web
    err = failure(kube_cluster, hook("exec", {"command": ["sh", "-c", "echo try >> /data/tries; echo nope >&2; exit 3"]},
                                     namespace, tries=3))
    assert err.code == "hook-failed"
    assert "exit code 3" in err.message and "nope" in err.message and "after 3 tries" in err.message
    assert (data / "tries").read_text() == "try\n" * 3


def test_http_and_tcp_reach_the_pods_ip_and_named_port(kube_cluster: Cluster, namespace: str, web) -> None:  # type: ignore[no-untyped-def]
    port, _ = web
    assert outcome(kube_cluster, hook("httpGet", {"port": "web", "path": "/ok.txt"}, namespace,
                                      container="app")).phase == "Succeeded"
    assert outcome(kube_cluster, hook("tcpSocket", {"port": port}, namespace)).phase == "Succeeded"
    missing = failure(kube_cluster, hook("httpGet", {"port": port, "path": "/missing"}, namespace))
    assert missing.code == "hook-failed" and "HTTP 404" in missing.message
    closed = failure(kube_cluster, hook("tcpSocket", {"port": _free_port()}, namespace))
    assert "is not open" in closed.message


def test_operator_http_post_calls_the_host_itself(kube_cluster: Cluster, namespace: str, web) -> None:  # type: ignore[no-untyped-def]
    port, _ = web
    # python's http.server answers POST with 501: a failed hook, with the status in its message
    err = failure(kube_cluster, hook("httpPost", {"host": "127.0.0.1", "port": port, "path": "/", "body": "{}"},
                                     namespace, executor="Operator", selector=""))
    assert "HTTP 501" in err.message


def test_no_matching_pod_and_a_timeout(kube_cluster: Cluster, namespace: str, web) -> None:  # type: ignore[no-untyped-def]
    none = failure(kube_cluster, hook("exec", {"command": ["true"]}, namespace, selector="app=nothing"))
    assert none.code == "hook-no-pod" and "app=nothing" in none.message
    slow = failure(kube_cluster, hook("exec", {"command": ["sleep", "30"]}, namespace, timeout=1.0))
    assert slow.code == "hook-timeout"
