"""`stashflow install`: stashflow's own Snapshot CRD where there is none, and RBAC that is enough."""

from __future__ import annotations

import base64
import json

import yaml
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from localkube.helpers import KUBESTASH_CRDS, apt_install, create_pvc, install_crds, pvc_host_path, wait_until
from localkube.nodeagent import run as run_for_real
from localkube.nodeagent import succeed
from stashflow.tasks.objects import forget_crds
from support import HAVE_SHARED, run_cli

from .conftest import run_flow
from .observe import api, snapshot

REPORT = {"components": {"backup": {"phase": "Succeeded", "size": "3.000 MiB", "integrity": True, "resticStats": [
    {"id": "abcdef0123456789", "hostPath": "/kubestash-data", "size": "3.000 MiB", "uploaded": "1.500 MiB"}]}}}


async def _delete_snapshot_crd(c: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(c)
    try:
        await ext.delete_custom_resource_definition("snapshots.storage.kubestash.com")
    except ApiException as exc:
        if exc.status != 404:
            raise

    async def gone() -> bool | None:
        try:
            await ext.read_custom_resource_definition("snapshots.storage.kubestash.com")
            return None
        except ApiException as exc:
            return True if exc.status == 404 else None
    await wait_until(gone, 60, what="the Snapshot CRD to go")
    forget_crds()  # this process's runs must not go on from the CRD they saw (tasks/objects.py CRD_TTL)


async def _service_account_kubeconfig(c: client.ApiClient, namespace: str, server: str, ca: str, path) -> None:
    """A kubeconfig with the token of the `stashflow` ServiceAccount (1.20 makes token Secrets)."""
    core = client.CoreV1Api(c)

    async def token() -> str | None:
        sa = await core.read_namespaced_service_account("stashflow", namespace)
        for ref in sa.secrets or []:
            secret = await core.read_namespaced_secret(ref.name, namespace)
            if secret.data and secret.data.get("token"):
                return base64.b64decode(secret.data["token"]).decode()
        return None
    value = await wait_until(token, 60, what="the ServiceAccount token")
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority-data": ca}}],
        "users": [{"name": "sa", "user": {"token": value}}],
        "contexts": [{"name": "sa", "context": {"cluster": "local", "user": "sa", "namespace": namespace}}]}))


def test_install_then_a_run_as_the_service_account(kube_cluster, namespace, node_agent, prefect_api, tmp_path,
                                                  host_tmp) -> None:
    admin = yaml.safe_load(kube_cluster.kubeconfig.read_text())
    cluster_entry = admin["clusters"][0]["cluster"]
    ca = cluster_entry.get("certificate-authority-data") or base64.b64encode(
        open(cluster_entry["certificate-authority"], "rb").read()).decode()
    try:
        api(kube_cluster, _delete_snapshot_crd)
        rc, out, err = run_cli("install", "--namespace", namespace, "--kubeconfig", str(kube_cluster.kubeconfig))
        assert rc == 0, err
        assert "snapshots.storage.kubestash.com installed" in out and "Role/stashflow created" in out
        rc, out, _ = run_cli("install", "--namespace", namespace, "--kubeconfig", str(kube_cluster.kubeconfig))
        assert "already present" in out and "Role/stashflow updated" in out  # idempotent

        sa_config = tmp_path / "sa.kubeconfig"
        api(kube_cluster, lambda c: _service_account_kubeconfig(c, namespace, cluster_entry["server"], ca, sa_config))
        node_agent.script({"stashflow.io/session": "data-sa"}, succeed(message=json.dumps(REPORT)))
        state = run_flow("scripted", "backup", target="PersistentVolumeClaim/data", namespace=namespace,
                         kubeconfig=str(sa_config), session="data-sa")
        assert state.is_completed(), state.message
        status = snapshot(kube_cluster, namespace, "data-data-sa")["status"]
        # stashflow's own CRD keeps the report exactly, in the flat form the container wrote
        assert status["components"]["backup"]["resticStats"] == REPORT["components"]["backup"]["resticStats"]
        assert status["size"] == "3.000 MiB" and status["integrity"] is True

        # everything a real backup does, as the ServiceAccount: claim, init, backup, verify, retention
        # (restic forget and Snapshot deletion), history; then a restore of latest
        apt_install("restic")
        node_agent.default = run_for_real()

        async def setup(c: client.ApiClient) -> tuple:
            await create_pvc(c, namespace, "files")
            await create_pvc(c, namespace, "back")
            await client.CoreV1Api(c).create_namespaced_secret(namespace, {
                "metadata": {"name": "pw"}, "data": {"RESTIC_PASSWORD": base64.b64encode(b"pw").decode()}})
            return await pvc_host_path(c, namespace, "files"), await pvc_host_path(c, namespace, "back")

        files, back = api(kube_cluster, setup)
        (files / "a.txt").write_text("as the service account\n")
        storage = {"apiVersion": "storage.kubestash.com/v1alpha1", "kind": "BackupStorage", "metadata": {"name": "s"},
                   "spec": {"storage": {"provider": "local", "local": {"mountPath": "/r",
                                                                       "hostPath": {"path": str(host_tmp)}}}}}
        common = dict(target="PersistentVolumeClaim/files", namespace=namespace, kubeconfig=str(sa_config),
                      storage=storage, encryption_secret="pw", retention={"successfulSnapshots": {"last": 1}})
        for session in ("files-1", "files-2"):
            state = run_flow("stashflow-pvc", "logical-backup", session=session, **common)
            assert state.is_completed(), state.message
        assert state.result()["retention"]["delete"] == ["files-files-1"]
        state = run_flow("stashflow-pvc", "logical-backup-restore", target="PersistentVolumeClaim/back",
                         namespace=namespace, kubeconfig=str(sa_config), snapshot="latest", repository="files")
        assert state.is_completed(), state.message
        assert (back / "a.txt").read_text() == "as the service account\n"
    finally:
        if HAVE_SHARED:  # give the rest of the session KubeStash's CRD back
            api(kube_cluster, _delete_snapshot_crd)
            api(kube_cluster, lambda c: install_crds(c, KUBESTASH_CRDS))
            forget_crds()
