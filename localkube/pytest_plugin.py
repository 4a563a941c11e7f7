"""pytest fixtures for tests against the local Kubernetes control plane and the node agent.

Register with ``pytest_plugins = ["localkube.pytest_plugin"]`` (tests/conftest.py does).

- ``kube_cluster`` (session): a :class:`~localkube.cluster.Cluster`, built on first use and started
  if not running; stopped at the end only if this session started it (``STASHFLOW_KUBE_KEEP=1``
  leaves it up for the next run). ``kube_cluster.kubeconfig``, ``.api_url``, ``.restart_apiserver()``,
  ``async with kube_cluster.api_client() as api``.
- ``namespace`` (function): a fresh Namespace whose ``default`` ServiceAccount exists; deleted after.
- ``node_agent`` (function): the session's :class:`~localkube.nodeagent.NodeAgent`; scripts and the
  default outcome are reset after each test.
- ``kubestash_crds`` (session): installs ``../shared/kubestash/crds`` (skips when that folder is absent).

Tests are sync functions that run their coroutines with ``asyncio.run`` (each test its own loop; the
agent has its own loop on its own thread), so no async pytest plugin is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from localkube.cluster import Cluster, _alive
from localkube.helpers import KUBESTASH_CRDS, install_crds, wait_until
from localkube.nodeagent import NodeAgent, Outcome, succeed


def _mounts() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return sorted(" ".join(line.split()[3:5]) for line in f)


@pytest.fixture(scope="session")
def kube_cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """The session's control plane: build (first time), start if needed, stop what we started."""
    cluster = Cluster()
    capman = request.config.pluginmanager.getplugin("capturemanager")
    # The first build takes minutes: show its progress instead of swallowing it.
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        cluster.up()
    pids = cluster.pids()
    yield cluster
    if cluster.started_here and os.environ.get("STASHFLOW_KUBE_KEEP") != "1":
        with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
            cluster.down()
        left = {name: pid for name, pid in pids.items() if _alive(pid)}
        if left:
            pytest.fail(f"processes left running after stopping the cluster: {left}")


@pytest.fixture(scope="session")
def _node_agent_session(kube_cluster: Cluster) -> Iterator[NodeAgent]:
    default = Outcome.parse(os.environ["STASHFLOW_NODE_AGENT_DEFAULT"]) \
        if os.environ.get("STASHFLOW_NODE_AGENT_DEFAULT") else succeed()
    mounts_before = _mounts()
    agent = kube_cluster.node_agent(default=default).start()
    yield agent
    pids = agent.running_pids()
    agent.stop()
    leaked = [p for p in pids if _alive(p)]
    mounts_after = _mounts()
    problems = []
    if leaked:
        problems.append(f"container processes still alive after the agent stopped: {leaked}")
    if mounts_after != mounts_before:
        problems.append(f"host mount table changed: {sorted(set(mounts_after) ^ set(mounts_before))}")
    if problems:
        pytest.fail("; ".join(problems))


@pytest.fixture
def node_agent(_node_agent_session: NodeAgent) -> Iterator[NodeAgent]:
    """The node agent. Script outcomes per Job: ``node_agent.script("my-job", fail(3))``;
    set ``node_agent.default = run()`` for unscripted Pods. Both reset after the test."""
    yield _node_agent_session
    _node_agent_session.reset()


@pytest.fixture
def namespace(kube_cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh Namespace, ready for Pods (its default ServiceAccount exists); deleted afterwards."""
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t-{base}-{uuid.uuid4().hex[:6]}"

    async def create() -> None:
        async with kube_cluster.api_client() as api:
            core = client.CoreV1Api(api)
            await core.create_namespace({"metadata": {"name": name,
                                                      "labels": {"localkube.stashflow.dev/test": "true"}}})

            async def sa_ready() -> bool:
                try:
                    await core.read_namespaced_service_account("default", name)
                    return True
                except ApiException as e:
                    if e.status != 404:
                        raise
                    return False
            await wait_until(sa_ready, 30, what=f"ServiceAccount {name}/default")

    async def delete() -> None:
        async with kube_cluster.api_client() as api:
            try:  # Background: the namespace controller takes ~10 s; no need to wait for it
                await client.CoreV1Api(api).delete_namespace(name, propagation_policy="Background")
            except ApiException as e:
                if e.status != 404:
                    raise

    asyncio.run(create())
    yield name
    asyncio.run(delete())


@pytest.fixture(scope="session")
def kubestash_crds(kube_cluster: Cluster) -> list[str]:
    """Install the upstream KubeStash CRDs (from ../shared/kubestash/crds) into the cluster."""
    if not KUBESTASH_CRDS.is_dir():
        pytest.skip(f"upstream KubeStash CRDs not present at {KUBESTASH_CRDS}")

    async def go() -> list[str]:
        async with kube_cluster.api_client() as api:
            return await install_crds(api, KUBESTASH_CRDS)
    return asyncio.run(go())


@pytest.fixture
def host_tmp(kube_cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A per-test directory under the cluster's run dir (visible to Pods the agent runs, as hostPath)."""
    d = kube_cluster.settings.run_dir / "tmp" / f"{request.node.name[:60]}-{uuid.uuid4().hex[:6]}"
    d.mkdir(parents=True)
    yield d
    import shutil
    shutil.rmtree(d, ignore_errors=True)
