"""The upstream postgres-addon session (``logical-backup`` + ``manifest-backup``) through KubeStash's
contract, against a real PostgreSQL (Debian's): the kubedb/postgres-restic-plugin and
kubedb-manifest-plugin Functions rendered by stashflow from ../shared/kubestash/catalog, their images
mapped by the node agent onto tests/kubestash_executor. One BackupSession, one Snapshot with the two
components ``dump`` and ``manifest``; then postgres-restore brings a dropped database back.

The database is not managed by KubeDB, so the target is its AppBinding (EXECUTOR-CONTRACT.md: that
skips the DatabaseReady wait). kmodules' AppBinding CRD is not in ../shared: tests/data/appcatalog-crd
is a stand-in with its group, kind and scope."""

from __future__ import annotations

import asyncio
import base64
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
from kubernetes_asyncio import client

from localkube.helpers import apt_install, install_crds
from localkube.nodeagent import NodeAgent, run
from runs.databases.servers import Postgres, serving
from support import HAVE_SHARED, NEEDS_SHARED_REASON

from stashflow.addons.contract import restore_result
from stashflow.addons.rbac import MANIFEST_RESTORE_RULES, executor_rbac

from .objects import CORE, SA, STORAGE, World, render_upstream

pytestmark = pytest.mark.skipif(not HAVE_SHARED, reason=NEEDS_SHARED_REASON)

DB_PASSWORD = "pg pw with 'quotes', $(HOME), \\ and ü"
APPCATALOG_CRD = Path(__file__).resolve().parent.parent / "data" / "appcatalog-crd"


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    apt_install("restic")
    yield from serving(Postgres(DB_PASSWORD))


def app_binding(ns: str, port: int) -> dict[str, Any]:
    return {"apiVersion": "appcatalog.appscode.com/v1alpha1", "kind": "AppBinding",
            "metadata": {"name": "pg", "namespace": ns},
            "spec": {"type": "kubedb.com/postgres", "version": "16",
                     "clientConfig": {"url": f"postgres://127.0.0.1:{port}/postgres",
                                      "service": {"name": "pg", "port": port, "scheme": "postgresql"}},
                     "secret": {"name": "pg-auth"}}}


def test_postgres_addon_session_and_restore(kube_cluster, kubestash_crds, namespace: str, node_agent: NodeAgent,
                                            host_tmp: Path, pg: Postgres) -> None:
    node_agent.default = run()
    pg.psql("DROP DATABASE IF EXISTS shop;")
    pg.psql("CREATE DATABASE shop;")
    pg.psql("CREATE TABLE items (id int PRIMARY KEY, name text);"
            "INSERT INTO items SELECT g, 'item ''' || g || ' ü' FROM generate_series(1, 500) g;", db="shop")

    async def body() -> None:
        async with kube_cluster.api_client() as api:
            await install_crds(api, APPCATALOG_CRD)
            w = World(api, namespace, host_tmp / "storage", repo_path="/demo/pg")
            await w.setup()
            await client.CoreV1Api(api).create_namespaced_secret(namespace, {
                "metadata": {"name": "pg-auth"}, "type": "kubernetes.io/basic-auth",
                "stringData": {"username": "postgres", "password": DB_PASSWORD}})
            await client.CustomObjectsApi(api).create_namespaced_custom_object(
                "appcatalog.appscode.com", "v1alpha1", namespace, "appbindings", app_binding(namespace, pg.port))
            target = {"apiGroup": "appcatalog.appscode.com", "kind": "AppBinding", "name": "pg", "namespace": namespace}
            bs, snap = await w.backup_session("pg-backup", "nightly", target)
            for task in ("logical-backup", "manifest-backup"):
                job = render_upstream("postgres-addon", task, namespace, "AppBinding.appcatalog.appscode.com/pg", w,
                                      session=bs, builtins={"DB_VERSION": "16.4"})
                c = job["spec"]["template"]["spec"]["containers"][0]
                assert c["image"] == ("ghcr.io/kubedb/postgres-restic-plugin:v0.30.0-rc.0_16.4" if task == "logical-backup"
                                      else "ghcr.io/kubedb/kubedb-manifest-plugin:v0.30.0-rc.0")
                cond, code, log = await w.run_job(job)
                assert (cond, code) == ("Complete", 0), log
                assert DB_PASSWORD not in log
            comps = (await w.get(STORAGE, "snapshots", snap))["status"]["components"]
            assert set(comps) == {"dump", "manifest"}
            assert all(c["phase"] == "Succeeded" and c["integrity"] is True for c in comps.values()), comps
            assert comps["dump"]["resticStats"][0]["summary"]["hostPath"] == "dumpfile.sql"
            assert comps["dump"]["path"] == "repository/v1/nightly/dump"
            assert comps["manifest"]["path"] == "repository/v1/nightly/manifest"
            # the dump really is a pg_dumpall: read it back from the component's own restic repository
            repo = w.repo_dir / "demo/pg/repository/v1/nightly/dump"
            dump = subprocess.run(["restic", "dump", "--no-lock", "--repo", str(repo),
                                   comps["dump"]["resticStats"][0]["summary"]["id"], "/dumpfile.sql"],
                                  check=True, capture_output=True, text=True,
                                  env={"PATH": "/usr/bin:/bin", "RESTIC_PASSWORD": "restic pw: 'quoted' $HOME"}).stdout
            assert "PostgreSQL database cluster dump" in dump and "CREATE DATABASE shop" in dump

            # destroy, then restore through postgres-restore
            pg.psql("DROP DATABASE shop;")
            await w.restore_session("restore-pg", snap, target)
            job = render_upstream("postgres-addon", "logical-backup-restore", namespace,
                                  "AppBinding.appcatalog.appscode.com/pg", w, session="restore-pg",
                                  restore_snapshot=snap, builtins={"DB_VERSION": "16.4"})
            cond, code, log = await w.run_job(job)
            assert (cond, code) == ("Complete", 0), log
            status = (await w.get(CORE, "restoresessions", "restore-pg"))["status"]["components"]["dump"]
            assert status["phase"] == "Succeeded", (status, log)
            assert pg.psql("SELECT count(*), max(name) FROM items;", db="shop").strip() == "500|item '99 ü"

            # the manifests: AppBinding and Secret deleted, brought back by kubedbmanifest-restore
            rbac = client.RbacAuthorizationV1Api(api)
            for obj in executor_rbac(namespace, SA, "restore", name="manifest-restore", extra_rules=MANIFEST_RESTORE_RULES):
                await (rbac.create_namespaced_role if obj["kind"] == "Role" else rbac.create_namespaced_role_binding)(
                    namespace, obj)
            await client.CustomObjectsApi(api).delete_namespaced_custom_object(
                "appcatalog.appscode.com", "v1alpha1", namespace, "appbindings", "pg")
            await client.CoreV1Api(api).delete_namespaced_secret("pg-auth", namespace)
            await w.restore_session("restore-manifest", snap, target, component="manifest")
            job = render_upstream("postgres-addon", "manifest-restore", namespace, "AppBinding.appcatalog.appscode.com/pg",
                                  w, session="restore-manifest", restore_snapshot=snap)
            cond, code, log = await w.run_job(job)
            assert (cond, code) == ("Complete", 0), log
            assert restore_result(await w.get(CORE, "restoresessions", "restore-manifest"), "manifest").ok, log
            back = await client.CoreV1Api(api).read_namespaced_secret("pg-auth", namespace)
            assert base64.b64decode(back.data["password"]).decode() == DB_PASSWORD
            ab = await client.CustomObjectsApi(api).get_namespaced_custom_object(
                "appcatalog.appscode.com", "v1alpha1", namespace, "appbindings", "pg")
            assert ab["spec"]["clientConfig"]["url"] == f"postgres://127.0.0.1:{pg.port}/postgres"

            # a wrong database password: exit 0, component Failed with pg_dumpall's own error
            await client.CoreV1Api(api).patch_namespaced_secret("pg-auth", namespace,
                                                                {"stringData": {"password": "nope"}})
            bs2, snap2 = await w.backup_session("pg-backup", "nightly", target, stamp=1700000099)
            job = render_upstream("postgres-addon", "logical-backup", namespace, "AppBinding.appcatalog.appscode.com/pg",
                                  w, session=bs2, builtins={"DB_VERSION": "16.4"})
            cond, code, log = await w.run_job(job)
            assert (cond, code) == ("Complete", 0), log
            comp = (await w.get(STORAGE, "snapshots", snap2))["status"]["components"]["dump"]
            assert comp["phase"] == "Failed" and "password authentication failed" in comp["error"], comp
            assert "nope" not in log and "nope" not in comp["error"]
            await w.delete_jobs()

    asyncio.run(body())


def test_an_executor_killed_mid_run_leaves_its_component_running(kube_cluster, kubestash_crds, namespace: str,
                                                                 node_agent: NodeAgent, host_tmp: Path) -> None:
    """The database never answers, so postgres-backup waits (``--wait-timeout`` 300 s) and the Job's
    deadline kills it: the component stays Running, which stashflow reads as ``component-unfinished``
    (KubeStash marks such a Snapshot BackupIncomplete)."""
    from localkube.helpers import job_condition, wait_job_finished
    from runs.databases.servers import free_port
    from stashflow.addons.contract import backup_result

    node_agent.default = run()

    async def body() -> None:
        async with kube_cluster.api_client() as api:
            await install_crds(api, APPCATALOG_CRD)
            w = World(api, namespace, host_tmp / "storage", repo_path="/demo/pg")
            await w.setup()
            await client.CoreV1Api(api).create_namespaced_secret(namespace, {
                "metadata": {"name": "pg-auth"}, "stringData": {"username": "postgres", "password": DB_PASSWORD}})
            await client.CustomObjectsApi(api).create_namespaced_custom_object(
                "appcatalog.appscode.com", "v1alpha1", namespace, "appbindings", app_binding(namespace, free_port()))
            target = {"apiGroup": "appcatalog.appscode.com", "kind": "AppBinding", "name": "pg", "namespace": namespace}
            bs, snap = await w.backup_session("pg-backup", "nightly", target)
            job = render_upstream("postgres-addon", "logical-backup", namespace, "AppBinding.appcatalog.appscode.com/pg",
                                  w, session=bs, builtins={"DB_VERSION": "16.4"})
            job["spec"]["activeDeadlineSeconds"] = 8
            await client.BatchV1Api(api).create_namespaced_job(namespace, job)
            done = await wait_job_finished(api, namespace, job["metadata"]["name"], timeout=120)
            assert job_condition(done) == "Failed"
            result = backup_result(await w.get(STORAGE, "snapshots", snap), "dump")
            assert (result.phase, result.code) == ("Running", "component-unfinished"), result
            await w.delete_jobs()

    asyncio.run(body())
