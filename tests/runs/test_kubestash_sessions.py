"""The UPSTREAM catalog's plans through stashflow's own session flows: KubeStash's executors (the node agent
runs tests/kubestash_executor for their images, localkube/images.py) run once per task, read every Snapshot
of the BackupSession's status.snapshots themselves, and their result is read from the components they
write, never from their exit code (addons/contract.py). tests/kubestash/ proves the executor against
objects made by hand; here the session flows make them."""

from __future__ import annotations

import asyncio
import base64
import shutil
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client

from localkube.helpers import create_pvc, pvc_host_path
from localkube.nodeagent import run as run_for_real
from support import HAVE_SHARED, NEEDS_SHARED_REASON, UPSTREAM_CATALOG, run_cli

from .observe import api, jobs, snapshots
from .test_sessions import custom, leases, restic, run_session, storage, tree  # noqa: F401 - restic: a fixture

pytestmark = pytest.mark.skipif(not HAVE_SHARED, reason=NEEDS_SHARED_REASON)

MOUNT = "/kubestash-repo"


@pytest.fixture(autouse=True)
def upstream_catalog(monkeypatch: pytest.MonkeyPatch) -> None:
    """The upstream catalog beside the built-in one: the flows load it by $STASHFLOW_CATALOG."""
    import os

    monkeypatch.setenv("STASHFLOW_CATALOG", os.pathsep.join([os.environ["STASHFLOW_CATALOG"], str(UPSTREAM_CATALOG)]))


def _secret(password: str) -> dict[str, Any]:
    return {"metadata": {"name": "pw"}, "data": {"RESTIC_PASSWORD": base64.b64encode(password.encode()).decode()}}


def _setup(cluster, namespace: str, password: str = "upstream pw") -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    async def go(c: client.ApiClient) -> tuple[Path, Path]:
        await create_pvc(c, namespace, "data")
        await create_pvc(c, namespace, "restored")
        await client.CoreV1Api(c).create_namespaced_secret(namespace, _secret(password))
        return await pvc_host_path(c, namespace, "data"), await pvc_host_path(c, namespace, "restored")
    data, restored = api(cluster, go)
    (data / "nested").mkdir(parents=True)
    (data / "a.txt").write_text("the data\n")
    (data / "nested" / "blob.bin").write_bytes(bytes(range(256)) * 800)
    return data, restored


def pvc_session(cluster, namespace: str, store: Path, repos: list[str], name: str, **extra: Any) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    store.mkdir(exist_ok=True)
    return {"configuration": "data-backup", "session": "frequent", "namespace": namespace,
            "target": "PersistentVolumeClaim/data", "addon": "pvc-addon", "tasks": [{"name": "logical-backup"}],
            "repositories": [{"name": r, "storage": storage("local", store, MOUNT), "directory": f"demo/{r}",
                              "encryption_secret": "pw"} for r in repos],
            "cluster": {"kubeconfig": str(cluster.kubeconfig)}, "advanced": {"backup_session": name}, **extra}


def test_upstream_pvc_addon_through_the_session_flow(kube_cluster, namespace, node_agent, prefect_api, host_tmp,
                                                     restic) -> None:
    node_agent.default = run_for_real()
    data, restored = _setup(kube_cluster, namespace)
    before = tree(data)
    name = "data-backup-frequent-1700000000"
    state = run_session(**pvc_session(kube_cluster, namespace, host_tmp / "store", ["repo-a", "repo-b"], name))
    assert state.is_completed(), state.message

    # ONE Job for the task (not one per repository): the executor wrote both Snapshots itself
    made = [j.metadata.name for j in jobs(kube_cluster, namespace)]
    assert len(made) == 1, made
    (bs,) = custom(kube_cluster, "backupsessions", "core.kubestash.com", namespace)
    assert bs["status"]["phase"] == "Succeeded" and bs["status"]["totalSnapshots"] == 2
    listed = {s["metadata"]["name"]: s for s in snapshots(kube_cluster, namespace)}
    assert set(listed) == {f"repo-a-{name}", f"repo-b-{name}"}
    for snap in listed.values():
        st = snap["status"]
        assert st["phase"] == "Succeeded" and st["totalComponents"] == 1, st
        (comp,) = st["components"].values()
        assert comp["phase"] == "Succeeded" and comp["path"] == "repository/v1/frequent/dump"
        assert comp["resticStats"][0]["summary"]["id"]  # as the executor wrote it, nested
        repo = snap["spec"]["repository"]
        assert (host_tmp / "store" / "demo" / repo / "repository" / "v1" / "frequent" / "dump" / "config").is_file()
    # the executor ran as stashflow's ServiceAccount, with the executor's RBAC the session applied
    roles = api(kube_cluster, lambda c: client.RbacAuthorizationV1Api(c).list_namespaced_role_binding(namespace))
    binding = {b.metadata.name: b for b in roles.items}["stashflow-kubestash-backup-executor"]
    assert [s.name for s in binding.subjects] == ["stashflow-kubestash-executor"]
    rc, out, err = run_cli("snapshots", "-n", namespace, "--kubeconfig", str(kube_cluster.kubeconfig))
    assert rc == 0, err
    rows = sorted((r[1], r[2], r[4]) for r in (line.split() for line in out.strip().splitlines()[1:]))
    assert rows == sorted((n, s["spec"]["repository"], s["status"]["phase"]) for n, s in listed.items())
    assert not leases(kube_cluster, namespace)

    # restore through the restore-session flow: latest of repo-b resolved, its component pre-created
    from stashflow.flows.restore_sessions import restore_session

    done = asyncio.run(restore_session(
        name="restore-b", namespace=namespace, target="PersistentVolumeClaim/restored", addon="pvc-addon",
        tasks=[{"name": "logical-backup-restore"}],
        data_source={"repository": "repo-b", "snapshot": "latest", "encryption_secret": "pw"},
        cluster={"kubeconfig": str(kube_cluster.kubeconfig)}, return_state=True))
    assert done.is_completed(), done.message
    assert tree(restored) == before
    rs = custom(kube_cluster, "restoresessions", "core.kubestash.com", namespace, "restore-b")
    assert rs["spec"]["dataSource"]["snapshot"] == f"repo-b-{name}"
    assert rs["status"]["phase"] == "Succeeded" and rs["status"]["components"]["dump"]["phase"] == "Succeeded"
    assert not leases(kube_cluster, namespace)

    # `stashflow restore` of a RestoreSession file naming a KubeStash executor runs it as one restore-session
    for path in restored.iterdir():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    session_file = host_tmp / "restore.yaml"
    session_file.write_text(
        "apiVersion: core.kubestash.com/v1alpha1\nkind: RestoreSession\n"
        f"metadata: {{name: restore-a, namespace: {namespace}}}\n"
        "spec:\n  target: {kind: PersistentVolumeClaim, name: restored}\n"
        f"  dataSource: {{repository: repo-a, snapshot: repo-a-{name}, encryptionSecret: {{name: pw}}}}\n"
        "  addon:\n    name: pvc-addon\n    tasks:\n    - name: logical-backup-restore\n")
    rc, out, err = run_cli("restore", str(session_file), "--catalog", str(UPSTREAM_CATALOG),
                           "--kubeconfig", str(kube_cluster.kubeconfig))
    assert rc == 0, err
    assert "RestoreSession restore-a" in out
    assert tree(restored) == before
    rs = custom(kube_cluster, "restoresessions", "core.kubestash.com", namespace, "restore-a")
    assert rs["status"]["phase"] == "Succeeded" and rs["status"]["components"]["dump"]["phase"] == "Succeeded"


def test_retention_forgets_the_restic_data_an_upstream_executor_wrote(kube_cluster, namespace, node_agent, prefect_api,
                                                                     host_tmp, restic) -> None:
    """A repository written by a KubeStash executor is restic too: retention forgets the data of the Snapshots
    that fall out with stashflow's own restic (the upstream image takes only its own flags), per repository."""
    import json
    import os
    import subprocess

    from .observe import eventually

    node_agent.default = run_for_real()
    _setup(kube_cluster, namespace)
    keep_one = {"retention_policy": "keep-last", "retention": {"successfulSnapshots": {"last": 1}}}
    names = ["data-backup-frequent-1700000000", "data-backup-frequent-1700000100"]
    for name in names:
        params = pvc_session(kube_cluster, namespace, host_tmp / "store", ["repo"], name)
        params["repositories"][0].update(keep_one)
        state = run_session(**params)
        assert state.is_completed(), state.message
    assert [s["metadata"]["name"] for s in snapshots(kube_cluster, namespace)] == [f"repo-{names[1]}"]
    bs = custom(kube_cluster, "backupsessions", "core.kubestash.com", namespace, names[1])
    assert [(r["repository"], r["phase"]) for r in bs["status"]["retentionPolicy"]] == [("repo", "Applied")]
    listed = subprocess.run([restic, "-r", str(host_tmp / "store" / "demo" / "repo" / "repository" / "v1" / "frequent"
                                               / "dump"), "snapshots", "--json", "--no-lock"],
                            env={**os.environ, "RESTIC_PASSWORD": "upstream pw"}, capture_output=True, text=True,
                            check=True)
    (only,) = json.loads(listed.stdout)  # the first session's restic snapshot is gone
    kept = custom(kube_cluster, "snapshots", "storage.kubestash.com", namespace, f"repo-{names[1]}")
    assert only["id"].startswith(kept["status"]["components"]["dump"]["resticStats"][0]["summary"]["id"])
    eventually(lambda: not jobs(kube_cluster, namespace, "stashflow.io/role=retention"))  # its Job removed


def test_upstream_workload_addon_as_a_plan_with_hooks(kube_cluster, namespace, node_agent, prefect_api, host_tmp,
                                                      restic) -> None:
    """The upstream workload-addon through backup-session (its executor gets the workload's volume by the plan's
    jobTemplate, as KubeStash copies it from the target) with preBackup/postBackup hooks around the KubeStash
    task: status.hooks as for stashflow's own tasks; then back byte-identical through restore-session."""
    import socket

    from stashflow.flows.restore_sessions import restore_session

    node_agent.default = run_for_real()
    data, restored = _setup(kube_cluster, namespace)
    before = tree(data)

    def mounted(claim: str) -> dict[str, Any]:
        return {"jobTemplate": {"spec": {"volumes": [{"name": "app-data", "persistentVolumeClaim": {"claimName": claim}}],
                                         "volumeMounts": [{"name": "app-data", "mountPath": "/var/app"}]}}}

    app = socket.create_server(("127.0.0.1", 0))
    port = app.getsockname()[1]
    template = {"apiVersion": "core.kubestash.com/v1alpha1", "kind": "HookTemplate", "metadata": {"name": "app-port"},
                "spec": {"action": {"tcpSocket": {"host": "127.0.0.1", "port": port}}, "executor": {"type": "Operator"}}}
    name = "app-backup-daily-1700000000"
    params = pvc_session(kube_cluster, namespace, host_tmp / "store", ["repo"], name)
    params.update(configuration="app-backup", session="daily", target="Deployment.apps/app", addon="workload-addon",
                  tasks=[{"name": "logical-backup", "params": {"paths": "/var/app"}}],
                  hooks=[{"phase": phase, "hook": {"name": hook, "hookTemplate": {"name": "app-port"}},
                          "template": template} for phase, hook in (("preBackup", "quiesce"), ("postBackup", "resume"))],
                  advanced={"backup_session": name, "addon": mounted("data")})
    with app:
        state = run_session(**params)
    assert state.is_completed(), state.message
    bs = custom(kube_cluster, "backupsessions", "core.kubestash.com", namespace, name)
    assert bs["status"]["phase"] == "Succeeded"
    assert bs["status"]["hooks"] == {"preHooks": [{"name": "quiesce", "phase": "Succeeded"}],
                                     "postHooks": [{"name": "resume", "phase": "Succeeded"}]}
    (snap,) = snapshots(kube_cluster, namespace)
    comp = snap["status"]["components"]["dump"]
    assert snap["status"]["phase"] == "Succeeded" and comp["resticStats"][0]["summary"]["hostPath"] == "/var/app"

    done = asyncio.run(restore_session(
        name="restore-app", namespace=namespace, target="Deployment.apps/app", addon="workload-addon",
        tasks=[{"name": "logical-backup-restore"}], addon_settings=mounted("restored"),
        data_source={"repository": "repo", "snapshot": "latest", "encryption_secret": "pw"},
        cluster={"kubeconfig": str(kube_cluster.kubeconfig)}, return_state=True))
    assert done.is_completed(), done.message
    assert tree(restored) == before
    assert not leases(kube_cluster, namespace)


def test_a_failed_component_fails_the_session_though_the_executor_exits_0(kube_cluster, namespace, node_agent,
                                                                          prefect_api, host_tmp, restic) -> None:
    node_agent.default = run_for_real()
    _setup(kube_cluster, namespace)
    first = run_session(**pvc_session(kube_cluster, namespace, host_tmp / "store", ["repo"],
                                      "data-backup-frequent-1700000000"))
    assert first.is_completed(), first.message
    # the repository now has another password than the Secret says: restic fails, the executor exits 0
    api(kube_cluster, lambda c: client.CoreV1Api(c).replace_namespaced_secret("pw", namespace, _secret("wrong")))
    name = "data-backup-frequent-1700000060"
    state = run_session(**pvc_session(kube_cluster, namespace, host_tmp / "store", ["repo"], name))
    assert state.is_failed()
    assert (state.message or "").startswith("component-failed"), state.message
    bs = custom(kube_cluster, "backupsessions", "core.kubestash.com", namespace, name)
    assert bs["status"]["phase"] == "Failed"
    snap = {s["metadata"]["name"]: s for s in snapshots(kube_cluster, namespace)}[f"repo-{name}"]["status"]
    assert snap["phase"] == "Failed"
    assert snap["components"]["dump"]["phase"] == "Failed"
    assert snap["components"]["dump"]["error"].startswith("component-failed: "), snap["components"]
    # the Job exited 0 (the exit code said nothing) and nothing runs or holds the target any more
    job = {j.metadata.name: j for j in jobs(kube_cluster, namespace)}
    ours = [j for n, j in job.items() if "1700000060" in n]
    assert ours and all(j.status.succeeded == 1 for j in ours)
    assert not leases(kube_cluster, namespace)


DB_PASSWORD = "pg pw with 'quotes', $(HOME) and ü"
APPCATALOG_CRD = Path(__file__).resolve().parent.parent / "data" / "appcatalog-crd"


@pytest.fixture(scope="module")
def pg():  # type: ignore[no-untyped-def]
    from localkube.helpers import apt_install

    from .databases.servers import Postgres, serving

    apt_install("restic")
    yield from serving(Postgres(DB_PASSWORD))


def test_upstream_postgres_addon_session_into_two_repositories(kube_cluster, namespace, node_agent, prefect_api,
                                                               host_tmp, pg) -> None:
    """logical-backup + manifest-backup of the upstream postgres-addon, the database a local PostgreSQL
    behind its AppBinding (tests/kubestash/test_upstream_postgres.py says why): one BackupSession, one
    Snapshot per repository, each with the two components dump and manifest; one Job per task."""
    from localkube.helpers import install_crds

    node_agent.default = run_for_real()
    pg.psql("DROP DATABASE IF EXISTS shop;")
    pg.psql("CREATE DATABASE shop;")
    pg.psql("CREATE TABLE items (id int PRIMARY KEY, name text);"
            "INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 200) g;", db="shop")

    async def go(c: client.ApiClient) -> None:
        await install_crds(c, APPCATALOG_CRD)
        await client.CoreV1Api(c).create_namespaced_secret(namespace, _secret("pg restic pw"))
        await client.CoreV1Api(c).create_namespaced_secret(namespace, {
            "metadata": {"name": "pg-auth"}, "type": "kubernetes.io/basic-auth",
            "stringData": {"username": "postgres", "password": DB_PASSWORD}})
        await client.CustomObjectsApi(c).create_namespaced_custom_object(
            "appcatalog.appscode.com", "v1alpha1", namespace, "appbindings",
            {"apiVersion": "appcatalog.appscode.com/v1alpha1", "kind": "AppBinding",
             "metadata": {"name": "pg", "namespace": namespace},
             "spec": {"type": "kubedb.com/postgres", "version": "16",
                      "clientConfig": {"url": f"postgres://127.0.0.1:{pg.port}/postgres",
                                       "service": {"name": "pg", "port": pg.port, "scheme": "postgresql"}},
                      "secret": {"name": "pg-auth"}}})
    api(kube_cluster, go)
    name = "pg-backup-nightly-1700000000"
    store = host_tmp / "store"
    store.mkdir()
    state = run_session(
        configuration="pg-backup", session="nightly", namespace=namespace,
        target="AppBinding.appcatalog.appscode.com/pg", addon="postgres-addon",
        tasks=[{"name": "logical-backup"}, {"name": "manifest-backup"}],
        repositories=[{"name": r, "storage": storage("local", store, MOUNT), "directory": f"demo/{r}",
                       "encryption_secret": "pw"} for r in ("pg-a", "pg-b")],
        cluster={"kubeconfig": str(kube_cluster.kubeconfig)},
        advanced={"backup_session": name, "db_version": "16.4"})
    assert state.is_completed(), state.message
    assert len(jobs(kube_cluster, namespace)) == 2  # one per task, not per task and repository
    (bs,) = custom(kube_cluster, "backupsessions", "core.kubestash.com", namespace)
    assert bs["status"]["phase"] == "Succeeded" and bs["status"]["totalSnapshots"] == 2
    listed = {s["metadata"]["name"]: s for s in snapshots(kube_cluster, namespace)}
    assert set(listed) == {f"pg-a-{name}", f"pg-b-{name}"}
    for snap in listed.values():
        st = snap["status"]
        assert st["phase"] == "Succeeded" and st["totalComponents"] == 2, st
        assert set(st["components"]) == {"dump", "manifest"}
        assert all(c["phase"] == "Succeeded" and c["integrity"] is True for c in st["components"].values())
        assert st["components"]["dump"]["resticStats"][0]["summary"]["hostPath"] == "dumpfile.sql"
    rc, out, err = run_cli("snapshots", "-n", namespace, "--kubeconfig", str(kube_cluster.kubeconfig))
    assert rc == 0, err
    rows = sorted((r[1], r[2], r[4]) for r in (line.split() for line in out.strip().splitlines()[1:]))
    assert rows == sorted((n, s["spec"]["repository"], s["status"]["phase"]) for n, s in listed.items())
    assert not leases(kube_cluster, namespace)


def test_an_executor_that_exits_0_without_writing_is_component_missing(kube_cluster, namespace, node_agent,
                                                                      prefect_api, host_tmp) -> None:
    """The node agent's scripted outcome stands in for an executor that ends well without writing its
    component (the test executor always writes one): exit 0, and a termination message in stashflow's own
    contract claiming success, which must not be read for a KubeStash executor."""
    from localkube.nodeagent import succeed

    node_agent.default = succeed(message='{"components": {"dump": {"phase": "Succeeded", "size": "1 KiB"}}}')
    _setup(kube_cluster, namespace)
    name = "data-backup-frequent-1700000000"
    state = run_session(**pvc_session(kube_cluster, namespace, host_tmp / "store", ["repo-a", "repo-b"], name,
                                      limits={"history_limit": 0}))
    assert state.is_failed()
    assert (state.message or "").startswith("component-missing"), state.message
    bs = custom(kube_cluster, "backupsessions", "core.kubestash.com", namespace, name)
    assert bs["status"]["phase"] == "Failed"
    for snap in snapshots(kube_cluster, namespace):
        st = snap["status"]
        assert st["phase"] == "Failed", st
        assert st["components"]["dump"]["phase"] == "Failed"
        assert st["components"]["dump"]["error"].startswith("component-missing: ")
    assert not leases(kube_cluster, namespace)
    assert not [p for p in api(kube_cluster, lambda c: client.CoreV1Api(c).list_namespaced_pod(namespace)).items
                if p.status.phase in ("Pending", "Running")]
