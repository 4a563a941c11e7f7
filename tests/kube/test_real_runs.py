"""The node agent runs Pods for real: the container's command as a local process with the Pod's view."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import pytest
from kubernetes_asyncio import client

from localkube.cluster import Cluster, _alive
from localkube.helpers import (
    apt_install, create_job, create_pvc, job_condition, job_pods, pod_log, pvc_host_path, wait_job_finished,
    wait_pod, wait_until,
)
from localkube.nodeagent import NodeAgent, run

PASSWORD = "not-a-secret"


@pytest.fixture(scope="module")
def restic() -> str:
    apt_install("restic")
    return "restic"


def real_job(name: str, script: str, **pod_spec: object) -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"backoffLimit": 0, "template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "main", "image": "debian:bookworm", "command": ["sh", "-c", script],
                                **pod_spec.pop("container", {})}],  # type: ignore[dict-item]
                **pod_spec}}}}


def test_restic_backup_of_a_pvc_through_a_job(kube_cluster: Cluster, namespace: str, node_agent: NodeAgent,
                                              host_tmp: Path, restic: str) -> None:
    node_agent.script("backup", run())
    repo = host_tmp / "repo"
    env = {**os.environ, "RESTIC_PASSWORD": PASSWORD}
    subprocess.run([restic, "init", "--repo", str(repo)], check=True, env=env, capture_output=True)

    async def body() -> str:
        async with kube_cluster.api_client() as api:
            core = client.CoreV1Api(api)
            await create_pvc(api, namespace, "data")
            data = await pvc_host_path(api, namespace, "data")
            (data / "sub").mkdir()
            (data / "hello.txt").write_text("hello\n")
            (data / "sub" / "blob.bin").write_bytes(os.urandom(100_000))
            await core.create_namespaced_secret(namespace, {"metadata": {"name": "restic"},
                                                            "stringData": {"password": PASSWORD}})
            script = ("restic backup /kubestash-data --json --host demo --cache-dir /kubestash-tmp/cache"
                      " > /kubestash-tmp/out.json; rc=$?;"
                      " grep '\"message_type\":\"summary\"' /kubestash-tmp/out.json | tee /dev/termination-log;"
                      " exit $rc")
            job = real_job("backup", script, container={
                "env": [{"name": "RESTIC_REPOSITORY", "value": "/kubestash-repo"},
                        {"name": "RESTIC_PASSWORD",
                         "valueFrom": {"secretKeyRef": {"name": "restic", "key": "password"}}}],
                "volumeMounts": [{"name": "data", "mountPath": "/kubestash-data", "readOnly": True},
                                 {"name": "repo", "mountPath": "/kubestash-repo"},
                                 {"name": "scratch", "mountPath": "/kubestash-tmp"}]},
                volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
                         {"name": "repo", "hostPath": {"path": str(repo), "type": "Directory"}},
                         {"name": "scratch", "emptyDir": {}}])
            await create_job(api, namespace, job)
            done = await wait_job_finished(api, namespace, "backup", timeout=120)
            (pod,) = await job_pods(api, namespace, "backup")
            term = pod.status.container_statuses[0].state.terminated
            assert job_condition(done) == "Complete", (term, await pod_log(api, namespace, pod.metadata.name, "main"))
            assert term.exit_code == 0
            summary = json.loads(term.message)
            assert summary["files_new"] == 2
            # The container's stdout became its log, served through the apiserver.
            assert '"message_type":"summary"' in await pod_log(api, namespace, pod.metadata.name, "main")
            return summary["snapshot_id"]

    snapshot_id = asyncio.run(body())
    out = subprocess.run([restic, "snapshots", "--json", "--repo", str(repo)], check=True, env=env,
                         capture_output=True, text=True).stdout
    (snap,) = json.loads(out)
    assert snap["id"].startswith(snapshot_id)
    assert snap["paths"] == ["/kubestash-data"] and snap["hostname"] == "demo"
    listing = subprocess.run([restic, "ls", "--repo", str(repo), snap["id"]], check=True, env=env,
                             capture_output=True, text=True).stdout.split()
    assert {"/kubestash-data/hello.txt", "/kubestash-data/sub/blob.bin"} <= set(listing)


def test_a_real_run_sees_env_files_and_workdir(kube_cluster: Cluster, namespace: str, node_agent: NodeAgent) -> None:
    node_agent.default = run()  # unscripted Pods run for real

    async def body() -> None:
        async with kube_cluster.api_client() as api:
            core = client.CoreV1Api(api)
            await core.create_namespaced_secret(namespace, {"metadata": {"name": "s"},
                                                            "stringData": {"token": "t0k", "FROM_SECRET": "yes"}})
            await core.create_namespaced_config_map(namespace, {"metadata": {"name": "c"},
                                                                "data": {"mode": "fast", "conf.ini": "[x]\na=1\n"}})
            script = ('echo "token=$TOKEN mode=$MODE both=$BOTH from=$FROM_SECRET pod=$POD_NAME pwd=$(pwd)";'
                      " cat /etc/app/conf.ini; echo 'it broke' > /dev/termination-log; exit 3")
            job = real_job("env", script, container={
                "workingDir": "/srv/work",
                "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}},
                        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "mode"}}},
                        {"name": "BOTH", "value": "$(TOKEN)-$(MODE)"},
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "envFrom": [{"secretRef": {"name": "s"}}],
                "volumeMounts": [{"name": "conf", "mountPath": "/etc/app", "readOnly": True}]},
                volumes=[{"name": "conf", "configMap": {"name": "c", "items": [{"key": "conf.ini", "path": "conf.ini"}]}}])
            await create_job(api, namespace, job)
            done = await wait_job_finished(api, namespace, "env")
            assert job_condition(done) == "Failed"
            (pod,) = await job_pods(api, namespace, "env")
            term = pod.status.container_statuses[0].state.terminated
            assert (term.exit_code, term.reason, term.message) == (3, "Error", "it broke\n")
            text = await pod_log(api, namespace, pod.metadata.name, "main")
            assert text == (f"token=t0k mode=fast both=t0k-fast from=yes pod={pod.metadata.name} pwd=/srv/work\n"
                            "[x]\na=1\n")
    asyncio.run(body())
    assert not Path("/srv/work").exists() and not Path("/etc/app").exists()  # created in the throw-away root only


def test_a_missing_secret_is_a_config_error_until_it_exists(kube_cluster: Cluster, namespace: str,
                                                            node_agent: NodeAgent) -> None:
    node_agent.script("late", run())

    async def body() -> None:
        async with kube_cluster.api_client() as api:
            core = client.CoreV1Api(api)
            await create_job(api, namespace, real_job("late", 'echo "pw=$PW"', container={
                "env": [{"name": "PW", "valueFrom": {"secretKeyRef": {"name": "late", "key": "pw"}}}]}))

            def config_error(p: client.V1Pod) -> bool:
                cs = p.status.container_statuses or []
                return bool(cs) and cs[0].state.waiting is not None \
                    and cs[0].state.waiting.reason == "CreateContainerConfigError"
            pod = await wait_pod(api, namespace, "late", config_error, what="CreateContainerConfigError")
            assert pod.status.container_statuses[0].state.waiting.message == 'secret "late" not found'
            await core.create_namespaced_secret(namespace, {"metadata": {"name": "late"}, "stringData": {"pw": "p"}})
            assert job_condition(await wait_job_finished(api, namespace, "late")) == "Complete"
            assert await pod_log(api, namespace, pod.metadata.name, "main") == "pw=p\n"
    asyncio.run(body())


def test_a_command_that_does_not_exist_is_a_start_error(kube_cluster: Cluster, namespace: str,
                                                        node_agent: NodeAgent) -> None:
    node_agent.script("nocmd", run())

    async def body() -> None:
        async with kube_cluster.api_client() as api:
            b = real_job("nocmd", "")
            b["spec"]["template"]["spec"]["containers"][0]["command"] = ["no-such-tool-here", "--version"]
            await create_job(api, namespace, b)
            assert job_condition(await wait_job_finished(api, namespace, "nocmd")) == "Failed"
            (pod,) = await job_pods(api, namespace, "nocmd")
            term = pod.status.container_statuses[0].state.terminated
            assert (term.exit_code, term.reason) == (128, "StartError")
            assert "no-such-tool-here" in term.message
    asyncio.run(body())


def test_follow_a_real_process_and_deleting_its_pod_stops_it(kube_cluster: Cluster, namespace: str,
                                                             node_agent: NodeAgent) -> None:
    node_agent.script("long", run())

    async def body() -> list[int]:
        async with kube_cluster.api_client() as api:
            core = client.CoreV1Api(api)
            # sleep as PID 1 ignores SIGTERM, as in a container: it is killed when the grace period ends.
            await create_job(api, namespace, real_job(
                "long", "for i in 1 2 3; do echo tick $i; sleep 0.2; done; exec sleep 600",
                terminationGracePeriodSeconds=1))
            pod = await wait_pod(api, namespace, "long", lambda p: p.status.phase == "Running", what="Running")
            resp = await core.read_namespaced_pod_log(pod.metadata.name, namespace, container="main", follow=True,
                                                      _preload_content=False)
            got = []
            async for raw in resp.content:
                got.append(raw.decode().strip())
                if len(got) == 3:
                    break
            resp.release()
            assert got == ["tick 1", "tick 2", "tick 3"]
            pids = node_agent.running_pids(namespace)
            assert pids
            await client.BatchV1Api(api).delete_namespaced_job("long", namespace, propagation_policy="Background")

            async def gone() -> bool:
                return not await job_pods(api, namespace, "long")
            await wait_until(gone, 60, what="the pod to be deleted")
            return pids
    pids = asyncio.run(body())
    assert not [p for p in pids if _alive(p)]
    assert node_agent.running_pids(namespace) == []


def _tree(pid: int) -> list[int]:
    """``pid`` and every process below it (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            todo += [int(c) for t in Path(f"/proc/{p}/task").iterdir() for c in (t / "children").read_text().split()]
        except OSError:
            continue
    return out


def _uid(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def test_a_pod_running_as_another_user_ends_with_its_pod(kube_cluster: Cluster, namespace: str,
                                                         node_agent: NodeAgent) -> None:
    """A change of user clears the parent-death signal that ``unshare --kill-child`` set; podrun sets it
    again, else the container's processes would outlive the Pod (its PID 1 ignores SIGTERM)."""
    node_agent.script("other-user", run())

    async def body() -> list[int]:
        async with kube_cluster.api_client() as api:
            await create_job(api, namespace, real_job("other-user", "exec sleep 600", terminationGracePeriodSeconds=1,
                                                      securityContext={"runAsUser": 65534, "runAsGroup": 65534}))
            await wait_pod(api, namespace, "other-user", lambda p: p.status.phase == "Running", what="Running")

            async def as_nobody() -> list[int] | None:  # the container's command runs, as user 65534
                found = [p for pid in node_agent.running_pids(namespace) for p in _tree(pid)]
                return found if any(_uid(p) == 65534 for p in found) else None
            processes = await wait_until(as_nobody, 30, what="the container's process as user 65534")
            await client.BatchV1Api(api).delete_namespaced_job("other-user", namespace, propagation_policy="Background")

            async def gone() -> bool:
                return not await job_pods(api, namespace, "other-user")
            await wait_until(gone, 60, what="the pod to be deleted")
            return processes
    processes = asyncio.run(body())

    async def ended() -> bool | None:
        return not [p for p in processes if _alive(p)] or None
    asyncio.run(wait_until(ended, 30, what="every process of the Pod to end"))
