"""`stashflow deploy` of a plan whose session has two tasks and two repositories: ONE deployment (the
session's), whose run makes one BackupSession and two Snapshots of two components each, on the real
control plane with restic run for real, served by `stashflow serve` from a real `prefect server`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from kubernetes_asyncio import client

from localkube.helpers import apt_install, create_pvc, pvc_host_path
from localkube.nodeagent import run as run_for_real
from runs.observe import api, eventually, snapshots
from support import run_cli

from .plans import QUIET_CRON
from .test_deploy import deployments_of
from .test_schedules import STASHFLOW, deployed, finished, trigger, triggered


def plan(path: Path, namespace: str, first: Path, second: Path, *, target: bool = True, addon: str = "pvc-pair",
         tasks: tuple[str, ...] = ("logical-backup", "config-backup")) -> Path:
    docs = [
        {"apiVersion": "core.kubestash.com/v1alpha1", "kind": "BackupConfiguration",
         "metadata": {"name": "pair", "namespace": namespace},
         "spec": {**({"target": {"kind": "PersistentVolumeClaim", "name": "data", "namespace": namespace}}
                     if target else {}),
                  "backends": [{"name": "a", "storageRef": {"name": "store-a"}},
                               {"name": "b", "storageRef": {"name": "store-b"}}],
                  "sessions": [{"name": "nightly", "scheduler": {"schedule": QUIET_CRON}, "sessionHistoryLimit": 1,
                                "addon": {"name": addon, "tasks": [{"name": t} for t in tasks]},
                                "repositories": [
                                    {"name": "repo-a", "backend": "a", "directory": "/pair",
                                     "encryptionSecret": {"name": "pw"}},
                                    {"name": "repo-b", "backend": "b", "directory": "/pair",
                                     "encryptionSecret": {"name": "pw"}}]}]}},
        *({"apiVersion": "storage.kubestash.com/v1alpha1", "kind": "BackupStorage",
           "metadata": {"name": name, "namespace": namespace},
           "spec": {"storage": {"provider": "local", "local": {"mountPath": "/r", "hostPath": {"path": str(where)}}}}}
          for name, where in (("store-a", first), ("store-b", second))),
    ]
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def test_deploy_gives_one_deployment_per_session_and_its_run_one_backup_session(
        kube_cluster, namespace, node_agent, prefect_server, serve, tmp_path, host_tmp) -> None:
    apt_install("restic")
    node_agent.default = run_for_real()

    async def setup(c: client.ApiClient) -> Path:
        await create_pvc(c, namespace, "data")
        return await pvc_host_path(c, namespace, "data")

    data = api(kube_cluster, setup)
    (data / "data").mkdir()
    (data / "data" / "a.txt").write_text("a\n")
    (data / "config").mkdir()
    (data / "config" / "c.conf").write_text("c\n")
    (host_tmp / "a").mkdir()
    (host_tmp / "b").mkdir()
    written = plan(tmp_path / "plan.yaml", namespace, host_tmp / "a", host_tmp / "b")
    done = subprocess.run([STASHFLOW, "deploy", str(written), "--kubeconfig", str(kube_cluster.kubeconfig)],
                          env=prefect_server, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    found = deployments_of(f"plan:{namespace}.pair")
    name = f"backup-session/{namespace}-pair-nightly"
    assert list(found) == [name]  # one session, one deployment (not one per task)
    assert {"task:logical-backup", "task:config-backup"} <= set(found[name].tags)

    serve(written, "--kubeconfig", str(kube_cluster.kubeconfig))
    eventually(lambda: deployed(name), timeout=90, interval=1)
    trigger(name)
    (run,) = eventually(lambda: (lambda r: r if finished(r) else None)(triggered(name)), timeout=600, interval=2)
    assert run.state.is_completed(), run.state.message

    sessions = api(kube_cluster, lambda c: client.CustomObjectsApi(c).list_namespaced_custom_object(
        "core.kubestash.com", "v1alpha1", namespace, "backupsessions"))["items"]
    (bs,) = sessions
    assert bs["metadata"]["name"].startswith("pair-nightly-") and bs["status"]["phase"] == "Succeeded"
    listed = snapshots(kube_cluster, namespace)
    assert sorted(s["spec"]["repository"] for s in listed) == ["repo-a", "repo-b"]
    for snap in listed:
        assert snap["spec"]["backupSession"] == bs["metadata"]["name"]
        assert snap["status"]["phase"] == "Succeeded"
        assert sorted(snap["status"]["components"]) == ["config-backup", "dump"]
    rc, out, err = run_cli("snapshots", "-n", namespace, "--kubeconfig", str(kube_cluster.kubeconfig))
    assert rc == 0, err
    rows = sorted(tuple(line.split()[1:5]) for line in out.strip().splitlines()[1:])
    assert rows == sorted((s["metadata"]["name"], s["spec"]["repository"], s["spec"]["session"],
                           s["status"]["phase"]) for s in listed)


def test_a_plan_without_a_target_deploys(prefect_server, tmp_path) -> None:
    """KubeStash's cluster-wide plans have no target: the session deploys (no PVC), its runs held one at a
    time by the lock of its BackupConfiguration (KubeStash skips a session while one of the same invoker
    runs), not by one lock for every plan without a target in the namespace."""
    written = plan(tmp_path / "plan.yaml", "ops", tmp_path / "a", tmp_path / "b", target=False, addon="scripted",
                   tasks=("backup",))
    done = subprocess.run([STASHFLOW, "deploy", str(written)], env=prefect_server, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr
    (deployment,) = deployments_of("plan:ops.pair").values()
    assert deployment.parameters.get("target") is None and "target:ops/none" in deployment.tags
    assert _limit_exists("stashflow-target-ops-backupconfiguration-pair")
    assert not _limit_exists("stashflow-target-ops-na-na")


def _limit_exists(name: str) -> bool:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    async def go() -> bool:
        async with get_client() as c:
            try:
                await c.read_global_concurrency_limit_by_name(name)
                return True
            except ObjectNotFound:
                return False
    return asyncio.run(go())
