"""Waiting for a Job: watches, not polls, with one deadline for the whole wait.

The Job's conditions decide the end and its Pods' state shows a Pod that cannot start and when to
open each container's log. Both come from the process's shared watches (``watch_hub.py``: one Job
and one Pod watch per namespace, resumed after closes, drops and 410 Gone), not from watches of
the run's own. Logs are read only where they are read: with ``follow_logs`` every container's log is
streamed (``follow=true``) while it runs, line by line, to ``on_log`` (a person watching the run);
without, the last lines are read once after the end, and only when they are needed: the Job failed
(the diagnosis quotes them) or no container left a termination message (the result may be restic's
``--json`` summary in the log). A fleet's successful backups then cost no log request at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import collections
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import aiohttp

from stashflow.addons.errors import ClusterError

from .diagnose import Category, Diagnosis, diagnose, job_phase, pod_problem
from .kube import Kube
from .watch_hub import WatchHub, hub_for

log = logging.getLogger("stashflow.wait")

LOG_READ_SECONDS = 10.0  # one log tail read, at most
STUCK_CATEGORIES = {Category.IMAGE_PULL, Category.CONFIG_ERROR, Category.UNSCHEDULABLE}


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
                 on_log: Callable[[str, str], None] | None = None, tail_lines: int = 200,
                 follow_logs: bool = True) -> None:
        self.kube, self.namespace, self.name = kube, namespace, name
        self.follow_logs = follow_logs
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
        hub = hub_for(self.kube)
        failed: list[BaseException] = []

        def on_error(exc: BaseException) -> None:
            failed.append(exc)
            self._done.set()

        sub = hub.subscribe(self.namespace, self.name, self._on_job, self._on_pod, on_error)
        try:
            remaining = self.deadline - time.monotonic()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._done.wait(), timeout=max(0.0, remaining))
            if failed and self._outcome is None:
                raise failed[0]
            if self._outcome is None:
                self._finish("TimedOut")
        finally:
            sub.close()
        await self._drain_logs()
        await self._final_pods(hub)
        outcome = self._outcome
        assert outcome is not None
        outcome.pods = list(self.pods.values())
        if not self.follow_logs and (outcome.phase != "Complete" or not any(outcome.termination_messages().values())):
            await self._read_tails(outcome.pods)
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

    # -- watching (the process's shared watches, tasks/watch_hub.py) --------------------------

    def _finish(self, phase: Literal["Complete", "Failed", "Stuck", "TimedOut", "Gone"],
                diagnosis: Diagnosis | None = None) -> None:
        if self._outcome is None:
            self._outcome = JobOutcome(phase, self.job, [], diagnosis=diagnosis, seen_at=time.time())
            self._done.set()

    def _on_job(self, kind: str, job: dict[str, Any]) -> None:
        if self._outcome is not None:
            return
        if kind == "DELETED" or job["metadata"].get("deletionTimestamp"):
            self._finish("Gone")  # deleted from under the run (a Foreground delete marks it first)
            return
        self.job = job
        phase = job_phase(job)
        if phase:
            self._finish(phase)  # type: ignore[arg-type]

    def _on_pod(self, kind: str, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        if kind == "DELETED":
            self.pods.pop(name, None)
            return
        self.pods[name] = pod
        if self._outcome is None:
            if self.follow_logs:
                self._open_logs(pod)
            self._check_stuck(pod)

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
                # The stub says str; with _preload_content=False the client returns aiohttp's response.
                response: aiohttp.ClientResponse
                response = await self.kube.core.read_namespaced_pod_log(  # type: ignore[assignment]
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

    async def _read_tails(self, pods: list[dict[str, Any]]) -> None:
        """Without ``follow_logs``: the last ``tail_lines`` of each container that ran, of the newest Pod,
        read once (a Pod already gone has no log to read: best effort, as the stream is)."""
        newest = sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "")[-1:]
        for pod in newest:
            status = pod.get("status") or {}
            for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
                if not ((cs.get("state") or {}).get("terminated") or (cs.get("state") or {}).get("running")):
                    continue
                key = f"{pod['metadata']['name']}/{cs['name']}"
                try:
                    self.kube.requests += 1
                    # bounded: a node that holds the request open (a container that never started) must not
                    # hold the run, as the streams' grace bounds them
                    text = await asyncio.wait_for(self.kube.core.read_namespaced_pod_log(
                        pod["metadata"]["name"], self.namespace, container=cs["name"], tail_lines=self.tail_lines,
                        _request_timeout=LOG_READ_SECONDS), LOG_READ_SECONDS)
                except Exception as exc:  # noqa: BLE001 - logs are best effort; the run does not depend on them
                    log.debug("log tail %s: %s", key, exc)
                    continue
                self.tails[key] = collections.deque(text.splitlines(), maxlen=self.tail_lines)
                for line in self.tails[key]:
                    self.on_log(key, line)

    async def _drain_logs(self, grace: float = 2.0) -> None:
        """Let log streams of finished containers reach their end, then stop the rest."""
        streams = list(self._streams.values())
        if streams:
            _, pending = await asyncio.wait(streams, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _final_pods(self, hub: WatchHub) -> None:
        """Termination messages must be those of the Pods' final state. The shared Pod watch usually
        has them already (every container terminated); otherwise one last list."""
        if self.pods and all(_terminated(p) for p in self.pods.values()):
            return
        try:
            pods = await self.kube.call(f"list Pods of Job {self.name}", self.kube.core.list_namespaced_pod,
                                        self.namespace, label_selector=f"job-name={self.name}")
            for pod in pods.items:
                self.pods[pod.metadata.name] = self.kube.api.sanitize_for_serialization(pod)
        except ClusterError as exc:
            log.debug("final pod list failed: %s", exc)


def _terminated(pod: dict[str, Any]) -> bool:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return bool(statuses) and all((cs.get("state") or {}).get("terminated") for cs in statuses)
