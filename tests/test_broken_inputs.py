"""A corpus of broken inputs: each yields its code at its line, exit 1, and no traceback.

Each file in tests/data/broken marks the line where its error must be reported with a
trailing ``# <-- code`` comment.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from support import DATA, run_cli, run_cli_process

BROKEN = sorted((DATA / "broken").glob("*.yaml"))
_MARK = re.compile(r"#\s*<--\s*([a-z-]+)")


def expected(path: Path) -> tuple[str, int]:
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        match = _MARK.search(line)
        if match:
            return match.group(1), number
    raise AssertionError(f"{path.name} has no '# <-- code' marker")


def test_the_corpus_is_large_enough() -> None:
    assert len(BROKEN) >= 25
    assert len({expected(p)[0] for p in BROKEN}) >= 15  # many different codes, not one repeated


@pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
def test_validate_reports_code_and_line(path: Path) -> None:
    code, line = expected(path)
    rc, out, err = run_cli("validate", str(path))
    assert rc == 1
    lines = out.strip().splitlines()
    assert lines, err
    assert lines[0].startswith(f"{path}:{line}: {code}: "), lines
    assert "Traceback" not in out + err


def test_validate_reports_every_file_at_once() -> None:
    rc, out, _ = run_cli("validate", str(DATA / "broken"))
    assert rc == 1
    reported = {line.split(":", 1)[0] for line in out.splitlines()}
    assert reported == {str(p) for p in BROKEN}


def test_a_broken_file_gives_no_traceback_from_the_real_command() -> None:
    proc = run_cli_process("validate", str(DATA / "broken"))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    assert len(proc.stdout.splitlines()) >= len(BROKEN)


def test_missing_path_is_a_read_error() -> None:
    rc, out, _ = run_cli("validate", "does/not/exist.yaml")
    assert rc == 1
    assert out.startswith("does/not/exist.yaml:0: read-error: ")


# -- resolution errors, through `stashflow render` on a small valid catalog ------------------

CATALOG = str(DATA / "catalog")


def render(*args: str) -> tuple[int, str, str]:
    return run_cli("render", "--catalog", CATALOG, "--namespace", "demo", *args)


def test_missing_required_parameter_points_at_its_declaration() -> None:
    rc, out, err = render("demo-addon", "logical-backup", "--target", "PersistentVolumeClaim/data")
    assert rc == 1 and out == ""
    first = err.splitlines()[0]
    assert re.match(rf"{re.escape(CATALOG)}/demo\.yaml:\d+: missing-required-parameter: ", first), first
    assert '"paths"' in first and "--param paths=" in first
    line = int(first.split(":")[1])
    assert "- name: paths" in (DATA / "catalog" / "demo.yaml").read_text().splitlines()[line - 1]


def test_unknown_parameter_in_a_values_file_points_at_its_line() -> None:
    values = DATA / "values" / "unknown-parameter.yaml"
    rc, _, err = render("demo-addon", "logical-backup", "--target", "pvc/data", "--values", str(values))
    assert rc == 1
    lines = err.splitlines()
    assert lines[0].startswith(f"{values}:3: unknown-parameter: ")
    assert 'did you mean "exclude"?' in lines[0]


def test_unknown_parameter_on_the_command_line_names_its_argument() -> None:
    rc, _, err = render("demo-addon", "logical-backup", "--target", "pvc/data", "--param", "paths=/d",
                        "--param", "exclud=*.tmp")
    assert rc == 1
    assert err.startswith("<command line>:13: unknown-parameter: "), err
    assert 'did you mean "exclude"?' in err


def test_a_list_value_is_an_invalid_parameter() -> None:
    values = DATA / "values" / "list-value.yaml"
    rc, _, err = render("demo-addon", "logical-backup", "--target", "pvc/data", "--values", str(values))
    assert rc == 1
    assert err.startswith(f"{values}:1: invalid-parameter: ")


def test_unresolved_variable_points_at_the_function_field() -> None:
    rc, _, err = render("demo-addon", "versioned-backup", "--target", "pvc/data")
    assert rc == 1
    first = err.splitlines()[0]
    assert re.match(rf"{re.escape(CATALOG)}/demo\.yaml:\d+: unresolved-variable: Function \"demo-versioned\" spec.image: ",
                    first), first
    assert "--var DB_VERSION=" in first


def test_database_version_without_a_matching_image_version() -> None:
    rc, _, err = render("demo-addon", "versioned-backup", "--target", "pvc/data", "--var", "DB_VERSION=9.1")
    assert rc == 1
    assert ": no-matching-version: " in err and "major version 9" in err


def test_unknown_variable_is_an_error_with_a_suggestion() -> None:
    rc, _, err = render("demo-addon", "logical-backup", "--target", "pvc/data", "--param", "paths=/d",
                        "--var", "DB_VERSIN=16")
    assert rc == 1
    assert err.startswith("<command line>:13: unknown-variable: ")
    assert 'did you mean "DB_VERSION"?' in err


def test_a_built_in_cannot_be_passed_as_a_parameter() -> None:
    rc, _, err = render("demo-addon", "logical-backup", "--target", "pvc/data", "--param", "paths=/d",
                        "--param", "namespace=other")
    assert rc == 1
    assert ": invalid-parameter: " in err and "--var namespace" in err


def test_unknown_addon_and_task() -> None:
    rc, _, err = render("demo-adon", "logical-backup", "--target", "pvc/data")
    assert rc == 1 and 'unknown-addon' in err and 'did you mean "demo-addon"?' in err
    rc, _, err = render("demo-addon", "logical-bakup", "--target", "pvc/data")
    assert rc == 1 and "unknown-task" in err and 'did you mean "logical-backup"?' in err


def test_invalid_names_on_the_command_line() -> None:
    rc, _, err = render("demo-addon", "logical-backup", "--target", "pvc/Data_1", "--param", "paths=/d")
    assert rc == 1 and "invalid-name" in err and "--target" in err
    rc, _, err = run_cli("render", "--catalog", CATALOG, "--namespace", "Demo", "demo-addon", "logical-backup",
                         "--target", "pvc/data", "--param", "paths=/d")
    assert rc == 1 and "invalid-name" in err and "--namespace" in err


def test_all_problems_of_a_run_are_reported_together() -> None:
    rc, _, err = render("demo-addon", "logical-backup", "--target", "pvc/data", "--param", "pathz=/d",
                        "--param", "excludes=x")
    assert rc == 1
    codes = [line.split(": ")[1] for line in err.splitlines()]
    assert codes.count("unknown-parameter") == 2
    assert "missing-required-parameter" in codes
