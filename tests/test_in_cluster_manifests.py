"""`stashflow install --in-cluster`: what it prints (addons/incluster.py). Applied to the real control
plane, with a scheduled backup through the worker Pod, in tests/schedules/test_in_cluster.py."""

from __future__ import annotations

from typing import Any

import yaml

from stashflow.addons.incluster import InCluster, in_cluster_objects
from stashflow.addons.rbac import CRD_RULES, RULES

from support import run_cli


def _printed(*args: str) -> list[dict[str, Any]]:
    code, out, err = run_cli("install", "--in-cluster", *args)
    assert code == 0, err
    return list(yaml.safe_load_all(out))


def _by(objects: list[dict[str, Any]], kind: str, name: str, namespace: str | None = "stashflow") -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name
                and o["metadata"].get("namespace") == namespace]
    return found


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_the_server_runs_on_the_statefulsets_postgresql_and_the_worker_on_the_server() -> None:
    objects = _printed("--serve", "shop", "--serve", "ops", "--pool", "fleet", "--limit", "50")
    assert objects[0] == {"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": "stashflow", "labels": {"app.kubernetes.io/managed-by": "stashflow", "app.kubernetes.io/part-of": "stashflow"}}}
    secret = _by(objects, "Secret", "prefect-database")["stringData"]
    password = secret["POSTGRES_PASSWORD"]
    assert len(password) == 48 and secret["connection-url"] == \
        f"postgresql+asyncpg://prefect:{password}@postgres.stashflow.svc:5432/prefect"
    assert _by(objects, "Service", "postgres")["spec"]["clusterIP"] == "None"
    db = _by(objects, "StatefulSet", "postgres")["spec"]
    (pg,) = db["template"]["spec"]["containers"]
    assert pg["image"] == "postgres:16-bookworm" and "command" not in pg  # the image's entrypoint initialises
    assert _env(pg)["POSTGRES_PASSWORD"] == {"secretKeyRef": {"name": "prefect-database", "key": "POSTGRES_PASSWORD"}}
    assert db["serviceName"] == "postgres" and db["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert pg["volumeMounts"] == [{"name": "data", "mountPath": "/var/lib/postgresql/data"}]

    (server,) = _by(objects, "Deployment", "prefect-server")["spec"]["template"]["spec"]["containers"]
    assert server["image"] == "prefecthq/prefect:3.9.1-python3.11"
    assert server["args"] == ["prefect", "server", "start", "--host", "0.0.0.0"]
    assert _env(server)["PREFECT_API_DATABASE_CONNECTION_URL"] == {
        "secretKeyRef": {"name": "prefect-database", "key": "connection-url"}}
    assert (_env(server)["PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE"],
            _env(server)["PREFECT_SERVER_DATABASE_SQLALCHEMY_MAX_OVERFLOW"]) == ("20", "20")
    assert server["readinessProbe"]["httpGet"] == {"path": "/api/health", "port": "api"}
    assert _by(objects, "Service", "prefect-server")["spec"]["ports"][0]["port"] == 4200

    pod = _by(objects, "Deployment", "stashflow-worker")["spec"]["template"]["spec"]
    (worker,) = pod["containers"]
    assert pod["serviceAccountName"] == "stashflow-worker"
    assert worker["image"] == "ghcr.io/stashflow/stashflow:0.1.0"
    assert worker["args"] == ["stashflow", "worker", "--pool", "fleet", "--limit", "50"]  # no ENTRYPOINT
    assert _env(worker) == {"PREFECT_API_URL": "http://prefect-server.stashflow.svc:4200/api"}


def test_the_worker_may_do_what_a_run_does_in_the_namespaces_it_serves_and_nothing_else() -> None:
    objects = _printed("--serve", "shop", "--serve", "ops", "--serve", "shop")
    subject = [{"kind": "ServiceAccount", "name": "stashflow-worker", "namespace": "stashflow"}]
    for ns in ("shop", "ops"):
        assert _by(objects, "Role", "stashflow-worker", ns)["rules"] == RULES  # rbac.py's one table
        assert _by(objects, "RoleBinding", "stashflow-worker", ns)["subjects"] == subject
    roles = [o for o in objects if o["kind"] in ("Role", "RoleBinding")]
    assert sorted({o["metadata"]["namespace"] for o in roles}) == ["ops", "shop"]  # none in its own namespace
    (cluster_role,) = [o for o in objects if o["kind"] == "ClusterRole"]
    assert cluster_role["rules"] == CRD_RULES  # cluster-wide: read KubeStash's CRDs, nothing more
    (binding,) = [o for o in objects if o["kind"] == "ClusterRoleBinding"]
    assert binding["subjects"] == subject and binding["roleRef"]["name"] == cluster_role["metadata"]["name"]
    assert _by(objects, "ServiceAccount", "stashflow-worker")


def test_each_print_has_its_own_password_and_an_external_database_none() -> None:
    first, second = (_by(_printed(), "Secret", "prefect-database")["stringData"]["POSTGRES_PASSWORD"] for _ in range(2))
    assert first != second
    external = _printed("--external-database")
    assert not [o for o in external if o["kind"] in ("Secret", "StatefulSet") or o["metadata"]["name"] == "postgres"]
    (server,) = _by(external, "Deployment", "prefect-server")["spec"]["template"]["spec"]["containers"]
    assert _env(server)["PREFECT_API_DATABASE_CONNECTION_URL"]["secretKeyRef"]["name"] == "prefect-database"
    # the worker serves -n's namespace when no --serve is given
    assert _by(_printed("-n", "shop"), "Role", "stashflow-worker", "shop")


def test_bad_options_are_one_line_each_and_print_nothing() -> None:
    for args, expected in [
        (("--serve", "ok", "--serve", "Not_A_Namespace"),
         '<command line>:6: invalid-name: --serve: "Not_A_Namespace" is not a valid DNS-1123 label'),
        (("--limit", "0"), "<command line>:4: invalid-argument: --limit: --limit is 0: it must be at least 1"),
        (("-n", "Bad"), '<command line>:4: invalid-name: -n: "Bad" is not a valid DNS-1123 label'),
        (("--pool", " "), "<command line>:4: invalid-argument: --pool: --pool is empty"),
    ]:
        code, out, err = run_cli("install", "--in-cluster", *args)
        assert (code, out) == (1, ""), err
        assert err.startswith(expected) and err.count("\n") == 1, err


def test_the_options_model_refuses_what_the_api_server_would() -> None:
    assert InCluster(namespace="Bad").problems() == [
        ("namespace", '"Bad" is not a valid DNS-1123 label (lowercase letters, digits and "-", starting and ending alphanumeric)')]
    assert in_cluster_objects(InCluster(), password="x")[1]["stringData"]["POSTGRES_PASSWORD"] == "x"


def test_in_cluster_options_without_in_cluster_are_refused() -> None:
    for args, expected in [
        (("--serve", "shop"), "<command line>:3: invalid-argument: --serve: --serve is an option of --in-cluster"),
        (("-n", "shop", "--external-database"),
         "<command line>:4: invalid-argument: --external-database: --external-database is an option of --in-cluster"),
        (("--in-cluster", "--manifests"),
         "<command line>:3: invalid-argument: --manifests: --manifests is not for --in-cluster"),
    ]:
        code, out, err = run_cli("install", *args)
        assert (code, out) == (1, ""), err
        assert err.startswith(expected) and err.count("\n") == 1, err
