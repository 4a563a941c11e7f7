"""The RBAC a stashflow run needs in a namespace: only the verbs it uses."""

from __future__ import annotations

from typing import Any

from .crd import KINDS

NAME = "stashflow"

RULES: list[dict[str, Any]] = [
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get", "list", "watch", "patch", "delete"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["create", "get", "list", "patch", "delete"]},
    {"apiGroups": ["storage.kubestash.com"], "resources": ["snapshots"],
     "verbs": ["create", "get", "list", "patch", "delete"]},
    {"apiGroups": ["storage.kubestash.com"], "resources": ["snapshots/status"], "verbs": ["patch"]},
    # a session run (flows/session_flows.py) applies the plan's objects and records the session in them
    {"apiGroups": ["storage.kubestash.com"], "resources": ["backupstorages", "repositories"],
     "verbs": ["create", "get", "patch"]},
    {"apiGroups": ["storage.kubestash.com"], "resources": ["repositories/status"], "verbs": ["patch"]},
    {"apiGroups": ["core.kubestash.com"], "resources": ["backupconfigurations"], "verbs": ["create", "get", "patch"]},
    {"apiGroups": ["core.kubestash.com"], "resources": ["backupsessions"], "verbs": ["create", "get", "list", "delete"]},
    {"apiGroups": ["core.kubestash.com"], "resources": ["restoresessions"], "verbs": ["create", "get"]},
    {"apiGroups": ["core.kubestash.com"],
     "resources": ["backupconfigurations/status", "backupsessions/status", "restoresessions/status"],
     "verbs": ["patch"]},
    # the pre-flight check reads Secrets as metadata only (PartialObjectMetadata): their values never
    # reach stashflow, but RBAC cannot grant less than get
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
    # one Lease per target: one run per target at a time (tasks/claim.py)
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
     "verbs": ["create", "get", "list", "update", "patch", "delete"]},
]


#: Cluster-wide, read only, the CRDs of KubeStash's kinds: which are installed (stashflow's or KubeStash's).
CRD_READER = "stashflow-snapshot-crd-reader"
CRD_RULES: list[dict[str, Any]] = [
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
     "resourceNames": [kind.crd_name for kind in KINDS.values()], "verbs": ["get"]},
]


def rbac_objects(namespace: str) -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding named ``stashflow`` in ``namespace``, and a
    ClusterRole(Binding) that lets it read KubeStash's CRDs and nothing else cluster-wide."""
    labels = {"app.kubernetes.io/managed-by": "stashflow"}
    meta = {"name": NAME, "namespace": namespace, "labels": labels}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": dict(meta)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": dict(meta), "rules": RULES},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": dict(meta),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME},
         "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": namespace}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": CRD_READER, "labels": labels}, "rules": CRD_RULES},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": f"{CRD_READER}-{namespace}", "labels": labels},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": CRD_READER},
         "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": namespace}]},
    ]
