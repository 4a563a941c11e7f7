"""The fuzzer: hundreds of mutated inputs through validate, render, deploy --write and restore.

Seeds: the upstream KubeStash catalog (../shared, an Addon with the Functions it uses),
the built-in catalog, the example plan, a richer plan and a RestoreSession. Each case mutates
one of them (``mutate.py``) or the command-line values, with a fixed seed, and runs the
command in-process (``harness.py``: time and memory bounds, output judged line by line).
What ``deploy --write`` accepts is checked again the way a run will use it, and ``validate``
must agree with ``deploy`` on every plan. ``restore`` runs with a kubeconfig that does not
exist: a RestoreSession either fails with its coded line, or passes every check and stops at
``read-error: --kubeconfig`` — nothing reaches a cluster or Prefect.

``STASHFLOW_FUZZ_CASES=N`` runs N cases per command (CI: the defaults below).
The figures are printed at the end of the run (conftest.py).
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from support import HAVE_SHARED, REPO, UPSTREAM_CATALOG

from .harness import FIGURES, Outcome, case_count, run_case
from .mutate import DURATIONS, NAMES, ODD_STRINGS, mutate

SEED = 20261128
SEEDS = Path(__file__).parent / "seeds"
EXAMPLE_PLAN = REPO / "deployments" / "examples" / "pvc-backups.yaml"
RICH_PLAN = SEEDS / "rich-plan.yaml"
RESTORE_SESSION = SEEDS / "restoresession.yaml"
BUILTIN = REPO / "addons" / "catalog" / "stashflow-pvc.yaml"
BUILTIN_DIR = str(REPO / "addons" / "catalog")


def _fail_on(outcomes: list[Outcome]) -> None:
    failures = [f"{o.command} [{o.what}]: {o.failure}" for o in outcomes if o.failure]
    FIGURES.failures += [f for f in failures if f not in FIGURES.failures]
    assert not failures, f"{len(failures)} of {len(outcomes)} cases failed:\n" + "\n\n".join(failures[:8])


def _write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return path


@dataclasses.dataclass
class Group:
    """An upstream Addon and the files of the Functions its tasks use."""

    addon: str
    addon_file: Path
    function_files: list[Path]
    tasks: list[tuple[str, list[str], str]]  # (task, required parameters, a database version its Function has)
    target_kind: str


def _upstream_groups() -> list[Group]:
    if not HAVE_SHARED:
        return []
    from stashflow.addons.catalog import Catalog

    catalog = Catalog().add_paths([UPSTREAM_CATALOG])
    groups = []
    for addon in catalog.addons.values():
        functions = {t.function for _, _, t in addon.tasks()}
        files = sorted({Path(catalog.functions[f].file) for f in functions if f in catalog.functions})
        tasks = []
        for _, _, t in addon.tasks():
            function = catalog.functions.get(t.function)
            versions = (function.spec.available_versions or []) if function else []
            version = versions[0].split("-")[0] if versions else "1.0"
            tasks.append((t.name, [p.name for p in t.parameters or [] if p.required], version))
        kind = addon.name.removesuffix("-addon").capitalize()
        groups.append(Group(addon.name, Path(addon.file), files, tasks, f"{kind}.kubedb.com"))
    return sorted(groups, key=lambda g: g.addon)


GROUPS = _upstream_groups()


def _mutated_catalog(rnd: random.Random, tmp: Path, n: int) -> tuple[list[str], str, Group | None]:
    """Catalog paths with one file mutated: the built-in catalog or an upstream Addon's group."""
    if GROUPS and rnd.random() < 0.6:
        group = rnd.choice(GROUPS)
        files = [group.addon_file, *group.function_files]
        victim = rnd.choice(files)
        m = mutate(victim.read_text(), rnd)
        mutated = _write(tmp / f"case-{n}-{victim.name}", m.text)
        return [str(f) for f in files if f != victim] + [str(mutated)], f"{victim.name}: {m.what}", group
    m = mutate(BUILTIN.read_text(), rnd)
    return [str(_write(tmp / f"case-{n}-builtin.yaml", m.text))], f"builtin: {m.what}", None


# -- validate ------------------------------------------------------------------------------

def test_fuzz_validate(tmp_path: Path) -> None:
    rnd = random.Random(SEED + 1)
    outcomes = []
    for n in range(case_count(250)):
        kind = rnd.random()
        if kind < 0.35:
            seed = rnd.choice([EXAMPLE_PLAN, RICH_PLAN])
            m = mutate(seed.read_text(), rnd)
            argv = ["validate", str(_write(tmp_path / f"case-{n}.yaml", m.text)), "--catalog", BUILTIN_DIR]
            what = f"{seed.name}: {m.what}"
        elif kind < 0.5:
            m = mutate(RESTORE_SESSION.read_text(), rnd)
            argv = ["validate", str(_write(tmp_path / f"case-{n}.yaml", m.text)), "--catalog", BUILTIN_DIR]
            what = f"{RESTORE_SESSION.name}: {m.what}"
        else:
            paths, what, _ = _mutated_catalog(rnd, tmp_path, n)
            argv = ["validate", *paths]
        outcomes.append(run_case("validate", argv, what, index=n))
    _fail_on(outcomes)
    assert sum(o.rc == 1 for o in outcomes) > len(outcomes) / 4  # the mutations do break things


# -- render --------------------------------------------------------------------------------

def _cli_value_case(rnd: random.Random, tmp: Path, n: int) -> tuple[list[str], str]:
    """``render`` of the built-in task into the example's storage, with one or two hostile values."""
    argv = ["render", "stashflow-pvc", rnd.choice(["logical-backup", "logical-backup-restore"]),
            "--catalog", BUILTIN_DIR, "--catalog", str(EXAMPLE_PLAN), "--storage=local-storage", "--repository=data",
            "--target=pvc/data", "-n", "demo"]
    if argv[2] == "logical-backup":
        argv.append("--param=paths=/data")
    options = {
        "param": lambda: f"--param={rnd.choice(['paths', 'host', 'nosuch', 'a b', '', '=', 'paths='])}="
                         f"{rnd.choice(ODD_STRINGS)}",
        "timeout": lambda: f"--timeout={rnd.choice(DURATIONS)}",
        "directory": lambda: f"--directory={rnd.choice(ODD_STRINGS)}",
        "session": lambda: f"--plan-session={rnd.choice(ODD_STRINGS + NAMES)}",
        "run": lambda: f"--run={rnd.choice(ODD_STRINGS + NAMES)}",
        "namespace": lambda: f"--namespace={rnd.choice(NAMES)}",
        "target": lambda: f"--target={rnd.choice(['pvc', 'PersistentVolumeClaim', 'Postgres.kubedb.com', 'a/b', ''])}"
                          f"/{rnd.choice(NAMES)}",
        "secret": lambda: f"--encryption-secret={rnd.choice(NAMES)}",
        "repository": lambda: f"--repository={rnd.choice(NAMES)}",
        "storage": lambda: f"--storage={rnd.choice(NAMES + ['local-storage'])}",
        "var": lambda: f"--var={rnd.choice(['backupSession', 'snapshot', 'DB_VERSION', 'nosuch', 'namespace'])}="
                       f"{rnd.choice(NAMES + ODD_STRINGS[:30])}",
        "attempt": lambda: f"--attempt={rnd.choice(['0', '-1', '2', '99999999999', '2147483648'])}",
        "values": lambda: "--values=" + str(_write(tmp / f"values-{n}.yaml",
                                                   mutate("paths: /data\nhost: data\n", rnd).text)),
    }
    chosen = rnd.sample(sorted(options), k=rnd.choice([1, 1, 2]))
    argv += [options[name]() for name in chosen]
    return argv, "cli " + " ".join(a for a in argv[-len(chosen):])[:160]


def _catalog_case(rnd: random.Random, tmp: Path, n: int) -> tuple[list[str], str]:
    paths, what, group = _mutated_catalog(rnd, tmp, n)
    if group is None:
        task = rnd.choice(["logical-backup", "logical-backup-restore"])
        return ["render", "stashflow-pvc", task, *[f"--catalog={p}" for p in paths], "--target=pvc/data", "-n", "demo",
                *(["--param=paths=/data"] if task == "logical-backup" else []), "--var=snapshot=data-1"], what
    task, required, version = rnd.choice(group.tasks)
    return ["render", group.addon, task, *[f"--catalog={p}" for p in paths], f"--target={group.target_kind}/db", "-n", "demo",
            *[f"--param={p}=x" for p in required], f"--var=DB_VERSION={version}", "--var=snapshot=db-1",
            "--var=PVC_NAME=data"], what


def test_fuzz_render(tmp_path: Path) -> None:
    rnd = random.Random(SEED + 2)
    outcomes = []
    for n in range(case_count(200)):
        argv, what = (_cli_value_case if rnd.random() < 0.55 else _catalog_case)(rnd, tmp_path, n)
        outcome = run_case("render", argv, what, index=n)
        if outcome.rc == 0 and not outcome.failure:
            objects = [o for o in yaml.safe_load_all(outcome.out) if o]
            if not any(o.get("kind") == "Job" for o in objects):
                outcome.failure = "render exited 0 without a Job"
        outcomes.append(outcome)
    _fail_on(outcomes)


# -- deploy --write --------------------------------------------------------------------------

def recheck_deployment(deployment: dict[str, Any]) -> None:
    """What a deployment run does with its parameters before it touches the cluster, done here:
    Prefect's parameter validation of the session flow, the schedule, then for each task and
    repository the Addon-task run's parameters → RunSpec → render → the API's rules, as
    ``tasks.steps.resolve_parameters`` does for a backup (that step is a Prefect task that needs
    a run context, so its pure part is repeated here)."""
    from stashflow.addons.durations import parse_duration
    from stashflow.addons.model import AddonInfo, AddonVolumeInfo, BackupStorage, RetentionPolicy
    from stashflow.addons.render import RepositoryContext, check_objects, render_plan
    from stashflow.flows import addon_flows, session_flows
    from stashflow.flows.plan_check import cron_problem
    from stashflow.flows.session_parameters import SessionParameters

    params = deployment["parameters"]
    assert deployment["entrypoint"] == session_flows.ENTRYPOINT
    validated = session_flows.backup_session.validate_parameters(params)  # durations, names, choices
    session = SessionParameters(**validated)
    schedule = deployment["schedules"][0]
    assert cron_problem(schedule["cron"], schedule["timezone"]) is None, schedule
    catalog = addon_flows.loaded()[0]
    for repo in session.repositories:
        if repo.retention is not None:
            RetentionPolicy.model_validate({"apiVersion": RetentionPolicy.API_VERSION, "kind": "RetentionPolicy",
                                            "metadata": {"name": "r"}, "spec": repo.retention})
        for t in session.tasks:
            addon, list_name, _, task = catalog.task(session.addon, t.name)
            flow_obj = addon_flows.flow_for(session.addon, t.name)
            flow_params = session_flows.task_parameters(session, t, repo, "plan-session-1700000000", 60)
            run = addon_flows.RunParameters.from_flow(
                flow_obj.validate_parameters(flow_params),
                {p.name for p in task.parameters or [] if addon_flows.form_parameter(p.name)})
            if run.limits.timeout:
                parse_duration(run.limits.timeout)
            spec = addon_flows._spec_from_parameters(addon, task, run)
            storage = spec.storage
            assert isinstance(storage, BackupStorage)
            info = run.advanced.addon
            request = dataclasses.replace(
                spec.request,
                repository=RepositoryContext(name=spec.repository or spec.target.name, storage=storage,
                                             directory=spec.directory, encryption_secret=spec.encryption_secret),
                addon_info=AddonInfo.model_validate({"name": addon.name, **{k: v for k, v in info.items()
                                                                           if k != "addonVolumes"}}) if info else None,
                addon_volumes=[AddonVolumeInfo.model_validate(v) for v in info.get("addonVolumes") or []],
            )
            check_objects(render_plan(catalog, request).objects())


def test_fuzz_deploy_write(tmp_path: Path) -> None:
    rnd = random.Random(SEED + 3)
    outcomes = []
    for n in range(case_count(200)):
        seed = rnd.choice([EXAMPLE_PLAN, EXAMPLE_PLAN, RICH_PLAN])
        m = mutate(seed.read_text(), rnd)
        plan = str(_write(tmp_path / f"case-{n}.yaml", m.text))
        out = tmp_path / f"prefect-{n}.yaml"
        write_to = str(out)
        if rnd.random() < 0.05:
            write_to = rnd.choice([str(tmp_path / "missing" / "prefect.yaml"), str(tmp_path), "/dev/full"])
        what = f"{seed.name}: {m.what}"
        outcome = run_case("deploy", ["deploy", plan, "--catalog", BUILTIN_DIR, "--write", write_to], what, index=n)
        checked = run_case("validate", ["validate", plan, "--catalog", BUILTIN_DIR], what, index=n + 1)
        no_plan = outcome.codes == ["missing-field"] and "no BackupConfiguration" in outcome.err  # validate needs none
        if not outcome.failure and write_to == str(out) and (checked.rc == 0) != (outcome.rc == 0) and not no_plan:
            outcome.failure = (f"validate and deploy disagree: validate {checked.rc}, deploy {outcome.rc}:\n"
                               f"{checked.out}{checked.err}{outcome.err}")
        if outcome.rc == 0 and write_to == str(out) and not outcome.failure:
            for deployment in yaml.safe_load(out.read_text())["deployments"]:
                try:
                    recheck_deployment(deployment)
                    FIGURES.checks["deployments accepted by deploy --write"] += 1
                except Exception as exc:  # noqa: BLE001 - any failure here is a defect of what deploy accepted
                    outcome.failure = f"deploy accepted a deployment that fails at run time: {type(exc).__name__}: {exc}"
        if write_to != str(out) and checked.rc == 0 and not no_plan and not outcome.failure \
                and outcome.codes != ["write-error"]:
            outcome.failure = f"deploy --write {write_to} of a valid plan: {outcome.rc} {outcome.err!r}, not write-error"
        outcomes += [outcome, checked]
    _fail_on(outcomes)
    assert FIGURES.checks["deployments accepted by deploy --write"] > 0


# -- restore -------------------------------------------------------------------------------

def test_fuzz_restore(tmp_path: Path) -> None:
    rnd = random.Random(SEED + 4)
    kubeconfig = str(tmp_path / "no-such-kubeconfig")
    outcomes = []
    for n in range(case_count(200)):
        m = mutate(RESTORE_SESSION.read_text(), rnd)
        argv = ["restore", str(_write(tmp_path / f"case-{n}.yaml", m.text)), "--catalog", BUILTIN_DIR,
                "--kubeconfig", kubeconfig]
        outcome = run_case("restore", argv, m.what, index=n)
        if outcome.rc != 1 and not outcome.failure:
            outcome.failure = f"exit {outcome.rc}: a restore went past its checks without a kubeconfig"
        if outcome.codes == ["read-error"] and "--kubeconfig" in outcome.err:
            FIGURES.checks["RestoreSessions accepted up to the cluster"] += 1
        outcomes.append(outcome)
    _fail_on(outcomes)
    assert FIGURES.checks["RestoreSessions accepted up to the cluster"] > 0


@pytest.mark.skipif(not HAVE_SHARED, reason="the upstream KubeStash files in ../shared are not present")
def test_the_upstream_catalog_is_among_the_seeds() -> None:
    assert len(GROUPS) >= 10
