"""stashflow in the cluster: the objects `stashflow install --in-cluster` prints (namespace stashflow,
PostgreSQL as a StatefulSet, the Prefect server and the stashflow worker as Deployments, the worker's
ServiceAccount and RBAC) applied to the local control plane; the node agent runs all three Pods from
this machine (localkube/images.py: Debian's PostgreSQL as the official image's entrypoint runs it,
Prefect and stashflow from this checkout's .venv); a plan deployed onto that Prefect server's pool has
its scheduled run taken by the worker Pod, which backs the target up in-cluster as its ServiceAccount."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from localkube.nodeagent import run, succeed

from runs.observe import api, eventually, jobs, pvcs, snapshots
from .conftest import REPO
from .plans import session, write_plan

STASHFLOW = str(REPO / ".venv" / "bin" / "stashflow")
REPORT = json.dumps({"components": {"backup": {"phase": "Succeeded", "size": "1 MiB", "integrity": True}}})
HOME = "stashflow"  # the namespace the manifests run in


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _local_node(objects: list[dict[str, Any]], postgres_port: int, api_port: int) -> list[dict[str, Any]]:
    """What the local node cannot do, and only that: it has no cluster DNS and no Service routing, and
    its Pods are processes on the host's network. So the Services' names become 127.0.0.1, and the two
    servers listen on free ports of this machine (PGPORT, PREFECT_SERVER_API_PORT) instead of 5432 and
    4200, which another test or program may hold. Everything else is applied as printed."""
    hosts = {f"postgres.{HOME}.svc:5432": f"127.0.0.1:{postgres_port}",
             f"prefect-server.{HOME}.svc:4200": f"127.0.0.1:{api_port}"}
    text = yaml.safe_dump_all(objects, sort_keys=False)
    for name, local in hosts.items():
        assert name in text, name  # the manifests name the Service this replaces
        text = text.replace(name, local)
    out = list(yaml.safe_load_all(text))
    ports = {"postgres": ("PGPORT", postgres_port), "prefect-server": ("PREFECT_SERVER_API_PORT", api_port)}
    for obj in out:
        if obj["kind"] in ("StatefulSet", "Deployment") and obj["metadata"]["name"] in ports:
            env, port = ports[obj["metadata"]["name"]]
            obj["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": env, "value": str(port)})
    return out


async def _each(kube_cluster, objects: list[dict[str, Any]], verb: str) -> None:  # type: ignore[no-untyped-def]
    """Create or delete each object through the API's discovery, as kubectl does."""
    from kubernetes_asyncio.client.exceptions import ApiException
    from kubernetes_asyncio.dynamic import DynamicClient

    async with kube_cluster.api_client() as c:
        dynamic = await DynamicClient(c)
        for obj in objects:
            resource = await dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
            namespace = obj["metadata"].get("namespace")
            if verb == "create":
                await resource.create(body=obj, namespace=namespace)
                continue
            try:
                await resource.delete(name=obj["metadata"]["name"], namespace=namespace)
            except ApiException as e:
                if e.status not in (404, 409):  # the Namespace's deletion may have taken it already
                    raise


def _pods(kube_cluster, namespace: str) -> list[Any]:  # type: ignore[no-untyped-def]
    from kubernetes_asyncio import client

    return api(kube_cluster, lambda c: client.CoreV1Api(c).list_namespaced_pod(namespace)).items


def _story(kube_cluster) -> str:  # type: ignore[no-untyped-def]
    """For a failure message: the Pods of the namespace, their statuses and the last lines of their logs."""
    from kubernetes_asyncio import client

    lines = []
    for pod in _pods(kube_cluster, HOME):
        lines.append(f"pod {pod.metadata.name}: {pod.status.phase} {pod.status.container_statuses}")
        try:
            log = api(kube_cluster, lambda c, n=pod.metadata.name: client.CoreV1Api(c).read_namespaced_pod_log(
                n, HOME, tail_lines=30))
            lines.append(str(log))
        except Exception as exc:  # noqa: BLE001 - a story for a failure message, whatever it can tell
            lines.append(f"(no log: {exc})")
    events = api(kube_cluster, lambda c: client.CoreV1Api(c).list_namespaced_event(HOME)).items
    lines += [f"event {e.involved_object.name}: {e.reason} {e.message}" for e in events]
    return "\n".join(lines)


def _log(kube_cluster, pod: str) -> str | None:  # type: ignore[no-untyped-def]
    from kubernetes_asyncio import client
    from kubernetes_asyncio.client.exceptions import ApiException

    try:
        return str(api(kube_cluster, lambda c: client.CoreV1Api(c).read_namespaced_pod_log(pod, HOME)))
    except ApiException:
        return None


def _descendants(pids: list[int]) -> set[int]:
    """``pids`` and every process below them (from /proc), to check each is gone after the deletion."""
    found, todo = set(), list(pids)
    while todo:
        pid = todo.pop()
        found.add(pid)
        try:
            todo += [int(p) for t in Path(f"/proc/{pid}/task").iterdir()
                     for p in (t / "children").read_text().split()]
        except OSError:
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture
def in_cluster(kube_cluster, namespace: str, node_agent) -> Iterator[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """The printed manifests, for a worker serving ``namespace``, applied with the local node's
    overrides; whatever happens, deleted again at the end."""
    printed = subprocess.run([STASHFLOW, "install", "--in-cluster", "--serve", namespace,
                              "--catalog-configmap", "stashflow-catalog"], capture_output=True, text=True, timeout=120)
    assert printed.returncode == 0, printed.stderr
    objects = _local_node(list(yaml.safe_load_all(printed.stdout)), _free_port(), _free_port())
    api_port = int(next(o for o in objects if o["metadata"]["name"] == "prefect-server" and o["kind"] == "Deployment")
                   ["spec"]["template"]["spec"]["containers"][0]["env"][-1]["value"])
    # the user's part, as the README says: their catalog (here the tests' `scripted` Addon, whose Jobs the
    # node agent scripts) in the ConfigMap the worker reads
    catalog = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "stashflow-catalog", "namespace": HOME},
               "data": {"catalog.yaml": (REPO / "tests" / "data" / "flow-catalog.yaml").read_text()}}
    node_agent.default = run()  # the three Pods run for real
    try:
        asyncio.run(_each(kube_cluster, [objects[0], catalog, *objects[1:]], "create"))
        yield {"objects": objects, "api_url": f"http://127.0.0.1:{api_port}/api"}
    finally:
        asyncio.run(_each(kube_cluster, objects[::-1], "delete"))
        eventually(lambda: not _namespace_exists(kube_cluster, HOME), timeout=180, interval=1)


def test_a_scheduled_backup_runs_through_the_worker_deployment(kube_cluster, namespace, node_agent, in_cluster,
                                                               tmp_path) -> None:
    from kubernetes_asyncio import client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterTags
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Scheduled

    from runs.observe import prefect

    objects, api_url = in_cluster["objects"], in_cluster["api_url"]
    node_agent.script({"stashflow.io/task": "backup"}, succeed(message=REPORT, after=1.0))
    # the CRDs of KubeStash's kinds, as the README says: `stashflow install` once, as the cluster's admin
    installed = subprocess.run([STASHFLOW, "install", "-n", namespace, "--kubeconfig", str(kube_cluster.kubeconfig)],
                               capture_output=True, text=True, timeout=120)
    assert installed.returncode == 0, installed.stderr

    # the server migrates its schema into the StatefulSet's PostgreSQL, then answers; the worker's Pod makes its pool
    try:
        eventually(lambda: _healthy(f"{api_url}/health"), timeout=300, interval=1)
    except AssertionError:
        raise AssertionError(f"the Prefect server Pod never answered:\n{_story(kube_cluster)}") from None
    env = {**os.environ, "PREFECT_API_URL": api_url}
    with temporary_settings({PREFECT_API_URL: api_url}):
        pool = eventually(lambda: _pool("stashflow"), timeout=180, interval=1)
        assert pool.type == "stashflow"  # made by the worker Pod (`stashflow worker --pool stashflow`)

        plan = write_plan(tmp_path / "plan.yaml", namespace, [session("nightly")], name="incluster")
        deploy = subprocess.run([STASHFLOW, "deploy", str(plan), "--work-pool", "stashflow"], env=env,
                                capture_output=True, text=True, timeout=180)
        assert deploy.returncode == 0, deploy.stderr
        (deployment,) = prefect(lambda c: c.read_deployments(
            deployment_filter=DeploymentFilter(tags=DeploymentFilterTags(all_=[f"plan:{namespace}.incluster"]))))
        # the server's scheduler makes the cron's next run; moved to now rather than waiting for it
        first = eventually(lambda: _first_scheduled(deployment.id), timeout=120, interval=1)
        prefect(lambda c: c.set_flow_run_state(
            first.id, Scheduled(scheduled_time=datetime.now(timezone.utc) + timedelta(seconds=2)), force=True))
        try:
            done = eventually(lambda: (lambda r: r if r.state.is_final() else None)(
                prefect(lambda c: c.read_flow_run(first.id))), timeout=240, interval=1)
        except AssertionError:
            raise AssertionError(f"the scheduled run did not finish:\n{_story(kube_cluster)}") from None

    assert done.state.is_completed(), (done.state.message, _story(kube_cluster))
    assert done.work_pool_name == "stashflow"
    assert (done.parameters.get("cluster") or {}).get("kubeconfig") is None  # in-cluster, as its ServiceAccount
    (worker_pod,) = [p for p in _pods(kube_cluster, HOME)
                     if p.metadata.name.startswith("stashflow-worker-") and p.status.phase == "Running"]
    assert worker_pod.spec.service_account_name == "stashflow-worker"
    log = api(kube_cluster, lambda c: client.CoreV1Api(c).read_namespaced_pod_log(worker_pod.metadata.name, HOME))
    assert "started on pool 'stashflow'" in log, log
    worker_label = (done.labels or {}).get("prefect.worker.name")
    assert worker_label and f"stashflow worker {worker_label!r} started" in log, (done.labels, log)
    # what the printed RBAC lets the worker's ServiceAccount do, asked of the real authorizer
    assert _may(kube_cluster, "create", "jobs", namespace) and _may(kube_cluster, "patch", "snapshots", namespace)
    assert not _may(kube_cluster, "create", "jobs", HOME) and not _may(kube_cluster, "create", "jobs", "default")
    assert not _may(kube_cluster, "list", "secrets", namespace)  # get only: the pre-flight check's metadata read
    backup_jobs = jobs(kube_cluster, namespace)
    assert len(backup_jobs) == 1 and backup_jobs[0].status.succeeded == 1
    assert [s["status"]["phase"] for s in snapshots(kube_cluster, namespace)] == ["Succeeded"]
    claims = pvcs(kube_cluster, namespace)  # the run's volumes are the kept Job's, and go with it
    assert all([r.name for r in c.metadata.owner_references or []] == [backup_jobs[0].metadata.name] for c in claims)
    leases = api(kube_cluster, lambda c: client.CoordinationV1Api(c).list_namespaced_lease(namespace)).items
    assert all(not (lease.spec.holder_identity or "") for lease in leases), leases  # the target is given back

    # the database's Pod replaced (as on a node's failure): the StatefulSet's new Pod mounts the same claim and
    # starts on the data there, no second initdb; Prefect's rows are still there
    old = next(p for p in _pods(kube_cluster, HOME) if p.metadata.name == "postgres-0")
    api(kube_cluster, lambda c: client.CoreV1Api(c).delete_namespaced_pod("postgres-0", HOME, grace_period_seconds=5))
    eventually(lambda: [p for p in _pods(kube_cluster, HOME) if p.metadata.name == "postgres-0"
                        and p.metadata.uid != old.metadata.uid and p.status.phase == "Running"], timeout=120, interval=1)
    rows = eventually(lambda: _psql(objects, "SELECT name FROM deployment"), timeout=120, interval=1)
    assert rows.split() == [deployment.name], rows
    log = _log(kube_cluster, "postgres-0")
    assert log is not None and "init process complete" not in log, (log, _story(kube_cluster))

    # delete what was applied: every Pod's processes end, the database's volume goes with its claim
    pids = _descendants(node_agent.running_pids())
    assert len([p for p in _pods(kube_cluster, HOME) if p.status.phase == "Running"]) == 3 and pids
    asyncio.run(_each(kube_cluster, objects[::-1], "delete"))
    eventually(lambda: not _namespace_exists(kube_cluster, HOME), timeout=180, interval=1)
    eventually(lambda: not [p for p in pids if _alive(p)], timeout=60, interval=0.5)
    eventually(lambda: not [v for v in api(kube_cluster, lambda c: client.CoreV1Api(c).list_persistent_volume()).items
                            if v.spec.claim_ref and v.spec.claim_ref.namespace == HOME], timeout=120, interval=1)
    rbac = api(kube_cluster, lambda c: client.RbacAuthorizationV1Api(c).list_namespaced_role_binding(namespace)).items
    assert "stashflow-worker" not in [b.metadata.name for b in rbac]
    bindings = api(kube_cluster, lambda c: client.RbacAuthorizationV1Api(c).list_cluster_role_binding()).items
    assert not [b.metadata.name for b in bindings if "stashflow-worker" in b.metadata.name]
    assert not _may(kube_cluster, "create", "jobs", namespace)


def _psql(objects: list[dict[str, Any]], sql: str) -> str | None:
    """``sql`` on the in-cluster PostgreSQL as user prefect (Debian's psql, the Secret's password); None
    while it does not answer."""
    secret = next(o for o in objects if o["kind"] == "Secret")["stringData"]
    (pg,) = next(o for o in objects if o["kind"] == "StatefulSet")["spec"]["template"]["spec"]["containers"]
    port = next(e["value"] for e in pg["env"] if e["name"] == "PGPORT")
    done = subprocess.run(["psql", "-X", "-At", "-h", "127.0.0.1", "-p", port, "-U", "prefect", "-d", "prefect",
                           "-c", sql], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PGPASSWORD": secret["POSTGRES_PASSWORD"]})
    return done.stdout if done.returncode == 0 else None


def _may(kube_cluster, verb: str, resource: str, namespace: str) -> bool:  # type: ignore[no-untyped-def]
    """Whether the worker's ServiceAccount may ``verb`` ``resource`` in ``namespace`` (a SubjectAccessReview)."""
    from kubernetes_asyncio import client

    group = {"jobs": "batch", "snapshots": "storage.kubestash.com"}.get(resource, "")
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {
        "user": f"system:serviceaccount:{HOME}:stashflow-worker",
        "groups": ["system:serviceaccounts", f"system:serviceaccounts:{HOME}", "system:authenticated"],
        "resourceAttributes": {"verb": verb, "group": group, "resource": resource, "namespace": namespace}}}
    done = api(kube_cluster, lambda c: client.AuthorizationV1Api(c).create_subject_access_review(review))
    return bool(done.status.allowed)


def _pool(name: str) -> Any:
    from prefect.exceptions import ObjectNotFound

    from runs.observe import prefect

    try:
        return prefect(lambda c: c.read_work_pool(name))
    except ObjectNotFound:
        return None


def _first_scheduled(deployment_id: Any) -> Any:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    from runs.observe import prefect

    runs = [r for r in prefect(lambda c: c.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))))
        if r.auto_scheduled and r.state.type.value == "SCHEDULED"]
    return min(runs, key=lambda r: r.expected_start_time) if runs else None


def _namespace_exists(kube_cluster, name: str) -> bool:  # type: ignore[no-untyped-def]
    from kubernetes_asyncio import client
    from kubernetes_asyncio.client.exceptions import ApiException

    try:
        api(kube_cluster, lambda c: client.CoreV1Api(c).read_namespace(name))
        return True
    except ApiException as e:
        if e.status == 404:
            return False
        raise
