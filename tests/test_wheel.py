"""The built wheel, installed into a clean venv, works on its own.

`pip wheel .` once left out ``stashflow.addons.model`` and the installed command failed with
ModuleNotFoundError; the editable install the other tests use cannot show that. So: build the wheel
from a copy of the working tree, check what it holds, install it with its dependencies from the
registry into a fresh venv, and run the command and a flow module from there (outside the repo, with
no STASHFLOW_CATALOG, so only what the wheel holds is found). No cluster, no Prefect server.

The dependency wheels are downloaded once into ~/.cache/stashflow/wheelhouse/<hash of the wheel's
requirements>: resolving the ~120 packages against the index took 41-55 s on every run even with pip's
cache warm, installing them from the wheelhouse ~25 s (2 busy cores). New requirements, new wheelhouse.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

from support import REPO

pytestmark = pytest.mark.wheel

LAYERS = ("addons", "tasks", "flows", "worker", "deployments", "executor")
NOT_SHIPPED = ("localkube", "tests", "bench", "scripts")
EXAMPLE_PLAN = REPO / "deployments" / "examples" / "pvc-backups.yaml"
WHEELHOUSES = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "stashflow" / "wheelhouse"
# Working-tree clutter that is not source (and must not reach the build: a stale build/lib leaks
# deleted modules into a wheel).
CLUTTER = shutil.ignore_patterns(".git", ".venv", "run", "build", "dist", "*.egg-info", "__pycache__",
                                 ".pytest_cache", ".prefect", ".cache", ".import_linter_cache")


def _pip(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, timeout=900)
    if done.returncode:
        pytest.fail(f"pip {' '.join(args[:2])} failed:\n{done.stderr[-3000:]}")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=CLUTTER)
    _pip("wheel", "--no-deps", "-q", "-w", str(tmp / "dist"), str(src))
    (built,) = (tmp / "dist").glob("stashflow-*.whl")
    return built


def _requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        (meta,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        return sorted(line for line in z.read(meta).decode().splitlines() if line.startswith("Requires-Dist:"))


def _wheelhouse(wheel: Path) -> Path:
    """Dependency wheels for this wheel's requirements, from the registry on first use."""
    key = hashlib.sha256("\n".join([sys.version.split()[0], *_requirements(wheel)]).encode()).hexdigest()[:16]
    house = WHEELHOUSES / key
    if not house.is_dir():
        WHEELHOUSES.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=WHEELHOUSES))
        _pip("download", "-q", "-d", str(partial), str(wheel))
        for own in partial.glob("stashflow-*.whl"):
            own.unlink()
        try:
            partial.rename(house)
        except OSError:  # another run finished first: use its copy
            shutil.rmtree(partial, ignore_errors=True)
    return house


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the wheel and its dependencies, nothing from the repo."""
    where = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True, timeout=120)
    _pip("--python", str(where / "bin" / "python"), "install", "-q", "--no-compile",
         "--no-index", "--find-links", str(_wheelhouse(wheel)), str(wheel))
    return where


def _run(venv: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run a command of the venv from outside the repo, with none of the test session's settings."""
    home = venv.parent / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "STASHFLOW_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(HOME=str(home), PREFECT_HOME=str(home / ".prefect"), DO_NOT_TRACK="1",
               PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    return subprocess.run(argv, capture_output=True, text=True, cwd=home, env=env, timeout=300)


def _source_files(layer: str) -> set[str]:
    root = REPO / layer
    return {f"stashflow/{layer}/{p.relative_to(root).as_posix()}" for p in root.rglob("*.py")
            if "__pycache__" not in p.parts}


def test_the_wheel_holds_every_layer_module_and_the_catalog_and_nothing_else(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = set().union(*(_source_files(layer) for layer in LAYERS)) - names
    assert not missing, f"modules left out of the wheel: {sorted(missing)}"
    catalog = {f"stashflow/addons/catalog/{p.name}" for p in (REPO / "addons" / "catalog").glob("*.yaml")}
    assert catalog and catalog <= names
    top = {n.split("/")[0] for n in names}
    assert top == {"stashflow", wheel.name.split("-py3")[0] + ".dist-info"}, top
    assert {n.split("/")[1] for n in names if n.startswith("stashflow/")} == set(LAYERS)
    assert not [n for n in names if any(f"/{part}/" in f"/{n}" for part in NOT_SHIPPED)]


@pytest.fixture(scope="module")
def probe(venv: Path) -> dict[str, str]:
    """What the venv's Python sees: where the flows and the built-in catalog come from."""
    seen = _run(venv, "python", "-c", """if True:
        import importlib.util, json
        import stashflow.flows.addon_flows as flows
        from prefect import Flow
        from stashflow.addons.catalog import BUILTIN_CATALOG
        print(json.dumps({
            "flow": isinstance(flows.stashflow_pvc__logical_backup, Flow),
            "module": flows.__file__,
            "catalog": str(BUILTIN_CATALOG),
            "yamls": sorted(p.name for p in BUILTIN_CATALOG.glob("*.yaml")),
            "localkube": importlib.util.find_spec("localkube") is not None,
        }))
    """)
    assert seen.returncode == 0, seen.stderr
    return json.loads(seen.stdout)


def test_flow_modules_import_from_the_wheel_and_the_test_tooling_does_not(venv: Path, probe: dict) -> None:
    assert probe["flow"] is True
    assert Path(probe["module"]).is_relative_to(venv) and Path(probe["catalog"]).is_relative_to(venv)
    assert probe["yamls"] == sorted(p.name for p in (REPO / "addons" / "catalog").glob("*.yaml"))
    assert probe["localkube"] is False


def test_the_installed_command_runs_from_the_wheel_alone(venv: Path, probe: dict) -> None:
    help_ = _run(venv, "stashflow", "--help")
    assert help_.returncode == 0, help_.stderr
    assert "validate" in help_.stdout and "deploy" in help_.stdout

    tasks = _run(venv, "stashflow", "tasks")
    assert tasks.returncode == 0, tasks.stderr
    assert "stashflow-pvc" in tasks.stdout and "logical-backup" in tasks.stdout

    # validate checks only the paths it is given: the plan and the catalog the wheel installed
    validate = _run(venv, "stashflow", "validate", str(EXAMPLE_PLAN), probe["catalog"])
    assert validate.returncode == 0, validate.stdout + validate.stderr
    assert validate.stdout.startswith("ok: 6 Addons")  # the built-in catalog, from inside the wheel
