"""Kubernetes access shared by the steps: one client per run (or, in a process of many runs, one
shared by them: ``shared_connections``), errors that say what to do.

Transient failures (429, 5xx, connection resets, timeouts) are retried with backoff inside
``Kube.call``; permanent ones (403, 404, 409, 422) become a ``ClusterError`` at once, with a
code and a hint. Every request is counted (``Kube.requests``), which the benchmark reports.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import aiohttp
import aiohttp.helpers
from yarl import URL  # aiohttp's URL type (aiohttp depends on yarl)
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from stashflow.addons.errors import ClusterError, Conflict, Forbidden, Invalid, NotFound, Unavailable

log = logging.getLogger("stashflow.kube")
T = TypeVar("T")

TRANSIENT_STATUS = {0, 429, 500, 502, 503, 504}
RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0)  # ~16 s of patience, then api-unavailable


def api_message(exc: ApiException) -> str:
    """The API's own message (Status.message), not the whole HTTP dump."""
    try:
        body = json.loads(exc.body) if exc.body else {}
        return str(body.get("message") or exc.reason or exc)
    except (ValueError, TypeError):
        return str(exc.reason or exc)


def classify(exc: BaseException, what: str) -> ClusterError:
    """An API failure as a ``ClusterError`` whose code and hint say what to do next."""
    if isinstance(exc, ApiException):
        status, message = exc.status or 0, api_message(exc)
        if status == 401:
            return Forbidden(f"{what}: unauthorized: {message}", status=status,
                                hint="the kubeconfig's credentials are not accepted; refresh them")
        if status == 403:
            return Forbidden(f"{what}: forbidden: {message}", status=status,
                                hint="grant the verbs of `stashflow install --print` to the identity stashflow runs as")
        if status == 404:
            return NotFound(f"{what}: not found: {message}", status=status,
                                hint="check that the namespace exists and `stashflow install` has run")
        if status == 409:
            return Conflict(f"{what}: conflict: {message}", status=status)
        if status == 422:
            return Invalid(f"{what}: invalid: {message}", status=status,
                                hint="the API server named the field above; fix the plan or the Addon")
        if status in TRANSIENT_STATUS:
            return Unavailable(f"{what}: the API answered {status} repeatedly: {message}", status=status,
                               hint="check the cluster's health and try again")
        return ClusterError(f"{what}: {status} {message}", status=status, code="api-error")
    return Unavailable(f"{what}: no answer from the API: {exc.__class__.__name__}: {exc}", status=0,
                       hint="is the cluster reachable from here? (kubectl cluster-info)")


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, ApiException):
        return (exc.status or 0) in TRANSIENT_STATUS
    return isinstance(exc, (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError, OSError))


class Kube:
    """The typed APIs over one ``ApiClient``, with retries and a request counter."""

    def __init__(self, api: client.ApiClient, owned: bool = True) -> None:
        self.api = api
        self.owned = owned  # closed with the run; a pool's client is the pool's to close
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.extensions = client.ApiextensionsV1Api(api)
        self.rbac = client.RbacAuthorizationV1Api(api)
        self.requests = 0
        self.seen: dict[str, Any] = {}  # what this run read or wrote already (the CRD, its Snapshot): not read again

    async def call(self, what: str, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, retried while the failure is transient."""
        for attempt, delay in enumerate((*RETRY_DELAYS, None)):
            self.requests += 1
            try:
                return await fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - classified below
                if delay is None or not is_transient(exc):
                    raise classify(exc, what) from exc
                log.debug("%s: transient failure (%s), retry %d in %.1fs", what, exc, attempt + 1, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self.owned:
            await self.api.close()


async def load_configuration(kubeconfig: str | None = None, context: str | None = None) -> client.Configuration:
    """In-cluster config inside a Pod, else the kubeconfig (``$KUBECONFIG``, ``~/.kube/config``)."""
    configuration = client.Configuration()
    if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)
        return configuration
    try:
        await config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
    except (config.ConfigException, FileNotFoundError, OSError) as exc:
        raise Unavailable(f"cannot load a kubeconfig: {exc}",
                           hint="set KUBECONFIG or pass --kubeconfig; inside a Pod the service account is used") from None
    return configuration


async def configuration_from_block(block_name: str) -> client.Configuration:
    """A prefect-kubernetes ``KubernetesCredentials`` block's cluster config."""
    from prefect_kubernetes.credentials import KubernetesCredentials  # heavy: only when asked

    credentials = await KubernetesCredentials.load(block_name)
    configuration = client.Configuration()
    if credentials.cluster_config is None:
        return await load_configuration()
    await config.load_kube_config_from_dict(config_dict=credentials.cluster_config.config,
                                            context=credentials.cluster_config.context_name,
                                            client_configuration=configuration)
    return configuration


async def _new_api(kubeconfig: str | None, context: str | None, credentials_block: str | None,
                   pool_size: int | None = None) -> client.ApiClient:
    if credentials_block:
        configuration = await configuration_from_block(credentials_block)
    else:
        configuration = await load_configuration(kubeconfig, context)
    if pool_size is not None:
        configuration.connection_pool_maxsize = pool_size
    _proxy_from_environment(configuration)
    api = client.ApiClient(configuration)
    session = api.rest_client.pool_manager
    if isinstance(session, aiohttp.ClientSession) and hasattr(session, "_trust_env"):
        session._trust_env = False  # looked up once, above; kubernetes_asyncio offers no option for it
    return api


def _proxy_from_environment(configuration: client.Configuration) -> None:
    """The proxy the environment names for the API server (``HTTPS_PROXY``, ``NO_PROXY``...), looked up
    once per client. kubernetes_asyncio's aiohttp session trusts the environment, so aiohttp looked the
    proxy and ``~/.netrc`` up again for every request, each in a thread of the loop's executor: two
    thread hand-offs per request, an eighth of the worker's CPU at a fleet's minute (py-spy on
    ``bench/fanout.py``). A netrc entry never applies to a Kubernetes API: a token or a client
    certificate authenticates it, and aiohttp refuses a netrc login beside an Authorization header."""
    if configuration.proxy:
        return
    try:
        proxy, auth = aiohttp.helpers.get_env_proxy_for_url(URL(configuration.host or ""))
    except LookupError:  # none named, or NO_PROXY covers the host
        return
    configuration.proxy = str(proxy)
    if auth is not None:
        configuration.proxy_headers = {**(configuration.proxy_headers or {}), "Proxy-Authorization": auth.encode()}


class ClientPool:
    """``ApiClient``s shared by the runs of one process and event loop, one per connection (kubeconfig,
    context, credentials block). A run's ``connect()`` takes the current one instead of loading the
    kubeconfig, building a TLS context and shaking hands with the API server again (~30 ms of CPU per
    run, twice per session run). A client serves new runs for ``MAX_AGE`` seconds, so that credentials
    renewed on disk (a kubeconfig, a ServiceAccount token) are read again; it is closed when the last
    run using it has ended."""

    MAX_AGE = 300.0
    CONNECTIONS = 512  # per client: a restore following its Job's log holds one for the whole run

    def __init__(self) -> None:
        self._current: dict[tuple[Any, ...], tuple[client.ApiClient, float]] = {}
        self._users: dict[int, int] = {}
        self._retired: dict[int, client.ApiClient] = {}
        self._locks: dict[tuple[Any, ...], asyncio.Lock] = {}

    async def acquire(self, kubeconfig: str | None, context: str | None, credentials_block: str | None
                      ) -> client.ApiClient:
        key = (kubeconfig, context, credentials_block, os.environ.get("KUBECONFIG"))
        async with self._locks.setdefault(key, asyncio.Lock()):  # runs starting together build one client
            loop = asyncio.get_running_loop()
            found = self._current.get(key)
            if found is not None and loop.time() - found[1] > self.MAX_AGE:
                del self._current[key]
                await self._retire(found[0])
                found = None
            if found is None:
                found = (await _new_api(kubeconfig, context, credentials_block, self.CONNECTIONS), loop.time())
                self._current[key] = found
        self._users[id(found[0])] = self._users.get(id(found[0]), 0) + 1
        return found[0]

    async def release(self, api: client.ApiClient) -> None:
        self._users[id(api)] = self._users.get(id(api), 1) - 1
        if id(api) in self._retired and self._users[id(api)] <= 0:
            del self._retired[id(api)], self._users[id(api)]
            await api.close()

    async def _retire(self, api: client.ApiClient) -> None:
        """A client new runs no longer get: closed now if unused, else by its last run's release."""
        if self._users.get(id(api), 0) <= 0:
            self._users.pop(id(api), None)
            await api.close()
        else:
            self._retired[id(api)] = api

    async def close(self) -> None:
        for api in [*(v[0] for v in self._current.values()), *self._retired.values()]:
            await api.close()
        self._current, self._retired, self._users = {}, {}, {}


POOL: ContextVar[ClientPool | None] = ContextVar("stashflow_kube_pool", default=None)


@asynccontextmanager
async def shared_connections() -> AsyncIterator[ClientPool]:
    """Within this, ``connect()`` takes its clients from one ``ClientPool`` (the stashflow worker's runs)."""
    pool = ClientPool()
    token = POOL.set(pool)
    try:
        yield pool
    finally:
        POOL.reset(token)
        await pool.close()


@asynccontextmanager
async def connect(kubeconfig: str | None = None, context: str | None = None,
                  credentials_block: str | None = None) -> AsyncIterator[Kube]:
    """One client for a run, closed at the end; inside ``shared_connections``, the pool's."""
    pool = POOL.get()
    if pool is None:
        kube = Kube(await _new_api(kubeconfig, context, credentials_block))
    else:
        kube = Kube(await pool.acquire(kubeconfig, context, credentials_block), owned=False)
    token = CURRENT.set(kube)
    try:
        yield kube
    finally:
        CURRENT.reset(token)
        if pool is None:
            await kube.close()
        else:
            await pool.release(kube.api)


CURRENT: ContextVar[Kube | None] = ContextVar("stashflow_kube", default=None)


def current() -> Kube:
    """The run's client (set by ``connect``): tasks share it without passing it as a parameter."""
    kube = CURRENT.get()
    if kube is None:
        raise RuntimeError("no Kubernetes connection: steps run inside `async with connect(...)`")
    return kube


def to_dict(kube: Kube, obj: Any) -> dict[str, Any]:
    """A client model as the API's JSON (camelCase), for code that reads fields by name."""
    if isinstance(obj, dict):
        return obj
    return kube.api.sanitize_for_serialization(obj)
