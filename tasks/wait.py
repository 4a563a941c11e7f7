"""Waiting for a Job: watches, not polls, with one deadline for the whole wait.

Two watches run side by side: the Job (its conditions decide the end) and its Pods (their
state shows a Pod that cannot start, and when to open each container's log). Each watch
resumes from the last resourceVersion after the server closes it or the connection drops,
and re-reads after 410 Gone. Every container's log is streamed (``follow=true``) while it
runs, line by line, to ``on_log``; the last lines are kept for the diagnosis.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from kubernetes_asyncio import watch
from kubernetes_asyncio.client.exceptions import ApiException

from stashflow.addons.errors import ClusterError

from .diagnose import Category, Diagnosis, diagnose, job_phase, pod_problem
from .kube import Kube, classify, is_transient

log = logging.getLogger("stashflow.wait")

STUCK_CATEGORIES = {Category.IMAGE_PULL, Category.CONFIG_ERROR, Category.UNSCHEDULABLE}
WATCH_CHUNK_SECONDS = 240  # the server closes a watch after this; we resume from the last resourceVersion


@dataclass
class JobOutcome:
    """How a Job ended, with everything needed to record and explain it."""

    phase: Literal["Complete", "Failed", "Stuck", "TimedOut", "Gone"]
    job: dict[str, Any] | None
    pods: list[dict[str, Any]]
    log_tails: dict[str, list[str]] = field(default_factory=dict)
    diagnosis: Diagnosis | None = None
    seen_at: float = 0.0  # time.time() when the end was observed

    @property
    def succeeded(self) -> bool:
        return self.phase == "Complete"

    def termination_messages(self) -> dict[str, str]:
        """Container name → termination message, from the newest Pod."""
        pods = sorted(self.pods, key=lambda p: p["metadata"].get("creationTimestamp") or "", reverse=True)
        for pod in pods:
            statuses = (pod.get("status") or {}).get("containerStatuses") or []
            messages = {cs["name"]: ((cs.get("state") or {}).get("terminated") or {}).get("message") or ""
                        for cs in statuses}
            if any(messages.values()):
                return messages
        return {}

    def logs(self, container: str | None = None) -> list[str]:
        """All kept log lines (of one container when named), newest Pod last."""
        out: list[str] = []
        for key, lines in self.log_tails.items():
            if container is None or key.endswith("/" + container):
                out += lines
        return out


class JobWaiter:
    """Watches one Job until it ends, the deadline passes, or a Pod is stuck past ``stuck_after``."""

    def __init__(self, kube: Kube, namespace: str, name: str, *, timeout: float, stuck_after: float = 180.0,
                 on_log: Callable[[str, str], None] | None = None, tail_lines: int = 200) -> None:
        self.kube, self.namespace, self.name = kube, namespace, name
        self.deadline = time.monotonic() + timeout
        self.stuck_after = stuck_after
        self.on_log = on_log or (lambda source, line: None)
        self.tail_lines = tail_lines
        self.job: dict[str, Any] | None = None
        self.pods: dict[str, dict[str, Any]] = {}
        self.tails: dict[str, collections.deque[str]] = {}
        self._streams: dict[str, asyncio.Task[None]] = {}
        self._stuck_since: dict[tuple[str, str], float] = {}
        self._done = asyncio.Event()
        self._outcome: JobOutcome | None = None

    # -- public ----------------------------------------------------------------------------

    async def wait(self) -> JobOutcome:
        watchers = [asyncio.create_task(self._watch_job(), name=f"watch-job-{self.name}"),
                    asyncio.create_task(self._watch_pods(), name=f"watch-pods-{self.name}")]
        try:
            remaining = self.deadline - time.monotonic()
            done_wait = asyncio.create_task(self._done.wait())
            finished, _ = await asyncio.wait([done_wait, *watchers], timeout=max(0.0, remaining),
                                             return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                if task is not done_wait and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            done_wait.cancel()
            if self._outcome is None:
                self._finish("TimedOut")
        finally:
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
        await self._drain_logs()
        await self._final_pods()
        outcome = self._outcome
        assert outcome is not None
        outcome.pods = list(self.pods.values())
        outcome.log_tails = {k: list(v) for k, v in self.tails.items()}
        if outcome.phase != "Complete":
            found = diagnose(outcome.job, outcome.pods, outcome.log_tails)
            if outcome.phase == "Stuck" and outcome.diagnosis is not None:
                found = dataclasses.replace(outcome.diagnosis, log_tail=found.log_tail)
            elif outcome.phase == "TimedOut":
                found = Diagnosis(Category.DEADLINE_EXCEEDED, "Timeout",
                                  "the run's deadline passed before the Job finished", log_tail=found.log_tail)
            elif outcome.phase == "Gone":
                found = Diagnosis(Category.FAILED, "JobDeleted", "the Job was deleted while the run waited for it")
            outcome.diagnosis = found
        return outcome

    # -- watching --------------------------------------------------------------------------

    def _finish(self, phase: Literal["Complete", "Failed", "Stuck", "TimedOut", "Gone"],
                diagnosis: Diagnosis | None = None) -> None:
        if self._outcome is None:
            self._outcome = JobOutcome(phase, self.job, [], diagnosis=diagnosis, seen_at=time.time())
            self._done.set()

    async def _watch(self, what: str, list_fn: Callable[..., Any], selector: dict[str, str],
                     on_event: Callable[[str, dict[str, Any]], None]) -> None:
        """List, then watch from the list's resourceVersion; resume after closes, drops and 410."""
        kube = self.kube
        resource_version: str | None = None
        backoff = 0.2
        while not self._done.is_set():
            try:
                if resource_version is None:
                    kube.requests += 1
                    listing = await list_fn(self.namespace, **selector)
                    resource_version = listing.metadata.resource_version
                    for item in listing.items:
                        on_event("ADDED", kube.api.sanitize_for_serialization(item))
                    if self._done.is_set():
                        return
                remaining = self.deadline - time.monotonic()
                if remaining <= 0:
                    return
                kube.requests += 1
                stream = watch.Watch()
                try:
                    async for event in stream.stream(list_fn, self.namespace, resource_version=resource_version,
                                                     timeout_seconds=int(max(1, min(WATCH_CHUNK_SECONDS, remaining))),
                                                     **selector):
                        raw = event["raw_object"]
                        resource_version = raw["metadata"].get("resourceVersion") or resource_version
                        if event["type"] != "BOOKMARK":
                            on_event(event["type"], raw)
                        backoff = 0.2
                        if self._done.is_set():
                            return
                finally:
                    await stream.close()
            except ApiException as exc:
                if exc.status == 410:  # our resourceVersion is too old: list again
                    log.debug("%s: 410 Gone, listing again", what)
                    resource_version = None
                    continue
                if not is_transient(exc):
                    raise classify(exc, what) from exc
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except ClusterError:
                raise
            except Exception as exc:  # noqa: BLE001 - dropped connections, apiserver restarts
                if not is_transient(exc):
                    raise
                log.debug("%s: connection lost (%s), resuming", what, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _watch_job(self) -> None:
        def on_event(kind: str, job: dict[str, Any]) -> None:
            if job["metadata"]["name"] != self.name:
                return
            if kind == "DELETED" or job["metadata"].get("deletionTimestamp"):
                self._finish("Gone")  # deleted from under the run (a Foreground delete marks it first)
                return
            self.job = job
            phase = job_phase(job)
            if phase:
                self._finish(phase)  # type: ignore[arg-type]

        await self._watch(f"watch Job {self.namespace}/{self.name}", self.kube.batch.list_namespaced_job,
                          {"field_selector": f"metadata.name={self.name}"}, on_event)

    async def _watch_pods(self) -> None:
        def on_event(kind: str, pod: dict[str, Any]) -> None:
            name = pod["metadata"]["name"]
            if kind == "DELETED":
                self.pods.pop(name, None)
                return
            self.pods[name] = pod
            self._open_logs(pod)
            self._check_stuck(pod)

        await self._watch(f"watch Pods of Job {self.namespace}/{self.name}", self.kube.core.list_namespaced_pod,
                          {"label_selector": f"job-name={self.name}"}, on_event)

    def _check_stuck(self, pod: dict[str, Any]) -> None:
        problem = pod_problem(pod)
        name = pod["metadata"]["name"]
        if problem is None or problem.category not in STUCK_CATEGORIES:
            self._stuck_since = {k: v for k, v in self._stuck_since.items() if k[0] != name}
            return
        first = self._stuck_since.setdefault((name, problem.category), time.monotonic())
        if time.monotonic() - first >= self.stuck_after:
            self._finish("Stuck", problem)
        else:
            loop = asyncio.get_running_loop()
            loop.call_later(self.stuck_after - (time.monotonic() - first) + 0.01, self._recheck_stuck, name)

    def _recheck_stuck(self, name: str) -> None:
        pod = self.pods.get(name)
        if pod is not None and self._outcome is None:
            self._check_stuck(pod)

    # -- logs ------------------------------------------------------------------------------

    def _open_logs(self, pod: dict[str, Any]) -> None:
        status = pod.get("status") or {}
        for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
            state = cs.get("state") or {}
            if not (state.get("running") or state.get("terminated")):
                continue
            key = f"{pod['metadata']['name']}/{cs['name']}"
            if key not in self._streams:
                self.tails[key] = collections.deque(maxlen=self.tail_lines)
                self._streams[key] = asyncio.create_task(self._stream_log(pod["metadata"]["name"], cs["name"], key))

    async def _stream_log(self, pod: str, container: str, key: str) -> None:
        """Follow one container's log; the API closes the stream when the container ends."""
        for attempt in range(5):
            try:
                self.kube.requests += 1
                response = await self.kube.core.read_namespaced_pod_log(
                    pod, self.namespace, container=container, follow=True, _preload_content=False)
                try:
                    async for raw in response.content:
                        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                        self.tails[key].append(line)
                        self.on_log(key, line)
                finally:
                    response.release()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - logs are best effort; the run does not depend on them
                log.debug("log stream %s: %s (attempt %d)", key, exc, attempt + 1)
                await asyncio.sleep(0.2 * (attempt + 1))

    async def _drain_logs(self, grace: float = 2.0) -> None:
        """Let log streams of finished containers reach their end, then stop the rest."""
        streams = list(self._streams.values())
        if streams:
            _, pending = await asyncio.wait(streams, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _final_pods(self) -> None:
        """One last list, so termination messages are those of the Pods' final state."""
        try:
            pods = await self.kube.call(f"list Pods of Job {self.name}", self.kube.core.list_namespaced_pod,
                                        self.namespace, label_selector=f"job-name={self.name}")
            for pod in pods.items:
                self.pods[pod.metadata.name] = self.kube.api.sanitize_for_serialization(pod)
        except ClusterError as exc:
            log.debug("final pod list failed: %s", exc)
