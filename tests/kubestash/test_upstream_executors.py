"""KubeStash's executors unchanged, on the real control plane: the upstream pvc and workload Functions
rendered by stashflow from ../shared/kubestash/catalog, run by the node agent (localkube/images.py
maps their images onto tests/kubestash_executor), against KubeStash's real CRDs and the objects
EXECUTOR-CONTRACT.md lists. The result is read where KubeStash reads it: the components."""

from __future__ import annotations

import asyncio
import filecmp
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client

from localkube.helpers import apt_install, create_pvc, pvc_host_path
from localkube.nodeagent import NodeAgent, run
from stashflow.addons.contract import backup_result, restore_result
from support import HAVE_SHARED, NEEDS_SHARED_REASON

from .objects import CORE, PASSWORD, STORAGE, World, render_upstream

pytestmark = pytest.mark.skipif(not HAVE_SHARED, reason=NEEDS_SHARED_REASON)


@pytest.fixture(scope="module")
def restic() -> str:
    apt_install("restic")
    return "restic"


def fill(d: Path) -> None:
    (d / "sub" / "deeper").mkdir(parents=True)
    (d / "hello.txt").write_text("hello\n")
    (d / "sub" / "blob.bin").write_bytes(os.urandom(200_000))
    (d / "sub" / "deeper" / "empty").write_bytes(b"")
    (d / "sub" / "script.sh").write_text("#!/bin/sh\n")
    (d / "sub" / "script.sh").chmod(0o755)


def same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    if mismatch or errors:
        return False
    return all(same_tree(a / s, b / s) for s in cmp.common_dirs)


def restic_snapshots(repo: Path) -> list[dict[str, Any]]:
    out = subprocess.run(["restic", "snapshots", "--json", "--no-lock", "--repo", str(repo)], check=True,
                         capture_output=True, text=True, env={**os.environ, "RESTIC_PASSWORD": PASSWORD}).stdout
    return json.loads(out)


PVC = {"kind": "PersistentVolumeClaim"}  # core group: apiGroup omitted (omitempty)


def test_upstream_pvc_backup_and_restore_byte_identical(kube_cluster, kubestash_crds, namespace: str,
                                                         node_agent: NodeAgent, host_tmp: Path, restic: str) -> None:
    node_agent.default = run()

    async def body() -> None:
        async with kube_cluster.api_client() as api:
            w = World(api, namespace, host_tmp / "storage")
            await w.setup()
            await create_pvc(api, namespace, "data")
            src = await pvc_host_path(api, namespace, "data")
            fill(src)
            target = {**PVC, "name": "data", "namespace": namespace}
            bs, snap = await w.backup_session("data-backup", "frequent", target)
            assert await w.backup_problems(bs) == []  # stashflow's check agrees the executor has what it reads
            job = render_upstream("pvc-addon", "logical-backup", namespace, "PersistentVolumeClaim/data", w, session=bs)
            c = job["spec"]["template"]["spec"]["containers"][0]
            assert c["image"] == "ghcr.io/kubestash/pvc:v0.28.0" and "command" not in c
            assert c["args"] == ["backup", f"--namespace={namespace}", f"--backupsession={bs}", "--enable-cache=true",
                                 "--scratch-dir=/kubestash-tmp", "--exclude=", "--paths=/kubestash-data"]
            version = (await w.get(STORAGE, "snapshots", snap))["metadata"]["resourceVersion"]
            phases = asyncio.create_task(w.phases_since(snap, "dump", version))
            cond, code, log = await w.run_job(job)
            assert (cond, code) == ("Complete", 0), log
            assert await asyncio.wait_for(phases, 60) == ["Running", "Succeeded"]  # Running written first
            comp = (await w.get(STORAGE, "snapshots", snap))["status"]["components"]["dump"]
            assert comp["phase"] == "Succeeded", (comp, log)
            assert backup_result(await w.get(STORAGE, "snapshots", snap), "dump").ok
            assert comp["path"] == "repository/v1/frequent/dump" and comp["driver"] == "Restic"
            assert comp["integrity"] is True and comp["size"].endswith(("KiB", "MiB"))
            (stats,) = comp["resticStats"]
            summary = stats["summary"]
            assert summary["hostPath"] == "/kubestash-data" and summary["size"].endswith("KiB")
            assert {"id", "uploaded", "startTime", "endTime"} <= set(summary)
            # the data is where KubeStash's layout says: <mountPath>/<repo path>/repository/v1/<session>/<component>
            (rs,) = restic_snapshots(w.repo_dir / "demo/data/repository/v1/frequent/dump")
            assert rs["id"] == summary["id"] and rs["paths"] == ["/kubestash-data"] and rs["hostname"] == "host-0"
            assert "PASSWORD" not in log and PASSWORD not in log

            # restore into an empty PVC
            await create_pvc(api, namespace, "restored")
            await w.restore_session("restore-data", snap, {**PVC, "name": "restored", "namespace": namespace})
            assert await w.restore_problems("restore-data", "dump") == []
            job = render_upstream("pvc-addon", "logical-backup-restore", namespace, "PersistentVolumeClaim/restored", w,
                                  session="restore-data", restore_snapshot=snap)
            assert job["spec"]["template"]["spec"]["containers"][0]["args"][:4] == [
                "restore", f"--namespace={namespace}", "--restoresession=restore-data", f"--snapshot={snap}"]
            cond, code, log = await w.run_job(job)
            assert (cond, code) == ("Complete", 0), log
            status = (await w.get(CORE, "restoresessions", "restore-data"))["status"]["components"]["dump"]
            assert status["phase"] == "Succeeded" and status["duration"], (status, log)
            assert restore_result(await w.get(CORE, "restoresessions", "restore-data"), "dump").ok
            assert same_tree(src, await pvc_host_path(api, namespace, "restored"))
            await w.delete_jobs()

    asyncio.run(body())


def test_upstream_workload_backup_and_restore(kube_cluster, kubestash_crds, namespace: str, node_agent: NodeAgent,
                                              host_tmp: Path, restic: str) -> None:
    """workload-addon's logical-backup: ``--paths`` from the plan, the workload's volume mounted there
    (KubeStash copies the target's volumes into the Job; here the jobTemplate adds the PVC)."""
    node_agent.default = run()

    async def body() -> None:
        async with kube_cluster.api_client() as api:
            w = World(api, namespace, host_tmp / "storage", repo_path="/demo/app")
            await w.setup()
            await create_pvc(api, namespace, "app-data")
            src = await pvc_host_path(api, namespace, "app-data")
            fill(src)
            target = {"apiGroup": "apps", "kind": "Deployment", "name": "app", "namespace": namespace}
            bs, snap = await w.backup_session("app-backup", "daily", target)

            def with_volume(job: dict[str, Any], claim: str) -> dict[str, Any]:
                spec = job["spec"]["template"]["spec"]
                spec["volumes"].append({"name": "app-data", "persistentVolumeClaim": {"claimName": claim}})
                spec["containers"][0]["volumeMounts"].append({"name": "app-data", "mountPath": "/var/app"})
                return job

            job = with_volume(render_upstream("workload-addon", "logical-backup", namespace, "Deployment/app", w,
                                              session=bs, params={"paths": "/var/app", "exclude": "*.tmp"}), "app-data")
            (src / "skip.tmp").write_text("not backed up")
            assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/kubestash/workload:v0.28.0"
            cond, code, log = await w.run_job(job)
            assert (cond, code) == ("Complete", 0), log
            comp = (await w.get(STORAGE, "snapshots", snap))["status"]["components"]["dump"]
            assert comp["phase"] == "Succeeded", (comp, log)
            assert comp["resticStats"][0]["summary"]["hostPath"] == "/var/app"
            (src / "skip.tmp").unlink()

            await create_pvc(api, namespace, "app-restored")
            await w.restore_session("restore-app", snap, {**target})
            job = with_volume(render_upstream("workload-addon", "logical-backup-restore", namespace, "Deployment/app", w,
                                              session="restore-app", restore_snapshot=snap), "app-restored")
            cond, code, log = await w.run_job(job)
            assert (cond, code) == ("Complete", 0), log
            status = (await w.get(CORE, "restoresessions", "restore-app"))["status"]["components"]["dump"]
            assert status["phase"] == "Succeeded", (status, log)
            assert same_tree(src, await pvc_host_path(api, namespace, "app-restored"))
            await w.delete_jobs()

    asyncio.run(body())


def test_failures_are_read_from_components_not_exit_codes(kube_cluster, kubestash_crds, namespace: str,
                                                           node_agent: NodeAgent, host_tmp: Path, restic: str) -> None:
    """Wrong restic password: exit 0, Job Complete, component Failed with restic's error. No
    ``status.snapshots``: the executor dies (exit 1) before writing anything. A RestoreSession whose
    ``status.components`` was not pre-created is never written (upstream's silent case)."""
    node_agent.default = run()

    async def body() -> None:
        async with kube_cluster.api_client() as api:
            w = World(api, namespace, host_tmp / "storage")
            await w.setup()
            await create_pvc(api, namespace, "data")
            fill(await pvc_host_path(api, namespace, "data"))
            target = {**PVC, "name": "data", "namespace": namespace}
            # a good first backup initialises the repository with the right password
            bs, snap = await w.backup_session("data-backup", "frequent", target, stamp=1700000001)
            cond, code, log = await w.run_job(
                render_upstream("pvc-addon", "logical-backup", namespace, "PersistentVolumeClaim/data", w, session=bs))
            assert (await w.get(STORAGE, "snapshots", snap))["status"]["components"]["dump"]["phase"] == "Succeeded", log

            # 1. wrong password: the executor exits 0, the component says Failed
            await client.CoreV1Api(api).patch_namespaced_secret(w.enc_secret, namespace,
                                                                {"stringData": {"RESTIC_PASSWORD": "wrong"}})
            bs2, snap2 = await w.backup_session("data-backup", "frequent", target, stamp=1700000002)
            cond, code, log = await w.run_job(
                render_upstream("pvc-addon", "logical-backup", namespace, "PersistentVolumeClaim/data", w, session=bs2))
            assert (cond, code) == ("Complete", 0), log
            comp = (await w.get(STORAGE, "snapshots", snap2))["status"]["components"]["dump"]
            assert comp["phase"] == "Failed" and "wrong password" in comp["error"], comp
            result = backup_result(await w.get(STORAGE, "snapshots", snap2), "dump")
            assert (result.code, result.error) == ("component-failed", comp["error"])
            assert "resticStats" not in comp and "wrong" not in log.replace("wrong password", "")

            # 2. no status.snapshots: dies before writing, exit 1, the Snapshot untouched
            bs3, snap3 = await w.backup_session("data-backup", "frequent", target, stamp=1700000003, snapshots=False)
            assert any("status.snapshots: empty" in p for p in await w.backup_problems(bs3))
            cond, code, log = await w.run_job(
                render_upstream("pvc-addon", "logical-backup", namespace, "PersistentVolumeClaim/data", w, session=bs3))
            assert (cond, code) == ("Failed", 1) and "no snapshot found for backupsession" in log, log
            assert "components" not in ((await w.get(STORAGE, "snapshots", snap3)).get("status") or {})
            assert backup_result(await w.get(STORAGE, "snapshots", snap3), "dump").code == "component-missing"

            # 3. a RestoreSession without status.components: the restore runs, nothing is written
            await client.CoreV1Api(api).patch_namespaced_secret(w.enc_secret, namespace,
                                                                {"stringData": {"RESTIC_PASSWORD": PASSWORD}})
            await create_pvc(api, namespace, "restored")
            await w.restore_session("restore-silent", snap, {**PVC, "name": "restored", "namespace": namespace},
                                    precreate=False)
            assert any("not pre-created" in p for p in await w.restore_problems("restore-silent", "dump"))
            cond, code, log = await w.run_job(
                render_upstream("pvc-addon", "logical-backup-restore", namespace, "PersistentVolumeClaim/restored", w,
                                session="restore-silent", restore_snapshot=snap))
            assert (cond, code) == ("Complete", 0), log
            silent = await w.get(CORE, "restoresessions", "restore-silent")
            assert "components" not in (silent.get("status") or {})
            assert restore_result(silent, "dump").code == "component-missing"
            assert (await pvc_host_path(api, namespace, "restored") / "kubestash-data" / "hello.txt").exists() is False
            assert (await pvc_host_path(api, namespace, "restored") / "hello.txt").read_text() == "hello\n"
            await w.delete_jobs()

    asyncio.run(body())


def test_the_executor_reaches_the_api_as_its_service_account(kube_cluster, kubestash_crds, namespace: str,
                                                             node_agent: NodeAgent, host_tmp: Path) -> None:
    """No RoleBinding for the executor's ServiceAccount: the API refuses it by that name (RBAC honoured,
    not the agent's admin identity), and the executor dies before writing."""
    node_agent.default = run()

    async def body() -> None:
        async with kube_cluster.api_client() as api:
            w = World(api, namespace, host_tmp / "storage")
            await w.setup(rbac=False)
            await create_pvc(api, namespace, "data")
            bs, snap = await w.backup_session("data-backup", "frequent", {**PVC, "name": "data", "namespace": namespace})
            cond, code, log = await w.run_job(
                render_upstream("pvc-addon", "logical-backup", namespace, "PersistentVolumeClaim/data", w, session=bs))
            assert (cond, code) == ("Failed", 1), log
            assert f'"system:serviceaccount:{namespace}:kubestash-executor" cannot get resource "backupsessions"' in log
            assert "components" not in ((await w.get(STORAGE, "snapshots", snap)).get("status") or {})
            await w.delete_jobs()

    asyncio.run(body())


def test_two_repositories_and_a_deadline(kube_cluster, kubestash_crds, namespace: str, node_agent: NodeAgent,
                                        host_tmp: Path, restic: str) -> None:
    """One BackupSession, two repositories: each Snapshot gets its own component and data; the
    repository whose encryption Secret has no RESTIC_PASSWORD fails alone. A BackupSession past its
    ``backupDeadline`` fails every component with "deadline exceeded" (exit 0)."""
    node_agent.default = run()

    async def body() -> None:
        async with kube_cluster.api_client() as api:
            w = World(api, namespace, host_tmp / "storage")
            await w.setup()
            await w.add_repository("copy", "/demo/copy")
            await client.CoreV1Api(api).create_namespaced_secret(namespace, {"metadata": {"name": "no-password"},
                                                                             "stringData": {"other": "x"}})
            await w.add_repository("broken", "/demo/broken", enc_secret="no-password")
            await create_pvc(api, namespace, "data")
            fill(await pvc_host_path(api, namespace, "data"))
            target = {**PVC, "name": "data", "namespace": namespace}
            bs, snaps = await w.backup_session_to("data-backup", "frequent", target, ["repo", "copy", "broken"])
            cond, code, log = await w.run_job(
                render_upstream("pvc-addon", "logical-backup", namespace, "PersistentVolumeClaim/data", w, session=bs))
            assert (cond, code) == ("Complete", 0), log
            results = [backup_result(await w.get(STORAGE, "snapshots", s), "dump") for s in snaps]
            assert [r.code for r in results] == [None, None, "component-failed"], results
            assert "has no key RESTIC_PASSWORD" in (results[2].error or "")
            for path, r in (("demo/data", results[0]), ("demo/copy", results[1])):
                (found,) = restic_snapshots(w.repo_dir / path / "repository/v1/frequent/dump")
                assert (found["id"],) == r.restic_ids
            assert not (w.repo_dir / "demo/broken").exists()

            bs2, snap2 = await w.backup_session("data-backup", "frequent", target, stamp=1700000005,
                                                timeout="1m", deadline="2020-01-01T00:00:00Z")
            cond, code, log = await w.run_job(
                render_upstream("pvc-addon", "logical-backup", namespace, "PersistentVolumeClaim/data", w, session=bs2))
            assert (cond, code) == ("Complete", 0), log
            r = backup_result(await w.get(STORAGE, "snapshots", snap2), "dump")
            assert (r.code, r.error) == ("component-failed", "deadline exceeded")
            await w.delete_jobs()

    asyncio.run(body())
