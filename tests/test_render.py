"""What a rendered run holds: PVCs, Job, Snapshot, names and labels the API accepts, env by reference."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
import yaml

from stashflow.addons.catalog import Catalog, load
from stashflow.addons.errors import InputError
from stashflow.addons.model import AddonInfo, AddonVolumeInfo, BackupStorage
from stashflow.addons.names import is_dns1123_label, label_value, ulid, valid_name
from stashflow.addons.render import (
    RenderRequest,
    RepositoryContext,
    Target,
    check_objects,
    render_plan,
    snapshot_name,
)
from localkube.expansion import expand
from support import DATA, run_cli

NOW = datetime(2026, 11, 24, 2, 0, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load([DATA / "catalog"])


def request(**overrides) -> RenderRequest:
    base = dict(addon="demo-addon", task="logical-backup", namespace="demo",
                target=Target("PersistentVolumeClaim", "data"), params={"paths": "/kubestash-data"},
                session="data-nightly-1700000000", now=NOW, snapshot_id="01JSE10SDAGJQ743JHMPYEY1JA")
    base.update(overrides)
    return RenderRequest(**base)


def container_of(plan) -> dict:
    return plan.job["spec"]["template"]["spec"]["containers"][0]


def test_plan_objects_in_order(catalog: Catalog) -> None:
    plan = render_plan(catalog, request())
    assert [o["kind"] for o in plan.objects()] == ["PersistentVolumeClaim", "Job", "Snapshot"]
    check_objects(plan.objects())


def test_job_shape(catalog: Catalog) -> None:
    plan = render_plan(catalog, request(timeout_seconds=1800))
    job = plan.job
    assert job["metadata"]["name"] == "data-nightly-1700000000-logical-backup"
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["activeDeadlineSeconds"] == 1800
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    c = container_of(plan)
    assert c["name"] == "logical-backup-0"
    assert c["command"] == ["/bin/demo"]
    assert c["args"] == ["backup", "--namespace=demo", "--backupsession=data-nightly-1700000000",
                         "--paths=/kubestash-data", "--exclude=", "--scratch-dir=/kubestash-tmp", "--wait-timeout=300"]
    assert {"name": "FROM_FUNCTION", "value": "1"} in c["env"]
    assert {"name": "COMPONENT_NAME", "value": "dump"} in c["env"]
    assert [m["mountPath"] for m in c["volumeMounts"]] == ["/kubestash-tmp", "/kubestash-interim", "/kubestash-data"]


def test_volume_claim_template_becomes_a_labelled_pvc(catalog: Catalog) -> None:
    plan = render_plan(catalog, request())
    (pvc,) = plan.pvcs
    assert pvc["metadata"]["name"] == "data-nightly-1700000000-logical-backup-kubestash-interim-volume"[:32] + \
        "data-nightly-1700000000-logical-backup-kubestash-interim-volume"[-31:]
    assert len(pvc["metadata"]["name"]) <= 63
    assert pvc["metadata"]["labels"]["purpose"] == "interim"
    assert pvc["metadata"]["labels"]["stashflow.io/session"] == "data-nightly-1700000000"
    assert pvc["spec"]["resources"] == {"requests": {"storage": "1Gi"}}
    volumes = {v["name"]: v for v in plan.job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["kubestash-interim-volume"] == {"name": "kubestash-interim-volume",
                                                   "persistentVolumeClaim": {"claimName": pvc["metadata"]["name"]}}
    assert volumes["kubestash-data-volume"]["persistentVolumeClaim"] == {"claimName": "data"}


def test_addon_volumes_override_templates_by_name(catalog: Catalog) -> None:
    overrides = [AddonVolumeInfo.model_validate({"name": "${INTERIM_VOLUME}", "source": {"emptyDir": {"medium": "Memory"}}}),
                 AddonVolumeInfo.model_validate({"name": "kubestash-tmp-volume", "source": {
                     "volumeClaimTemplate": {"spec": {"accessModes": ["ReadWriteOnce"],
                                                      "resources": {"requests": {"storage": "5Gi"}}}}}})]
    plan = render_plan(catalog, request(addon_volumes=overrides))
    volumes = {v["name"]: v for v in plan.job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["kubestash-interim-volume"] == {"name": "kubestash-interim-volume", "emptyDir": {"medium": "Memory"}}
    assert [p["spec"]["resources"]["requests"]["storage"] for p in plan.pvcs] == ["5Gi"]
    assert volumes["kubestash-tmp-volume"]["persistentVolumeClaim"]["claimName"] == plan.pvcs[0]["metadata"]["name"]


def test_job_template_and_runtime_settings(catalog: Catalog) -> None:
    info = AddonInfo.model_validate({
        "name": "demo-addon",
        "jobTemplate": {"metadata": {"labels": {"team": "db"}}, "controller": {"annotations": {"owner": "ops"}},
                        "spec": {"serviceAccountName": "backup-sa", "securityContext": {"runAsUser": 1000},
                                 "nodeSelector": {"disk": "ssd"}, "resources": {"limits": {"memory": "1Gi"}},
                                 "env": [{"name": "FROM_FUNCTION", "value": "2"}]}},
        "containerRuntimeSettings": {"nice": {"adjustment": 5}, "envFrom": [{"secretRef": {"name": "extra"}}]},
    })
    plan = render_plan(catalog, request(addon_info=info))
    pod = plan.job["spec"]["template"]
    assert pod["metadata"]["labels"]["team"] == "db"
    assert pod["metadata"]["labels"]["stashflow.io/task"] == "logical-backup"
    assert plan.job["metadata"]["annotations"]["owner"] == "ops"
    assert pod["spec"]["serviceAccountName"] == "backup-sa"
    assert pod["spec"]["securityContext"] == {"runAsUser": 1000}
    assert pod["spec"]["nodeSelector"] == {"disk": "ssd"}
    c = container_of(plan)
    assert c["resources"] == {"limits": {"memory": "1Gi"}}
    assert {"name": "FROM_FUNCTION", "value": "2"} in c["env"] and {"name": "FROM_FUNCTION", "value": "1"} not in c["env"]
    assert {"name": "NICE_ADJUSTMENT", "value": "5"} in c["env"]
    assert c["envFrom"] == [{"secretRef": {"name": "extra"}}]
    assert "resources" not in pod["spec"] and "env" not in pod["spec"]


def test_snapshot_pending_with_kubestash_naming(catalog: Catalog) -> None:
    plan = render_plan(catalog, request(repository=RepositoryContext(name="data-repo"), plan_session="nightly"))
    snap = plan.snapshot
    assert snap["metadata"]["name"] == "data-repo-data-nightly-1700000000"
    assert snap["spec"]["snapshotID"] == "01JSE10SDAGJQ743JHMPYEY1JA"
    assert snap["spec"]["backupSession"] == "data-nightly-1700000000"
    assert snap["spec"]["session"] == "nightly"
    assert snap["spec"]["appRef"] == {"kind": "PersistentVolumeClaim", "name": "data", "namespace": "demo"}
    assert snap["status"]["phase"] == "Pending"
    assert snap["status"]["components"] == {"dump": {"phase": "Pending", "driver": "Restic",
                                                     "path": "repository/v1/nightly/dump"}}
    assert snap["metadata"]["labels"]["kubestash.com/repo-name"] == "data-repo"
    # the Snapshot's name is handed to the Function as ${snapshot}
    assert plan.resolved.inputs["snapshot"] == snap["metadata"]["name"]


def test_snapshot_name_matches_a_real_kubestash_object() -> None:
    """examples/snapshot-succeeded.yaml was named by the operator from these two values."""
    assert snapshot_name("kubedump-gcs-repository", "cluster-resources-backup-frequent-backup-1745301300") == \
        "kubedump-gcs-repository-cluster-ckup-frequent-backup-1745301300"


def test_restore_has_no_new_snapshot(catalog: Catalog) -> None:
    plan = render_plan(catalog, request(task="logical-backup-restore", params={}, session="data-restore-1",
                                        builtins={"snapshot": "data-repo-data-nightly-1700000000"}))
    assert plan.snapshot is None
    assert container_of(plan)["args"] == ["restore", "--restoresession=data-restore-1",
                                          "--snapshot=data-repo-data-nightly-1700000000"]
    assert plan.job["metadata"]["labels"]["app.kubernetes.io/component"] == "kubestash-restore"


def test_local_storage_env_and_mount(catalog: Catalog) -> None:
    storage = BackupStorage.model_validate({
        "apiVersion": "storage.kubestash.com/v1alpha1", "kind": "BackupStorage", "metadata": {"name": "local", "namespace": "demo"},
        "spec": {"storage": {"provider": "local", "local": {"mountPath": "/repo", "hostPath": {"path": "/srv/backups"}}}}})
    repo = RepositoryContext(name="data-repo", storage=storage, directory="/demo/data", encryption_secret="restic-pw")
    plan = render_plan(catalog, request(repository=repo, plan_session="nightly"))
    c = container_of(plan)
    env = {e["name"]: e for e in c["env"]}
    assert env["RESTIC_REPOSITORY"]["value"] == "/repo/demo/data/repository/v1/nightly/dump"
    assert env["RESTIC_PASSWORD"] == {"name": "RESTIC_PASSWORD",
                                      "valueFrom": {"secretKeyRef": {"name": "restic-pw", "key": "RESTIC_PASSWORD"}}}
    assert {"name": "stashflow-storage", "mountPath": "/repo"} in c["volumeMounts"]
    assert {"name": "stashflow-storage", "hostPath": {"path": "/srv/backups"}} in plan.job["spec"]["template"]["spec"]["volumes"]


def test_s3_credentials_only_by_secret_reference(catalog: Catalog) -> None:
    storage = BackupStorage.model_validate({
        "apiVersion": "storage.kubestash.com/v1alpha1", "kind": "BackupStorage", "metadata": {"name": "s3"},
        "spec": {"storage": {"provider": "s3", "s3": {"endpoint": "https://minio.example:9000", "bucket": "b",
                                                      "prefix": "p", "region": "eu-1", "secretName": "s3-creds"}}}})
    plan = render_plan(catalog, request(repository=RepositoryContext(name="r", storage=storage, directory="d",
                                                                     encryption_secret="pw")))
    env = {e["name"]: e for e in container_of(plan)["env"]}
    assert env["RESTIC_REPOSITORY"]["value"] == "s3:https://minio.example:9000/b/p/d/repository/v1/logical-backup/dump"
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "RESTIC_PASSWORD"):
        assert "value" not in env[name] and env[name]["valueFrom"]["secretKeyRef"]["name"] in ("s3-creds", "pw")


def test_long_names_are_shortened_the_kubestash_way(catalog: Catalog) -> None:
    long_session = "a-very-long-backup-configuration-name-with-a-long-session-1700000000"
    plan = render_plan(catalog, request(session=long_session, attempt=3))
    for obj in plan.objects():
        assert len(obj["metadata"]["name"]) <= 63 and is_dns1123_label(obj["metadata"]["name"])
        for value in obj["metadata"]["labels"].values():
            assert label_value(value) == value
    assert plan.job["metadata"]["name"].endswith("backup-3")
    check_objects(plan.objects())


def test_attempts_get_their_own_job_names(catalog: Catalog) -> None:
    names = {render_plan(catalog, request(attempt=n)).job_name for n in (1, 2, 3)}
    assert len(names) == 3


def test_render_is_deterministic_given_time_and_id(catalog: Catalog) -> None:
    assert render_plan(catalog, request()).objects() == render_plan(catalog, request()).objects()


def test_parameter_values_reach_the_program_verbatim_through_the_cli() -> None:
    """What the container's program receives, after Kubernetes' own $(VAR) expansion, is the value."""
    nasty = 'it\'s "quoted" \\back\\slash $HOME ${namespace} $$ $(RESTIC_PASSWORD) $( `id`; rm -rf /\nsecond $'
    env = {"RESTIC_PASSWORD": "the-secret", "HOME": "/root"}
    for output in ("json", "yaml"):
        rc, out, err = run_cli("render", "demo-addon", "logical-backup", "--catalog", str(DATA / "catalog"),
                               "--namespace", "demo", "--target", "pvc/data", "--param", f"paths={nasty}", "-o", output)
        assert rc == 0, err
        objects = json.loads(out) if output == "json" else list(yaml.safe_load_all(out))
        job = next(o for o in objects if o["kind"] == "Job")
        received = [expand(a, env) for a in job["spec"]["template"]["spec"]["containers"][0]["args"]]
        assert f"--paths={nasty}" in received
        assert not any("the-secret" in a for a in received)


def test_names_helpers() -> None:
    assert valid_name("a" * 40, "b" * 40) == "a" * 32 + "b" * 31
    assert valid_name("x", "", "y") == "x-y"
    assert label_value("ok-value") == "ok-value"
    long = label_value("x" * 100)
    assert len(long) <= 63 and label_value(long) == long
    assert label_value("Postgres.kubedb.com/pg") != "Postgres.kubedb.com/pg"
    first = ulid(1700000000.0, bytes(10))
    assert len(first) == 26 and first < ulid(1700000001.0, bytes(10))
    assert first.startswith("01HF")  # 2023-11-14: the same prefix as real ULIDs of that day


def test_target_parsing() -> None:
    assert Target.parse("pvc/data") == Target("PersistentVolumeClaim", "data", "")
    assert Target.parse("Postgres.kubedb.com/pg") == Target("Postgres", "pg", "kubedb.com")
    assert Target.parse("StatefulSet/web") == Target("StatefulSet", "web", "apps")
    with pytest.raises(InputError) as info:
        Target.parse("data")
    assert info.value.code == "invalid-argument"


def test_the_builtin_catalog_validates_and_renders_without_a_shell() -> None:
    rc, out, _ = run_cli("validate", "addons/catalog")
    assert rc == 0 and out.startswith("ok: 6 Addons (12 tasks)")
    rc, out, err = run_cli("render", "stashflow-pvc", "logical-backup", "--namespace", "demo", "--target", "pvc/data",
                           "--var", "backupSession=data-nightly-1", "--param", "paths=/kubestash-data/a dir")
    assert rc == 0, err
    job = next(o for o in yaml.safe_load_all(out) if o["kind"] == "Job")
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["restic"]  # restic itself, no shell in between
    assert c["args"][-1] == "/kubestash-data/a dir" and "--host=data" in c["args"]
    rc, out, err = run_cli("render", "stashflow-pvc", "logical-backup-restore", "--namespace", "demo",
                           "--target", "pvc/restored", "--var", "RESTIC_SNAPSHOT_ID=abc123")
    assert rc == 0, err
    job = next(o for o in yaml.safe_load_all(out) if o["kind"] == "Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["args"][-1] == "abc123"


@pytest.mark.parametrize("addon, params", [
    ("stashflow-postgres", ["host=pg.demo.svc", "authSecret=pg-auth", "args=--exclude-database='a b' $HOME"]),
    ("stashflow-mariadb", ["host=maria.demo.svc", "authSecret=maria-auth", "databases=shop `x`"]),
    ("stashflow-redis", ["host=cache.demo.svc", "authSecret=redis-auth"]),
])
def test_the_database_functions_run_the_executor_with_values_as_arguments(addon: str, params: list[str]) -> None:
    """No shell anywhere; each value one argument, verbatim; the password only as a mounted Secret."""
    args = [a for p in params for a in ("--param", p)]
    rc, out, err = run_cli("render", addon, "logical-backup", "-n", "demo", "--target", "x.kubedb.com/db", *args)
    assert rc == 0, err
    job = next(o for o in yaml.safe_load_all(out) if o["kind"] == "Job")
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    c = {**c, "args": [expand(a, {}) for a in c["args"]]}  # what the executor receives, after the kubelet
    assert c["command"] == ["stashflow-executor"] and c["args"][0] == "backup"
    tool = c["args"][c["args"].index("--") + 1:]
    assert tool[0] in ("pg_dumpall", "mariadb-dump", "redis-cli") and not {"sh", "bash", "-c"} & set(c["args"])
    given = dict(p.split("=", 1) for p in params)
    assert f"--extra-args={given.get('args', '--system=users --insert-ignore' if 'maria' in addon else '')}" in c["args"]
    if "databases" in given:
        assert f"--mysql-databases={given['databases']}" in c["args"]
    assert any(a.startswith("--env-from-file=") and a.endswith("=/stashflow-auth/password") for a in c["args"])
    secret = next(v for v in pod["volumes"] if v["name"] == "stashflow-auth")
    assert secret["secret"]["secretName"] == given["authSecret"]
    assert not any("valueFrom" in e or "PASSWORD" in e["name"] for e in c.get("env", []))


def test_the_manifest_functions_run_as_their_own_service_accounts_with_values_as_arguments() -> None:
    """kubedump's selector parameters reach the executor verbatim, one argument each; the backup's Pod
    runs as the reader, the restore's as the writer (the Functions' stashflow.io/service-account)."""
    for task, account, extra in (("manifest-backup", "stashflow-manifest-reader", []),
                                 ("manifest-restore", "stashflow-manifest-writer", ["--param", "dryRun=true"])):
        rc, out, err = run_cli("render", "stashflow-manifests", task, "-n", "ops", "--target", "Namespace/shop",
                               "--param", "IncludeNamespaces=shop,$(HOME)", "--param", "ANDedLabelSelectors=app:web x",
                               *extra)
        assert rc == 0, err
        job = next(o for o in yaml.safe_load_all(out) if o["kind"] == "Job")
        pod = job["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == account
        args = [expand(a, {}) for a in pod["containers"][0]["args"]]
        assert args[0] == task and "--namespace=ops" in args
        assert "--include-namespaces=shop,$(HOME)" in args and "--and-label-selectors=app:web x" in args
        assert ("--dry-run=true" in args) == (task == "manifest-restore")
