"""The upstream KubeStash catalog loads unchanged, round-trips, and renders as KubeStash resolves it."""

from __future__ import annotations

import copy

import pytest
import yaml

from kubestash_oracle import resolve_with_inputs
from stashflow.addons.catalog import Catalog, load
from stashflow.addons.model import KINDS
from support import HAVE_SHARED, NEEDS_SHARED_REASON, UPSTREAM_CATALOG, UPSTREAM_EXAMPLES, run_cli

pytestmark = pytest.mark.skipif(not HAVE_SHARED, reason=NEEDS_SHARED_REASON)


@pytest.fixture(scope="module")
def upstream() -> Catalog:
    return load([UPSTREAM_CATALOG])


def test_validate_loads_14_addons_and_45_functions() -> None:
    rc, out, err = run_cli("validate", str(UPSTREAM_CATALOG))
    assert (rc, err) == (0, "")
    assert out.startswith("ok: 14 Addons (69 tasks), 45 Functions in 59 file(s)")


def test_every_object_round_trips_without_losing_a_field() -> None:
    for path in sorted(UPSTREAM_CATALOG.glob("*.yaml")) + sorted(UPSTREAM_EXAMPLES.glob("*.yaml")):
        for data in yaml.safe_load_all(path.read_text()):
            model = KINDS.get((data.get("apiVersion"), data.get("kind")))
            if model is None:
                continue  # plain Kubernetes objects among the examples
            assert model.model_validate(copy.deepcopy(data)).dump() == data, path.name


def test_unknown_fields_are_kept(tmp_path) -> None:
    text = (UPSTREAM_CATALOG / "addon-pvc-addon.yaml").read_text()
    text = text.replace("  backupTasks:\n", "  futureField: {a: 1}\n  backupTasks:\n", 1)
    text = text.replace("    singleton: true\n", "    singleton: true\n    newTaskField: x\n", 1)
    (tmp_path / "addon.yaml").write_text(text)
    (tmp_path / "fn.yaml").write_text((UPSTREAM_CATALOG / "function-pvc-backup.yaml").read_text()
                                      + (UPSTREAM_CATALOG / "function-pvc-restore.yaml").read_text().join(["---\n", ""])
                                      + "---\n" + (UPSTREAM_CATALOG / "function-volumesnapshot-backup.yaml").read_text()
                                      + "---\n" + (UPSTREAM_CATALOG / "function-volumesnapshot-restore.yaml").read_text())
    catalog = load([tmp_path])
    dumped = catalog.addons["pvc-addon"].dump()
    assert dumped["spec"]["futureField"] == {"a": 1}
    assert dumped["spec"]["backupTasks"][0]["newTaskField"] == "x"


def _task_cases() -> list[tuple[str, str]]:
    if not HAVE_SHARED:
        return []
    catalog = load([UPSTREAM_CATALOG])
    return [(a, t.name) for a in sorted(catalog.addons) for _, _, t in catalog.addons[a].tasks()]


@pytest.mark.parametrize("addon, task", _task_cases())
def test_render_matches_kubestash_resolution(upstream: Catalog, addon: str, task: str) -> None:
    """For every task: image, args and volumes equal what KubeStash's JSON-text resolver gives."""
    _, list_name, _, spec = upstream.task(addon, task)
    function = upstream.functions[spec.function]
    backup = list_name == "backupTasks"
    inputs = {p.name: p.default for p in spec.parameters or [] if p.default is not None}
    args = ["render", addon, task, "--catalog", str(UPSTREAM_CATALOG), "--namespace", "demo",
            "--target", "PersistentVolumeClaim/data"]
    for p in spec.parameters or []:
        if p.required:
            inputs[p.name] = "/data/a b"
            args += ["--param", f"{p.name}=/data/a b"]
    builtins = {"namespace": "demo", "taskName": task, "PVC_NAME": "data",
                "INTERIM_VOLUME": "kubestash-interim-volume", "RESTIC_CACHE_VOLUME": "kubestash-tmp-volume"}
    if backup:
        builtins["backupSession"] = "demo-nightly-1700000000"
    else:
        builtins.update(restoreSession="demo-restore-1700000100", snapshot="data-demo-nightly-1700000000")
        args += ["--var", "snapshot=data-demo-nightly-1700000000"]
    args += ["--var", f"{'backupSession' if backup else 'restoreSession'}={builtins.get('backupSession') or builtins['restoreSession']}"]
    if function.spec.available_versions:
        version = function.spec.available_versions[-1]
        builtins["DB_VERSION"] = version
        args += ["--var", f"DB_VERSION={version}"]
    inputs.update(builtins)

    expected_fn = resolve_with_inputs({k: v for k, v in function.spec.dump().items() if k != "availableVersions"}, inputs)
    expected_volumes = [resolve_with_inputs(v.dump(), inputs) for v in spec.volume_template or []]

    rc, out, err = run_cli(*args)
    assert rc == 0, err
    objects = list(yaml.safe_load_all(out))
    job = next(o for o in objects if o["kind"] == "Job")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == expected_fn["image"]
    assert container.get("args", []) == expected_fn.get("args", [])
    assert "${" not in container["image"] and not any("${" in a for a in container.get("args", []))
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"].get("volumes", [])}
    for vt in expected_volumes:
        assert {k: v for k, v in volumes[vt["name"]].items() if k != "name"} == vt["source"]
    assert [o["kind"] for o in objects] == ["Job", "Snapshot"] if backup else ["Job"]


def test_worked_example_of_the_reference() -> None:
    """REFERENCE.md §1.4: postgres-backup with the Addon defaults and built-ins."""
    rc, out, err = run_cli("render", "postgres-addon", "logical-backup", "--catalog", str(UPSTREAM_CATALOG),
                           "--namespace", "demo", "--target", "Postgres.kubedb.com/pg",
                           "--var", "backupSession=pg-backup-frequent-backup-1700000000", "--var", "DB_VERSION=16.4")
    assert rc == 0, err
    job = next(o for o in yaml.safe_load_all(out) if o["kind"] == "Job")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/kubedb/postgres-restic-plugin:v0.30.0-rc.0_16.4"
    assert container["args"] == [
        "backup", "--namespace=demo", "--backupsession=pg-backup-frequent-backup-1700000000", "--enable-cache=true",
        "--scratch-dir=/kubestash-tmp", "--wait-timeout=300", "--pg-args=", "--backup-cmd=pg_dumpall", "--user=postgres",
    ]


def test_without_db_version_the_run_fails_like_kubestash() -> None:
    rc, _, err = run_cli("render", "postgres-addon", "logical-backup", "--catalog", str(UPSTREAM_CATALOG),
                         "--namespace", "demo", "--target", "Postgres.kubedb.com/pg")
    assert rc == 1
    assert "unresolved-variable" in err and "${DB_VERSION}" in err
    assert "function-postgres-backup.yaml:" in err


def test_db_version_is_mapped_onto_available_versions() -> None:
    rc, out, _ = run_cli("render", "postgres-addon", "logical-backup", "--catalog", str(UPSTREAM_CATALOG),
                         "--namespace", "demo", "--target", "Postgres.kubedb.com/pg", "--var", "DB_VERSION=16.1")
    assert rc == 0
    job = next(o for o in yaml.safe_load_all(out) if o["kind"] == "Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["image"].endswith("_16.4")


def test_addon_default_wins_over_the_functions_quoted_default() -> None:
    """mssqlserver-backup says ${copyOnly:="true"}, but the Addon declares copyOnly with default "true"."""
    rc, out, _ = run_cli("render", "mssqlserver-addon", "logical-backup", "--catalog", str(UPSTREAM_CATALOG),
                         "--namespace", "demo", "--target", "MSSQLServer.kubedb.com/db")
    assert rc == 0
    job = next(o for o in yaml.safe_load_all(out) if o["kind"] == "Job")
    assert "--copy-only=true" in job["spec"]["template"]["spec"]["containers"][0]["args"]


def test_wait_timeout_is_accepted_though_undeclared() -> None:
    """Upstream Functions reference ${waitTimeout} without the Addon declaring it."""
    rc, out, err = run_cli("render", "postgres-addon", "logical-backup", "--catalog", str(UPSTREAM_CATALOG),
                           "--namespace", "demo", "--target", "Postgres.kubedb.com/pg", "--var", "DB_VERSION=16.4",
                           "--param", "waitTimeout=900")
    assert rc == 0, err
    assert "--wait-timeout=900" in out
