"""Issue 8's "Bad input" list, one test per reproduction: a coded line, exit 1, no traceback.

Each of these gave a Python traceback, a hang, gigabytes of memory, an error without a
location, or an ``ok`` for a plan that fails on every run, before it was fixed.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
import yaml

from support import REPO

EXAMPLE = REPO / "deployments" / "examples" / "pvc-backups.yaml"
BUILTIN = str(REPO / "addons" / "catalog")
LINE = re.compile(r"^(?:<command line>:[1-9][0-9]*|[^:<][^:]*:[0-9]+): ([a-z][a-z-]*): ")


def cli(*args: str) -> tuple[int, str, str]:
    """``stashflow`` (every command, deploy included) in-process: (exit code, stdout, stderr)."""
    from stashflow.deployments.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def problems(rc: int, out: str, err: str) -> list[str]:
    """The error lines of a failed command; each must be one coded, located line."""
    assert rc == 1, (rc, out, err)
    assert "Traceback" not in out + err
    lines = [line for line in (out + err).splitlines() if line and not re.match(r"^\d+ problem\(s\)", line)]
    assert lines
    for line in lines:
        assert LINE.match(line), line
    return lines


def write(tmp_path: Path, text: str, name: str = "case.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def plan(tmp_path: Path, change) -> str:  # type: ignore[no-untyped-def]
    """The example plan with one change applied to its documents."""
    docs = list(yaml.safe_load_all(EXAMPLE.read_text()))
    change(docs)
    return write(tmp_path, yaml.safe_dump_all(docs, sort_keys=False, allow_unicode=True), "plan.yaml")


def session0(docs: list) -> dict:  # type: ignore[type-arg]
    return docs[0]["spec"]["sessions"][0]


# -- YAML ---------------------------------------------------------------------------------

def test_a_recursive_alias_is_an_error_not_a_recursion(tmp_path: Path) -> None:
    lines = problems(*cli("validate", write(tmp_path, "apiVersion: v1\nkind: X\nspec: &a {backupTasks: [*a]}\n")))
    assert lines[0].endswith("inside its own anchor: the data would be infinite (an alias may only name a finished anchor)")
    assert ":3: invalid-yaml: " in lines[0]


@pytest.mark.parametrize("depth", [500, 999])
def test_deep_nesting_is_an_error_not_a_recursion(tmp_path: Path, depth: int) -> None:
    for text in ("spec: " + "[" * depth + "]" * depth + "\n", "spec:\n" + "".join("  " * (i + 1) + "a:\n"
                                                                                  for i in range(depth)) + "  x\n"):
        lines = problems(*cli("validate", write(tmp_path, text)))
        assert "invalid-yaml" in lines[0] and "nested more than 100 levels" in lines[0]


@pytest.mark.parametrize("value,tag", [("!!int x", "!!int"), ("!!bool x", "!!bool"), ("!!float job", "!!float")])
def test_an_explicit_tag_with_a_bad_value_is_an_error_with_its_line(tmp_path: Path, value: str, tag: str) -> None:
    lines = problems(*cli("validate", write(tmp_path, f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: {value}\n")))
    assert lines[0].startswith(f"{tmp_path}/case.yaml:4: invalid-yaml: cannot read a value: ")
    assert f"is not a valid {tag}" in lines[0]


def billion_laughs() -> str:
    lines = ['lol1: &lol1 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(2, 10):
        lines.append(f"lol{i}: &lol{i} [" + ",".join([f"*lol{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def test_billion_laughs_fails_at_once_in_little_memory(tmp_path: Path) -> None:
    text = billion_laughs()
    assert len(text) < 700  # the file was 605 bytes and took 20 s and 2.5 GB
    tracemalloc.start()
    try:
        lines = problems(*cli("validate", write(tmp_path, text)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "aliases expand this document to more than 200000 values" in lines[0]
    assert peak < 32 * 2**20, peak


def test_billion_laughs_in_a_process_limited_to_1_gib(tmp_path: Path) -> None:
    """The real command under an address-space limit: a coded line, not a MemoryError or a kill."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))

    proc = subprocess.run([str(Path(sys.executable).parent / "stashflow"), "validate", write(tmp_path, billion_laughs())],
                          capture_output=True, text=True, timeout=120, preexec_fn=limit, cwd=REPO)
    problems(proc.returncode, proc.stdout, proc.stderr)


@pytest.mark.parametrize("text", ["a: [1, 2\n", 'a: "open\n', "a: [1, 2", "a:\n  - b\n  c: {d\n"])
def test_a_yaml_error_never_points_past_the_last_line(tmp_path: Path, text: str) -> None:
    lines = problems(*cli("validate", write(tmp_path, text)))
    last = max(1, len(text.splitlines()))
    assert int(lines[0].split(":")[1]) <= last, lines


# -- templates -------------------------------------------------------------------------------

def test_500_nested_defaults_in_a_function_arg_are_an_invalid_template(tmp_path: Path) -> None:
    arg = "${a:=" * 500 + "x" + "}" * 500
    text = ("apiVersion: addons.kubestash.com/v1alpha1\nkind: Function\nmetadata: {name: f}\n"
            f"spec:\n  image: busybox\n  args:\n  - '{arg}'\n")
    lines = problems(*cli("validate", write(tmp_path, text)))
    assert ":7: invalid-template: " in lines[0] and "nested more than 32 deep" in lines[0]


# -- schedules: validate checks exactly as deploy does -----------------------------------------

@pytest.mark.parametrize("schedule", ["0 0 30 2 *", "61 25 * * *"])
def test_a_schedule_that_cannot_fire_fails_validate_and_deploy_alike(tmp_path: Path, schedule: str) -> None:
    path = plan(tmp_path, lambda d: session0(d)["scheduler"].update(schedule=schedule))
    validated = problems(*cli("validate", path, "--catalog", BUILTIN))
    deployed = problems(*cli("deploy", path, "--catalog", BUILTIN, "--write", str(tmp_path / "prefect.yaml")))
    assert validated == deployed
    assert f'invalid-value: BackupConfiguration "demo/data-backup" spec.sessions[0].scheduler.schedule: "{schedule}"' \
        in validated[0]
    assert not (tmp_path / "prefect.yaml").exists()


# -- deploy --write --------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["missing/prefect.yaml", ".", "/dev/full"])
def test_deploy_write_into_a_bad_place_is_a_write_error(tmp_path: Path, where: str) -> None:
    target = where if where.startswith("/") else str(tmp_path / where)
    lines = problems(*cli("deploy", str(EXAMPLE), "--catalog", BUILTIN, "--write", target))
    assert lines == [lines[0]] and lines[0].startswith("<command line>:6: write-error: --write: cannot write ")


# -- plans that validated and deployed but failed on every run ----------------------------------

FAILS_ON_EVERY_RUN = {
    "backupTimeout soon": (lambda d: session0(d).update(backupTimeout="soon"), "invalid-duration", "backupTimeout"),
    "backupTimeout huge": (lambda d: session0(d).update(backupTimeout="99999999999999999999h"), "invalid-duration",
                           "backupTimeout"),
    "backupTimeout arabic digit": (lambda d: session0(d).update(backupTimeout="١h"), "invalid-duration", "backupTimeout"),
    "backupTimeout zero": (lambda d: session0(d).update(backupTimeout="0s"), "invalid-duration", "backupTimeout"),
    "delay negative": (lambda d: session0(d)["retryConfig"].update(delay="-5m"), "invalid-duration", "delay"),
    "maxRetentionPeriod forever": (lambda d: d[2]["spec"].update(maxRetentionPeriod="forever"), "invalid-duration",
                                   "maxRetentionPeriod"),
    "maxRetry negative": (lambda d: session0(d)["retryConfig"].update(maxRetry=-1), "invalid-value", "maxRetry"),
    "sessionHistoryLimit negative": (lambda d: session0(d).update(sessionHistoryLimit=-1), "invalid-value",
                                     "sessionHistoryLimit"),
    "retention count negative": (lambda d: d[2]["spec"]["successfulSnapshots"].update(daily=-7), "invalid-value",
                                 "daily"),
    "target Data_X": (lambda d: d[0]["spec"]["target"].update(name="Data_X"), "invalid-name", "target.name"),
    "secret Bad Secret!": (lambda d: session0(d)["repositories"][0]["encryptionSecret"].update(name="Bad Secret!"),
                           "invalid-name", "encryptionSecret.name"),
    "dict-valued param": (lambda d: session0(d)["addon"]["tasks"][0].update(params={"paths": {"a": "b"}}),
                          "invalid-parameter", "params.paths"),
    "undeclared param": (lambda d: session0(d)["addon"]["tasks"][0].update(params={"nosuch": "x"}),
                         "unknown-parameter", "params.nosuch"),
    "int64 overflow in jobTemplate": (lambda d: session0(d)["scheduler"].update(
        jobTemplate={"activeDeadlineSeconds": 2**63}), "invalid-value", "activeDeadlineSeconds"),
}


@pytest.mark.parametrize("case", sorted(FAILS_ON_EVERY_RUN))
def test_a_plan_certain_to_fail_fails_validate_and_deploy(tmp_path: Path, case: str) -> None:
    change, code, field = FAILS_ON_EVERY_RUN[case]
    path = plan(tmp_path, change)
    validated = problems(*cli("validate", path, "--catalog", BUILTIN))
    assert any(f": {code}: " in line and field in line.split(": ")[2] for line in validated), validated
    deployed = problems(*cli("deploy", path, "--catalog", BUILTIN, "--write", str(tmp_path / "prefect.yaml")))
    assert deployed == validated


def test_a_zero_restore_timeout_is_an_error_before_anything_runs(tmp_path: Path) -> None:
    text = (REPO / "tests" / "fuzz" / "seeds" / "restoresession.yaml").read_text().replace("restoreTimeout: 10m",
                                                                                          "restoreTimeout: 0s")
    lines = problems(*cli("restore", write(tmp_path, text), "--kubeconfig", str(tmp_path / "none")))
    assert lines[0].endswith("spec.restoreTimeout: '0s' would end the run at once; give a positive duration, "
                             "or none for no deadline")


def test_a_subsecond_timeout_is_rounded_up_not_dropped(tmp_path: Path) -> None:
    rc, out, err = cli("render", "stashflow-pvc", "logical-backup", "--target", "pvc/data", "--param", "paths=/d",
                       "--timeout", "0.1s")
    assert rc == 0, err
    job = next(o for o in yaml.safe_load_all(out) if o["kind"] == "Job")
    assert job["spec"]["activeDeadlineSeconds"] == 1
    path = plan(tmp_path, lambda d: session0(d).update(backupTimeout="0.1s"))
    assert cli("deploy", path, "--catalog", BUILTIN, "--write", str(tmp_path / "p.yaml"))[0] == 0
    deployments = yaml.safe_load((tmp_path / "p.yaml").read_text())["deployments"]
    assert deployments[0]["parameters"]["limits"]["timeout"] == "1s"


def test_zero_timeout_is_an_error_not_no_deadline() -> None:
    lines = problems(*cli("render", "stashflow-pvc", "logical-backup", "--target", "pvc/data", "--timeout", "0s"))
    assert lines[0].startswith("<command line>:7: invalid-duration: --timeout: ")


# -- render must not print a Job the API server rejects -----------------------------------------

def test_render_refuses_a_secret_name_the_api_server_rejects(tmp_path: Path) -> None:
    function = ("apiVersion: addons.kubestash.com/v1alpha1\nkind: Function\nmetadata: {name: f}\nspec:\n"
                "  image: busybox\n  args: [run]\n  runtimeSettings:\n    env:\n    - name: TOKEN\n"
                "      valueFrom: {secretKeyRef: {name: '${secret}', key: token}}\n---\n"
                "apiVersion: addons.kubestash.com/v1alpha1\nkind: Addon\nmetadata: {name: a}\nspec:\n"
                "  backupTasks:\n  - name: backup\n    function: f\n    parameters: [{name: secret, required: true}]\n")
    rc, out, err = cli("render", "a", "backup", "--catalog", write(tmp_path, function), "--target", "pvc/data",
                       "--param", "secret=Bad Secret!")
    lines = problems(rc, out, err)
    assert out == ""
    assert "invalid-name" in lines[0] and "secretKeyRef.name" in lines[0] and "Bad Secret!" in lines[0]


def test_render_refuses_an_encryption_secret_the_api_server_rejects() -> None:
    lines = problems(*cli("render", "stashflow-pvc", "logical-backup", "--target", "pvc/data", "--repository", "r",
                          "--encryption-secret", "Bad Secret!"))
    assert lines[0].startswith("<command line>:9: invalid-name: --encryption-secret: ")


def test_render_refuses_an_active_deadline_past_int64() -> None:
    lines = problems(*cli("render", "stashflow-pvc", "logical-backup", "--target", "pvc/data",
                          "--timeout", "99999999999999999999h"))
    assert lines[0].startswith("<command line>:7: invalid-duration: --timeout: ")


# -- every error has a location; nothing raw reaches the terminal --------------------------------

def test_unknown_addon_points_at_its_argument() -> None:
    lines = problems(*cli("render", "nosuch", "logical-backup", "--target", "pvc/data"))
    (line,) = lines  # the known Addons are those of $STASHFLOW_CATALOG, which other test folders set
    assert line.startswith('<command line>:2: unknown-addon: Addon "nosuch": the catalog has no Addon "nosuch" '
                           "(known Addons: ") and "stashflow-pvc" in line


def test_an_empty_repository_falls_back_to_the_target_name() -> None:
    """Found by the fuzzer: ``--repository=`` with a storage was an AttributeError."""
    rc, out, err = cli("render", "stashflow-pvc", "logical-backup", "--catalog", BUILTIN, "--catalog", str(EXAMPLE),
                       "--storage=local-storage", "--repository=", "--target=pvc/data", "-n", "demo", "--param=paths=/d")
    assert rc == 0, err
    snapshot = next(o for o in yaml.safe_load_all(out) if o["kind"] == "Snapshot")
    assert snapshot["spec"]["repository"] == "data"


def test_unknown_storage_points_at_its_argument() -> None:
    lines = problems(*cli("render", "stashflow-pvc", "logical-backup", "--target", "pvc/data", "--storage", "nope"))
    assert lines[0].startswith("<command line>:7: unknown-object: --storage: ")


def test_a_plan_folder_without_plans_points_at_its_argument(tmp_path: Path) -> None:
    lines = problems(*cli("deploy", write(tmp_path, "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n"),
                          "--catalog", BUILTIN))
    assert lines[0].startswith("<command line>:2: missing-field: PLAN: ")


def test_a_bad_param_is_located_at_its_real_position_never_0() -> None:
    lines = problems(*cli("render", "stashflow-pvc", "logical-backup", "--target", "pvc/data", "--param", "x"))
    assert lines[0].startswith("<command line>:7: invalid-argument: --param: ")


def test_a_newline_and_control_characters_in_a_name_stay_on_one_escaped_line() -> None:
    rc, out, err = cli("render", "stashflow-pvc", "logical-backup", "--target", "pvc/da\nta\x1b[2J\x00")
    lines = problems(rc, out, err)
    assert len((out + err).strip().splitlines()) == 1
    assert "\x1b" not in err and "\x00" not in err
    assert '"da\\nta\\x1b[2J\\x00"' in lines[0]


def test_a_folder_whose_only_plan_cannot_be_read_is_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "plans"
    folder.mkdir()
    (folder / "plan.yaml").symlink_to(tmp_path / "gone.yaml")
    lines = problems(*cli("validate", str(folder)))
    assert lines[0].startswith(f"{folder}/plan.yaml:0: read-error: ")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert problems(*cli("validate", str(empty)))[0].startswith(f"{empty}:0: read-error: ")


def test_a_usage_error_is_one_coded_line() -> None:
    rc, out, err = cli("render", "stashflow-pvc")
    assert rc == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("<command line>:1: invalid-argument: ")


# -- paths that would leave the storage (issue 8, data safety 5) --------------------------------

@pytest.mark.parametrize("flag,value", [
    ("--directory", "../../tmp/x"), ("--directory", "a//b"), ("--directory", "a/./b"), ("--directory", "a\nb"),
    ("--plan-session", ".."), ("--plan-session", "a/b"), ("--plan-session", ""), ("--plan-session", "x\x1b"),
])
def test_cli_paths_that_leave_the_storage_are_input_errors(flag: str, value: str) -> None:
    lines = problems(*cli("render", "stashflow-pvc", "logical-backup", "--target", "pvc/data", "--repository", "r",
                          flag, value))
    assert lines[0].startswith(f"<command line>:9: invalid-path: {flag}: ")


@pytest.mark.parametrize("change,field", [
    (lambda d: session0(d)["repositories"][0].update(directory="../../tmp"), "directory"),
    (lambda d: session0(d)["repositories"][0].update(directory="demo//data"), "directory"),
    (lambda d: session0(d).update(name=".."), "sessions[0].name"),
    (lambda d: session0(d).update(name="a/b"), "sessions[0].name"),
])
def test_plan_paths_that_leave_the_storage_are_input_errors(tmp_path: Path, change, field: str) -> None:  # type: ignore[no-untyped-def]
    lines = problems(*cli("validate", plan(tmp_path, change), "--catalog", BUILTIN))
    assert any(": invalid-path: " in line and field in line for line in lines), lines


def test_a_leading_slash_in_a_directory_stays_allowed(tmp_path: Path) -> None:
    """KubeStash writes ``directory: /demo/data``: relative to the storage, not to /."""
    rc, out, err = cli("validate", str(EXAMPLE), "--catalog", BUILTIN)
    assert rc == 0, out + err


# -- ordinary failures of run: one coded line, the traceback only with -v -----------------------

def test_an_unreachable_prefect_api_is_one_coded_line(tmp_path: Path) -> None:
    kubeconfig = write(tmp_path, "apiVersion: v1\nkind: Config\n", "kubeconfig")
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    command = [str(Path(sys.executable).parent / "stashflow"), "run", "stashflow-pvc", "logical-backup",
               "--target", "pvc/data", "--kubeconfig", kubeconfig]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr
    assert proc.stderr.startswith("<command line>:1: prefect-unavailable: the Prefect API at http://127.0.0.1:9/api ")
    verbose = subprocess.run([*command, "-v"], capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert verbose.returncode == 1 and "Traceback (most recent call last)" in verbose.stderr


def test_a_missing_kubeconfig_stops_run_and_restore_before_prefect(tmp_path: Path) -> None:
    lines = problems(*cli("run", "stashflow-pvc", "logical-backup", "--target", "pvc/data", "--kubeconfig",
                          str(tmp_path / "nope")))
    assert lines[0].startswith("<command line>:7: read-error: --kubeconfig: ")


@pytest.mark.parametrize("argv, position, hint", [
    (("run", "stashflow-pvc", "logical-backup", "--tagret", "pvc/data"), 4, '"--target"'),
    (("render", "stashflow-pvc", "logical-backup", "--target", "pvc/data", "--nmespace", "x"), 6, '"--namespace"'),
])
def test_a_mistyped_option_is_named_with_what_was_meant(argv: tuple, position: int, hint: str) -> None:
    """Not "--target is required": the unknown option itself, at its position, with the close one."""
    rc, out, err = cli(*argv)
    assert rc == 1 and out == ""
    assert err == f"<command line>:{position}: invalid-argument: unknown option {argv[position - 1]} " \
                  f"(did you mean {hint}?)\n"


@pytest.mark.parametrize("argv, position, says", [
    (("run", "stashflow-pvc", "logical-backup", "--target", "pvc/data", "--logs", "always"), 7,
     "argument --logs: invalid choice: 'always'"),
    (("render", "stashflow-pvc", "logical-backup", "--target", "pvc/data", "--kubeconfig", "k"), 6,
     "unrecognized arguments: --kubeconfig k"),
])
def test_what_argparse_refuses_is_located_where_it_stands(argv: tuple, position: int, says: str) -> None:
    rc, out, err = cli(*argv)
    assert rc == 1 and out == ""
    assert err.startswith(f"<command line>:{position}: invalid-argument: {says}"), err


@pytest.mark.parametrize("value, says", [
    ("-1", "--prefetch-seconds: --prefetch-seconds must be between 0 and 3600, not -1.0"),
    ("nan", "--prefetch-seconds: --prefetch-seconds must be between 0 and 3600, not nan"),
    ("soon", "argument --prefetch-seconds: invalid float value: 'soon'"),
])
def test_a_worker_told_to_claim_runs_at_a_senseless_distance_does_not_start(value: str, says: str) -> None:
    """Refused before any Prefect API is asked for anything."""
    rc, out, err = cli("worker", "--pool", "p", "--prefetch-seconds", value)
    assert rc == 1 and out == "" and err.count("\n") == 1, err
    assert err.startswith(f"<command line>:5: invalid-argument: {says}"), err


def test_catalog_takes_one_path_so_the_plan_after_it_stays_a_plan(tmp_path) -> None:
    """``--catalog DIR PLAN`` once read PLAN as a second catalog path and then asked for a plan."""
    rc, out, err = cli("validate", "--catalog", BUILTIN, str(EXAMPLE))
    assert (rc, err) == (0, ""), err
