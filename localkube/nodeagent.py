"""A node agent that plays the scheduler and the kubelet of one Node for the test cluster.

The test control plane has no scheduler and no kubelet, so nothing would ever happen to a Job's
Pods. This agent watches Pods, binds them to its Node, and writes the status a real kubelet would
write, so that the real job controller turns it into real Job conditions. What happens to each Pod
is scripted by the test (:meth:`NodeAgent.script`), by an annotation on the Pod
(:data:`OUTCOME_ANNOTATION`), or by the agent's default:

- scripted outcomes: :func:`succeed`, :func:`fail`, :func:`oom_killed`, :func:`image_pull_error`,
  :func:`unschedulable`, :func:`evicted`, :func:`never_ends`, :func:`config_error`;
- :func:`run`: run the container's command for real on this machine, in private namespaces with the
  Pod's volumes bind-mounted (``podrun.py``); its exit code, output and termination message become
  the Pod's status and log.

It serves container logs through the apiserver as a kubelet does: the Node's status names the
agent's HTTPS endpoint, and ``kubectl logs`` / ``read_namespaced_pod_log`` (also ``follow=true``)
reach it. It keeps its Node Ready by renewing its Lease, and it provisions hostPath
PersistentVolumes for claims of the ``localkube-hostpath`` StorageClass (the default class).

Use it in-process (``NodeAgent(...).start()`` runs it on its own thread and event loop; the pytest
fixtures do that) or as a process: ``python -m localkube.nodeagent --default run``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import ssl
import sys
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

import aiohttp
from aiohttp import web
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from localkube.expansion import expand
from localkube.images import program_for

log = logging.getLogger("localkube.nodeagent")

OUTCOME_ANNOTATION = "localkube.stashflow.dev/outcome"
"""Pod annotation (JSON of :meth:`Outcome.to_json`, or a bare kind such as ``"run"``) that scripts the
Pod itself; put it on a Job's ``spec.template.metadata.annotations``. It wins over scripts."""
STORAGE_CLASS = "localkube-hostpath"
PROVISIONER = "localkube.stashflow.dev/hostpath"
DEFAULT_NODE = "localkube-node"
KUBELET_VERSION = "v1.20.2"
PODRUN = Path(__file__).with_name("podrun.py")
TERMINATION_MESSAGE_LIMIT = 4096  # bytes, as the kubelet
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

Kind = Literal["succeed", "fail", "oom_killed", "image_pull_error", "unschedulable", "evicted",
               "never_ends", "config_error", "run"]
Pod = dict[str, Any]
"""A Pod as the API's JSON (camelCase keys)."""


# ----------------------------------------------------------------------------------- outcomes


@dataclass(frozen=True)
class Outcome:
    """What the agent does with a Pod. Build one with the functions below rather than directly."""

    kind: Kind
    exit_code: int = 0
    reason: str | None = None
    message: str = ""
    logs: tuple[str, ...] = ()
    after: float = 0.1
    """Seconds the container runs (after its logs) before it terminates."""
    log_interval: float = 0.0
    """Seconds between log lines while running: lets tests follow a live log."""

    def to_json(self) -> str:
        """The annotation form: ``{"kind": "fail", "exit_code": 3, ...}``."""
        d = {k: v for k, v in dataclasses.asdict(self).items() if v != getattr(_DEFAULTS, k) or k == "kind"}
        if "logs" in d:
            d["logs"] = list(d["logs"])
        return json.dumps(d)

    @classmethod
    def parse(cls, text: str) -> Outcome:
        """Read the annotation form: JSON of :meth:`to_json`, or just a kind (``run``, ``never_ends``)."""
        text = text.strip()
        if not text.startswith("{"):
            text = json.dumps({"kind": text})
        d = json.loads(text)
        if d.get("kind") not in _KINDS:
            raise ValueError(f"unknown outcome kind {d.get('kind')!r}; one of {sorted(_KINDS)}")
        if "logs" in d:
            d["logs"] = tuple(d["logs"])
        return cls(**d)


_DEFAULTS = Outcome("succeed")
_KINDS = set(Kind.__args__)  # type: ignore[attr-defined]


def succeed(*, message: str = "", logs: Iterable[str] = (), after: float = 0.1, log_interval: float = 0.0) -> Outcome:
    """The container exits 0 (reason Completed) with this termination message and log."""
    return Outcome("succeed", 0, "Completed", message, tuple(logs), after, log_interval)


def fail(exit_code: int = 1, *, reason: str = "Error", message: str = "", logs: Iterable[str] = (),
         after: float = 0.1, log_interval: float = 0.0) -> Outcome:
    """The container exits non-zero; the Pod ends Failed (restartPolicy Never) or crash-loops (OnFailure)."""
    if exit_code == 0:
        raise ValueError("fail() needs a non-zero exit code; use succeed()")
    return Outcome("fail", exit_code, reason, message, tuple(logs), after, log_interval)


def oom_killed(*, logs: Iterable[str] = (), after: float = 0.1) -> Outcome:
    """The container is killed by the OOM killer: exit code 137, reason OOMKilled."""
    return Outcome("oom_killed", 137, "OOMKilled", "", tuple(logs), after)


def image_pull_error(*, message: str = "", after: float = 0.2) -> Outcome:
    """The image cannot be pulled: Pending with ErrImagePull, then ImagePullBackOff after ``after`` s, forever."""
    return Outcome("image_pull_error", 0, "ErrImagePull", message, (), after)


def unschedulable(*, message: str = "0/1 nodes are available: 1 Insufficient memory.") -> Outcome:
    """No node fits: the Pod stays Pending, unbound, with PodScheduled False reason Unschedulable."""
    return Outcome("unschedulable", 0, "Unschedulable", message)


def evicted(*, message: str = "The node was low on resource: memory. ", logs: Iterable[str] = (),
            after: float = 0.1) -> Outcome:
    """The kubelet evicts the Pod for node pressure: phase Failed, reason Evicted (the Pod is not deleted)."""
    return Outcome("evicted", 137, "Evicted", message, tuple(logs), after)


def never_ends(*, logs: Iterable[str] = (), log_interval: float = 0.0) -> Outcome:
    """The container runs until the Pod is deleted (a deadline, a test, or the Job's deletion)."""
    return Outcome("never_ends", 0, None, "", tuple(logs), 0.0, log_interval)


def config_error(*, message: str = 'secret "missing" not found') -> Outcome:
    """The container cannot be created: Pending, waiting reason CreateContainerConfigError, forever."""
    return Outcome("config_error", 0, "CreateContainerConfigError", message)


def run() -> Outcome:
    """Run the container's command for real on this machine (see ``podrun.py``)."""
    return Outcome("run")


# ----------------------------------------------------------------------------------- matching

PodPredicate = Callable[[Pod], bool]


@dataclass(frozen=True)
class Match:
    """Which Pods a script applies to: all given criteria must hold."""

    job: str | None = None
    """The owning Job's name (ownerReferences, or the ``job-name`` label)."""
    namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    predicate: PodPredicate | None = None

    def __call__(self, pod: Pod) -> bool:
        meta = pod.get("metadata", {})
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        if self.job is not None and job_name(pod) != self.job:
            return False
        pod_labels = meta.get("labels") or {}
        if any(pod_labels.get(k) != v for k, v in self.labels.items()):
            return False
        return self.predicate is None or bool(self.predicate(pod))


MatchSpec = str | Mapping[str, str] | PodPredicate | Match
"""A Job name, a label selector (dict), a predicate on the Pod's JSON, or a :class:`Match`."""


def job_name(pod: Pod) -> str | None:
    """The name of the Job that owns this Pod, if any."""
    meta = pod.get("metadata", {})
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == "Job":
            return ref.get("name")
    return (meta.get("labels") or {}).get("job-name")


@dataclass
class Script:
    """A scripted outcome sequence: the n-th matching Pod gets ``outcomes[n]`` (the last one repeats)."""

    match: Match
    outcomes: tuple[Outcome, ...]
    pods: list[str] = field(default_factory=list)
    """``namespace/name`` of the Pods this script was applied to, in order."""

    def _take(self, pod: Pod) -> Outcome:
        n = len(self.pods)
        self.pods.append(f"{pod['metadata']['namespace']}/{pod['metadata']['name']}")
        return self.outcomes[min(n, len(self.outcomes) - 1)]


@dataclass
class PodRecord:
    """What the agent did with one Pod (for tests and for debugging)."""

    namespace: str
    name: str
    job: str | None
    outcome: Outcome
    source: Literal["annotation", "script", "default"]
    phase: str = "Pending"
    exit_codes: dict[str, int] = field(default_factory=dict)


# ----------------------------------------------------------------------------------- logs


class ContainerLog:
    """One container attempt's log lines (with their times), readable while it is still written."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, bytes]] = []
        self.done = False
        self._changed = asyncio.Event()

    def write(self, line: bytes) -> None:
        if not line.endswith(b"\n"):
            line += b"\n"
        self.lines.append((_now_nano(), line))
        self._poke()

    def close(self) -> None:
        self.done = True
        self._poke()

    def _poke(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self) -> None:
        await self._changed.wait()

    def text(self) -> str:
        return b"".join(line for _, line in self.lines).decode(errors="replace")


# ----------------------------------------------------------------------------------- helpers


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now_nano() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


def _parse_time(s: str) -> datetime:
    s = re.sub(r"\.(\d{6})\d*", r".\1", s.replace("Z", "+00:00"))
    return datetime.fromisoformat(s)


def _container_id() -> str:
    return "localkube://" + uuid.uuid4().hex + uuid.uuid4().hex


def _image_id(image: str) -> str:
    """A stable stand-in digest: nothing is pulled, the image decides nothing here."""
    return f"{image.split('@')[0]}@sha256:{hashlib.sha256(image.encode()).hexdigest()}"


class ConfigError(Exception):
    """A reference the kubelet could not resolve; the container waits (CreateContainerConfigError)."""


class MountError(Exception):
    """A volume the kubelet could not set up; the Pod stays ContainerCreating (FailedMount)."""


class Unschedulable(Exception):
    """The scheduler would not place this Pod (e.g. an unbound PVC, a node selector that does not match)."""


@dataclass
class _Tracked:
    """A Pod the agent is working on."""

    uid: str
    namespace: str
    name: str
    task: asyncio.Task[None] | None = None
    procs: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)
    specs: dict[str, Path] = field(default_factory=dict)  # container name → its podrun spec.json (for exec)
    bound: bool = False
    terminal: bool = False
    finishing: bool = False
    # this Pod's container logs: logs are found by (namespace, name, container), and a StatefulSet's new
    # Pod has its predecessor's name, so forgetting the old one must not take the new one's logs
    logs: list[ContainerLog] = field(default_factory=list)


# ----------------------------------------------------------------------------------- the agent


class NodeAgent:
    """Plays scheduler and kubelet for one Node. Thread-safe scripting; the work runs on its own loop."""

    def __init__(
        self,
        kubeconfig: str | os.PathLike[str],
        state_dir: str | os.PathLike[str],
        *,
        node_name: str = DEFAULT_NODE,
        default: Outcome | None = None,
        namespaces: Iterable[str] | None = None,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        client_ca: str | os.PathLike[str] | None = None,
        port: int = 0,
        provision: bool = True,
        pod_grace_cap: float = 10.0,
    ) -> None:
        """``state_dir`` holds per-Pod dirs (emptyDirs, Secret files) and provisioned volumes.
        ``namespaces`` limits the Pods it takes (default: all). Without ``tls_cert`` it makes a
        self-signed certificate (the apiserver then must not verify kubelets)."""
        self.kubeconfig = str(kubeconfig)
        self.state_dir = Path(state_dir)
        self.node_name = node_name
        self._initial_default = default or succeed()
        self.default: Outcome = self._initial_default
        self.namespaces = set(namespaces) if namespaces is not None else None
        self.tls = (tls_cert, tls_key, client_ca)
        self.port = port
        self.provision = provision
        self.pod_grace_cap = pod_grace_cap
        self.records: list[PodRecord] = []
        self._scripts: list[Script] = []
        self._lock = threading.Lock()
        self._pods: dict[str, _Tracked] = {}
        self._logs: dict[tuple[str, str, str], list[ContainerLog]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._api: client.ApiClient | None = None
        self.api_host = "127.0.0.1"
        self.api_port = 443

    # ------------------------------------------------------------------ scripting (any thread)

    def script(self, match: MatchSpec, *outcomes: Outcome, namespace: str | None = None) -> Script:
        """Say what happens to Pods that match. Later scripts win over earlier ones.

        ``agent.script("backup-job", fail(2), succeed())``: the Job's first Pod fails, later ones succeed.
        """
        if not outcomes:
            raise ValueError("script() needs at least one Outcome")
        if isinstance(match, Match):
            m = dataclasses.replace(match, namespace=namespace) if namespace else match
        elif isinstance(match, str):
            m = Match(job=match, namespace=namespace)
        elif isinstance(match, Mapping):
            m = Match(labels=dict(match), namespace=namespace)
        elif callable(match):
            m = Match(predicate=match, namespace=namespace)
        else:
            raise TypeError(f"cannot match Pods by {match!r}")
        s = Script(m, tuple(outcomes))
        with self._lock:
            self._scripts.append(s)
        return s

    def reset(self) -> None:
        """Forget scripts and records and restore the default outcome (between tests)."""
        with self._lock:
            self._scripts.clear()
            self.records.clear()
            self.default = self._initial_default

    def record(self, namespace: str, name: str) -> PodRecord | None:
        with self._lock:
            for r in reversed(self.records):
                if r.namespace == namespace and r.name == name:
                    return r
        return None

    def logs(self, namespace: str, pod: str, container: str) -> str:
        """The current attempt's log text, as the agent serves it."""
        attempts = self._logs.get((namespace, pod, container))
        return attempts[-1].text() if attempts else ""

    def running_pids(self, namespace: str | None = None) -> list[int]:
        """Pids of container processes still running (for leak checks), of one namespace's Pods if given:
        the agent is shared by a session's tests, and an earlier test's Pods may still be ending."""
        return [p.pid for t in list(self._pods.values()) if namespace in (None, t.namespace)
                for p in list(t.procs.values()) if p.returncode is None]

    def _choose(self, pod: Pod) -> tuple[Outcome, Literal["annotation", "script", "default"]]:
        ann = (pod["metadata"].get("annotations") or {}).get(OUTCOME_ANNOTATION)
        if ann:
            return Outcome.parse(ann), "annotation"
        with self._lock:
            for s in reversed(self._scripts):
                if s.match(pod):
                    return s._take(pod), "script"
            return self.default, "default"

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 60.0) -> NodeAgent:
        """Run the agent on a background thread; return once its Node is registered and it serves logs."""
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._thread_main, name=f"nodeagent-{self.node_name}", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"node agent not ready after {timeout}s")
        if self._error is not None:
            raise RuntimeError("node agent failed to start") from self._error
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the agent: container processes are killed by pid and waited for."""
        if self._thread is None or self._loop is None or self._stop is None:
            return
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("node agent did not stop")
        self._thread = None

    def __enter__(self) -> NodeAgent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _thread_main(self) -> None:
        try:
            asyncio.run(self.serve())
        except BaseException as e:  # surfaced by start()
            self._error = e
            log.exception("node agent crashed")
        finally:
            self._ready.set()

    async def serve(self, ready: Callable[[], None] | None = None) -> None:
        """Run until :meth:`stop` (or cancellation). Usable directly from a running loop."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.state_dir / "pods", ignore_errors=True)  # per-Pod dirs of an earlier run
        cfg = client.Configuration()
        await config.load_kube_config(config_file=self.kubeconfig, client_configuration=cfg)
        m = re.match(r"https://([^:/]+):?(\d+)?", cfg.host)
        if m:
            self.api_host, self.api_port = m.group(1), int(m.group(2) or 443)
        self._api = client.ApiClient(cfg)
        # The agent stands in for kubelets on other machines; on this one it shares the cores with what is
        # measured. Its API server is local: no proxy or netrc lookups (aiohttp makes two, each in an
        # executor thread, for every request of a session that trusts the environment).
        self._api.rest_client.pool_manager._trust_env = False
        runner = await self._start_log_server()
        tasks: list[asyncio.Task[None]] = []
        try:
            await self._register_node()
            if self.provision:
                await self._ensure_storage_class()
            tasks = [asyncio.create_task(self._heartbeat(), name="heartbeat"),
                     asyncio.create_task(self._watch_pods(), name="watch-pods")]
            if self.provision:
                tasks.append(asyncio.create_task(self._provisioner(), name="provisioner"))
            self._ready.set()
            if ready:
                ready()
            await self._stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            for tr in list(self._pods.values()):
                if tr.task and not tr.task.done():
                    tr.task.cancel()
            pending = [t for t in tasks] + [tr.task for tr in self._pods.values() if tr.task]
            await asyncio.gather(*pending, return_exceptions=True)
            await self._kill_all()
            for attempts in self._logs.values():  # every follower of a log returns
                for log in attempts:
                    log.close()
            shutil.rmtree(self.state_dir / "pods", ignore_errors=True)
            await runner.cleanup()
            await self._api.close()

    async def _kill_all(self) -> None:
        for tr in list(self._pods.values()):
            for proc in list(tr.procs.values()):
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()

    # ------------------------------------------------------------------ API helpers

    @property
    def core(self) -> client.CoreV1Api:
        assert self._api is not None
        return client.CoreV1Api(self._api)

    def _json(self, obj: Any) -> dict[str, Any]:
        assert self._api is not None
        return self._api.sanitize_for_serialization(obj)

    async def _retry(self, what: str, fn: Callable[[], Awaitable[Any]], attempts: int = 240) -> Any:
        """Retry through apiserver restarts (connection errors, 5xx, 429); 4xx other than 429 raise."""
        for i in range(attempts):
            try:
                return await fn()
            except ApiException as e:
                if e.status not in (429, 500, 502, 503, 504):
                    raise
                err: Exception = e
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
                err = e
            if i % 20 == 0:
                log.info("%s: retrying after %s", what, err)
            await asyncio.sleep(0.25)
        raise RuntimeError(f"{what}: gave up")

    async def _patch_status(self, pod: Pod, status: dict[str, Any]) -> bool:
        """PATCH pods/status (strategic merge, as the kubelet). False if the Pod is gone."""
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        try:
            await self._retry(f"status of {ns}/{name}", lambda: self.core.patch_namespaced_pod_status(
                name, ns, {"metadata": {"uid": pod["metadata"]["uid"]}, "status": status}, _request_timeout=30))
            return True
        except ApiException as e:
            if e.status in (404, 409):
                return False
            raise

    async def _event(self, pod: Pod, reason: str, message: str, type_: str = "Normal",
                     component: str = "kubelet") -> None:
        """Record an Event on the Pod, as the kubelet and scheduler do (best effort)."""
        meta = pod["metadata"]
        body = {
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": meta["namespace"]},
            "involvedObject": {"kind": "Pod", "apiVersion": "v1", "namespace": meta["namespace"],
                               "name": meta["name"], "uid": meta["uid"]},
            "reason": reason, "message": message, "type": type_,
            "source": {"component": component, **({"host": self.node_name} if component == "kubelet" else {})},
            "firstTimestamp": _now(), "lastTimestamp": _now(), "count": 1,
        }
        with contextlib.suppress(Exception):
            await self.core.create_namespaced_event(meta["namespace"], body, _request_timeout=10)

    # ------------------------------------------------------------------ node

    async def _register_node(self) -> None:
        now = _now()
        status = {
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],  # no Hostname: the apiserver dials it
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
            "capacity": {"cpu": "2", "memory": "8Gi", "pods": "110", "ephemeral-storage": "50Gi"},
            "allocatable": {"cpu": "2", "memory": "8Gi", "pods": "110", "ephemeral-storage": "50Gi"},
            "conditions": [
                *({"type": t, "status": "False", "reason": r, "lastHeartbeatTime": now, "lastTransitionTime": now}
                  for t, r in (("MemoryPressure", "KubeletHasSufficientMemory"),
                               ("DiskPressure", "KubeletHasNoDiskPressure"),
                               ("PIDPressure", "KubeletHasSufficientPID"))),
                {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "localkube node agent",
                 "lastHeartbeatTime": now, "lastTransitionTime": now},
            ],
            "nodeInfo": {"kubeletVersion": KUBELET_VERSION, "kubeProxyVersion": KUBELET_VERSION,
                         "containerRuntimeVersion": "localkube://0.1", "operatingSystem": "linux",
                         "architecture": "amd64", "osImage": "localkube (processes on this machine)",
                         "kernelVersion": os.uname().release, "machineID": "", "systemUUID": "", "bootID": ""},
        }
        body = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.node_name,
                             "labels": {"kubernetes.io/hostname": self.node_name, "kubernetes.io/os": "linux",
                                        "kubernetes.io/arch": "amd64"}},
                "spec": {}, "status": status}
        try:
            await self._retry("create node", lambda: self.core.create_node(body, _request_timeout=30))
        except ApiException as e:
            if e.status != 409:
                raise
            await self._retry("node status", lambda: self.core.patch_node_status(
                self.node_name, {"status": status}, _request_timeout=30))
        await self._renew_lease()

    async def _renew_lease(self) -> None:
        coord = client.CoordinationV1Api(self._api)
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        try:
            await coord.patch_namespaced_lease(self.node_name, "kube-node-lease", {"spec": {"renewTime": now}},
                                               _request_timeout=10)
        except ApiException as e:
            if e.status != 404:
                raise
            await coord.create_namespaced_lease("kube-node-lease", {
                "metadata": {"name": self.node_name},
                "spec": {"holderIdentity": self.node_name, "leaseDurationSeconds": 40, "renewTime": now}},
                _request_timeout=10)

    async def _heartbeat(self) -> None:
        """Lease every 10 s keeps the Node Ready; a Node already marked Unknown needs a status write."""
        while True:
            await asyncio.sleep(10)
            try:
                await self._renew_lease()
                node = self._json(await self.core.read_node(self.node_name, _request_timeout=10))
                ready = [c for c in node.get("status", {}).get("conditions", []) if c["type"] == "Ready"]
                if not ready or ready[0]["status"] != "True":
                    await self._register_node()
            except Exception as e:  # the apiserver may be restarting
                log.info("heartbeat failed: %s", e)

    # ------------------------------------------------------------------ pods: watch

    async def _watch_pods(self) -> None:
        rv: str | None = None
        while True:
            try:
                if rv is None:
                    lst = await self.core.list_pod_for_all_namespaces(_request_timeout=30)
                    rv = lst.metadata.resource_version
                    for p in lst.items:
                        self._on_pod("ADDED", self._json(p))
                w = watch.Watch()
                async with w:
                    async for ev in w.stream(self.core.list_pod_for_all_namespaces, resource_version=rv,
                                             timeout_seconds=240, allow_watch_bookmarks=True):
                        obj = ev["raw_object"]
                        rv = obj.get("metadata", {}).get("resourceVersion", rv)
                        if ev["type"] in ("ADDED", "MODIFIED", "DELETED"):
                            self._on_pod(ev["type"], obj)
            except asyncio.CancelledError:
                raise
            except ApiException as e:
                if e.status == 410:  # too old resource version: list again
                    rv = None
                    continue
                log.info("pod watch: %s", e)
                await asyncio.sleep(0.25)
            except Exception as e:  # connection refused while the apiserver restarts, etc.
                log.info("pod watch: %r", e)
                await asyncio.sleep(0.25)

    def _mine(self, pod: Pod) -> bool:
        spec, meta = pod.get("spec", {}), pod.get("metadata", {})
        if self.namespaces is not None and meta.get("namespace") not in self.namespaces:
            return False
        if spec.get("nodeName") not in (None, "", self.node_name):
            return False
        return spec.get("schedulerName", "default-scheduler") == "default-scheduler"

    def _on_pod(self, kind: str, pod: Pod) -> None:
        if not self._mine(pod):
            return
        uid = pod["metadata"]["uid"]
        tr = self._pods.get(uid)
        if kind == "DELETED":
            if tr is not None:
                if tr.task and not tr.task.done():
                    tr.task.cancel()
                asyncio.get_running_loop().call_later(1.0, self._forget, uid)
            return
        phase = pod.get("status", {}).get("phase")
        if pod["metadata"].get("deletionTimestamp"):
            if tr is None:
                tr = self._pods[uid] = _Tracked(uid, pod["metadata"]["namespace"], pod["metadata"]["name"])
            if not tr.finishing:
                tr.finishing = True
                asyncio.create_task(self._finish_deletion(tr, pod))
            return
        if tr is None and phase not in ("Succeeded", "Failed"):
            tr = self._pods[uid] = _Tracked(uid, pod["metadata"]["namespace"], pod["metadata"]["name"])
            tr.task = asyncio.create_task(self._handle(tr, pod), name=f"pod {tr.namespace}/{tr.name}")

    def _forget(self, uid: str) -> None:
        tr = self._pods.pop(uid, None)
        if tr is None:
            return
        for key in [k for k in self._logs if k[0] == tr.namespace and k[1] == tr.name]:
            self._logs[key] = [cl for cl in self._logs[key] if not any(cl is mine for mine in tr.logs)]
            if not self._logs[key]:
                del self._logs[key]
        shutil.rmtree(self.state_dir / "pods" / uid, ignore_errors=True)

    async def _finish_deletion(self, tr: _Tracked, pod: Pod) -> None:
        """A graceful delete: stop the containers, report them terminated, then delete for good."""
        grace = min(float(pod["metadata"].get("deletionGracePeriodSeconds") or 0), self.pod_grace_cap)
        had_procs = any(p.returncode is None for p in tr.procs.values())
        killed = await self._stop_containers(tr, grace)
        if not had_procs and grace > 0:
            # A kubelet notices the deletion, stops the containers and reports them about a second later
            # (its PLEG relists every 1 s). Answering within milliseconds would race the controller that
            # deleted the Pod (e.g. the job controller at a deadline) in a way real clusters do not.
            await asyncio.sleep(min(grace, 1.0))
        if tr.task and not tr.task.done():
            tr.task.cancel()
            with contextlib.suppress(BaseException):
                await tr.task
        phase = pod.get("status", {}).get("phase")
        if tr.bound and phase not in ("Succeeded", "Failed"):
            statuses = []
            for c in pod["spec"]["containers"]:
                code = killed.get(c["name"], 137)
                statuses.append(self._cstatus(pod, c, {"terminated": {
                    "exitCode": code, "reason": "Error", "startedAt": pod.get("status", {}).get("startTime") or _now(),
                    "finishedAt": _now(), "containerID": _container_id()}}))
            await self._patch_status(pod, {"phase": "Failed", "containerStatuses": statuses,
                                           "conditions": self._conditions(pod, ready=False)})
        if pod["spec"].get("nodeName") == self.node_name or tr.bound:
            with contextlib.suppress(ApiException):
                await self._retry("delete pod", lambda: self.core.delete_namespaced_pod(
                    tr.name, tr.namespace, grace_period_seconds=0,
                    body={"preconditions": {"uid": tr.uid}, "gracePeriodSeconds": 0}, _request_timeout=30))
        for key, attempts in self._logs.items():
            if key[0] == tr.namespace and key[1] == tr.name and any(attempts[-1] is mine for mine in tr.logs):
                attempts[-1].close()

    async def _stop_containers(self, tr: _Tracked, grace: float) -> dict[str, int]:
        """SIGTERM each container's init process, SIGKILL the pod sandbox after ``grace`` s."""
        codes: dict[str, int] = {}
        procs = {n: p for n, p in tr.procs.items() if p.returncode is None}
        for p in procs.values():
            for child in _children(p.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGTERM)
        for name, p in procs.items():
            try:
                rc = await asyncio.wait_for(p.wait(), grace) if grace > 0 else None
            except asyncio.TimeoutError:
                rc = None
            if rc is None:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()  # unshare --kill-child takes the whole PID namespace with it
                rc = await p.wait()
            codes[name] = _exit_code(rc)
        return codes

    # ------------------------------------------------------------------ pods: one pod's life

    def _record(self, pod: Pod, outcome: Outcome, source: Literal["annotation", "script", "default"]) -> PodRecord:
        r = PodRecord(pod["metadata"]["namespace"], pod["metadata"]["name"], job_name(pod), outcome, source)
        with self._lock:
            self.records.append(r)
        return r

    async def _handle(self, tr: _Tracked, pod: Pod) -> None:
        try:
            outcome, source = self._choose(pod)
        except ValueError as e:
            outcome, source = config_error(message=f"bad {OUTCOME_ANNOTATION} annotation: {e}"), "annotation"
        rec = self._record(pod, outcome, source)
        log.info("pod %s/%s (job %s): %s from %s", tr.namespace, tr.name, rec.job, outcome.kind, source)
        try:
            await self._schedule(tr, pod, outcome)
            pod["spec"]["nodeName"] = self.node_name
            if outcome.kind == "run":
                await self._run_pod(tr, pod, rec)
            else:
                await self._script_pod(tr, pod, outcome, rec)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("pod %s/%s: agent error", tr.namespace, tr.name)

    async def _schedule(self, tr: _Tracked, pod: Pod, outcome: Outcome) -> None:
        """Act as the scheduler: bind to this Node, or report why not (then wait, as the Pod would)."""
        if pod["spec"].get("nodeName") == self.node_name:
            tr.bound = True
            return
        while True:
            try:
                if outcome.kind == "unschedulable":
                    raise Unschedulable(outcome.message)
                selector = pod["spec"].get("nodeSelector") or {}
                labels = {"kubernetes.io/hostname": self.node_name, "kubernetes.io/os": "linux",
                          "kubernetes.io/arch": "amd64"}
                if any(labels.get(k) != v for k, v in selector.items()):
                    raise Unschedulable("0/1 nodes are available: 1 node(s) didn't match node selector.")
                if outcome.kind == "run":
                    for v in pod["spec"].get("volumes") or []:
                        if "persistentVolumeClaim" in v:
                            await self._pvc_host_path(tr.namespace, v["persistentVolumeClaim"]["claimName"])
                break
            except Unschedulable as e:
                if not await self._patch_status(pod, {"phase": "Pending", "conditions": [{
                        "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": str(e),
                        "lastProbeTime": None, "lastTransitionTime": _now()}]}):
                    raise asyncio.CancelledError from None
                await self._event(pod, "FailedScheduling", str(e), "Warning", "default-scheduler")
                if outcome.kind == "unschedulable":
                    await asyncio.Event().wait()  # until deleted
                await asyncio.sleep(1.0)  # e.g. a PVC not bound yet: try again, as the scheduler would
        binding = {"apiVersion": "v1", "kind": "Binding",
                   "metadata": {"name": tr.name, "uid": tr.uid},
                   "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name}}
        try:
            await self._retry("bind", lambda: self.core.create_namespaced_pod_binding(
                tr.name, tr.namespace, binding, _preload_content=False, _request_timeout=30))
        except ApiException as e:
            if e.status in (404, 409):  # gone, or bound by someone else
                raise asyncio.CancelledError from None
            raise
        tr.bound = True
        await self._event(pod, "Scheduled", f"Successfully assigned {tr.namespace}/{tr.name} to {self.node_name}",
                          component="default-scheduler")

    def _conditions(self, pod: Pod, *, ready: bool, initialized: bool = True) -> list[dict[str, Any]]:
        now = _now()
        reason = {} if ready else {"reason": "ContainersNotReady",
                                   "message": "containers with unready status: "
                                              f"[{' '.join(c['name'] for c in pod['spec']['containers'])}]"}
        return [
            {"type": "Initialized", "status": "True" if initialized else "False", "lastProbeTime": None,
             "lastTransitionTime": now},
            {"type": "Ready", "status": "True" if ready else "False", "lastProbeTime": None,
             "lastTransitionTime": now, **reason},
            {"type": "ContainersReady", "status": "True" if ready else "False", "lastProbeTime": None,
             "lastTransitionTime": now, **reason},
            {"type": "PodScheduled", "status": "True", "lastProbeTime": None, "lastTransitionTime": now},
        ]

    def _cstatus(self, pod: Pod, c: dict[str, Any], state: dict[str, Any], *, restarts: int = 0,
                 last: dict[str, Any] | None = None) -> dict[str, Any]:
        running = "running" in state
        s: dict[str, Any] = {"name": c["name"], "image": c.get("image", ""), "imageID": "",
                             "ready": running, "restartCount": restarts, "started": running,
                             "state": state, "lastState": last or {}}
        if "waiting" not in state or last:
            s["imageID"] = _image_id(c.get("image", ""))
        term = state.get("terminated") or state.get("running")
        if term is not None:
            cid = term.get("containerID") or _container_id()
            if "running" in state:
                term.pop("containerID", None)
            else:
                term["containerID"] = cid
            s["containerID"] = cid
        return s

    def _base_status(self, pod: Pod) -> dict[str, Any]:
        return {"hostIP": "127.0.0.1", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
                "startTime": pod.get("status", {}).get("startTime") or _now()}

    def _init_statuses(self, pod: Pod) -> list[dict[str, Any]]:
        now = _now()
        return [self._cstatus(pod, c, {"terminated": {"exitCode": 0, "reason": "Completed",
                                                      "startedAt": now, "finishedAt": now}})
                for c in pod["spec"].get("initContainers") or []]

    def _new_log(self, tr: _Tracked, container: str) -> ContainerLog:
        cl = ContainerLog()
        self._logs.setdefault((tr.namespace, tr.name, container), []).append(cl)
        tr.logs.append(cl)
        return cl

    async def _script_pod(self, tr: _Tracked, pod: Pod, o: Outcome, rec: PodRecord) -> None:
        containers = pod["spec"]["containers"]
        base = self._base_status(pod)
        pod.setdefault("status", {})["startTime"] = base["startTime"]
        if o.kind in ("image_pull_error", "config_error"):
            image = containers[0].get("image", "")
            if o.kind == "image_pull_error":
                msg = o.message or (f'rpc error: code = NotFound desc = failed to pull and unpack image "{image}": '
                                    f'failed to resolve reference "{image}": {image}: not found')
                steps = [("ErrImagePull", msg), ("ImagePullBackOff", f'Back-off pulling image "{image}"')]
                events = [("Failed", f"Failed to pull image \"{image}\": {msg}"), ("BackOff", steps[1][1])]
            else:
                steps = [("CreateContainerConfigError", o.message)]
                events = [("Failed", f"Error: {o.message}")]
            for i, ((reason, msg), (ev_reason, ev_msg)) in enumerate(zip(steps, events)):
                if i:
                    await asyncio.sleep(o.after)
                await self._patch_status(pod, {**base, "phase": "Pending",
                                               "conditions": self._conditions(pod, ready=False),
                                               "initContainerStatuses": self._init_statuses(pod),
                                               "containerStatuses": [self._cstatus(pod, c, {"waiting": {
                                                   "reason": reason, "message": msg}}) for c in containers]})
                await self._event(pod, ev_reason, ev_msg, "Warning")
            rec.phase = "Pending"
            await asyncio.Event().wait()  # a real kubelet keeps trying, forever
        restart_policy = pod["spec"].get("restartPolicy", "Always")
        restarts = 0
        last: dict[str, Any] | None = None
        while True:
            started = _now()
            cids = {c["name"]: _container_id() for c in containers}
            logs = {c["name"]: self._new_log(tr, c["name"]) for c in containers}
            await self._patch_status(pod, {**base, "phase": "Running",
                                           "conditions": self._conditions(pod, ready=True),
                                           "initContainerStatuses": self._init_statuses(pod),
                                           "containerStatuses": [self._cstatus(
                                               pod, c, {"running": {"startedAt": started, "containerID": cids[c["name"]]}},
                                               restarts=restarts, last=last) for c in containers]})
            rec.phase = "Running"
            await self._event(pod, "Started", f"Started container {containers[0]['name']}")
            for i, line in enumerate(o.logs):
                if i and o.log_interval:
                    await asyncio.sleep(o.log_interval)
                for cl in logs.values():
                    cl.write(line.encode())
            if o.kind == "never_ends":
                await asyncio.Event().wait()  # until the Pod is deleted
            await asyncio.sleep(o.after)
            for cl in logs.values():
                cl.close()
            code = o.exit_code
            term = {"exitCode": code, "reason": o.reason or ("Completed" if code == 0 else "Error"),
                    "startedAt": started, "finishedAt": _now()}
            if o.kind == "evicted":
                term["reason"] = "Error"
            if o.message and o.kind != "evicted":
                term["message"] = o.message
            elif code != 0 and not o.message:
                fallback = self._fallback_message(containers[0], logs[containers[0]["name"]])
                if fallback:
                    term["message"] = fallback
            rec.exit_codes = {c["name"]: code for c in containers}
            if code != 0 and restart_policy in ("OnFailure", "Always") and o.kind != "evicted":
                # The kubelet restarts the container in place; the job controller counts restartCount.
                restarts += 1
                last = {"terminated": dict(term)}
                await self._patch_status(pod, {**base, "phase": "Running",
                                               "conditions": self._conditions(pod, ready=False),
                                               "containerStatuses": [self._cstatus(pod, c, {"waiting": {
                                                   "reason": "CrashLoopBackOff",
                                                   "message": f"back-off restarting failed container {c['name']}"}},
                                                   restarts=restarts, last=dict(last)) for c in containers]})
                await self._event(pod, "BackOff", "Back-off restarting failed container", "Warning")
                await asyncio.sleep(max(o.after, 0.5))
                continue
            phase = "Succeeded" if code == 0 else "Failed"
            status: dict[str, Any] = {**base, "phase": phase, "conditions": self._conditions(pod, ready=False),
                                      "initContainerStatuses": self._init_statuses(pod),
                                      "containerStatuses": [self._cstatus(pod, c, {"terminated": {
                                          **term, "containerID": cids[c["name"]]}}, restarts=restarts, last=last)
                                          for c in containers]}
            if o.kind == "evicted":
                status.update(phase="Failed", reason="Evicted", message=o.message)
                await self._event(pod, "Evicted", o.message, "Warning")
            await self._patch_status(pod, status)
            rec.phase = status["phase"]
            tr.terminal = True
            return

    @staticmethod
    def _fallback_message(c: dict[str, Any], cl: ContainerLog) -> str:
        if c.get("terminationMessagePolicy") != "FallbackToLogsOnError":
            return ""
        tail = b"".join(line for _, line in cl.lines[-80:])
        return tail[-2048:].decode(errors="replace")

    # ------------------------------------------------------------------ pods: running for real

    async def _run_pod(self, tr: _Tracked, pod: Pod, rec: PodRecord) -> None:
        spec = pod["spec"]
        pod_dir = self.state_dir / "pods" / tr.uid
        base = self._base_status(pod)
        pod.setdefault("status", {})["startTime"] = base["startTime"]
        containers = spec["containers"]
        # Volumes (FailedMount: retried, the Pod stays ContainerCreating) and env (CreateContainerConfigError).
        while True:
            try:
                volumes = await self._setup_volumes(pod, pod_dir)
                envs = {c["name"]: await self._container_env(pod, c)
                        for c in (spec.get("initContainers") or []) + containers}
                break
            except (MountError, ConfigError) as e:
                mount_err = isinstance(e, MountError)
                reason = "ContainerCreating" if mount_err else "CreateContainerConfigError"
                await self._patch_status(pod, {**base, "phase": "Pending",
                                               "conditions": self._conditions(pod, ready=False),
                                               "containerStatuses": [self._cstatus(pod, c, {"waiting": {
                                                   "reason": reason, **({} if mount_err else {"message": str(e)})}})
                                                   for c in containers]})
                await self._event(pod, "FailedMount" if mount_err else "Failed",
                                  str(e) if mount_err else f"Error: {e}", "Warning")
                rec.phase = "Pending"
                await asyncio.sleep(1.0)
        init_statuses: list[dict[str, Any]] = []
        for c in spec.get("initContainers") or []:
            started = _now()
            code, msg, cid = await self._run_container(tr, pod, c, volumes, envs[c["name"]], pod_dir)
            term = {"exitCode": code, "reason": _reason(code, msg), "startedAt": started, "finishedAt": _now(),
                    "containerID": cid, **({"message": msg} if msg else {})}
            init_statuses.append(self._cstatus(pod, c, {"terminated": term}))
            if code != 0:
                await self._patch_status(pod, {**base, "phase": "Failed",
                                               "conditions": self._conditions(pod, ready=False, initialized=False),
                                               "initContainerStatuses": init_statuses,
                                               "containerStatuses": [self._cstatus(pod, cc, {"waiting": {
                                                   "reason": "PodInitializing"}}) for cc in containers]})
                rec.phase = "Failed"
                tr.terminal = True
                return
        started = _now()
        cids = {c["name"]: _container_id() for c in containers}
        running = [self._cstatus(pod, c, {"running": {"startedAt": started, "containerID": cids[c["name"]]}})
                   for c in containers]
        results = await asyncio.gather(*(self._run_container(
            tr, pod, c, volumes, envs[c["name"]], pod_dir, cid=cids[c["name"]],
            on_started=(lambda: self._patch_status(pod, {**base, "phase": "Running",
                                                          "conditions": self._conditions(pod, ready=True),
                                                          "initContainerStatuses": init_statuses,
                                                          "containerStatuses": running})) if i == 0 else None)
            for i, c in enumerate(containers)))
        statuses = []
        for c, (code, msg, cid) in zip(containers, results):
            statuses.append(self._cstatus(pod, c, {"terminated": {
                "exitCode": code, "reason": _reason(code, msg), "startedAt": started, "finishedAt": _now(),
                "containerID": cid, **({"message": msg} if msg else {})}}))
            rec.exit_codes[c["name"]] = code
        phase = "Succeeded" if all(code == 0 for code, _, _ in results) else "Failed"
        await self._patch_status(pod, {**base, "phase": phase, "conditions": self._conditions(pod, ready=False),
                                       "initContainerStatuses": init_statuses, "containerStatuses": statuses})
        rec.phase = phase
        tr.terminal = True
        # emptyDirs and Secret files go with the Pod; provisioned volumes stay.
        shutil.rmtree(pod_dir / "volumes", ignore_errors=True)

    async def _run_container(self, tr: _Tracked, pod: Pod, c: dict[str, Any], volumes: dict[str, Path],
                             env: dict[str, str], pod_dir: Path, *, cid: str | None = None,
                             on_started: Callable[[], Awaitable[Any]] | None = None) -> tuple[int, str, str]:
        """Run one container to its end; return (exit code, termination message, container id)."""
        cid = cid or _container_id()
        cdir = pod_dir / "containers" / f"{c['name']}-{uuid.uuid4().hex[:8]}"
        cdir.mkdir(parents=True)
        tlog = cdir / "termination-log"
        tlog.touch()
        tlog.chmod(0o666)
        mounts = []
        for vm in c.get("volumeMounts") or []:
            src = volumes.get(vm["name"])
            if src is None:
                continue
            sub = vm.get("subPath") or (expand(vm["subPathExpr"], env) if vm.get("subPathExpr") else "")
            if sub:  # subPath is taken as written; only subPathExpr is expanded
                src = src / sub
                if not src.exists():
                    src.mkdir(parents=True, mode=0o777)
            mounts.append({"source": str(src), "target": vm["mountPath"], "read_only": bool(vm.get("readOnly")),
                           "file": src.is_file()})
        sc = {**(pod["spec"].get("securityContext") or {}), **(c.get("securityContext") or {})}
        psc = pod["spec"].get("securityContext") or {}
        groups = list(psc.get("supplementalGroups") or []) + ([psc["fsGroup"]] if psc.get("fsGroup") is not None else [])
        # No command: the image's entrypoint would run the args; localkube/images.py says which program.
        entry = [] if c.get("command") else (program_for(c.get("image")) or [])
        argv = entry + [expand(a, env) for a in (c.get("command") or []) + (c.get("args") or [])]
        run_spec = {
            "state_dir": str(cdir), "hostname": tr.name, "mounts": mounts,
            "termination_log": {"source": str(tlog),
                                "target": c.get("terminationMessagePath") or "/dev/termination-log"},
            "working_dir": c.get("workingDir") or None, "argv": argv, "env": env,
            "uid": sc.get("runAsUser"), "gid": sc.get("runAsGroup"), "groups": groups,
        }
        (cdir / "spec.json").write_text(json.dumps(run_spec))
        cl = self._new_log(tr, c["name"])
        proc = await asyncio.create_subprocess_exec(
            "unshare", "--mount", "--uts", "--pid", "--fork", "--kill-child", "--propagation", "private",
            sys.executable, "-I", str(PODRUN), str(cdir / "spec.json"),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True)
        tr.procs[c["name"]] = proc
        tr.specs[c["name"]] = cdir / "spec.json"
        try:
            if on_started:
                await on_started()
            assert proc.stdout is not None
            while True:
                line = await proc.stdout.readline()
                if not line:
                    break
                cl.write(line)
            rc = await proc.wait()
        except asyncio.CancelledError:
            if proc.returncode is None:  # the agent is stopping: nothing may outlive it
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await asyncio.shield(proc.wait())
            raise
        finally:
            cl.close()
        code = _exit_code(rc)
        start_error = (cdir / "start-error").read_text() if (cdir / "start-error").exists() else ""
        if start_error:
            return 128, f"failed to start container {c['name']!r}: {start_error}", cid
        msg = tlog.read_bytes()[:TERMINATION_MESSAGE_LIMIT].decode(errors="replace")
        if not msg and code != 0:
            msg = self._fallback_message(c, cl)
        return code, msg, cid

    async def _setup_volumes(self, pod: Pod, pod_dir: Path) -> dict[str, Path]:
        """Make each volume a host directory (or file), as the kubelet's volume plugins do."""
        ns = pod["metadata"]["namespace"]
        out: dict[str, Path] = {}
        vroot = pod_dir / "volumes"
        for v in pod["spec"].get("volumes") or []:
            name = v["name"]
            d = vroot / name
            if "emptyDir" in v:
                d.mkdir(parents=True, exist_ok=True)
                d.chmod(0o777)
                out[name] = d
            elif "hostPath" in v:
                p = Path(v["hostPath"]["path"])
                t = v["hostPath"].get("type") or ""
                if t == "DirectoryOrCreate":
                    p.mkdir(parents=True, exist_ok=True)
                elif t == "FileOrCreate" and not p.exists():
                    p.parent.mkdir(parents=True, exist_ok=True)
                    p.touch()
                elif not p.exists():
                    raise MountError(f'MountVolume.SetUp failed for volume "{name}" : hostPath {p} does not exist')
                out[name] = p
            elif "persistentVolumeClaim" in v:
                out[name] = await self._pvc_host_path(ns, v["persistentVolumeClaim"]["claimName"])
            elif "secret" in v or "configMap" in v:
                src = v.get("secret") or v.get("configMap")
                files = await self._key_files(ns, "secret" if "secret" in v else "configMap", src, name)
                self._write_files(d, files, src.get("defaultMode", 0o644))
                out[name] = d
            elif "projected" in v:
                files: dict[str, tuple[bytes, int | None]] = {}
                for s in v["projected"].get("sources") or []:
                    if "secret" in s or "configMap" in s:
                        kind = "secret" if "secret" in s else "configMap"
                        files.update(await self._key_files(ns, kind, s[kind], name))
                    elif "downwardAPI" in s:
                        files.update(self._downward_files(pod, s["downwardAPI"]))
                    elif "serviceAccountToken" in s:
                        files[s["serviceAccountToken"]["path"]] = (b"", None)
                self._write_files(d, files, v["projected"].get("defaultMode", 0o644))
                out[name] = d
            elif "downwardAPI" in v:
                self._write_files(d, self._downward_files(pod, v["downwardAPI"]), v["downwardAPI"].get("defaultMode", 0o644))
                out[name] = d
            else:
                kind = next((k for k in v if k != "name"), "?")
                raise MountError(f'MountVolume.SetUp failed for volume "{name}" : '
                                 f"localkube node agent does not support {kind} volumes")
        return out

    async def _key_files(self, ns: str, kind: str, src: dict[str, Any], volume: str) -> dict[str, tuple[bytes, int | None]]:
        obj_name = src.get("secretName") or src.get("name")
        try:
            if kind == "secret":
                obj = self._json(await self.core.read_namespaced_secret(obj_name, ns, _request_timeout=30))
                data = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
            else:
                obj = self._json(await self.core.read_namespaced_config_map(obj_name, ns, _request_timeout=30))
                data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
                data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        except ApiException as e:
            if e.status == 404:
                if src.get("optional"):
                    return {}
                raise MountError(f'MountVolume.SetUp failed for volume "{volume}" : '
                                 f'{kind.lower() if kind == "secret" else "configmap"} "{obj_name}" not found') from None
            raise
        items = src.get("items")
        if not items:
            return {k: (v, None) for k, v in data.items()}
        out = {}
        for it in items:
            if it["key"] not in data:
                if src.get("optional"):
                    continue
                raise MountError(f'MountVolume.SetUp failed for volume "{volume}" : '
                                 f'key "{it["key"]}" not found in {kind} "{obj_name}"')
            out[it["path"]] = (data[it["key"]], it.get("mode"))
        return out

    @staticmethod
    def _downward_files(pod: Pod, src: dict[str, Any]) -> dict[str, tuple[bytes, int | None]]:
        out = {}
        for it in src.get("items") or []:
            path = (it.get("fieldRef") or {}).get("fieldPath", "")
            value = _field_ref(pod, path) if path else ""
            out[it["path"]] = (value.encode(), it.get("mode"))
        return out

    @staticmethod
    def _write_files(d: Path, files: Mapping[str, tuple[bytes, int | None]], default_mode: int) -> None:
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o755)
        for rel, (data, mode) in files.items():
            p = d / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
            p.chmod(mode if mode is not None else default_mode)

    async def _pvc_host_path(self, ns: str, claim: str) -> Path:
        """The host dir behind a bound PVC (its PV's hostPath or local path); Unschedulable until bound."""
        try:
            pvc = self._json(await self.core.read_namespaced_persistent_volume_claim(claim, ns, _request_timeout=30))
        except ApiException as e:
            if e.status == 404:
                raise Unschedulable(f'0/1 nodes are available: persistentvolumeclaim "{claim}" not found.') from None
            raise
        if pvc.get("metadata", {}).get("deletionTimestamp"):
            raise Unschedulable(f'0/1 nodes are available: persistentvolumeclaim "{claim}" is being deleted.')
        pv_name = pvc.get("spec", {}).get("volumeName")
        if pvc.get("status", {}).get("phase") != "Bound" or not pv_name:
            raise Unschedulable("0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims.")
        pv = self._json(await self.core.read_persistent_volume(pv_name, _request_timeout=30))
        path = (pv["spec"].get("hostPath") or pv["spec"].get("local") or {}).get("path")
        if not path:
            raise MountError(f"PersistentVolume {pv_name} has no hostPath or local path: this node cannot mount it")
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        return p

    async def _container_env(self, pod: Pod, c: dict[str, Any]) -> dict[str, str]:
        """The container's environment, references resolved as the kubelet does (missing ones: ConfigError)."""
        ns = pod["metadata"]["namespace"]
        cache: dict[tuple[str, str], dict[str, str] | None] = {}

        async def load(kind: str, name: str) -> dict[str, str] | None:
            if (kind, name) not in cache:
                try:
                    if kind == "secret":
                        obj = self._json(await self.core.read_namespaced_secret(name, ns, _request_timeout=30))
                        cache[(kind, name)] = {k: base64.b64decode(v).decode(errors="replace")
                                               for k, v in (obj.get("data") or {}).items()}
                    else:
                        obj = self._json(await self.core.read_namespaced_config_map(name, ns, _request_timeout=30))
                        cache[(kind, name)] = dict(obj.get("data") or {})
                except ApiException as e:
                    if e.status != 404:
                        raise
                    cache[(kind, name)] = None
            return cache[(kind, name)]

        env: dict[str, str] = {"PATH": DEFAULT_PATH, "HOSTNAME": pod["metadata"]["name"],
                               "KUBERNETES_SERVICE_HOST": self.api_host,
                               "KUBERNETES_SERVICE_PORT": str(self.api_port),
                               "KUBERNETES_SERVICE_PORT_HTTPS": str(self.api_port)}
        uid = {**(pod["spec"].get("securityContext") or {}), **(c.get("securityContext") or {})}.get("runAsUser")
        env["HOME"] = "/root" if uid in (None, 0) else "/"
        for ef in c.get("envFrom") or []:
            kind = "secret" if "secretRef" in ef else "configMap"
            ref = ef.get("secretRef") or ef.get("configMapRef") or {}
            data = await load(kind, ref["name"])
            if data is None:
                if ref.get("optional"):
                    continue
                raise ConfigError(f'{"secret" if kind == "secret" else "configmap"} "{ref["name"]}" not found')
            for k, v in data.items():
                env[ef.get("prefix", "") + k] = v
        for e in c.get("env") or []:
            if "valueFrom" not in e:
                env[e["name"]] = expand(e.get("value", ""), env)
                continue
            vf = e["valueFrom"]
            if "secretKeyRef" in vf or "configMapKeyRef" in vf:
                kind = "secret" if "secretKeyRef" in vf else "configMap"
                ref = vf.get("secretKeyRef") or vf.get("configMapKeyRef")
                data = await load(kind, ref["name"])
                label = "secret" if kind == "secret" else "configmap"
                if data is None:
                    if ref.get("optional"):
                        continue
                    raise ConfigError(f'{label} "{ref["name"]}" not found')
                if ref["key"] not in data:
                    if ref.get("optional"):
                        continue
                    raise ConfigError(f"couldn't find key {ref['key']} in {kind.capitalize() if kind == 'secret' else 'ConfigMap'} {ns}/{ref['name']}")
                env[e["name"]] = data[ref["key"]]
            elif "fieldRef" in vf:
                env[e["name"]] = _field_ref(pod, vf["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in vf:
                env[e["name"]] = "0"
        return env

    # ------------------------------------------------------------------ provisioner

    async def _ensure_storage_class(self) -> None:
        storage = client.StorageV1Api(self._api)
        body = {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                "metadata": {"name": STORAGE_CLASS,
                             "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
                "provisioner": PROVISIONER, "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate"}
        try:
            await self._retry("storage class", lambda: storage.create_storage_class(body, _request_timeout=30))
        except ApiException as e:
            if e.status != 409:
                raise

    def volume_dir(self, pv_name: str) -> Path:
        """Where the provisioner keeps a provisioned volume's data."""
        return self.state_dir / "volumes" / pv_name

    async def _provisioner(self) -> None:
        """A minimal external provisioner: a hostPath PV (pre-bound) per claim of our class; Delete on release."""
        while True:
            try:
                pvcs = self._json(await self.core.list_persistent_volume_claim_for_all_namespaces(_request_timeout=30))
                pvs = self._json(await self.core.list_persistent_volume(_request_timeout=30))
                claimed = {(pv["spec"].get("claimRef") or {}).get("uid") for pv in pvs.get("items", [])}
                for pvc in pvcs.get("items", []):
                    meta, spec = pvc["metadata"], pvc["spec"]
                    if (spec.get("storageClassName") != STORAGE_CLASS or spec.get("volumeName")
                            or meta.get("deletionTimestamp") or meta["uid"] in claimed):
                        continue
                    await self._provision(pvc)
                for pv in pvs.get("items", []):
                    ann = pv["metadata"].get("annotations") or {}
                    if (ann.get("pv.kubernetes.io/provisioned-by") == PROVISIONER
                            and pv.get("status", {}).get("phase") == "Released"
                            and pv["spec"].get("persistentVolumeReclaimPolicy") == "Delete"):
                        with contextlib.suppress(ApiException):
                            await self.core.delete_persistent_volume(pv["metadata"]["name"], _request_timeout=30)
                        shutil.rmtree(self.volume_dir(pv["metadata"]["name"]), ignore_errors=True)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.info("provisioner: %r", e)
            await asyncio.sleep(0.3)

    async def _provision(self, pvc: Pod) -> None:
        meta = pvc["metadata"]
        name = f"pvc-{meta['uid']}"
        d = self.volume_dir(name)
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o777)
        pv = {"apiVersion": "v1", "kind": "PersistentVolume",
              "metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
              "spec": {"capacity": {"storage": pvc["spec"].get("resources", {}).get("requests", {}).get("storage", "1Gi")},
                       "accessModes": pvc["spec"].get("accessModes") or ["ReadWriteOnce"],
                       "persistentVolumeReclaimPolicy": "Delete", "storageClassName": STORAGE_CLASS,
                       "volumeMode": pvc["spec"].get("volumeMode", "Filesystem"),
                       "hostPath": {"path": str(d), "type": "Directory"},
                       "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": meta["namespace"],
                                    "name": meta["name"], "uid": meta["uid"],
                                    "resourceVersion": meta["resourceVersion"]}}}
        try:
            await self.core.create_persistent_volume(pv, _request_timeout=30)
            log.info("provisioned %s for %s/%s at %s", name, meta["namespace"], meta["name"], d)
        except ApiException as e:
            if e.status != 409:
                raise

    # ------------------------------------------------------------------ log server

    def _ssl_context(self) -> ssl.SSLContext:
        cert, key, ca = self.tls
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if cert is None:
            cert, key = _self_signed(self.state_dir / "tls")
        ctx.load_cert_chain(str(cert), str(key))
        if ca is not None:  # only the apiserver (with its kubelet client cert) may read logs
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(str(ca))
        return ctx

    async def _start_log_server(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/containerLogs/{ns}/{pod}/{container}", self._serve_log)
        app.router.add_get("/exec/{ns}/{pod}/{container}", self._serve_exec)
        app.router.add_get("/healthz", _healthz)
        # a kubelet going away ends its streams: a client's `follow` (a worker streaming a flow-run Pod's
        # log) must not hold the agent's stop for aiohttp's default 60 s
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=3.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, ssl_context=self._ssl_context())
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return runner

    async def _serve_log(self, request: web.Request) -> web.StreamResponse:
        """The kubelet's /containerLogs: follow, previous, timestamps, tailLines, limitBytes, since*."""
        ns, pod, container = (request.match_info[k] for k in ("ns", "pod", "container"))
        q = request.query
        attempts = self._logs.get((ns, pod, container))
        previous = q.get("previous") == "true"
        if not attempts or (previous and len(attempts) < 2):
            if previous:
                return web.Response(status=400, text=f'previous terminated container "{container}" in pod "{pod}" not found')
            return web.Response(status=400,
                                text=f'container "{container}" in pod "{pod}" is waiting to start: ContainerCreating')
        cl = attempts[-2] if previous else attempts[-1]
        follow = q.get("follow") == "true" and not previous
        timestamps = q.get("timestamps") == "true"
        limit = int(q["limitBytes"]) if "limitBytes" in q else None
        since: datetime | None = None
        if "sinceSeconds" in q:
            since = datetime.now(timezone.utc) - timedelta(seconds=int(q["sinceSeconds"]))
        elif "sinceTime" in q:
            since = _parse_time(q["sinceTime"])
        start = 0
        if "tailLines" in q:
            start = max(0, len(cl.lines) - int(q["tailLines"]))
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        sent = 0
        i = start
        try:
            while True:
                while i < len(cl.lines):
                    ts, line = cl.lines[i]
                    i += 1
                    if since is not None and _parse_time(ts) < since:
                        continue
                    data = (ts.encode() + b" " + line) if timestamps else line
                    if limit is not None:
                        data = data[: max(0, limit - sent)]
                    if data:
                        await resp.write(data)
                        sent += len(data)
                    if limit is not None and sent >= limit:
                        return resp
                if not follow or cl.done:
                    break
                await cl.changed()
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return resp


    async def _serve_exec(self, request: web.Request) -> web.StreamResponse:
        """The kubelet's /exec over WebSocket (``v4.channel.k8s.io``), as ``kubectl exec`` and the
        Python clients reach it through the apiserver: the command runs in the container's mount,
        UTS and PID namespaces, with its root, working directory, user and environment. No stdin,
        no TTY: what hooks need. Frames are the channel byte (1 stdout, 2 stderr, 3 status) and data;
        the last is a metav1.Status, with the exit code when it is not 0."""
        ns, pod, container = (request.match_info[k] for k in ("ns", "pod", "container"))
        command = request.query.getall("command", [])
        tr = next((t for t in self._pods.values() if (t.namespace, t.name) == (ns, pod)), None)
        proc = tr.procs.get(container) if tr else None
        if tr is None or proc is None or proc.returncode is not None or not command:
            return web.Response(status=400, text=f'container "{container}" in pod "{pod}" is not running'
                                if command else "you must specify at least one command for the container")
        spec = json.loads(tr.specs[container].read_text())
        ws = web.WebSocketResponse(protocols=("v4.channel.k8s.io", "channel.k8s.io"))
        await ws.prepare(request)
        init = _first_child(proc.pid)  # unshare --fork: its child is the container's PID 1
        user = [*(["-S", str(spec["uid"])] if spec.get("uid") is not None else []),
                *(["-G", str(spec["gid"] if spec.get("gid") is not None else spec["uid"])]
                  if spec.get("uid") is not None or spec.get("gid") is not None else [])]
        try:
            run = await asyncio.create_subprocess_exec(
                "nsenter", "-t", str(init), "-m", "-u", "-p", "-r", "-w", *user, "--", *command,
                env=spec["env"], stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            await ws.send_bytes(b"\x03" + json.dumps(_exec_status(126, str(exc))).encode())
            await ws.close()
            return ws

        async def pump(stream: asyncio.StreamReader | None, channel: int) -> None:
            while stream is not None and (chunk := await stream.read(65536)):
                await ws.send_bytes(bytes([channel]) + chunk)

        try:
            await asyncio.gather(pump(run.stdout, 1), pump(run.stderr, 2))
            code = await run.wait()
            await ws.send_bytes(b"\x03" + json.dumps(_exec_status(_exit_code(code))).encode())
        finally:
            if run.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    run.kill()
                await run.wait()
            await ws.close()
        return ws


# ----------------------------------------------------------------------------------- small pieces


def _first_child(pid: int) -> int:
    """The first child of ``pid`` (Linux /proc), or ``pid`` itself when it has none yet."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        if children:
            return int(children[0])
    return pid


def _exec_status(code: int, message: str = "") -> dict[str, Any]:
    """The metav1.Status a kubelet sends last on an exec stream (channel 3)."""
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    return {"metadata": {}, "status": "Failure",
            "message": message or f"command terminated with non-zero exit code: exit status {code}",
            "reason": "NonZeroExitCode", "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}


async def _healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok")


def _reason(code: int, msg: str) -> str:
    if code == 0:
        return "Completed"
    if code == 128 and msg.startswith("failed to start container"):
        return "StartError"
    return "Error"


def _exit_code(rc: int | None) -> int:
    """A signal death (negative returncode) is reported as 128+signal, as container runtimes do."""
    if rc is None:
        return 137
    return 128 - rc if rc < 0 else rc


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _field_ref(pod: Pod, path: str) -> str:
    meta = pod["metadata"]
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if m:
        return (meta.get(m.group(1)) or {}).get(m.group(2), "")
    if path in ("metadata.labels", "metadata.annotations"):
        return "\n".join(f'{k}="{v}"' for k, v in sorted((meta.get(path.split(".")[1]) or {}).items()))
    return str({
        "metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"), "metadata.uid": meta.get("uid"),
        "spec.nodeName": pod["spec"].get("nodeName"), "spec.serviceAccountName": pod["spec"].get("serviceAccountName"),
        "status.hostIP": "127.0.0.1", "status.podIP": "127.0.0.1", "status.podIPs": "127.0.0.1",
    }.get(path, ""))


def _self_signed(d: Path) -> tuple[Path, Path]:
    import subprocess
    d.mkdir(parents=True, exist_ok=True)
    cert, key = d / "agent.crt", d / "agent.key"
    if not cert.exists():
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
                        "-subj", "/CN=localkube-node-agent", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


# ----------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """``python -m localkube.nodeagent``: run the agent in the foreground until SIGTERM/SIGINT."""
    from localkube import cluster as _cluster

    settings = _cluster.Settings.from_env()
    p = argparse.ArgumentParser(prog="python -m localkube.nodeagent", description=__doc__.split("\n\n")[0])
    p.add_argument("--kubeconfig", default=str(settings.kubeconfig))
    p.add_argument("--node-name", default=DEFAULT_NODE)
    p.add_argument("--state-dir", default=str(settings.run_dir / "agent"))
    p.add_argument("--default", default="run",
                   help="outcome for Pods without a script: a kind (run, succeed, never_ends, ...) or its JSON")
    p.add_argument("--namespace", action="append", help="only take Pods of this namespace (repeatable)")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--pidfile", help="write the pid here (localkube/down.sh stops it: run/kube/pids/node-agent.pid)")
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    pki = settings.run_dir / "pki"
    agent = NodeAgent(a.kubeconfig, a.state_dir, node_name=a.node_name, default=Outcome.parse(a.default),
                      namespaces=a.namespace, port=a.port, tls_cert=pki / "node-agent.crt",
                      tls_key=pki / "node-agent.key", client_ca=pki / "ca.crt")
    if a.pidfile:
        Path(a.pidfile).parent.mkdir(parents=True, exist_ok=True)
        Path(a.pidfile).write_text(str(os.getpid()))

    async def amain() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        task = asyncio.create_task(agent.serve(
            lambda: print(f"node agent {agent.node_name} ready: logs on https://127.0.0.1:{agent.port}", flush=True)))
        await stop.wait()
        assert agent._stop is not None
        agent._stop.set()
        await task

    try:
        asyncio.run(amain())
    finally:
        if a.pidfile:
            with contextlib.suppress(OSError):
                Path(a.pidfile).unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
