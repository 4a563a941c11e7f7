"""``stashflow deploy`` and ``stashflow serve``, added to the CLI of ``stashflow.flows.cli``, with
``stashflow worker`` from ``stashflow.worker.cli``.

The console script enters here so that the layers still point one way (deployments → worker →
flows): the command line is assembled at the top layer, each layer adding its own commands."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from stashflow.flows import cli as flows_cli

from .pools import PoolType
from stashflow.worker import cli as worker_cli

if TYPE_CHECKING:
    from .plans import DeploymentSpec


def _load(args: argparse.Namespace) -> tuple[list[DeploymentSpec], set[str]]:
    """Addon catalog + plan files → deployment specs (the flows see the same catalog)."""
    catalog_paths = flows_cli.catalog_paths(args.catalog)
    os.environ[flows_cli.CATALOG_ENV] = os.pathsep.join(os.path.abspath(p) for p in catalog_paths)
    from stashflow.addons.errors import InputError, Location
    from stashflow.addons.model import BackupConfiguration

    from .plans import plan_deployments, plan_tag

    catalog = flows_cli.load_checked([*catalog_paths, *args.plans]).raise_for_problems()
    plans = catalog.of_kind(BackupConfiguration)
    if not plans:
        raise InputError("the plan files hold no BackupConfiguration", code="missing-field",
                         location=Location(flows_cli.COMMAND_LINE, flows_cli.positional_position(args.argv, args.plans[0])),
                         field="PLAN", hint="give the files that define the BackupConfigurations to deploy")
    specs = plan_deployments(catalog, work_pool=args.work_pool, checked=True,
                             kubeconfig=os.path.abspath(args.kubeconfig) if args.kubeconfig else None)
    return specs, {plan_tag(p) for p in plans}


def cmd_deploy(args: argparse.Namespace) -> int:
    specs, tags = _load(args)
    from .apply import deploy, write_prefect_yaml

    if args.write:
        from stashflow.addons.errors import InputError, Location

        try:
            write_prefect_yaml(specs, Path(args.write), work_pool=args.work_pool or "stashflow")
        except OSError as exc:
            raise InputError(f"cannot write {args.write}: {exc.strerror or exc}", code="write-error",
                             location=Location(flows_cli.COMMAND_LINE, flows_cli.argument_position(args.argv, "--write")),
                             field="--write", hint="give a file in a folder that exists and can be written") from None
        print(f"wrote {len(specs)} deployment(s) to {args.write}")
        return 0
    flows_cli.quiet_prefect_tracebacks(args.verbose)
    from .pools import KubernetesPool

    pool_type = PoolType(args.pool_type) if args.pool_type else None
    kubernetes = KubernetesPool(**{k: v for k, v in (("image", args.image), ("command", args.flow_run_command))
                                   if v}) if pool_type is PoolType.KUBERNETES else None
    done = asyncio.run(deploy(specs, plan_tags=tags, prune=not args.no_prune, pool_type=pool_type,
                              kubernetes=kubernetes))
    start = {PoolType.KUBERNETES: "prefect worker start --pool {} --type kubernetes",
             PoolType.STASHFLOW: "stashflow worker --pool {}"}.get(pool_type or PoolType.PROCESS,
                                                                  "prefect worker start --pool {}")
    for pool in done["pools"]:
        print(f"created work pool {pool} (type {pool_type or PoolType.PROCESS}): run its flows with "
              f"`{start.format(pool)}`")
    for spec in specs:
        state = "paused" if spec.paused else f"{spec.cron} ({spec.timezone})"
        print(f"deployed {spec.full_name}: {state}")
    for name in done["pruned"]:
        print(f"pruned {name}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    specs, _ = _load(args)
    from .apply import serve

    flows_cli.quiet_prefect_tracebacks(args.verbose)
    serve(specs, limit=args.limit)
    return 0


def add_commands(sub: Any) -> None:
    for name, func, help_text in (
        ("deploy", cmd_deploy, "create or update the Prefect deployments of backup plans; prune dropped ones"),
        ("serve", cmd_serve, "run the deployments of backup plans in this process (Prefect's local API)"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("plans", nargs="+", metavar="PLAN", help="files or folders with BackupConfigurations, "
                                                                "their BackupStorages and RetentionPolicies")
        p.add_argument("--catalog", action="append", metavar="PATH",
                       help="Addon/Function file or folder, repeatable (default: $STASHFLOW_CATALOG, else the built-in catalog)")
        p.add_argument("--kubeconfig", help="kubeconfig the runs use (default: in-cluster, then $KUBECONFIG)")
        p.add_argument("--work-pool", help="work pool of the deployments (deploy; default: none, for serve)")
        if name == "deploy":
            p.add_argument("--write", metavar="FILE", help="write a prefect.yaml instead of calling the API")
            p.add_argument("--no-prune", action="store_true", help="keep deployments the plans no longer name")
            p.add_argument("--pool-type", choices=[t.value for t in PoolType],
                           help="type of a work pool deploy creates (default process; an existing pool is used "
                                "as it is, and must be of this type when given); kubernetes: each flow run is a "
                                "Job, run as ServiceAccount stashflow; stashflow: the stashflow worker")
            p.add_argument("--image", help="kubernetes pools: the flow-run image, with stashflow installed")
            p.add_argument("--flow-run-command", metavar="COMMAND",
                           help="kubernetes pools: the flow-run command (default: prefect flow-run execute)")
        else:
            p.add_argument("--limit", type=int, help="at most this many flow runs at once")
        p.set_defaults(func=func)


def main(argv: Sequence[str] | None = None) -> int:
    return flows_cli.main(argv, extensions=[add_commands, worker_cli.add_commands])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
