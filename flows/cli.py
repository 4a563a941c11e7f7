"""The ``stashflow`` command.

Exit codes: 0 success, 1 a problem with the input or the run (one line per problem,
``FILE:LINE: CODE: message``), 2 a usage error, 130/143 stopped by SIGINT/SIGTERM. Prefect
and the Kubernetes client are imported only by the commands that need them, so ``validate``
and ``render`` start fast. For values given on the command line, FILE is ``<command line>``
and LINE the argument's position (1-based). Tracebacks are printed only with ``-v``: without
it, a failure is its one coded line, and Prefect's console logging keeps its messages but
not its tracebacks (the Prefect API's logs still get them).
"""

from __future__ import annotations

import argparse
import re
import json
import logging
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from stashflow.addons.catalog import BUILTIN_CATALOG, Catalog
from stashflow.addons.durations import deadline_seconds, whole_seconds
from stashflow.addons.errors import InputError, Location, Problems, RunError, StashflowError, did_you_mean
from stashflow.addons.model import BackupConfiguration, BackupStorage, RestoreSession
from stashflow.addons.names import name_problem, path_problem
from stashflow.addons.render import RenderRequest, RepositoryContext, Target, check_objects, render_plan
from stashflow.addons.resolve import Value
from stashflow.addons.source import read_documents

CATALOG_ENV = "STASHFLOW_CATALOG"


def catalog_paths(given: Sequence[str] | None) -> list[str]:
    """``--catalog`` paths, else ``$STASHFLOW_CATALOG`` (os.pathsep separated), else the built-in catalog."""
    if given:
        return list(given)
    env = os.environ.get(CATALOG_ENV)
    if env:
        return [p for p in env.split(os.pathsep) if p]
    return [str(BUILTIN_CATALOG)]


COMMAND_LINE = "<command line>"


def load_catalog(paths: Sequence[str]) -> Catalog:
    return Catalog().add_paths(paths).check().raise_for_problems()


def load_checked(paths: Sequence[str]) -> Catalog:
    """Files → a catalog with every problem found, plans included: the one check that
    ``validate``, ``restore``, ``deploy`` and ``serve`` share (``Catalog.problems``)."""
    catalog = Catalog().add_paths(paths).check()
    if any(catalog.of_kind(kind) for kind in (BackupConfiguration, RestoreSession)):
        from stashflow.flows.plan_check import check_plans

        catalog.problems.extend(check_plans(catalog))
        catalog.problems.sort(key=lambda p: (p.location.file, p.location.line) if p.location else ("", 0))
    return catalog


def argument_position(argv: Sequence[str], flag: str, index: int = 0) -> int:
    """1-based position of the ``index``-th value of ``flag`` in ``argv`` (1 when it is not there)."""
    positions = _argument_positions(argv, flag)
    return positions[index] if index < len(positions) else 1


def positional_position(argv: Sequence[str], value: str) -> int:
    """1-based position of a positional argument's value (1 when it is not found)."""
    for i, arg in enumerate(argv):
        if arg == value and (i == 0 or not argv[i - 1].startswith("-") or "=" in argv[i - 1]):
            return i + 1
    return 1


def option_at(argv: Sequence[str], flag: str, index: int = 0) -> Location:
    """Where the command line gives ``flag`` (its ``index``-th use), for an error line about it."""
    return Location(COMMAND_LINE, argument_position(argv, flag, index))


def _flag_at(argv: Sequence[str], flag: str) -> Location:
    """Where a flag that takes no value stands (1 when it is not there)."""
    return Location(COMMAND_LINE, next((i + 1 for i, arg in enumerate(argv) if arg == flag), 1))


def _pairs(args: Sequence[str], flag: str, argv: Sequence[str] = ()) -> dict[str, Value]:
    """``NAME=VALUE`` arguments; the value is kept verbatim (quotes, backslashes, newlines)."""
    out: dict[str, Value] = {}
    positions = _argument_positions(argv, flag)
    for i, raw in enumerate(args):
        position = positions[i] if i < len(positions) else 1
        name, sep, value = raw.partition("=")
        if not sep or not name:
            raise InputError(f'"{raw}" is not NAME=VALUE', code="invalid-argument",
                             location=Location("<command line>", position), field=flag)
        out[name] = Value(value, Location("<command line>", position), f"{flag} {name}")
    return out


def _values_file(path: str) -> dict[str, Value]:
    """A YAML mapping of parameter values, each remembered with its line."""
    docs = read_documents(Path(path))
    if not docs:
        return {}
    doc = docs[0]
    if not isinstance(doc.data, dict):
        raise InputError("a values file is a mapping of NAME: VALUE", code="invalid-object", location=doc.location())
    from stashflow.addons.resolve import as_value

    return {str(k): as_value(v, doc.location((k,)), str(k)) for k, v in doc.data.items()}


def _argument_positions(argv: Sequence[str], flag: str) -> list[int]:
    """1-based positions of the values given to ``flag`` (``--flag V`` or ``--flag=V``)."""
    out = []
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            out.append(i + 2)
        elif arg.startswith(flag + "="):
            out.append(i + 1)
    return out


def cmd_validate(args: argparse.Namespace) -> int:
    catalog = load_checked(args.paths)
    if any(catalog.of_kind(kind) for kind in (BackupConfiguration, RestoreSession)) and not catalog.addons:
        # plans alone: check them against the catalog deploy/restore would use
        catalog = load_checked([*catalog_paths(args.catalog), *args.paths])
    for problem in catalog.problems:
        print(problem.format())
    if catalog.problems:
        print(f"{len(catalog.problems)} problem(s) in {len(catalog.files)} file(s)", file=sys.stderr)
        return 1
    if not args.quiet:
        others = sum(len(v) for v in catalog.objects.values())
        print(f"ok: {len(catalog.addons)} Addons ({catalog.task_count} tasks), {len(catalog.functions)} Functions"
              f"{f', {others} other objects' if others else ''} in {len(catalog.files)} file(s)")
    return 0


def build_request(args: argparse.Namespace, catalog: Catalog) -> RenderRequest:
    """A ``RenderRequest`` from the options shared by ``render`` and ``run``."""
    params: dict[str, Value] = {}
    for path in args.values or []:
        params.update(_values_file(path))
    params.update(_pairs(args.param or [], "--param", args.argv))
    builtins = _pairs(args.var or [], "--var", args.argv)
    timeout = _timeout(args)
    repository = None
    if args.repository or args.storage:
        storage = None
        if args.storage:
            storage = catalog.get(BackupStorage, args.storage)
            if storage is None:
                raise InputError(f'no BackupStorage "{args.storage}" in the catalog paths', code="unknown-object",
                                 location=option_at(args.argv, "--storage"), field="--storage",
                                 hint="add the file that defines it with --catalog")
        repository = RepositoryContext(name=args.repository or _parse_target(args).name, storage=storage,
                                       directory=args.directory or "", encryption_secret=args.encryption_secret)
    return RenderRequest(
        addon=args.addon, task=args.task, namespace=args.namespace, target=_parse_target(args), params=params,
        builtins=builtins, session=args.run_name, plan_session=args.plan_session, attempt=args.attempt,
        timeout_seconds=timeout,
        repository=repository,
    )


def _timeout(args: argparse.Namespace) -> int | None:
    """``--timeout`` in whole seconds; a fraction rounds UP (0.1s → 1 s), never to "no deadline"."""
    if not args.timeout:
        return None
    try:
        return deadline_seconds(args.timeout)
    except ValueError as exc:
        raise InputError(str(exc), code="invalid-duration", location=option_at(args.argv, "--timeout"), field="--timeout",
                         hint="e.g. --timeout 30m or 1h30m") from None


def _parse_target(args: argparse.Namespace) -> Target:
    try:
        target = Target.parse(args.target)
    except InputError as exc:
        raise InputError(exc.message, code=exc.code, location=option_at(args.argv, "--target"), field="--target",
                         hint=exc.hint) from None
    problem = name_problem(target.name)
    if problem:
        raise InputError(problem, code="invalid-name", location=option_at(args.argv, "--target"), field="--target",
                         hint="the target is a Kubernetes object: lowercase letters, digits, - and .")
    return target


def check_run_options(args: argparse.Namespace) -> None:
    """The options of ``render`` and ``run`` that the cluster would refuse, each at its position.

    Names become object names and label values; ``--directory`` and ``--plan-session`` become
    the repository's path inside the storage, so neither may leave it."""
    argv = args.argv
    _parse_target(args)
    namespace_flag = "--namespace" if _argument_positions(argv, "--namespace") else "-n"
    checks: list[tuple[str, str | None, str | None]] = [
        (namespace_flag, args.namespace, name_problem(args.namespace or "", max_len=63, label=True)),
        ("--repository", args.repository, args.repository and name_problem(args.repository)),
        ("--run", args.run_name, args.run_name and name_problem(args.run_name, max_len=63, label=True)),
        ("--storage", args.storage, args.storage and name_problem(args.storage)),
        ("--encryption-secret", args.encryption_secret,
         args.encryption_secret and name_problem(args.encryption_secret)),
        ("--snapshot", getattr(args, "snapshot", None),
         name_problem(args.snapshot) if getattr(args, "snapshot", None) not in (None, "latest") else None),
    ]
    for flag, value, problem in checks:
        if value is not None and problem:
            raise InputError(problem, code="invalid-name", location=option_at(argv, flag), field=flag)
    for flag, value, segment in (("--directory", args.directory, False),
                                 ("--plan-session", args.plan_session, True)):
        problem = path_problem(value, segment=segment) if value is not None else None
        if problem:
            raise InputError(problem, code="invalid-path", location=option_at(argv, flag), field=flag,
                             hint="a path inside the storage: no .., no empty segment, no control character")
    _timeout(args)


def _check_task(args: argparse.Namespace, lookup: Callable[[str, str], Any]) -> None:
    """An unknown Addon or task given on the command line points at that argument."""
    try:
        lookup(args.addon, args.task)
    except StashflowError as exc:
        if exc.code not in ("unknown-addon", "unknown-task"):
            raise
        value = args.addon if exc.code == "unknown-addon" else args.task
        raise InputError(exc.message, code=exc.code, location=Location(COMMAND_LINE, positional_position(args.argv, value)),
                         obj=exc.obj, hint=exc.hint) from None


def cmd_render(args: argparse.Namespace) -> int:
    check_run_options(args)
    catalog = load_catalog(catalog_paths(args.catalog))
    _check_task(args, catalog.task)
    plan = render_plan(catalog, build_request(args, catalog))
    objects = plan.objects()
    check_objects(objects, Location(COMMAND_LINE, positional_position(args.argv, args.addon)))
    if args.output == "json":
        json.dump(objects if len(objects) != 1 else objects[0], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        yaml.safe_dump_all(objects, sys.stdout, sort_keys=False, allow_unicode=True, width=float("inf"))
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    """List every Addon task (the flows stashflow has) with its Function and parameters."""
    catalog = load_catalog(catalog_paths(args.catalog))
    for name in sorted(catalog.addons):
        for list_name, _, task in catalog.addons[name].tasks():
            params = ", ".join(p.name + ("*" if p.required else "") for p in task.parameters or [])
            kind = "backup " if list_name == "backupTasks" else "restore"
            print(f"{name}/{task.name}\t{kind}\t{task.function}\t{params}")
    return 0


#: Where a run parameter comes from on the command line (for errors).
RUN_FLAGS = {"repository.encryption_secret": "--encryption-secret", "repository.directory": "--directory",
             "repository.name": "--repository", "advanced.session": "--run", "advanced.plan_session": "--plan-session",
             "advanced.attempt": "--attempt", "limits.timeout": "--timeout", "limits.history_limit": "--history-limit",
             "target": "--target", "namespace": "--namespace"}


def _run_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``stashflow run`` options → the flow's typed parameters (``RunParameters``), checked here, each
    bad value at its argument's position, before anything is created."""
    from pydantic import ValidationError

    from stashflow.flows.addon_flows import flow_for, loaded
    from stashflow.flows.parameters import RunParameters, Storage, form_parameter

    _check_task(args, flow_for)  # unknown-addon / unknown-task before anything else
    catalog = loaded()[0]
    _, list_name, _, _ = catalog.task(args.addon, args.task)
    # Render the run offline first, as `stashflow render` does: an unknown or missing parameter, a
    # template that cannot resolve, a name the API would refuse fail here, at their argument, before
    # Prefect or the cluster is reached. A restore's Snapshot is only known at run time: stand-ins.
    request = build_request(args, catalog)
    if list_name == "restoreTasks":
        stand_ins = {"snapshot": Value("latest"), "RESTIC_SNAPSHOT_ID": Value("latest")}
        request.builtins = {**stand_ins, **request.builtins}
    check_objects(render_plan(catalog, request).objects(),
                  Location(COMMAND_LINE, positional_position(args.argv, args.addon)))
    values: dict[str, Any] = {}
    for path in args.values or []:
        values.update({k: v.value for k, v in _values_file(path).items()})
    values.update({k: v.value for k, v in _pairs(args.param or [], "--param", args.argv).items()})
    variables = {k: v.value for k, v in _pairs(args.var or [], "--var", args.argv).items()}
    advanced: dict[str, Any] = {"extra_params": {k: v for k, v in values.items() if not form_parameter(k)},
                                "attempt": args.attempt}
    if "DB_VERSION" in variables:
        advanced["db_version"] = variables.pop("DB_VERSION")
    for name in ("backupSession", "restoreSession"):  # the same thing as --run
        if name in variables:
            advanced["session"] = variables.pop(name)
    if args.run_name:
        advanced["session"] = args.run_name
    if args.plan_session:  # the plan's session name (repository path), not the run's name
        advanced["plan_session"] = args.plan_session
    snapshot = variables.pop("snapshot", None) or getattr(args, "snapshot", None)
    advanced["variables"] = variables
    found = request.repository.storage if request.repository else None  # build_request looked it up
    storage = Storage.of(found) if found else None
    limits: dict[str, Any] = {}
    if args.timeout:
        _timeout(args)
        limits["timeout"] = whole_seconds(args.timeout)
    if getattr(args, "history_limit", None) is not None:
        limits["history_limit"] = args.history_limit
    if getattr(args, "logs", None):
        limits["logs"] = args.logs
    try:
        run = RunParameters.model_validate(dict(
            target=str(_parse_target(args)), namespace=args.namespace,
            task_params={k: str(v) for k, v in values.items() if form_parameter(k)}, snapshot=snapshot,
            repository={"name": args.repository, "storage": storage, "directory": args.directory or "",
                        "encryption_secret": args.encryption_secret},
            limits=limits, cluster={"kubeconfig": args.kubeconfig, "context": args.context}, advanced=advanced))
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        flag = RUN_FLAGS.get(field, "--run")
        raise InputError(first["msg"], code="invalid-argument", location=option_at(args.argv, flag), field=flag) from None
    return run.to_flow("backup" if list_name == "backupTasks" else "restore")


def _run_flow(addon: str, task: str, params: dict[str, Any]) -> Any:
    """Run an Addon task's flow with the run's tags; its final state when Completed, else its error."""
    import asyncio

    from prefect import tags

    from stashflow.flows.addon_flows import flow_for
    from stashflow.flows.naming import target_tag

    target = Target.parse(params["target"])
    namespace = params.get("namespace", "default")
    with tags("stashflow", f"addon:{addon}", f"task:{task}",
              target_tag(namespace, str(target))):
        state = asyncio.run(flow_for(addon, task)(**params, return_state=True))
    return _completed(state)


def _completed(state: Any) -> Any:
    """A flow run's final state when it Completed; else its error (coded when the flow raised one)."""
    if state.is_completed():
        return state
    try:
        state.result()
    except StashflowError:
        raise
    except Exception as exc:  # noqa: BLE001 - Prefect wraps what the flow raised
        raise RunError(f"the flow run ended {state.name}: {exc}") from None
    raise RunError(f"the flow run ended {state.name}: {state.message}")


def _run_restore_session(params: dict[str, Any]) -> Any:
    """Run the ``restore-session`` flow for one RestoreSession; its final state when Completed, else its error."""
    import asyncio

    from prefect import tags

    from stashflow.flows.naming import target_tag
    from stashflow.flows.restore_sessions import restore_session

    with tags("stashflow", f"addon:{params['addon']}", target_tag(params["namespace"], params["target"])):
        # Prefect types this call as an Awaitable; it is a coroutine.
        state: Any = asyncio.run(restore_session(**params, return_state=True))  # type: ignore[arg-type]
    return _completed(state)


def _check_kubeconfig(args: argparse.Namespace) -> None:
    """A ``--kubeconfig`` that cannot be read is an input error before Prefect or the cluster is touched."""
    path = getattr(args, "kubeconfig", None)
    if path is None:
        return
    try:
        open(path, "rb").close()
    except OSError as exc:
        raise InputError(f"cannot read the kubeconfig: {exc.strerror or exc}", code="read-error",
                         location=option_at(args.argv, "--kubeconfig"), field="--kubeconfig") from None


def cmd_run(args: argparse.Namespace) -> int:
    """Run one Addon task as its Prefect flow against the current kube context."""
    check_run_options(args)
    _check_kubeconfig(args)
    if args.catalog:
        os.environ[CATALOG_ENV] = os.pathsep.join(args.catalog)
    kwargs = _run_kwargs(args)
    quiet_prefect_tracebacks(args.verbose)
    state = _run_flow(args.addon, args.task, kwargs)
    if state.name == "Skipped":
        print(f"skipped: {state.message}", file=sys.stderr)
        return 0
    _print_result(args, state.result())
    return 0


def _print_result(args: argparse.Namespace, result: dict[str, Any]) -> None:
    snapshot = result.get("snapshot")
    if snapshot:
        import asyncio

        from stashflow.tasks import resources
        from stashflow.tasks.kube import connect

        async def read() -> dict[str, Any]:
            async with connect(args.kubeconfig, args.context) as kube:
                return await resources.read(kube, "Snapshot", args.namespace, snapshot)

        obj = asyncio.run(read())
        obj.get("metadata", {}).pop("managedFields", None)
        yaml.safe_dump(obj, sys.stdout, sort_keys=False, width=float("inf"))
    else:
        yaml.safe_dump(result, sys.stdout, sort_keys=False, width=float("inf"))


def cmd_restore(args: argparse.Namespace) -> int:
    """Run RestoreSession files, one after another, each as one ``restore-session`` flow run (its object,
    its components, its hooks); stop at the first failure."""
    paths = catalog_paths(args.catalog)
    os.environ[CATALOG_ENV] = os.pathsep.join(os.path.abspath(p) for p in paths)
    from stashflow.flows.restore import restore_session_parameters

    catalog = load_checked([*paths, *args.files]).raise_for_problems()
    sessions = catalog.of_kind(RestoreSession)
    if not sessions:
        raise InputError("the files hold no RestoreSession", code="missing-field",
                         location=Location(COMMAND_LINE, positional_position(args.argv, args.files[0])), field="FILE",
                         hint="give the files that define the RestoreSessions to run")
    session_runs = [restore_session_parameters(catalog, s) for s in sessions]  # every one checked before any runs
    _check_kubeconfig(args)
    import stashflow.flows.restore_sessions  # noqa: F401 - sets Prefect's logging up; quieted next

    quiet_prefect_tracebacks(args.verbose)
    for params in session_runs:
        if args.kubeconfig:
            params.setdefault("cluster", {})["kubeconfig"] = os.path.abspath(args.kubeconfig)
        if args.context:
            params.setdefault("cluster", {})["context"] = args.context
        result = _run_restore_session(params).result()
        source = params["data_source"]
        of = f" of {source['repository']}" if source.get("repository") else ""
        for task in params["tasks"]:  # the lines `stashflow restore` has always printed, one per task
            print(f"restored {params['target']} in {params['namespace']} with {params['addon']}/{task['name']} "
                  f"from {source['snapshot']}{of}")
        print(f"restored {params['target']} in {params['namespace']} with RestoreSession {params['name']} "
              f"from {result.get('snapshot') or source['snapshot']}")
    return 0


def cmd_snapshots(args: argparse.Namespace) -> int:
    import asyncio

    from stashflow.tasks import resources
    from stashflow.tasks.kube import connect

    async def listing() -> list[dict[str, Any]]:
        async with connect(args.kubeconfig, args.context) as kube:
            return await resources.list_snapshots(kube, None if args.all_namespaces else args.namespace,
                                                  f"kubestash.com/repo-name={args.repository}" if args.repository else None)

    rows = [("NAMESPACE", "NAME", "REPOSITORY", "SESSION", "PHASE", "SIZE", "SNAPSHOT-TIME")]
    for s in asyncio.run(listing()):
        status = s.get("status") or {}
        rows.append((s["metadata"]["namespace"], s["metadata"]["name"], s["spec"].get("repository", ""),
                     s["spec"].get("session", ""), status.get("phase", ""), status.get("size", ""),
                     status.get("snapshotTime", "")))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())
    return 0


def _print_in_cluster(args: argparse.Namespace) -> int:
    """``install --in-cluster``: the Prefect server, its PostgreSQL and the worker, as YAML for kubectl."""
    from stashflow.addons.incluster import InCluster, in_cluster_objects

    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit is {args.limit}: it must be at least 1", code="invalid-argument",
                         location=option_at(args.argv, "--limit"), field="--limit")
    if args.pool is not None and not args.pool.strip():
        raise InputError("--pool is empty", code="invalid-argument", location=option_at(args.argv, "--pool"), field="--pool")
    options = InCluster(serves=tuple(args.serve or [args.namespace]), pool=args.pool or "stashflow",
                        limit=args.limit, postgres=not args.external_database,
                        catalog_configmap=args.catalog_configmap)
    problem = args.catalog_configmap is not None and name_problem(args.catalog_configmap)
    if problem:
        raise InputError(problem, code="invalid-name", location=option_at(args.argv, "--catalog-configmap"),
                         field="--catalog-configmap")
    for ns in options.serves:
        problem = name_problem(ns, max_len=63, label=True)
        if problem:
            flag = "--serve" if args.serve else ("--namespace" if _argument_positions(args.argv, "--namespace") else "-n")
            at = option_at(args.argv, flag, args.serve.index(ns) if args.serve else 0)
            raise InputError(problem, code="invalid-name", location=at, field=flag)
    yaml.safe_dump_all(in_cluster_objects(options), sys.stdout, sort_keys=False)
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    from stashflow.addons.crd import all_crds
    from stashflow.addons.rbac import manifest_rbac_objects, rbac_objects

    only_in_cluster = [flag for flag, given in (("--serve", args.serve), ("--pool", args.pool is not None),
                                                 ("--limit", args.limit is not None),
                                                 ("--catalog-configmap", args.catalog_configmap is not None),
                                                 ("--external-database", args.external_database)) if given]
    if args.in_cluster and args.manifests:
        raise InputError("--manifests is not for --in-cluster", code="invalid-argument",
                         location=_flag_at(args.argv, "--manifests"), field="--manifests",
                         hint="run `stashflow install -n NS --manifests` on its own for the manifest Functions' accounts")
    if only_in_cluster and not args.in_cluster:
        flag = only_in_cluster[0]
        raise InputError(f"{flag} is an option of --in-cluster", code="invalid-argument",
                         location=_flag_at(args.argv, flag) if flag == "--external-database" else option_at(args.argv, flag),
                         field=flag,
                         hint="add --in-cluster to print the objects that run stashflow in the cluster")
    if args.in_cluster:
        return _print_in_cluster(args)
    if args.print:
        extra = manifest_rbac_objects(args.namespace) if args.manifests else []
        yaml.safe_dump_all([*all_crds(), *rbac_objects(args.namespace), *extra], sys.stdout, sort_keys=False)
        return 0
    import asyncio

    from stashflow.tasks.install import install
    from stashflow.tasks.kube import connect

    async def apply() -> list[str]:
        async with connect(args.kubeconfig, args.context) as kube:
            return await install(kube, args.namespace, manifests=args.manifests)

    for line in asyncio.run(apply()):
        print(line)
    return 0


def _cluster_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, $KUBECONFIG, ~/.kube/config)")
    p.add_argument("--context", help="kubeconfig context")


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Options that say what to run: shared by ``render`` and ``run``."""
    p.add_argument("addon", help="Addon name, e.g. pvc-addon")
    p.add_argument("task", help="a backup or restore task of the Addon, e.g. logical-backup")
    p.add_argument("--catalog", action="append", metavar="PATH",
                   help=f"Addon/Function file or folder, repeatable (default: ${CATALOG_ENV}, else the built-in catalog)")
    p.add_argument("--namespace", "-n", default="default", help="namespace of the run (default: default)")
    p.add_argument("--target", required=True, metavar="KIND/NAME",
                   help="what to back up or restore, e.g. PersistentVolumeClaim/data")
    p.add_argument("--param", action="append", metavar="NAME=VALUE", help="a task parameter (repeatable)")
    p.add_argument("--values", action="append", metavar="FILE", help="a YAML file of NAME: VALUE parameters")
    p.add_argument("--var", action="append", metavar="NAME=VALUE",
                   help="a built-in variable such as DB_VERSION, backupSession, snapshot (repeatable)")
    p.add_argument("--timeout", metavar="DURATION", help="deadline of the Job, e.g. 30m (activeDeadlineSeconds)")
    p.add_argument("--attempt", type=int, default=1, help="attempt number (names the Job)")
    p.add_argument("--run", metavar="NAME", dest="run_name",
                   help="the run's name (KubeStash's BackupSession/RestoreSession name): it names the Job and the "
                        "Snapshot. Running again with the same --run adopts that run's Job, never starts a second "
                        "one (default: TARGET-NAME-<unix time>)")
    p.add_argument("--plan-session", metavar="NAME",
                   help="the plan's session name: the repository path repository/v1/NAME/<component> "
                        "(default: the task name)")
    p.add_argument("--repository", metavar="NAME", help="repository name recorded in the Snapshot (default: target name)")
    p.add_argument("--storage", metavar="NAME", help="a BackupStorage from the catalog paths to back up into")
    p.add_argument("--directory", metavar="DIR", help="the repository's directory inside the storage")
    p.add_argument("--encryption-secret", metavar="SECRET", help="Secret with key RESTIC_PASSWORD")


def build_parser(extensions: Sequence[Callable[[Any], None]] = ()) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="stashflow",
        description="KubeStash Addons and Functions, run as Prefect flows on any Kubernetes cluster.",
        epilog="-v/--verbose anywhere: print tracebacks (Prefect's and stashflow's) with errors.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check Addon, Function and plan files")
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (YAML, multi-document)")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing when all is well")
    p.add_argument("--catalog", action="append", metavar="PATH",
                   help="for plans given without their Addons: the catalog deploy and restore use "
                        f"(default: ${CATALOG_ENV}, else the built-in catalog)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("render", help="print the objects a run would create (PVCs, Job, Snapshot)")
    add_run_options(p)
    p.add_argument("--output", "-o", choices=("yaml", "json"), default="yaml")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("run", help="run an Addon task as its Prefect flow on the current cluster; print the Snapshot")
    add_run_options(p)
    p.add_argument("--snapshot", metavar="NAME", help="restores: the Snapshot to restore, or latest (with --repository)")
    p.add_argument("--history-limit", type=int, help="finished Jobs of this target and task to keep (default 1)")
    p.add_argument("--logs", choices=("follow", "tail"), default="follow",
                   help="follow: stream the Job's log while you watch (default); tail: its last lines, only when "
                        "the Job fails (what deployments do)")
    _cluster_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("restore", help="run RestoreSession files, each as one restore-session flow run")
    p.add_argument("files", nargs="+", metavar="FILE", help="files or folders with RestoreSessions")
    p.add_argument("--catalog", action="append", metavar="PATH",
                   help=f"Addon/Function file or folder, repeatable (default: ${CATALOG_ENV}, else the built-in catalog)")
    _cluster_options(p)
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("snapshots", help="list Snapshots")
    p.add_argument("--namespace", "-n", default="default")
    p.add_argument("--all-namespaces", "-A", action="store_true")
    p.add_argument("--repository", help="only this repository's Snapshots")
    _cluster_options(p)
    p.set_defaults(func=cmd_snapshots)

    p = sub.add_parser("install", help="apply the Snapshot CRD (when missing) and RBAC for stashflow in a namespace")
    p.add_argument("--namespace", "-n", default="default")
    p.add_argument("--print", action="store_true", help="print the objects instead of applying them")
    p.add_argument("--manifests", action="store_true",
                   help="also the ServiceAccounts the stashflow-manifests Functions run as (cluster-wide read; "
                        "get/create/patch for restores)")
    p.add_argument("--in-cluster", action="store_true",
                   help="print the objects that run stashflow in the cluster (kubectl apply -f -): namespace "
                        "stashflow, PostgreSQL, the Prefect server, the stashflow worker and its RBAC")
    p.add_argument("--serve", action="append", metavar="NS",
                   help="with --in-cluster: a namespace whose backups the worker runs (repeatable; default -n's)")
    p.add_argument("--pool", help="with --in-cluster: the worker's work pool (default stashflow)")
    p.add_argument("--limit", type=int, help="with --in-cluster: the worker's --limit")
    p.add_argument("--catalog-configmap", metavar="NAME",
                   help="with --in-cluster: the worker's catalog is key catalog.yaml of this ConfigMap (your Addons)")
    p.add_argument("--external-database", action="store_true",
                   help="with --in-cluster: no PostgreSQL; make Secret prefect-database with key connection-url")
    _cluster_options(p)
    p.set_defaults(func=cmd_install)

    p = sub.add_parser("tasks", help="list the Addon tasks of the catalog (one flow each)")
    p.add_argument("--catalog", action="append", metavar="PATH")
    p.set_defaults(func=cmd_tasks)

    for extend in extensions:
        extend(sub)
    return parser


_ARGV: list[str] = []  # the arguments being parsed, for _Parser.error's positions


class _Parser(argparse.ArgumentParser):
    """Usage errors as one coded line too, exit 1 like every other bad input, never a usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        where, hint = 1, f"see {self.prog} --help"
        # an option this command does not have is the likelier mistake than what it then lacks
        # (`--tagret X` says so, not "--target is required")
        known = set(self._option_string_actions)
        for action in self._actions:  # the top-level parser reports unknown options of its subcommands
            for sub in (getattr(action, "choices", None) or {}).values() if isinstance(action, argparse._SubParsersAction) \
                    else ():
                known |= set(sub._option_string_actions)
        for position, token in enumerate(_ARGV, start=1):
            flag = token.split("=", 1)[0]
            if flag.startswith("-") and len(flag) > 1 and flag not in known and not flag.lstrip("-").isdigit():
                close = did_you_mean(flag, known)
                message, where = f"unknown option {flag}", position
                hint = close or hint
                break
        else:  # argparse's own message names what it refused: point there, not at the command
            named = re.match(r"argument (-[^\s:/]+)|unrecognized arguments: (\S+)", message)
            if named and named.group(1):
                where = argument_position(_ARGV, named.group(1))
            elif named and named.group(2) in _ARGV:
                where = _ARGV.index(named.group(2)) + 1
        line = InputError(message, code="invalid-argument", location=Location(COMMAND_LINE, where),
                          hint=hint).format()
        self.exit(1, line + "\n")


class _NoTraceback(logging.Formatter):
    """A console formatter that leaves the traceback out (the record keeps it for other handlers)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def quiet_prefect_tracebacks(verbose: bool) -> None:
    """Without ``-v``, Prefect's console handlers print log lines but not tracebacks; the
    Prefect API's log handler is left alone, so the flow run's logs keep the full trace."""
    import prefect  # noqa: F401 - configures Prefect's logging, which is what is changed here

    if verbose:
        return
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    for logger in loggers:
        for handler in logger.handlers:
            # Prefect's own console handlers only: a handler the embedding program (or pytest) installed
            # keeps its formatting
            kind = type(handler)
            if "APILogHandler" in kind.__name__ or not isinstance(handler, logging.StreamHandler) \
                    or not kind.__module__.startswith("prefect."):
                continue
            if not isinstance(handler.formatter, _NoTraceback):
                handler.setFormatter(_NoTraceback(handler.formatter or logging.Formatter()))


def _locate(exc: StashflowError, args: argparse.Namespace) -> None:
    """Give an input error without a location the position of the argument it is about."""
    for problem in exc.problems if isinstance(exc, Problems) else [exc]:
        if not isinstance(problem, InputError):
            continue  # a cluster's or a run's failure is about the run, not about an argument
        if problem.location is not None and problem.location.line > 0:
            continue
        if problem.location is not None and not problem.location.file.startswith("<"):
            continue  # a file as a whole (read-error): FILE:0
        argv = args.argv
        field = (problem.field or "").split(" ")[0]
        position = 1
        if field.startswith("-"):
            position = argument_position(argv, field)
        elif problem.code == "unknown-addon" and getattr(args, "addon", None):
            position = positional_position(argv, args.addon)
        elif problem.code == "unknown-task" and getattr(args, "task", None):
            position = positional_position(argv, args.task)
        elif field in ("backupSession", "restoreSession", "snapshot", "DB_VERSION"):
            for i, raw in enumerate(getattr(args, "var", None) or []):
                if raw.partition("=")[0] == field:
                    position = argument_position(argv, "--var", i)
        problem.location = Location(COMMAND_LINE, position)


def _unexpected(exc: BaseException) -> tuple[str, str, int]:
    """An exception that is not a StashflowError → (code, message, exit code)."""
    name = type(exc).__name__
    module = type(exc).__module__ or ""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else name
    if name in ("TerminationSignal", "ExternalSignal", "Terminated") or isinstance(exc, KeyboardInterrupt):
        signal_name = "SIGINT" if isinstance(exc, KeyboardInterrupt) else "SIGTERM"
        return "interrupted", f"stopped by {signal_name}; the run's Job and PVCs are cleaned up by its hooks", \
            130 if isinstance(exc, KeyboardInterrupt) else 143
    if module.startswith(("httpx", "httpcore")) or "Failed to reach API" in str(exc) or name == "PrefectHTTPStatusError":
        url = os.environ.get("PREFECT_API_URL") or "Prefect's local API"
        return "prefect-unavailable", f"the Prefect API at {url} did not answer: {text}", 1
    return "internal-error", f"{name}: {text}", 1


class Terminated(BaseException):
    """SIGTERM reached the command (Prefect, inside a flow run, first marks the run Crashed, runs its
    cleanup hooks, then passes the signal on to the handler that was there before: this one)."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None, extensions: Sequence[Callable[[Any], None]] = ()) -> int:
    """Run a command; ``extensions`` add subcommands (``stashflow.deployments.cli`` adds deploy/serve)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = any(a in ("-v", "--verbose") for a in argv)
    parser = build_parser(extensions)
    _ARGV[:] = argv
    args = parser.parse_args([a for a in argv if a not in ("-v", "--verbose")])
    args.argv = argv
    args.verbose = verbose
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        return int(args.func(args) or 0)
    except StashflowError as exc:
        _locate(exc, args)
        print(exc.format(), file=sys.stderr)
        if verbose:
            traceback.print_exc()
        return 1
    except BrokenPipeError:
        return 0
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - one coded line; the traceback only with -v
        code, message, status = _unexpected(exc)
        hint = "run again with -v for the traceback" if not verbose else None
        if code == "internal-error":
            hint = "a bug in stashflow: please report it with the output of -v"
        print(InputError(message, code=code, location=Location(COMMAND_LINE, 1), hint=hint).format(), file=sys.stderr)
        if verbose:
            traceback.print_exc()
        return status
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
