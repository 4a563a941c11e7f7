"""Kubernetes objects and workloads backed up through the flows: the executor on this machine (as
the images install it) and a repository on the host, as for the databases."""

from __future__ import annotations

from ..databases.conftest import executor_on_host  # noqa: F401  (the session fixture, shared)
