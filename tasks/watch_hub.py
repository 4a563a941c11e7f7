"""One Job watch and one Pod watch per namespace, shared by every run waiting in this process.

A run used to open two watches of its own (its Job by name, its Pods by label) and list both
first: four requests and two long-lived connections per run. With many runs in one process (the
stashflow worker) that is hundreds of watches on the apiserver for the same few namespaces. Here
each namespace has one informer per kind, label-selected on ``app.kubernetes.io/managed-by=stashflow``
(every Job and Pod stashflow creates carries it): list once, then watch from the list's
resourceVersion; resume from the last resourceVersion (bookmarks keep it fresh) after the server
closes the watch or the connection drops; after 410 Gone list again and deliver the difference
(changed objects as MODIFIED, vanished ones as DELETED), so no subscriber misses an end. A
subscriber (``JobWaiter``) gets the cached Job and Pods of its Job at once, then every event for
them, in order, on the event loop. A namespace's watches stop ``LINGER_SECONDS`` after its last
subscriber left, so runs that follow one another reuse them.

One hub per event loop and cluster (its own ``ApiClient``, from the first run's configuration):
runs come and go with their own clients, the watches outlive them.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, overload

from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from stashflow.addons.errors import ClusterError
from stashflow.addons.render import MANAGED_BY

from .kube import Kube, classify, is_transient

log = logging.getLogger("stashflow.watch")

SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY}"
WATCH_CHUNK_SECONDS = 240  # the server closes a watch after this; it resumes from the last resourceVersion
LINGER_SECONDS = 60.0
JOB_NAME_LABELS = ("job-name", "batch.kubernetes.io/job-name")

Event = Callable[[str, dict[str, Any]], None]


@dataclass(eq=False)
class Subscription:
    """One waiting run's interest in one Job: its events, and the watch's failure if it fails for good."""

    namespace: str
    job: str
    on_job: Event
    on_pod: Event
    on_error: Callable[[BaseException], None]
    _watch: "NamespaceWatch | None" = field(default=None, repr=False)

    def close(self) -> None:
        if self._watch is not None:
            self._watch.unsubscribe(self)
            self._watch = None


def job_of_pod(pod: dict[str, Any]) -> str | None:
    labels = pod["metadata"].get("labels") or {}
    for key in JOB_NAME_LABELS:
        if labels.get(key):
            return labels[key]
    return None


class _Informer:
    """List-then-watch of one kind in one namespace, with a cache by name."""

    def __init__(self, hub: "WatchHub", namespace: str, what: str, list_fn: Callable[..., Any],
                 deliver: Callable[[str, dict[str, Any]], None]) -> None:
        self.hub, self.namespace, self.what, self.list_fn, self.deliver = hub, namespace, what, list_fn, deliver
        self.cache: dict[str, dict[str, Any]] = {}
        self.synced = asyncio.Event()

    def _apply(self, kind: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        if kind == "DELETED":
            self.cache.pop(name, None)
        else:
            self.cache[name] = obj
        self.deliver(kind, obj)

    async def run(self) -> None:
        resource_version: str | None = None
        backoff = 0.2
        while True:
            try:
                if resource_version is None:
                    self.hub.requests += 1
                    listing = await self.list_fn(self.namespace, label_selector=SELECTOR)
                    resource_version = listing.metadata.resource_version
                    seen = {}
                    for item in listing.items:
                        obj = self.hub.api.sanitize_for_serialization(item)
                        seen[obj["metadata"]["name"]] = obj
                    for name in [n for n in self.cache if n not in seen]:  # vanished while we were away
                        self._apply("DELETED", self.cache[name])
                    for name, obj in seen.items():
                        if self.cache.get(name, {}).get("metadata", {}).get("resourceVersion") != \
                                obj["metadata"].get("resourceVersion"):
                            self._apply("MODIFIED" if name in self.cache else "ADDED", obj)
                    self.synced.set()
                self.hub.requests += 1
                stream = watch.Watch()
                try:
                    async for event in stream.stream(self.list_fn, self.namespace, label_selector=SELECTOR,
                                                     resource_version=resource_version, allow_watch_bookmarks=True,
                                                     timeout_seconds=WATCH_CHUNK_SECONDS):
                        raw = event["raw_object"]
                        resource_version = raw["metadata"].get("resourceVersion") or resource_version
                        if event["type"] != "BOOKMARK":
                            self._apply(event["type"], raw)
                        backoff = 0.2
                finally:
                    await stream.close()
            except asyncio.CancelledError:
                raise
            except ApiException as exc:
                if exc.status == 410:  # our resourceVersion is too old: list again, deliver the difference
                    log.debug("%s: 410 Gone, listing again", self.what)
                    resource_version = None
                    continue
                if not is_transient(exc):
                    raise classify(exc, self.what) from exc
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except ClusterError:
                raise
            except Exception as exc:  # noqa: BLE001 - dropped connections, apiserver restarts
                if not is_transient(exc):
                    raise
                log.debug("%s: connection lost (%s), resuming", self.what, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)


class NamespaceWatch:
    """The Job and Pod informers of one namespace and the runs waiting on them."""

    def __init__(self, hub: "WatchHub", namespace: str) -> None:
        self.hub, self.namespace = hub, namespace
        self.subscribers: dict[str, set[Subscription]] = {}
        batch, core = client.BatchV1Api(hub.api), client.CoreV1Api(hub.api)
        self.jobs = _Informer(hub, namespace, f"watch Jobs in {namespace}", batch.list_namespaced_job, self._job)
        self.pods = _Informer(hub, namespace, f"watch Pods in {namespace}", core.list_namespaced_pod, self._pod)
        self.tasks = [asyncio.create_task(self._guard(i.run()), name=f"stashflow-{i.what}")
                      for i in (self.jobs, self.pods)]
        self._linger: asyncio.TimerHandle | None = None

    async def _guard(self, informer: Any) -> None:
        try:
            await informer
        except asyncio.CancelledError:  # stopped (idle), or the loop is ending: let go of the connection
            self.hub.drop(self)
            await self.hub.close_if_idle()
            raise
        except BaseException as exc:  # noqa: BLE001 - handed to every subscriber; the watch is rebuilt on demand
            self.hub.drop(self)
            for subs in list(self.subscribers.values()):
                for sub in list(subs):
                    sub.on_error(exc)

    def _job(self, kind: str, job: dict[str, Any]) -> None:
        for sub in list(self.subscribers.get(job["metadata"]["name"], ())):
            sub.on_job(kind, job)

    def _pod(self, kind: str, pod: dict[str, Any]) -> None:
        owner = job_of_pod(pod)
        if owner is not None:
            for sub in list(self.subscribers.get(owner, ())):
                sub.on_pod(kind, pod)

    def subscribe(self, sub: Subscription) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        sub._watch = self
        self.subscribers.setdefault(sub.job, set()).add(sub)
        # what is known already, at once (the rest arrives as events); nothing can interleave here
        if sub.job in self.jobs.cache:
            sub.on_job("ADDED", self.jobs.cache[sub.job])
        for pod in list(self.pods.cache.values()):
            if job_of_pod(pod) == sub.job:
                sub.on_pod("ADDED", pod)

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self.subscribers.get(sub.job)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self.subscribers[sub.job]
        if not self.subscribers and self._linger is None:
            self._linger = asyncio.get_running_loop().call_later(self.hub.linger, self._stop_if_idle)

    def _stop_if_idle(self) -> None:
        self._linger = None
        if not self.subscribers:
            self.stop()
            self.hub.drop(self)

    def stop(self) -> None:
        for task in self.tasks:
            task.cancel()

    def pods_of(self, job: str) -> list[dict[str, Any]]:
        return [p for p in self.pods.cache.values() if job_of_pod(p) == job]

    def jobs_matching(self, labels: dict[str, str]) -> list[dict[str, Any]] | None:
        """The cached Jobs carrying ``labels`` (None until the first list arrived)."""
        if not self.jobs.synced.is_set():
            return None
        return [j for j in self.jobs.cache.values()
                if all((j["metadata"].get("labels") or {}).get(k) == v for k, v in labels.items())]


class WatchHub:
    """The namespaces watched for one cluster on one event loop."""

    def __init__(self, configuration: client.Configuration, linger: float = LINGER_SECONDS) -> None:
        self.api = client.ApiClient(configuration)
        self.linger = linger
        self.namespaces: dict[str, NamespaceWatch] = {}
        self.requests = 0
        self.closed = False

    def watch(self, namespace: str) -> NamespaceWatch:
        found = self.namespaces.get(namespace)
        if found is None:
            found = self.namespaces[namespace] = NamespaceWatch(self, namespace)
        return found

    def subscribe(self, namespace: str, job: str, on_job: Event, on_pod: Event,
                  on_error: Callable[[BaseException], None]) -> Subscription:
        sub = Subscription(namespace, job, on_job, on_pod, on_error)
        self.watch(namespace).subscribe(sub)
        return sub

    def drop(self, ns_watch: NamespaceWatch) -> None:
        if self.namespaces.get(ns_watch.namespace) is ns_watch:
            del self.namespaces[ns_watch.namespace]
            ns_watch.stop()

    def known(self, namespace: str) -> NamespaceWatch | None:
        return self.namespaces.get(namespace)

    async def close_if_idle(self) -> None:
        if self.namespaces or self.closed:
            return
        self.closed = True
        hubs = _HUBS.get(asyncio.get_running_loop()) or {}
        for key in [k for k, v in hubs.items() if v is self]:
            del hubs[key]
        await self.api.close()


_HUBS: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, ...], WatchHub]]" = \
    weakref.WeakKeyDictionary()


def _cluster_key(configuration: client.Configuration) -> tuple[Any, ...]:
    return (configuration.host, configuration.cert_file, configuration.key_file, configuration.ssl_ca_cert,
            tuple(sorted((configuration.api_key or {}).items())))


@overload
def hub_for(kube: Kube) -> WatchHub: ...
@overload
def hub_for(kube: Kube, create: bool) -> WatchHub | None: ...


def hub_for(kube: Kube, create: bool = True) -> WatchHub | None:
    """The hub of the running loop for ``kube``'s cluster (made on first use unless ``create`` is False)."""
    loop = asyncio.get_running_loop()
    hubs = _HUBS.setdefault(loop, {})
    configuration = kube.api.configuration
    key = _cluster_key(configuration)
    hub = hubs.get(key)
    if hub is not None and hub.closed:
        hub = None
    if hub is None and not create:
        return None
    if hub is None:
        hub = hubs[key] = WatchHub(configuration)
    return hub
