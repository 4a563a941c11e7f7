"""Prefect's Kubernetes work pool, end to end: `stashflow deploy --pool-type kubernetes`, prefect-kubernetes'
worker against the local control plane, each flow run a Job whose Pod the node agent runs from the
project's environment (as an image with stashflow installed would), reaching the API in-cluster as
ServiceAccount `stashflow` (made by `stashflow install`). And the duplicate execution a deleted
flow-run Pod causes (the job controller's replacement Pod plus Prefect's reschedule) is harmless."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from localkube.nodeagent import run, succeed
from runs.observe import api, eventually, jobs, snapshots

from .conftest import REPO
from .plans import session, write_plan

pytestmark = pytest.mark.sqlite_only  # the Prefect database is not what this proves (see test_deploy)
BIN = REPO / ".venv" / "bin"
REPORT = json.dumps({"components": {"backup": {"phase": "Succeeded", "size": "1 MiB", "integrity": True}}})


def _deployment(tag: str) -> Any:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterTags

    from runs.observe import prefect

    (found,) = eventually(lambda: prefect(lambda c: c.read_deployments(
        deployment_filter=DeploymentFilter(tags=DeploymentFilterTags(all_=[tag])))), timeout=60)
    return found


def _runs(deployment_id: Any) -> list[Any]:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    from runs.observe import prefect

    return [r for r in prefect(lambda c: c.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))) if not r.auto_scheduled]


def _pods_and_events(kube_cluster, namespace: str) -> str:  # type: ignore[no-untyped-def]
    """For a failure message: what the Pods and Events of the namespace say."""
    from kubernetes_asyncio import client

    pods = api(kube_cluster, lambda c: client.CoreV1Api(c).list_namespaced_pod(namespace)).items
    events = api(kube_cluster, lambda c: client.CoreV1Api(c).list_namespaced_event(namespace)).items
    return "\n".join([*(f"pod {p.metadata.name}: {p.status.phase} {p.status.container_statuses}" for p in pods),
                      *(f"event {e.involved_object.name}: {e.reason} {e.message}" for e in events)])


@pytest.fixture
def k8s_worker(prefect_server: dict[str, str], kube_cluster, namespace: str) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """The pool's name ("k8s-<namespace>"), with `stashflow install` done in the namespace."""
    pool = f"k8s-{namespace}"
    installed = subprocess.run([str(BIN / "stashflow"), "install", "-n", namespace, "--kubeconfig",
                                str(kube_cluster.kubeconfig)], env=prefect_server, capture_output=True, text=True, timeout=120)
    assert installed.returncode == 0, installed.stderr
    yield pool


@pytest.fixture
def start_worker(prefect_server: dict[str, str], kube_cluster, namespace: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Start `prefect worker start --type kubernetes` on a pool (after deploy made it); stopped by pid."""
    started: list[subprocess.Popen] = []
    env = {**prefect_server, "KUBECONFIG": str(kube_cluster.kubeconfig),
           "PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES": namespace, "PREFECT_WORKER_QUERY_SECONDS": "1"}

    def start(pool: str) -> Path:
        log = tmp_path / f"worker-{len(started)}.log"
        started.append(subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type",
                                         "kubernetes"], env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                        start_new_session=True))
        return log
    yield start
    for worker in started:
        for signum, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 30)):
            if worker.poll() is None:
                os.killpg(worker.pid, signum)
                try:
                    worker.wait(timeout=wait)
                except subprocess.TimeoutExpired:
                    continue


def test_a_backup_runs_as_a_flow_run_job_of_a_kubernetes_pool(prefect_server, kube_cluster, namespace, node_agent,
                                                             k8s_worker, start_worker, tmp_path) -> None:
    from prefect.deployments import run_deployment

    node_agent.default = run()  # the flow-run Pod runs for real, from this checkout's environment
    node_agent.script({"stashflow.io/task": "backup"}, succeed(message=REPORT, after=1.0))
    plan = write_plan(tmp_path / "plan.yaml", namespace, [session("nightly")], name="k8s")
    deploy = subprocess.run(
        [str(BIN / "stashflow"), "deploy", str(plan), "--work-pool", k8s_worker, "--pool-type", "kubernetes",
         "--flow-run-command", f"{BIN / 'prefect'} flow-run execute"],
        env=prefect_server, capture_output=True, text=True, timeout=180)
    assert deploy.returncode == 0, deploy.stderr
    assert f"created work pool {k8s_worker} (type kubernetes)" in deploy.stdout
    log = start_worker(k8s_worker)
    deployment = _deployment(f"plan:{namespace}.k8s")
    flow_run = run_deployment(deployment.id, timeout=300)
    assert flow_run.state.is_completed(), (flow_run.state.message, log.read_text()[-3000:],
                                           _pods_and_events(kube_cluster, namespace))
    assert [s["status"]["phase"] for s in snapshots(kube_cluster, namespace)] == ["Succeeded"]
    flow_run_jobs = jobs(kube_cluster, namespace, selector=f"prefect.io/flow-run-id={flow_run.id}")
    assert len(flow_run_jobs) == 1
    pod = api(kube_cluster, lambda c: __import__("kubernetes_asyncio").client.CoreV1Api(c).list_namespaced_pod(
        namespace, label_selector=f"prefect.io/flow-run-id={flow_run.id}")).items[0]
    assert pod.spec.service_account_name == "stashflow"  # in-cluster, with only the verbs install gave


def test_a_deleted_flow_run_pod_does_not_back_up_twice(prefect_server, kube_cluster, namespace, node_agent,
                                                       k8s_worker, start_worker, tmp_path) -> None:
    """Deleting the flow-run Pod mid-backup: the job controller starts a replacement Pod and Prefect
    reschedules the run; whatever runs again finds the session's Job and Snapshot and adopts them."""
    from kubernetes_asyncio import client
    from prefect.deployments import run_deployment

    node_agent.default = run()
    node_agent.script({"stashflow.io/task": "backup"}, succeed(message=REPORT, after=20.0))
    plan = write_plan(tmp_path / "plan.yaml", namespace, [session("nightly")], name="dup")
    assert subprocess.run(
        [str(BIN / "stashflow"), "deploy", str(plan), "--work-pool", k8s_worker, "--pool-type", "kubernetes",
         "--flow-run-command", f"{BIN / 'prefect'} flow-run execute"], env=prefect_server, timeout=180).returncode == 0
    log = start_worker(k8s_worker)
    deployment = _deployment(f"plan:{namespace}.dup")
    flow_run = run_deployment(deployment.id, timeout=0)
    eventually(lambda: jobs(kube_cluster, namespace), timeout=240, interval=1)  # the backup Job is running
    selector = f"prefect.io/flow-run-id={flow_run.id}"
    pods = api(kube_cluster, lambda c: client.CoreV1Api(c).list_namespaced_pod(namespace, label_selector=selector))
    for p in pods.items:
        api(kube_cluster, lambda c, n=p.metadata.name: client.CoreV1Api(c).delete_namespaced_pod(n, namespace))

    eventually(lambda: all(r.state.is_final() for r in _runs(deployment.id)) or None, timeout=300, interval=2)
    runs = _runs(deployment.id)
    backup_jobs = jobs(kube_cluster, namespace)
    found = snapshots(kube_cluster, namespace)
    story = ([(r.name, r.state.name, r.state.message) for r in runs], [j.metadata.name for j in backup_jobs],
             [(x["metadata"]["name"], (x.get("status") or {}).get("phase")) for x in found],
             _pods_and_events(kube_cluster, namespace))
    assert len(found) == 1, story  # one session, one Snapshot, whatever ran twice
    assert len(backup_jobs) <= 1, story
