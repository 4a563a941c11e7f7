"""The image recipes of stashflow's own Functions: one per image a Function names, versions pinned,
and a build script that says so when this machine cannot build them (it cannot: no usable builder)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from stashflow.addons.catalog import BUILTIN_CATALOG, load

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "images"
OURS = re.compile(r"^ghcr\.io/stashflow/([a-z-]+):\$\{DB_VERSION:=([^}]+)\}$")
FIXED = re.compile(r"^ghcr\.io/stashflow/([a-z-]+):([0-9][0-9.]*)$")  # not per database version: the manifest Functions


def versions() -> dict[str, dict[str, tuple[str, str]]]:
    found: dict[str, dict[str, tuple[str, str]]] = {}
    for line in (IMAGES / "versions.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, tag, base, restic = line.split()
            found.setdefault(name, {})[tag] = (base, restic)
    return found


def test_every_image_a_function_names_has_a_pinned_recipe() -> None:
    catalog = load([BUILTIN_CATALOG])
    pinned = versions()
    named = 0
    for function in catalog.functions.values():
        fixed = FIXED.match(function.spec.image or "")
        if fixed:
            name, tag = fixed.groups()
            assert (IMAGES / name / "Containerfile").is_file() and tag in pinned[name], function.name
            assert not function.spec.available_versions, function.name
            named += 1
            continue
        match = OURS.match(function.spec.image or "")
        if not match:
            assert function.spec.image.startswith("docker.io/restic/restic:0."), function.name  # the PVC Functions
            continue
        name, default = match.groups()
        named += 1
        assert (IMAGES / name / "Containerfile").is_file(), name
        tags = set(function.spec.available_versions or [])
        assert default in tags and tags == set(pinned[name]), (function.name, tags, set(pinned[name]))
        for base, restic in pinned[name].values():
            assert re.match(r"^\d+\.\d+", base) and "latest" not in base and re.match(r"^\d+\.\d+\.\d+$", restic)
    assert named == 10


def test_the_build_script_says_when_no_builder_is_usable(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "python3", "dirname", "mktemp", "rm", "cp"):
        os.symlink(shutil.which(tool), bin_dir / tool)  # type: ignore[arg-type]
    done = subprocess.run(["bash", str(IMAGES / "build.sh")], env={"PATH": str(bin_dir)}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 3
    assert "no usable container builder (docker, podman or buildah)" in done.stderr and "Traceback" not in done.stderr
