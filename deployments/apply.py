"""Deployments through the Prefect API, as a prefect.yaml, or served from one process.

``deploy`` is an upsert: it creates or updates each deployment, makes the per-target
concurrency limits, and prunes the deployments it made for these plans that the plans no
longer name (Prefect's own ``deploy`` never deletes). Deployments carry the tags
``stashflow`` and ``plan:<namespace>.<name>``; pruning touches nothing else.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import DeploymentUpdate, GlobalConcurrencyLimitCreate
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterTags
from prefect.client.schemas.schedules import CronSchedule
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.exceptions import ObjectAlreadyExists

from stashflow.addons.catalog import BUILTIN_CATALOG
from stashflow.flows.addon_flows import CATALOG_ENV
from stashflow.flows.session_flows import backup_session

from .plans import MANAGED_TAG, DeploymentSpec
from .pools import KubernetesPool, PoolType, ensure_pool

#: A worker's flow run without pull steps copies the deployment's path (or the worker's working
#: directory: in a flow-run Pod, ``/``) into its workspace before it imports the flow, even for a
#: module-path entrypoint (Prefect 3.9's workspace supervisor). stashflow's flows are installed
#: packages: the run only needs a working directory.
WORKER_PULL_STEPS = [{"prefect.deployments.steps.set_working_directory": {"directory": "."}}]


def catalog_env() -> dict[str, str]:
    """``STASHFLOW_CATALOG`` for workers, when the catalog is not the built-in one (which any
    install has): the paths must then exist where the workers run."""
    value = os.environ.get(CATALOG_ENV, "")
    if not value or [os.path.realpath(p) for p in value.split(os.pathsep)] == [os.path.realpath(BUILTIN_CATALOG)]:
        return {}
    return {CATALOG_ENV: value}


def _deployment_options(spec: DeploymentSpec) -> dict[str, Any]:
    """The Prefect deployment of a spec (module entrypoint, so any worker can import it)."""
    job_variables: dict[str, Any] = {"env": catalog_env()} if spec.work_pool and catalog_env() else {}
    return dict(
        name=spec.name,
        parameters=spec.parameters,
        schedules=[CronSchedule(cron=spec.cron, timezone=spec.timezone)],
        paused=spec.paused,
        tags=spec.tags,
        description=spec.description,
        entrypoint_type=EntrypointType.MODULE_PATH,
        job_variables=job_variables,
    )


def runner_deployment(spec: DeploymentSpec) -> RunnerDeployment:
    # Prefect's async_dispatch types both outcomes; called from sync code, it returns the deployment.
    return backup_session.to_deployment(**_deployment_options(spec))  # type: ignore[return-value]


async def arunner_deployment(spec: DeploymentSpec) -> RunnerDeployment:
    return await backup_session.ato_deployment(**_deployment_options(spec))


async def ensure_locks(specs: list[DeploymentSpec]) -> None:
    """One global concurrency limit (limit 1) per target: the lock that keeps runs from overlapping."""
    async with get_client() as client:
        for name in sorted({s.lock for s in specs}):
            try:
                await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            except ObjectAlreadyExists:
                pass


async def check_server_and_pools(specs: list[DeploymentSpec], pool_type: PoolType | None = None,
                                  kubernetes: KubernetesPool | None = None) -> list[str]:
    """Before changing anything: the Prefect API answers, and every work pool named exists; a missing
    one is created (``pools.ensure_pool``: a process pool by default). Returns the pools created."""
    from stashflow.addons.errors import InputError

    async with get_client() as client:
        problem = await client.api_healthcheck()
        if problem is not None:
            raise InputError(f"the Prefect API at {client.api_url} does not answer: {problem}",
                             code="prefect-unavailable", field="PREFECT_API_URL",
                             hint="start it (prefect server start) or set PREFECT_API_URL to the server's /api URL; "
                                  "nothing was changed")
        created = []
        for pool in sorted({s.work_pool for s in specs if s.work_pool}):
            if await ensure_pool(client, pool, pool_type, kubernetes):
                created.append(pool)
        return created


async def deploy(specs: list[DeploymentSpec], *, plan_tags: set[str], prune: bool = True,
                 pool_type: PoolType | None = None, kubernetes: KubernetesPool | None = None
                 ) -> dict[str, list[str]]:
    """Create or update ``specs``; delete this tool's deployments of ``plan_tags`` that are not among them.
    On a ``kubernetes`` pool each deployment's flow-run Job runs in its plan's namespace."""
    created = await check_server_and_pools(specs, pool_type, kubernetes)
    await ensure_locks(specs)
    applied = []
    for spec in specs:
        deployment = await arunner_deployment(spec)
        if spec.work_pool and pool_type is PoolType.KUBERNETES:
            deployment.job_variables = {**deployment.job_variables, "namespace": spec.parameters["namespace"]}
        deployment_id = await deployment.aapply(work_pool_name=spec.work_pool)
        if spec.work_pool:
            async with get_client() as client:
                await client.update_deployment(deployment_id, DeploymentUpdate(pull_steps=WORKER_PULL_STEPS))
        applied.append(spec.full_name)
    pruned: list[str] = []
    if prune:
        wanted = {(s.flow, s.name) for s in specs}
        async with get_client() as client:
            for tag in sorted(plan_tags):
                found = await client.read_deployments(
                    deployment_filter=DeploymentFilter(tags=DeploymentFilterTags(all_=[MANAGED_TAG, tag])))
                for d in found:
                    flow = await client.read_flow(d.flow_id)
                    if (flow.name, d.name) not in wanted:
                        await client.delete_deployment(d.id)
                        pruned.append(f"{flow.name}/{d.name}")
    return {"applied": applied, "pruned": pruned, "pools": created}


def prefect_yaml(specs: list[DeploymentSpec], *, work_pool: str, directory: str = ".") -> dict[str, Any]:
    """The same deployments as a prefect.yaml that ``prefect deploy --all`` accepts."""
    deployments = []
    for spec in specs:
        deployments.append({
            "name": spec.name,
            "description": spec.description,
            "entrypoint": spec.entrypoint,  # a module path: workers import it, whatever their directory
            "parameters": spec.parameters,
            "tags": spec.tags,
            "schedules": [{"cron": spec.cron, "timezone": spec.timezone, "active": not spec.paused}],
            "work_pool": {"name": spec.work_pool or work_pool, "work_queue_name": None,
                          "job_variables": {"env": catalog_env()} if catalog_env() else {}},
        })
    return {
        "name": "stashflow",
        "prefect-version": "3.9.1",
        "build": None,
        "push": None,
        "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": directory}}],
        "deployments": deployments,
    }


def write_prefect_yaml(specs: list[DeploymentSpec], path: Path, *, work_pool: str) -> None:
    header = ("# Written by `stashflow deploy --write`: the deployments of the plans, for review and\n"
              "# `prefect deploy --all`. Per-target locks (global concurrency limits named in each run's\n"
              "# `exclusive` lock) are made by `stashflow deploy`; with `prefect deploy` alone, create them:\n"
              + "".join(f"#   prefect gcl create {lock} --limit 1\n" for lock in sorted({s.lock for s in specs})))
    text = header + yaml.safe_dump(prefect_yaml(specs, work_pool=work_pool), sort_keys=False, width=1000)
    with open(path, "w", encoding="utf-8") as out:  # an OSError (missing folder, a directory, disk full) goes up
        out.write(text)
        out.flush()


def serve(specs: list[DeploymentSpec], *, limit: int | None = None) -> None:
    """Run all the deployments in this process (Prefect's Runner); blocks until interrupted.

    The Runner starts each flow run as a child process that imports the flow by its module
    entrypoint, never this script: the ``if __name__ == "__main__"`` pitfall does not arise."""
    import asyncio

    from prefect import serve as prefect_serve

    asyncio.run(ensure_locks(specs))
    prefect_serve(*[runner_deployment(s) for s in specs], limit=limit, print_starting_message=True)
