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
    # the pre-flight check: the ServiceAccount a Function runs as (stashflow.io/service-account) exists
    {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["get"]},
    # a workload backup reads its target (StatefulSet, Deployment, DaemonSet) to mount its data volumes
    {"apiGroups": ["apps"], "resources": ["statefulsets", "deployments", "daemonsets"], "verbs": ["get"]},
    # a session gives a KubeStash executor's ServiceAccount its RBAC (executor_rbac below); RBAC lets one
    # grant only what one holds, so the KubeDB plugins' reads are held here too
    {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["create"]},
    {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": ["create", "update"]},
    {"apiGroups": ["appcatalog.appscode.com"], "resources": ["appbindings"], "verbs": ["get"]},
    {"apiGroups": ["kubedb.com"], "resources": ["*"], "verbs": ["get"]},
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


def role_objects(namespace: str, *, name: str = NAME, subject: tuple[str, str] | None = None) -> list[dict[str, Any]]:
    """Role ``name`` with ``RULES`` in ``namespace`` and its RoleBinding to ``subject`` (namespace,
    ServiceAccount), by default the ServiceAccount ``stashflow`` of that namespace."""
    sa_namespace, sa = subject or (namespace, NAME)
    meta = {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/managed-by": "stashflow"}}
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": dict(meta), "rules": RULES},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": dict(meta),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": sa_namespace}]},
    ]


def crd_reader_objects(binding: str, subject: tuple[str, str], *, role: str = CRD_READER) -> list[dict[str, Any]]:
    """ClusterRole ``role`` (``CRD_RULES``: read KubeStash's CRDs, nothing else) and ClusterRoleBinding
    ``binding`` of it to ``subject`` (namespace, ServiceAccount)."""
    labels = {"app.kubernetes.io/managed-by": "stashflow"}
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": role, "labels": labels}, "rules": CRD_RULES},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": binding, "labels": labels},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
         "subjects": [{"kind": "ServiceAccount", "name": subject[1], "namespace": subject[0]}]},
    ]


def rbac_objects(namespace: str) -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding named ``stashflow`` in ``namespace``, and a
    ClusterRole(Binding) that lets it read KubeStash's CRDs and nothing else cluster-wide."""
    account = {"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": NAME, "namespace": namespace, "labels": {"app.kubernetes.io/managed-by": "stashflow"}}}
    return [account, *role_objects(namespace), *crd_reader_objects(f"{CRD_READER}-{namespace}", (namespace, NAME))]


# -- KubeStash's executor images (EXECUTOR-CONTRACT.md "RBAC of the executor's ServiceAccount") ------
#: what a backup executor reads and writes: the object walk and its one status write
EXECUTOR_BACKUP_RULES: list[dict[str, Any]] = [
    {"apiGroups": ["core.kubestash.com"], "resources": ["backupsessions", "backupconfigurations"], "verbs": ["get"]},
    {"apiGroups": ["storage.kubestash.com"], "resources": ["snapshots", "repositories", "backupstorages"],
     "verbs": ["get"]},
    {"apiGroups": ["storage.kubestash.com"], "resources": ["snapshots/status"], "verbs": ["patch"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
]
#: what a restore executor reads and writes
EXECUTOR_RESTORE_RULES: list[dict[str, Any]] = [
    {"apiGroups": ["core.kubestash.com"], "resources": ["restoresessions"], "verbs": ["get"]},
    {"apiGroups": ["core.kubestash.com"], "resources": ["restoresessions/status"], "verbs": ["patch"]},
    {"apiGroups": ["storage.kubestash.com"], "resources": ["snapshots", "repositories", "backupstorages"],
     "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
]
#: KubeDB's plugins also read the database's AppBinding and the database CR (DatabaseReady)
KUBEDB_RULES: list[dict[str, Any]] = [
    {"apiGroups": ["appcatalog.appscode.com"], "resources": ["appbindings"], "verbs": ["get"]},
    {"apiGroups": ["kubedb.com"], "resources": ["*"], "verbs": ["get"]},
]
#: manifest restores (kubedbmanifest-restore) create the objects they bring back
MANIFEST_RESTORE_RULES: list[dict[str, Any]] = [
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
    {"apiGroups": ["appcatalog.appscode.com"], "resources": ["appbindings"], "verbs": ["create"]},
]
#: in the other namespaces (the BackupStorage's, the Snapshot's, the encryption Secret's): reads only
_ELSEWHERE = {"backup": [
    {"apiGroups": ["storage.kubestash.com"], "resources": ["backupstorages", "repositories", "snapshots"],
     "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
]}
_ELSEWHERE["restore"] = _ELSEWHERE["backup"]


def executor_rbac(namespace: str, service_account: str, kind: str, *, name: str | None = None,
                  other_namespaces: tuple[str, ...] | list[str] = (), kubedb: bool = False,
                  extra_rules: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Role + RoleBinding for a KubeStash executor's ServiceAccount (``kind`` ``backup`` or ``restore``)
    in the session's namespace, and a read-only pair in each other namespace its object walk reaches:
    a RoleBinding in one namespace does not reach a BackupStorage or Secret in another. The
    ServiceAccount itself is the user's (``jobTemplate.spec.serviceAccountName``) or the caller's."""
    if kind not in ("backup", "restore"):
        raise ValueError(f"kind must be backup or restore, not {kind!r}")
    role = name or f"stashflow-kubestash-{kind}-executor"
    labels = {"app.kubernetes.io/managed-by": "stashflow"}
    rules = [*(EXECUTOR_BACKUP_RULES if kind == "backup" else EXECUTOR_RESTORE_RULES),
             *(KUBEDB_RULES if kubedb else []), *(extra_rules or [])]
    out: list[dict[str, Any]] = []
    for ns, ns_rules in [(namespace, rules), *[(o, _ELSEWHERE[kind]) for o in sorted(set(other_namespaces) - {namespace})]]:
        meta = {"name": role, "namespace": ns, "labels": labels}
        out += [
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": dict(meta), "rules": ns_rules},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": dict(meta),
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
             "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}]},
        ]
    return out


#: The ServiceAccounts stashflow's manifest Functions run as (their ``stashflow.io/service-account``
#: annotation), and what each may do cluster-wide: only the verbs the executor uses.
MANIFEST_READER = "stashflow-manifest-reader"
MANIFEST_WRITER = "stashflow-manifest-writer"
MANIFEST_RULES: dict[str, list[dict[str, Any]]] = {
    # manifest-backup lists the selected types and reads their objects (discovery needs nothing more:
    # every authenticated identity may read /api and /apis)
    MANIFEST_READER: [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["get", "list"]}],
    # manifest-restore reads each object, then server-side applies it (create for a new one, patch);
    # restoring a Role or binding grants what it names, which RBAC allows only with escalate/bind
    MANIFEST_WRITER: [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["get", "create", "patch"]},
                      {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "clusterroles"],
                       "verbs": ["escalate", "bind"]}],
}


def manifest_rbac_objects(namespace: str) -> list[dict[str, Any]]:
    """The manifest Functions' two ServiceAccounts in ``namespace``, their ClusterRoles, and a
    ClusterRoleBinding each: a namespace's objects can be restored from a run in another namespace
    (the one backed up may be gone), and a cluster's need cluster-wide access anyway."""
    labels = {"app.kubernetes.io/managed-by": "stashflow"}
    out: list[dict[str, Any]] = []
    for name, rules in MANIFEST_RULES.items():
        out += [
            {"apiVersion": "v1", "kind": "ServiceAccount",
             "metadata": {"name": name, "namespace": namespace, "labels": labels}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
             "metadata": {"name": name, "labels": labels}, "rules": rules},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": f"{name}-{namespace}", "labels": labels},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
             "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]},
        ]
    return out
