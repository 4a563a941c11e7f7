"""The objects KubeStash's executors need before their Job starts, exactly as EXECUTOR-CONTRACT.md's
table says (namespaces filled in every reference, ``status.snapshots`` and ``status.components``
written through the status subresource), created by the tests with KubeStash's real CRDs installed.

This is the test's stand-in for the operator's (here: stashflow's sessions) side; it also documents
what that side must produce for an upstream executor to run."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from localkube.helpers import job_condition, job_pods, pod_log, wait_job_finished, wait_until
from stashflow.addons.catalog import load
from stashflow.addons.contract import backup_preconditions, restore_preconditions
from stashflow.addons.model import AddonInfo, BackupStorage
from stashflow.addons.names import ulid
from stashflow.addons.rbac import executor_rbac
from stashflow.addons.render import RenderRequest, RepositoryContext, Target, render_plan, snapshot_name
from support import UPSTREAM_CATALOG

MERGE = "application/merge-patch+json"
CORE, STORAGE, V = "core.kubestash.com", "storage.kubestash.com", "v1alpha1"
PASSWORD = "restic pw: 'quoted' $HOME"
MOUNT = "/kubestash-repo"  # the local BackupStorage's mountPath
SA = "kubestash-executor"


def ref(name: str, namespace: str) -> dict[str, str]:
    return {"name": name, "namespace": namespace}


@dataclass
class World:
    """One namespace's KubeStash objects: storage, repository, encryption Secret, executor SA."""

    api: client.ApiClient
    ns: str
    repo_dir: Path
    storage: str = "local"
    repository: str = "repo"
    repo_path: str = "/demo/data"
    enc_secret: str = "encryption"

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    def storage_body(self) -> dict[str, Any]:
        return {"apiVersion": f"{STORAGE}/{V}", "kind": "BackupStorage",
                "metadata": {"name": self.storage, "namespace": self.ns},
                "spec": {"storage": {"provider": "local", "local": {
                    "mountPath": MOUNT, "hostPath": {"path": str(self.repo_dir), "type": "DirectoryOrCreate"}}},
                         "usagePolicy": {"allowedNamespaces": {"from": "Same"}}, "deletionPolicy": "Delete"}}

    async def create(self, group: str, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.custom.create_namespaced_custom_object(group, V, self.ns, plural, body)

    async def status(self, group: str, plural: str, name: str, status: dict[str, Any]) -> None:
        await self.custom.patch_namespaced_custom_object_status(group, V, self.ns, plural, name, {"status": status},
                                                                _content_type=MERGE)

    async def get(self, group: str, plural: str, name: str) -> dict[str, Any]:
        return await self.custom.get_namespaced_custom_object(group, V, self.ns, plural, name)

    async def setup(self, password: str = PASSWORD, *, rbac: bool = True) -> None:
        """Encryption Secret, BackupStorage, Repository; the executor's ServiceAccount and RBAC."""
        await self.core.create_namespaced_secret(self.ns, {"metadata": {"name": self.enc_secret},
                                                           "stringData": {"RESTIC_PASSWORD": password}})
        await self.create(STORAGE, "backupstorages", self.storage_body())
        await self.create(STORAGE, "repositories", {
            "apiVersion": f"{STORAGE}/{V}", "kind": "Repository", "metadata": {"name": self.repository, "namespace": self.ns},
            "spec": {"appRef": {"kind": "PersistentVolumeClaim", "name": "data", "namespace": self.ns},
                     "storageRef": ref(self.storage, self.ns), "path": self.repo_path,
                     "encryptionSecret": ref(self.enc_secret, self.ns), "deletionPolicy": "Delete"}})
        await self.core.create_namespaced_service_account(self.ns, {"metadata": {"name": SA}})
        rbac_api = client.RbacAuthorizationV1Api(self.api)
        for kind in ("backup", "restore") if rbac else ():
            for obj in executor_rbac(self.ns, SA, kind, kubedb=True):
                if obj["kind"] == "Role":
                    await rbac_api.create_namespaced_role(self.ns, obj)
                else:
                    await rbac_api.create_namespaced_role_binding(self.ns, obj)

        async def token() -> bool:  # the token controller's Secret, which admission mounts into Pods
            sa = await self.core.read_namespaced_service_account(SA, self.ns)
            return bool(sa.secrets)
        await wait_until(token, 60, what=f"a token for ServiceAccount {self.ns}/{SA}")

    async def add_repository(self, name: str, path: str, enc_secret: str | None = None) -> None:
        await self.create(STORAGE, "repositories", {
            "apiVersion": f"{STORAGE}/{V}", "kind": "Repository", "metadata": {"name": name, "namespace": self.ns},
            "spec": {"appRef": {"kind": "PersistentVolumeClaim", "name": "data", "namespace": self.ns},
                     "storageRef": ref(self.storage, self.ns), "path": path,
                     "encryptionSecret": ref(enc_secret or self.enc_secret, self.ns), "deletionPolicy": "Delete"}})

    async def backup_session(self, bc: str, session: str, target: dict[str, Any], *, snapshots: bool = True,
                             stamp: int = 1700000000, timeout: str | None = None,
                             deadline: str | None = None) -> tuple[str, str]:
        """BackupConfiguration (the invoker), BackupSession, one Snapshot; ``status.snapshots`` written."""
        bs, snaps = await self.backup_session_to(bc, session, target, [self.repository], snapshots=snapshots,
                                                 stamp=stamp, timeout=timeout, deadline=deadline)
        return bs, snaps[0]

    async def backup_session_to(self, bc: str, session: str, target: dict[str, Any], repositories: list[str], *,
                                snapshots: bool = True, stamp: int = 1700000000, timeout: str | None = None,
                                deadline: str | None = None) -> tuple[str, list[str]]:
        """As ``backup_session``, one Snapshot per repository (KubeStash: one per repository of the session)."""
        try:
            await self.create(CORE, "backupconfigurations", {
                "apiVersion": f"{CORE}/{V}", "kind": "BackupConfiguration", "metadata": {"name": bc, "namespace": self.ns},
                "spec": {"target": target,
                         "backends": [{"name": "local", "storageRef": ref(self.storage, self.ns),
                                       "retentionPolicy": ref("keep", self.ns)}],
                         "sessions": [{"name": session, "scheduler": {"schedule": "0 0 * * *", "jobTemplate": {"backoffLimit": 1}},
                                       "repositories": [{"name": r, "backend": "local", "directory": f"/{r}",
                                                         "encryptionSecret": ref(self.enc_secret, self.ns)}
                                                        for r in repositories],
                                       "addon": {"name": "x", "tasks": [{"name": "logical-backup"}]}}]}})
        except ApiException as e:
            if e.status != 409:
                raise
        bs = f"{bc}-{session}-{stamp}"
        await self.create(CORE, "backupsessions", {
            "apiVersion": f"{CORE}/{V}", "kind": "BackupSession", "metadata": {"name": bs, "namespace": self.ns},
            "spec": {"invoker": {"apiGroup": CORE, "kind": "BackupConfiguration", "name": bc}, "session": session,
                     **({"backupTimeout": timeout} if timeout else {})}})
        snaps = []
        for repo in repositories:
            snap = snapshot_name(repo, bs)
            snaps.append(snap)
            await self.create(STORAGE, "snapshots", {
                "apiVersion": f"{STORAGE}/{V}", "kind": "Snapshot", "metadata": {"name": snap, "namespace": self.ns},
                "spec": {"snapshotID": ulid(), "type": "FullBackup", "version": "v1", "repository": repo,
                         "session": session, "backupSession": bs, "appRef": target, "deletionPolicy": "Delete"}})
        if snapshots:
            await self.status(CORE, "backupsessions", bs, {
                "phase": "Running", **({"backupDeadline": deadline} if deadline else {}),
                "snapshots": [{"name": snap, "repository": repo, "phase": "Pending", "appRef": target}
                              for snap, repo in zip(snaps, repositories)]})
        return bs, snaps

    async def restore_session(self, name: str, snapshot: str, target: dict[str, Any], component: str = "dump",
                              *, precreate: bool = True, password_secret: str | None = None) -> None:
        await self.create(CORE, "restoresessions", {
            "apiVersion": f"{CORE}/{V}", "kind": "RestoreSession", "metadata": {"name": name, "namespace": self.ns},
            "spec": {"target": target,
                     "dataSource": {"namespace": self.ns, "repository": self.repository, "snapshot": snapshot,
                                    "encryptionSecret": ref(password_secret or self.enc_secret, self.ns)},
                     "addon": {"name": "x", "tasks": [{"name": "logical-backup-restore"}]}}})
        if precreate:
            await self.status(CORE, "restoresessions", name, {"phase": "Running",
                                                              "components": {component: {"phase": "Pending"}}})

    async def _listed(self) -> tuple[list, list, dict]:
        repos = (await self.custom.list_namespaced_custom_object(STORAGE, V, self.ns, "repositories"))["items"]
        stores = (await self.custom.list_namespaced_custom_object(STORAGE, V, self.ns, "backupstorages"))["items"]
        secrets = {(self.ns, s.metadata.name): list(s.data or {})
                   for s in (await self.core.list_namespaced_secret(self.ns)).items}
        return repos, stores, secrets

    async def backup_problems(self, bs: str) -> list[str]:
        """stashflow's precondition check (addons/contract.py) on the objects as the API holds them."""
        session = await self.get(CORE, "backupsessions", bs)
        invoker = session["spec"]["invoker"]["name"]
        bc = await self.get(CORE, "backupconfigurations", invoker)
        snaps = (await self.custom.list_namespaced_custom_object(STORAGE, V, self.ns, "snapshots"))["items"]
        repos, stores, secrets = await self._listed()
        return [str(p) for p in backup_preconditions(session, bc, snaps, repos, stores, secrets)]

    async def restore_problems(self, rs: str, component: str) -> list[str]:
        session = await self.get(CORE, "restoresessions", rs)
        snap = await self.get(STORAGE, "snapshots", session["spec"]["dataSource"]["snapshot"])
        repos, stores, secrets = await self._listed()
        return [str(p) for p in restore_preconditions(session, component, snap, repos, stores, secrets)]

    async def phases_since(self, snapshot: str, component: str, version: str) -> list[str]:
        """Every phase the Snapshot's component goes through after resourceVersion ``version`` (read
        before the Job was created), until it is terminal: each status write is its own
        resourceVersion, so a watch from there misses none."""
        seen: list[str] = []
        async with watch.Watch() as w:
            async for ev in w.stream(self.custom.list_namespaced_custom_object, STORAGE, V, self.ns, "snapshots",
                                     field_selector=f"metadata.name={snapshot}", resource_version=version,
                                     timeout_seconds=300):
                obj = ev["raw_object"] if "raw_object" in ev else ev["object"]
                phase = (((obj.get("status") or {}).get("components") or {}).get(component) or {}).get("phase")
                if phase and (not seen or seen[-1] != phase):
                    seen.append(phase)
                if phase in ("Succeeded", "Failed"):
                    break
        return seen

    async def run_job(self, job: dict[str, Any], timeout: float = 240) -> tuple[str, int, str]:
        """Create the rendered Job; wait for it; return (condition, exit code, log)."""
        await client.BatchV1Api(self.api).create_namespaced_job(self.ns, job)
        name = job["metadata"]["name"]
        done = await wait_job_finished(self.api, self.ns, name, timeout=timeout)
        (pod,) = await job_pods(self.api, self.ns, name)
        c = pod.spec.containers[0].name
        term = pod.status.container_statuses[0].state.terminated
        return job_condition(done) or "", term.exit_code, await pod_log(self.api, self.ns, pod.metadata.name, c)

    async def delete_jobs(self) -> None:
        batch = client.BatchV1Api(self.api)
        for j in (await batch.list_namespaced_job(self.ns)).items:
            await batch.delete_namespaced_job(j.metadata.name, self.ns, propagation_policy="Foreground")


def render_upstream(addon: str, task: str, ns: str, target: str, world: World, *, session: str,
                    params: dict[str, Any] | None = None, variables: dict[str, Any] | None = None,
                    builtins: dict[str, Any] | None = None, restore_snapshot: str | None = None) -> dict[str, Any]:
    """stashflow's renderer on the upstream catalog: the upstream Function's image and args, the
    Addon's volumes, the local storage mounted at its mountPath, and the executor's ServiceAccount."""
    catalog = load([UPSTREAM_CATALOG])
    storage = BackupStorage.model_validate(world.storage_body())
    b = dict(builtins or {})
    if restore_snapshot:
        b["snapshot"] = restore_snapshot
    plan = render_plan(catalog, RenderRequest(
        addon=addon, task=task, namespace=ns, target=Target.parse(target), params=params or {},
        variables=variables or {}, builtins=b, session=session,
        repository=RepositoryContext(name=world.repository, storage=storage, directory=world.repo_path),
        addon_info=AddonInfo.model_validate({"name": addon, "jobTemplate": {"spec": {"serviceAccountName": SA}}}),
        now=datetime.now(timezone.utc)))
    return plan.job


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def run(coro: Any) -> Any:
    return asyncio.run(coro)
