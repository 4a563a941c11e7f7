"""stashflow in the cluster: the objects that run a Prefect server on PostgreSQL and the stashflow
worker as Deployments (``stashflow install --in-cluster`` prints them for ``kubectl apply -f -``).

Printed from typed options rather than kept as a YAML file so that the worker's RBAC is the one
table ``rbac.RULES`` (what a run uses, nothing more) in every namespace the worker serves, and so
that each print gets its own database password instead of one every reader of the repository knows.
"""

from __future__ import annotations

import secrets
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .names import name_problem
from .rbac import CRD_READER, crd_reader_objects, role_objects

PREFECT_IMAGE = "prefecthq/prefect:3.9.1-python3.11"
POSTGRES_IMAGE = "postgres:16-bookworm"
STASHFLOW_IMAGE = "ghcr.io/stashflow/stashflow:0.1.0"  # images/stashflow: stashflow installed, no ENTRYPOINT

POSTGRES = "postgres"  # StatefulSet and its headless Service
PREFECT_SERVER = "prefect-server"  # Deployment and Service
WORKER = "stashflow-worker"  # Deployment, its ServiceAccount, and its Role/RoleBinding in each served namespace
DATABASE_SECRET = "prefect-database"  # POSTGRES_PASSWORD (the in-cluster server's) and connection-url (Prefect's)
CATALOG_DIR = "/etc/stashflow/catalog"
POSTGRES_PORT = 5432
PREFECT_PORT = 4200
DB_POOL = (20, 20)  # the Prefect server's PostgreSQL connections: pool size, overflow
_LABELS = {"app.kubernetes.io/managed-by": "stashflow", "app.kubernetes.io/part-of": "stashflow"}


class InCluster(BaseModel):
    """What ``stashflow install --in-cluster`` is asked for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    namespace: str = Field("stashflow", description="Where the server, its database and the worker run.")
    serves: tuple[str, ...] = Field(("default",), description="Namespaces whose backups the worker runs: "
                                                              "it gets stashflow's Role in each, nothing else.")
    pool: str = Field("stashflow", description="The work pool the worker takes flow runs from (made when missing).")
    limit: int | None = Field(None, ge=1, description="At most this many flow runs at once (`--limit`).")
    catalog_configmap: str | None = Field(None, description="A ConfigMap (key catalog.yaml: your Addons and "
                                                            "Functions) the worker reads instead of the built-in catalog.")
    postgres: bool = Field(True, description="Run PostgreSQL here; False: an external one, whose URL is "
                                             "the key connection-url of the Secret prefect-database you make.")
    prefect_image: str = PREFECT_IMAGE
    postgres_image: str = POSTGRES_IMAGE
    stashflow_image: str = STASHFLOW_IMAGE

    def problems(self) -> list[tuple[str, str]]:
        """(option, why) for each name the API server would refuse."""
        out = [("namespace", name_problem(self.namespace, max_len=63, label=True))]
        out += [("serves", name_problem(ns, max_len=63, label=True)) for ns in self.serves]
        if self.catalog_configmap is not None:
            out.append(("catalog_configmap", name_problem(self.catalog_configmap)))
        return [(field, problem) for field, problem in out if problem]

    @property
    def server_url(self) -> str:
        return f"http://{PREFECT_SERVER}.{self.namespace}.svc:{PREFECT_PORT}/api"

    @property
    def postgres_host(self) -> str:
        return f"{POSTGRES}.{self.namespace}.svc"


def _meta(name: str, namespace: str | None = None, **labels: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, **({"namespace": namespace} if namespace else {})}
    meta["labels"] = {**_LABELS, **labels}
    return meta


def _secret_env(name: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": DATABASE_SECRET, "key": key}}}


def _postgres(o: InCluster, password: str) -> list[dict[str, Any]]:
    """The Secret, a headless Service and a one-replica StatefulSet with a volume of its own."""
    app = {"app.kubernetes.io/name": POSTGRES}
    url = f"postgresql+asyncpg://prefect:{password}@{o.postgres_host}:{POSTGRES_PORT}/prefect"
    return [
        {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(DATABASE_SECRET, o.namespace), "type": "Opaque",
         "stringData": {"POSTGRES_PASSWORD": password, "connection-url": url}},
        {"apiVersion": "v1", "kind": "Service", "metadata": _meta(POSTGRES, o.namespace, **app),
         "spec": {"clusterIP": "None", "selector": app, "ports": [{"name": "postgres", "port": POSTGRES_PORT}]}},
        {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": _meta(POSTGRES, o.namespace, **app),
         "spec": {
             "serviceName": POSTGRES, "replicas": 1, "selector": {"matchLabels": app},
             "template": {"metadata": {"labels": {**_LABELS, **app}}, "spec": {
                 "containers": [{
                     "name": "postgres", "image": o.postgres_image,  # the image's entrypoint: initdb, then postgres
                     "env": [{"name": "POSTGRES_USER", "value": "prefect"}, {"name": "POSTGRES_DB", "value": "prefect"},
                             _secret_env("POSTGRES_PASSWORD", "POSTGRES_PASSWORD"),
                             {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"}],
                     "ports": [{"name": "postgres", "containerPort": POSTGRES_PORT}],
                     "readinessProbe": {"exec": {"command": ["pg_isready", "-U", "prefect", "-d", "prefect"]},
                                        "periodSeconds": 5},
                     "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
                     "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"}]}]}},
             "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                 "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}}}]}},
    ]


def _prefect_server(o: InCluster) -> list[dict[str, Any]]:
    """``prefect server start`` on the database of the Secret; migrates the schema when it starts."""
    app = {"app.kubernetes.io/name": PREFECT_SERVER}
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": _meta(PREFECT_SERVER, o.namespace, **app),
         "spec": {"selector": app, "ports": [{"name": "api", "port": PREFECT_PORT, "targetPort": "api"}]}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(PREFECT_SERVER, o.namespace, **app),
         "spec": {
             "replicas": 1, "strategy": {"type": "Recreate"},  # one server migrates the schema at a time
             "selector": {"matchLabels": app},
             "template": {"metadata": {"labels": {**_LABELS, **app}}, "spec": {
                 "containers": [{
                     "name": "prefect-server", "image": o.prefect_image,
                     "args": ["prefect", "server", "start", "--host", "0.0.0.0"],  # the image's entrypoint runs them
                     "env": [_secret_env("PREFECT_API_DATABASE_CONNECTION_URL", "connection-url"),
                             {"name": "PREFECT_SERVER_ANALYTICS_ENABLED", "value": "false"},
                             # Prefect's pool is 5 + 10 overflow: at a fleet's minute the overflow connections
                             # are opened and closed again and again (bench/fanout.py: 200 sessions, all Jobs
                             # after 122 s instead of 144 s with 20 + 20)
                             {"name": "PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE", "value": str(DB_POOL[0])},
                             {"name": "PREFECT_SERVER_DATABASE_SQLALCHEMY_MAX_OVERFLOW", "value": str(DB_POOL[1])}],
                     "ports": [{"name": "api", "containerPort": PREFECT_PORT}],
                     "readinessProbe": {"httpGet": {"path": "/api/health", "port": "api"}, "periodSeconds": 5},
                     "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}}}]}}}},
    ]


def _worker(o: InCluster) -> list[dict[str, Any]]:
    """`stashflow worker --pool P` as its ServiceAccount, which may do in each served namespace what a
    run does (``rbac.RULES``) and read KubeStash's CRDs; nothing in its own namespace."""
    app = {"app.kubernetes.io/name": WORKER}
    account = (o.namespace, WORKER)
    rbac: list[dict[str, Any]] = []
    for ns in dict.fromkeys(o.serves):
        rbac += role_objects(ns, name=WORKER, subject=account)
    rbac += crd_reader_objects(f"{CRD_READER}-{o.namespace}-{WORKER}", account, role=f"{CRD_READER}-{WORKER}")
    args = ["stashflow", "worker", "--pool", o.pool, *(["--limit", str(o.limit)] if o.limit else [])]
    env: list[dict[str, Any]] = [{"name": "PREFECT_API_URL", "value": o.server_url}]
    catalog: dict[str, Any] = {}
    if o.catalog_configmap:
        # one key mounted as one file: a folder of a mounted ConfigMap also holds its ..data copies
        env.append({"name": "STASHFLOW_CATALOG", "value": f"{CATALOG_DIR}/catalog.yaml"})
        catalog = {"volumeMounts": [{"name": "catalog", "mountPath": CATALOG_DIR, "readOnly": True}]}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(WORKER, o.namespace)},
        *rbac,
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(WORKER, o.namespace, **app),
         "spec": {
             "replicas": 1, "selector": {"matchLabels": app},
             "template": {"metadata": {"labels": {**_LABELS, **app}}, "spec": {
                 "serviceAccountName": WORKER,
                 "terminationGracePeriodSeconds": 60,  # SIGTERM: running runs end with their cleanup
                 "containers": [{
                     "name": "worker", "image": o.stashflow_image, "args": args,  # no ENTRYPOINT: the args run
                     "env": env, "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}}, **catalog}],
                 **({"volumes": [{"name": "catalog", "configMap": {
                     "name": o.catalog_configmap, "items": [{"key": "catalog.yaml", "path": "catalog.yaml"}]}}]}
                    if o.catalog_configmap else {})}}}},
    ]


def in_cluster_objects(o: InCluster, *, password: str | None = None) -> list[dict[str, Any]]:
    """Every object, in the order to apply them (a fresh random database password unless given)."""
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(o.namespace)}
    database = _postgres(o, password or secrets.token_hex(24)) if o.postgres else []
    return [namespace, *database, *_prefect_server(o), *_worker(o)]
