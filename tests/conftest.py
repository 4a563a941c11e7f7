"""Test tiers. A test that uses the local control plane or a Prefect server, directly or through other
fixtures, is marked ``cluster`` here, so ``pytest -m "not cluster and not wheel"`` is the fast tier
(no cluster, no server; seconds). ``wheel`` (tests/test_wheel.py) builds and installs the package."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest_plugins = ["localkube.pytest_plugin"]

# Fixtures that start something slow: the control plane and the two kinds of Prefect server, and
# tests/runs' autouse kubestash_schemas, which reaches the cluster through request.getfixturevalue.
CLUSTER_FIXTURES = frozenset({"kube_cluster", "prefect_api", "prefect_server", "kubestash_schemas"})

_running: list[pytest.Item] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    _running.append(item)
    try:
        return (yield)
    finally:
        _running.pop()


@pytest.fixture(scope="session")
def _only_for_cluster_tests() -> None:
    """Refuse to start the control plane for a test not marked ``cluster``: one that reaches it only
    through ``request.getfixturevalue``, which the marking above cannot see. The fast tier must not
    start a cluster behind its back; add such a fixture to CLUSTER_FIXTURES."""
    for item in _running:
        if item.get_closest_marker("cluster") is None:
            pytest.fail(f"{item.nodeid} starts the cluster but is not marked 'cluster': "
                        "add the fixture that reaches it to CLUSTER_FIXTURES in tests/conftest.py")


@pytest.fixture(scope="session")
def kube_cluster(_only_for_cluster_tests, kube_cluster):  # type: ignore[no-untyped-def]
    """localkube's ``kube_cluster``, set up only after the check above."""
    return kube_cluster
