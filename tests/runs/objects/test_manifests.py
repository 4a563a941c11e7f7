"""stashflow-manifests end to end on the real control plane: a namespace's objects backed up by
the ``manifest-backup`` flow (stashflow-executor reads the API as its ServiceAccount, run for real
by the node agent), the namespace deleted, a dry run that changes nothing, the restore, and the
objects compared with what they were, the fields the API server sets left aside."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import os
import subprocess
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from localkube.helpers import wait_until
from localkube.nodeagent import Match, never_ends
from localkube.nodeagent import run as run_for_real
from support import run_cli

from ..conftest import run_flow
from ..observe import api, eventually, flow_run_logs, nothing_left, snapshot

RESTIC_PASSWORD = "manifests 'pw' $HOME"
SECRET_VALUE = "s3cret ü 'value' $(HOME)"
ADDON = "stashflow-manifests"
#: what the API server sets: left out of the comparison (an independent list, not the executor's)
SERVER_SET = ("uid", "resourceVersion", "creationTimestamp", "managedFields", "generation", "selfLink")
SERVER_ANNOTATIONS = ("deployment.kubernetes.io/revision", "pv.kubernetes.io/bind-completed",
                      "pv.kubernetes.io/bound-by-controller", "volume.beta.kubernetes.io/storage-provisioner")
KINDS = {  # plural → (api path prefix): the objects the test makes and compares
    "configmaps": "/api/v1", "secrets": "/api/v1", "serviceaccounts": "/api/v1", "services": "/api/v1",
    "persistentvolumeclaims": "/api/v1", "deployments": "/apis/apps/v1", "roles": "/apis/rbac.authorization.k8s.io/v1",
    "rolebindings": "/apis/rbac.authorization.k8s.io/v1"}


def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def app_objects(ns: str) -> list[dict[str, Any]]:
    labels = {"app": "web", "tier": "front"}
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": ns, "labels": labels},
         "data": {"app.conf": "listen: 8080\nname: 'ü 日本'\n# comment: x\n", "empty": "", "yes": "no",
                  "number": "0123"},
         "binaryData": {"blob.bin": _b64(bytes(range(256)))}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db-auth", "namespace": ns,
                                                           "annotations": {"note": "a: b"}},
         "type": "Opaque", "data": {"password": _b64(SECRET_VALUE), "key.bin": _b64(b"\x00\xff\x10")}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "web", "namespace": ns}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "web-reader", "namespace": ns},
         "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "web-reader", "namespace": ns},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "web-reader"},
         "subjects": [{"kind": "ServiceAccount", "name": "web", "namespace": ns}]},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data", "namespace": ns},
         "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": ns, "labels": labels},
         "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": ns, "labels": labels},
         "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                  "template": {"metadata": {"labels": {"app": "web"}},
                               "spec": {"serviceAccountName": "web",
                                        "containers": [{"name": "web", "image": "registry.example/web:1.2",
                                                        "command": ["web", "--listen=:8080"],
                                                        "env": [{"name": "PASSWORD", "valueFrom": {"secretKeyRef": {
                                                            "name": "db-auth", "key": "password"}}}],
                                                        "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                                        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]}}}},
    ]


async def _request(c: client.ApiClient, method: str, path: str, body: Any = None) -> Any:
    out = await c.call_api(path, method, body=body, auth_settings=["BearerToken"], response_types_map={200: "object",
                           201: "object"}, _return_http_data_only=True, _preload_content=True)
    return out


def normalised(plural: str, obj: dict[str, Any]) -> dict[str, Any]:
    """An object without what the API server sets (and a Service's allocated IP, a PVC's volume)."""
    out = copy.deepcopy(obj)
    out.pop("status", None)
    meta = out["metadata"]
    for key in SERVER_SET:
        meta.pop(key, None)
    for key in SERVER_ANNOTATIONS:
        (meta.get("annotations") or {}).pop(key, None)
    if meta.get("annotations") == {}:
        del meta["annotations"]
    spec = out.get("spec") or {}
    out.pop("kind", None)
    out.pop("apiVersion", None)  # items of a list carry neither
    if plural == "services":
        spec.pop("clusterIP", None)
        spec.pop("clusterIPs", None)
    if plural == "persistentvolumeclaims":
        spec.pop("volumeName", None)
    if plural == "serviceaccounts":
        out.pop("secrets", None)  # token Secrets: the token controller's, new ones after a restore
    return out


def read_app(cluster: Any, ns: str) -> dict[str, dict[str, Any]]:
    """Every object of the kinds the test made, by kind/name, normalised; the cluster's own left out."""
    async def go(c: client.ApiClient) -> dict[str, dict[str, Any]]:
        found = {}
        for plural, prefix in KINDS.items():
            listed = await _request(c, "GET", f"{prefix}/namespaces/{ns}/{plural}")
            for item in listed["items"]:
                name = item["metadata"]["name"]
                if (plural == "secrets" and item.get("type") == "kubernetes.io/service-account-token") or \
                        (plural == "configmaps" and name == "kube-root-ca.crt") or (plural == "serviceaccounts"
                                                                                   and name == "default"):
                    continue
                found[f"{plural}/{name}"] = normalised(plural, item)
        return found
    return api(cluster, go)


def _namespace_gone(cluster: Any, ns: str) -> bool:
    async def go(c: client.ApiClient) -> bool:
        try:
            await client.CoreV1Api(c).read_namespace(ns)
            return False
        except ApiException as exc:
            return exc.status == 404
    return api(cluster, go)


@pytest.fixture
def app_namespace(kube_cluster, namespace):  # type: ignore[no-untyped-def]
    """A second namespace with the application's objects; deleted afterwards (and the manifests
    ServiceAccounts' cluster-wide bindings that the test's install made)."""
    ns = f"{namespace}-app"

    async def create(c: client.ApiClient) -> None:
        await client.CoreV1Api(c).create_namespace({"metadata": {"name": ns, "labels": {"team": "shop"}}})

        async def sa_ready() -> bool | None:
            try:
                await client.CoreV1Api(c).read_namespaced_service_account("default", ns)
                return True
            except ApiException:
                return None
        await wait_until(sa_ready, 60, what="the default ServiceAccount")
        for obj in app_objects(ns):
            plural = {"PersistentVolumeClaim": "persistentvolumeclaims", "RoleBinding": "rolebindings"}.get(
                obj["kind"], obj["kind"].lower() + "s")
            prefix = KINDS[plural]
            await _request(c, "POST", f"{prefix}/namespaces/{ns}/{plural}", obj)
    api(kube_cluster, create)
    try:
        yield ns
    finally:
        async def cleanup(c: client.ApiClient) -> None:
            rbac = client.RbacAuthorizationV1Api(c)
            for name in (f"stashflow-manifest-reader-{namespace}", f"stashflow-manifest-writer-{namespace}"):
                try:
                    await rbac.delete_cluster_role_binding(name)
                except ApiException as exc:
                    if exc.status != 404:
                        raise
            try:
                await client.CoreV1Api(c).delete_namespace(ns)
            except ApiException as exc:
                if exc.status != 404:
                    raise
        api(kube_cluster, cleanup)
        eventually(lambda: _namespace_gone(kube_cluster, ns), timeout=120)


def restic_files(repo: Any) -> list[str]:
    for config in repo.rglob("config"):
        done = subprocess.run(["restic", "-r", str(config.parent), "ls", "latest", "--json", "--no-lock"],
                              env={**os.environ, "RESTIC_PASSWORD": RESTIC_PASSWORD}, capture_output=True, text=True,
                              check=True)
        return [json.loads(line)["path"] for line in done.stdout.splitlines()[1:]
                if json.loads(line).get("type") == "file"]
    return []


def test_namespace_backed_up_deleted_dry_run_restored_equal(kube_cluster, namespace, node_agent, prefect_api,
                                                            host_tmp, executor_on_host, app_namespace) -> None:
    node_agent.default = run_for_real()
    node_agent.script(Match(namespace=app_namespace), never_ends())  # the app's own Pods: running, not run
    code, out, err = run_cli("install", "-n", namespace, "--manifests", "--kubeconfig", str(kube_cluster.kubeconfig))
    assert code == 0, err
    assert "ServiceAccount/stashflow-manifest-reader created" in out
    repo = host_tmp / "repository"
    repo.mkdir()
    api(kube_cluster, lambda c: client.CoreV1Api(c).create_namespaced_secret(namespace, {
        "metadata": {"name": "restic-password"}, "data": {"RESTIC_PASSWORD": _b64(RESTIC_PASSWORD)}}))
    storage = {"apiVersion": "storage.kubestash.com/v1alpha1", "kind": "BackupStorage",
               "metadata": {"name": "local", "namespace": namespace},
               "spec": {"storage": {"provider": "local",
                                    "local": {"mountPath": "/stashflow-repo", "hostPath": {"path": str(repo)}}}}}
    target = f"Namespace/{app_namespace}"
    before = read_app(kube_cluster, app_namespace)
    assert len(before) == 8, sorted(before)

    backup = run_flow(ADDON, "manifest-backup", target=target, namespace=namespace, kubeconfig=str(kube_cluster.kubeconfig),
                      storage=storage, directory="manifests", encryption_secret="restic-password",
                      IncludeNamespaces=app_namespace, history_limit=0)
    assert backup.is_completed(), backup.message
    snap = snapshot(kube_cluster, namespace, backup.result()["snapshot"])
    assert snap["status"]["phase"] == "Succeeded", snap["status"]
    assert snap["status"]["components"]["manifest"]["integrity"] is True
    files = restic_files(repo)
    base = f"/kubestash-tmp/manifest/namespaces/{app_namespace}"
    for path in ("configmaps/settings.yaml", "secrets/db-auth.yaml", "deployments.apps/web.yaml", "services/web.yaml",
                 "rolebindings.rbac.authorization.k8s.io/web-reader.yaml", "persistentvolumeclaims/data.yaml"):
        assert f"{base}/{path}" in files, files
    assert f"/kubestash-tmp/manifest/cluster/namespaces/{app_namespace}.yaml" in files
    assert not any("kube-root-ca.crt" in f or "-token-" in f for f in files), files  # the cluster's own

    api(kube_cluster, lambda c: client.CoreV1Api(c).delete_namespace(app_namespace))
    eventually(lambda: _namespace_gone(kube_cluster, app_namespace), timeout=120)

    common = dict(target=target, namespace=namespace, kubeconfig=str(kube_cluster.kubeconfig), snapshot="latest",
                  repository=app_namespace, history_limit=0)
    dry = run_flow(ADDON, "manifest-restore", dryRun="true", **common)
    assert dry.is_completed(), dry.message
    assert _namespace_gone(kube_cluster, app_namespace)  # a dry run changes nothing
    dry_logs = flow_run_logs(dry.state_details.flow_run_id)
    assert any(f"would create Namespace {app_namespace}" in line for line in dry_logs)
    assert any(f"would create Secret {app_namespace}/db-auth" in line for line in dry_logs)

    restore = run_flow(ADDON, "manifest-restore", **common)
    assert restore.is_completed(), restore.message
    after = read_app(kube_cluster, app_namespace)
    assert after == before
    ns_labels = api(kube_cluster, lambda c: client.CoreV1Api(c).read_namespace(app_namespace)).metadata.labels
    assert ns_labels.get("team") == "shop"

    # a changed object: the dry run with OverrideResources says which fields would change, and changes nothing
    api(kube_cluster, lambda c: client.CoreV1Api(c).patch_namespaced_config_map(
        "settings", app_namespace, {"data": {"number": "42"}}))
    changed = read_app(kube_cluster, app_namespace)
    dry = run_flow(ADDON, "manifest-restore", dryRun="true", OverrideResources="true", **common)
    assert dry.is_completed(), dry.message
    assert read_app(kube_cluster, app_namespace) == changed
    dry_logs = flow_run_logs(dry.state_details.flow_run_id)
    assert any(f"would update ConfigMap {app_namespace}/settings: data.number" in line for line in dry_logs), dry_logs
    assert any(f"unchanged Secret {app_namespace}/db-auth" in line for line in dry_logs)
    restore = run_flow(ADDON, "manifest-restore", OverrideResources="true", **common)
    assert restore.is_completed(), restore.message
    assert read_app(kube_cluster, app_namespace) == before

    # kubedump's selectors: labels that must all match, a type left out; the Namespace comes along
    selected = run_flow(ADDON, "manifest-backup", target=target, namespace=namespace,
                        kubeconfig=str(kube_cluster.kubeconfig), storage=storage, directory="manifests",
                        encryption_secret="restic-password", IncludeNamespaces=app_namespace,
                        ANDedLabelSelectors="app:web,tier:front", ExcludeResources="deployments.apps",
                        session="selected", history_limit=0)
    assert selected.is_completed(), selected.message
    assert sorted(restic_files(repo)) == [f"/kubestash-tmp/manifest/cluster/namespaces/{app_namespace}.yaml",
                                          f"{base}/configmaps/settings.yaml", f"{base}/services/web.yaml"]

    # the Secret's value went nowhere but the repository
    for state in (backup, restore, dry):
        assert not any(SECRET_VALUE in line or _b64(SECRET_VALUE) in line
                       for line in flow_run_logs(state.state_details.flow_run_id))
    eventually(lambda: nothing_left(kube_cluster, namespace), timeout=60)  # history_limit 0: no Job kept


def test_without_the_service_account_the_run_fails_before_creating_anything(kube_cluster, namespace, prefect_api,
                                                                          host_tmp) -> None:
    """No `stashflow install --manifests`: the Pod's ServiceAccount is missing, the run says so at once
    (instead of a Job whose Pods the admission plugin refuses), and creates no Job or Snapshot."""
    storage = {"apiVersion": "storage.kubestash.com/v1alpha1", "kind": "BackupStorage",
               "metadata": {"name": "local", "namespace": namespace},
               "spec": {"storage": {"provider": "local", "local": {"mountPath": "/stashflow-repo",
                                                                   "hostPath": {"path": str(host_tmp)}}}}}
    state = run_flow(ADDON, "manifest-backup", target=f"Namespace/{namespace}", namespace=namespace,
                     kubeconfig=str(kube_cluster.kubeconfig), storage=storage, encryption_secret="restic-password")
    assert state.is_failed()
    assert state.message.startswith("serviceaccount-not-found: "), state.message
    assert 'ServiceAccount "stashflow-manifest-reader" does not exist' in state.message
    assert nothing_left(kube_cluster, namespace)
    from ..observe import snapshots
    assert snapshots(kube_cluster, namespace) == []
