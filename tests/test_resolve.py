"""Parameter resolution: the order of the layers, required and unknown names, where errors point."""

from __future__ import annotations

import subprocess
import sys

import pytest

from stashflow.addons.catalog import Catalog, load
from stashflow.addons.errors import Location, Problems, ResolutionError
from stashflow.addons.resolve import Value, known_names, resolve_task
from support import DATA, REPO


PVC = {"PVC_NAME": "data"}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load([DATA / "catalog"])


def test_layers_defaults_then_params_then_variables_then_builtins(catalog: Catalog) -> None:
    resolved = resolve_task(catalog, "demo-addon", "logical-backup",
                            params={"paths": "/p", "scratchDir": "/from-params", "exclude": "from-params"},
                            variables={"exclude": "from-variables"},
                            builtins={"namespace": "ns1", "PVC_NAME": "data"})
    assert resolved.inputs["scratchDir"] == "/from-params"  # param over default
    assert resolved.inputs["exclude"] == "from-variables"  # variable over param
    assert resolved.inputs["namespace"] == "ns1"
    assert "--scratch-dir=/from-params" in resolved.container["args"]


def test_a_present_empty_value_wins_over_the_default(catalog: Catalog) -> None:
    resolved = resolve_task(catalog, "demo-addon", "logical-backup", params={"paths": "/p", "scratchDir": ""}, builtins=PVC)
    assert "--scratch-dir=" in resolved.container["args"]


def test_scalars_are_stringified_as_kubestash_does(catalog: Catalog) -> None:
    resolved = resolve_task(catalog, "demo-addon", "logical-backup",
                            params={"paths": "/p", "waitTimeout": 900, "exclude": True}, builtins=PVC)
    assert "--wait-timeout=900" in resolved.container["args"]
    assert "--exclude=true" in resolved.container["args"]


def test_required_parameter_empty_is_missing(catalog: Catalog) -> None:
    with pytest.raises(ResolutionError) as info:
        resolve_task(catalog, "demo-addon", "logical-backup", params={"paths": ""})
    assert info.value.code == "missing-required-parameter"
    assert info.value.field == "spec.backupTasks[0].parameters[0]"
    assert info.value.location.file.endswith("demo.yaml") and info.value.location.line > 0


def test_unknown_parameter_keeps_the_users_location(catalog: Catalog) -> None:
    with pytest.raises(ResolutionError) as info:
        resolve_task(catalog, "demo-addon", "logical-backup",
                     params={"paths": "/p", "exlude": Value("x", Location("plan.yaml", 17), "params.exlude")})
    err = info.value
    assert (err.code, err.location, err.field) == ("unknown-parameter", Location("plan.yaml", 17), "params.exlude")
    assert err.hint == 'did you mean "exclude"?'
    assert str(err).startswith("plan.yaml:17: unknown-parameter: ")


def test_several_problems_come_together(catalog: Catalog) -> None:
    with pytest.raises(Problems) as info:
        resolve_task(catalog, "demo-addon", "logical-backup", params={"a": "1", "b": "2"})
    assert sorted(p.code for p in info.value) == ["missing-required-parameter", "unknown-parameter", "unknown-parameter"]


def test_known_names_are_declared_or_referenced(catalog: Catalog) -> None:
    _, _, _, task = catalog.task("demo-addon", "logical-backup")
    names = known_names(task, catalog.functions["demo-backup"])
    assert {"paths", "exclude", "scratchDir", "waitTimeout", "namespace", "backupSession", "PVC_NAME"} <= names


def test_secret_values_are_marked(catalog: Catalog) -> None:
    resolved = resolve_task(catalog, "demo-addon", "logical-backup",
                            params={"paths": "/p"}, variables={"exclude": Value("s3cr3t", secret=True)}, builtins=PVC)
    assert resolved.secret_inputs == {"exclude"}


def test_addons_imports_no_prefect_and_no_kubernetes_client() -> None:
    """The pure layer stays pure at run time too (the import-linter contract checks the source)."""
    code = ("import sys, stashflow.addons.catalog, stashflow.addons.render, stashflow.addons.resolve;"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('prefect', 'prefect_kubernetes', 'kubernetes_asyncio', 'kubernetes', 'aiohttp', 'httpx'));"
            "print(','.join(bad)); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
