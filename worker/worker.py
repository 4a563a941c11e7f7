"""A Prefect worker type that runs many flow runs of a work pool at once, in its own process.

Prefect's process worker starts a Python process per flow run (~120–135 MB and ~4 CPU-seconds
each, ``../shared/SCALE-NOTES.md``), and prefect-kubernetes starts a Pod; a stashflow run spends
nearly all its time waiting on a watch, so here each flow run is an asyncio task in the worker's
process, run by Prefect's async flow engine (``inprocess.py``): the flow is imported from the
deployment's entrypoint once, states, logs, task runs and artifacts reach the API as usual.

Everything else is Prefect's worker API (``BaseWorker``): polling the pool, the ``--limit``,
claiming a run by proposing Pending (the API accepts that transition once, so a second worker on
the same pool never runs a flow run twice), heartbeats, and the cancellation observer. This class
adds what "in-process" changes:

- **Cancel** (the UI's Cancelling state) cancels that run's task only: its Job and PVCs are deleted
  and its Snapshot marked Failed by the flow's own cleanup, then the engine records Cancelled.
- **Crash isolation**: a run's exception ends that run's task; the others go on.
- **Stop** (``stop()``, SIGTERM in the CLI): no new runs are taken; runs claimed but not started are
  handed back (Scheduled again, for another worker); running runs are ended with their cleanup:
  Job and PVCs deleted, Snapshot Failed with the reason, the flow run Crashed with the reason. A
  backup interrupted half-way cannot be trusted, so it is not adopted half-done; the next
  schedule (or ``retryConfig``) backs the target up again.
- **Shared, not per run**: one Prefect API client (and one sync client) for all runs, one suspension
  observer and one heartbeat thread (``inprocess.SharedWatch``), no CSRF token fetched when the
  server does not ask for one, no CA bundle loaded for a plain http:// API, no settings environment
  built for a child process, one Kubernetes client per cluster (``tasks.kube.shared_connections``),
  a cache of the runs' related objects (for their events) as large as a fleet.
  Per run, Prefect builds each of them again; at a fleet's minute that was most of the worker's CPU
  and a good part of the server's (``bench/fanout.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional
from uuid import UUID

import anyio
import anyio.abc
import httpx
from pydantic import ConfigDict, Field
from prefect._internal.observers import FlowRunCancellingObserver
from prefect.client.schemas.objects import FlowRun
from prefect.events import related
from prefect.events.filters import EventAnyResourceFilter, EventFilter, EventNameFilter
from prefect.settings import get_current_settings
from prefect.flows import Flow, load_flow_from_entrypoint
from prefect.context import AsyncClientContext, SyncClientContext, get_settings_context, \
    _temporary_global_settings_context
from prefect.exceptions import PrefectHTTPStatusError
from prefect.settings import (
    PREFECT_API_SSL_CERT_FILE,
    PREFECT_API_TLS_INSECURE_SKIP_VERIFY,
    PREFECT_API_URL,
    PREFECT_CLIENT_CSRF_SUPPORT_ENABLED,
    PREFECT_WORKER_QUERY_SECONDS,
    temporary_settings,
)
from prefect.states import Crashed, Scheduled, State
from prefect.utilities.services import critical_service_loop
from prefect.workers.base import BaseJobConfiguration, BaseVariables, BaseWorker, BaseWorkerResult

from stashflow.flows import addon_flows
from stashflow.tasks.kube import shared_connections

from . import admission
from .inprocess import RunControl, SharedWatch, run_flow_run

if TYPE_CHECKING:
    from prefect.client.schemas.responses import WorkerFlowRunResponse

ADDON_FLOWS = f"{addon_flows.__name__}:"
#: Connections of the runs' one API client (Prefect's own client keeps 16, for one run's requests), and
#: how many of the runs' requests it takes at once (``admission.py``): more connections than the server has
#: database connections (its default pool: 5 + 10) only move the waiting there.
SHARED_CLIENT_CONNECTIONS = 32
#: Entries of Prefect's related-objects cache (deployment, flow, work pool and queue of the run an event
#: comes from; Prefect keeps 100). Each run here has its own deployment: past ~25 runs at once every event
#: of the process read its run's deployment again (3 more requests per run at 200 runs, and the process's
#: one events thread fell minutes behind).
RELATED_OBJECTS_CACHED = 4000
#: How far ahead runs are claimed unless ``--prefetch-seconds`` or Prefect's setting says otherwise
#: (Prefect's default is 10 s). A claimed run waits here for its time at the cost of an asyncio task;
#: what claiming does (Pending, the deployment and flow read, the engine's setup: a third of a run's
#: requests) is then done before the minute instead of in the minute's rush: 200 runs due at one
#: instant had their Jobs after 71-90 s instead of 109-119 s (``bench/fanout.py``).
DEFAULT_PREFETCH_SECONDS = 60.0


def default_prefetch_seconds() -> float:
    """Prefect's ``PREFECT_WORKER_PREFETCH_SECONDS`` when it is set (environment or profile), else
    :data:`DEFAULT_PREFETCH_SECONDS`."""
    worker = get_current_settings().worker
    return float(worker.prefetch_seconds) if "prefetch_seconds" in worker.model_fields_set \
        else DEFAULT_PREFETCH_SECONDS


class StashflowJobConfiguration(BaseJobConfiguration):
    """What a flow run of a stashflow pool needs: the catalog its flow is built from. ``env`` and
    ``command`` of other pool types are accepted and not applied (the run shares this process)."""

    model_config = ConfigDict(extra="ignore")
    catalog: Optional[str] = Field(default=None, description="Addon/Function paths, ':'-separated.")

    @staticmethod
    def _base_environment() -> dict[str, str]:
        """Nothing: Prefect serialises every setting here for the child process a run gets elsewhere
        (5 % of this worker's CPU at a fleet's minute); a run here shares the worker's settings."""
        return {}

    def entrypoint(self) -> str | None:
        deployment = self._related_objects.get("deployment")
        return getattr(deployment, "entrypoint", None)

    def catalog_paths(self) -> list[str]:
        """The job variable ``catalog``, else ``STASHFLOW_CATALOG`` from the deployment's ``env``
        (what ``stashflow deploy`` writes), else the worker's own."""
        value = self.catalog or (self.env or {}).get(addon_flows.CATALOG_ENV)
        if value:
            return [p for p in value.split(os.pathsep) if p]
        return addon_flows.catalog_paths()


def _one_certificate(path: Path) -> str:
    """A CA file of one certificate (certifi's first) at ``path``: cheap to load, never used to verify."""
    import certifi

    bundle = Path(certifi.where()).read_text()
    end = "-----END CERTIFICATE-----"
    path.write_text(bundle[bundle.index("-----BEGIN CERTIFICATE-----"): bundle.index(end) + len(end)] + "\n")
    return str(path)


@contextlib.contextmanager
def process_settings(updates: dict[Any, Any]) -> Iterator[None]:
    """``updates`` to Prefect's settings in this context and on every thread of the process: threads
    Prefect starts (its global loop, where the concurrency service makes a client per target lock) read
    the process's global settings context, not a context's. The worker's process runs nothing else."""
    if not updates:
        yield
        return
    with temporary_settings(updates=updates), _temporary_global_settings_context(get_settings_context()):
        yield


class StashflowWorkerVariables(BaseVariables):
    catalog: Optional[str] = Field(
        default=None, title="Catalog",
        description="Addon/Function files or folders (':'-separated) the flows are built from; default: "
                    "STASHFLOW_CATALOG of the deployment's env, else of the worker, else the built-in catalog.")


class StashflowWorkerResult(BaseWorkerResult):
    """How a flow run ended in this process (status 0: the engine recorded its final state)."""


@dataclass
class _Running:
    task: asyncio.Task[Any]
    control: RunControl
    flow_run: FlowRun


@dataclass
class Tally:
    """What this worker did, for its exit line and the tests."""

    started: int = 0
    finished: int = 0
    cancelled: int = 0
    stopped: int = 0
    handed_back: int = 0
    ids: list[UUID] = field(default_factory=list)


class StashflowWorker(BaseWorker[StashflowJobConfiguration, StashflowWorkerVariables, StashflowWorkerResult]):
    type = "stashflow"
    job_configuration = StashflowJobConfiguration
    job_configuration_variables = StashflowWorkerVariables
    _description = "Runs stashflow's flow runs concurrently as asyncio tasks of one process."
    _display_name = "stashflow"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("prefetch_seconds") is None and len(args) < 4:  # BaseWorker's 4th: prefetch_seconds
            kwargs["prefetch_seconds"] = default_prefetch_seconds()
        super().__init__(*args, **kwargs)
        self._running: dict[UUID, _Running] = {}
        self._flows: dict[tuple[str, tuple[str, ...]], Flow[..., Any]] = {}
        self._flow_lock = asyncio.Lock()
        self._stopping: str | None = None
        self._shared: SharedWatch | None = None
        self.tally = Tally()

    # -- serving -----------------------------------------------------------------------------

    async def serve(self, stop: asyncio.Event, *, started: threading.Event | None = None,
                    query_seconds: float | None = None) -> Tally:
        """Poll the pool and run its flow runs until ``stop`` is set; then end the running runs."""
        interval = query_seconds if query_seconds is not None else PREFECT_WORKER_QUERY_SECONDS.value()
        related.MAX_CACHE_SIZE = max(related.MAX_CACHE_SIZE, RELATED_OBJECTS_CACHED)
        async with self, self._client_settings(), self._shared_clients(), self._shared_watch(), \
                shared_connections():
            async with anyio.create_task_group() as loops:
                loops.start_soon(lambda: critical_service_loop(workload=self.get_and_submit_flow_runs,
                                                               interval=interval, jitter_range=0.3, backoff=4))
                loops.start_soon(lambda: critical_service_loop(workload=self._sync_and_initialize,
                                                               interval=self.heartbeat_interval_seconds,
                                                               jitter_range=0.3, backoff=4))
                self._logger.info("stashflow worker %r started on pool %r (limit %s)", self.name,
                                  self._work_pool_name, self._limit or "none")
                if started is not None:
                    started.set()
                await stop.wait()
                loops.cancel_scope.cancel()
            await self.stop_runs(self._stopping or "the stashflow worker stopped")
        return self.tally

    @contextlib.asynccontextmanager
    async def _client_settings(self) -> AsyncIterator[None]:
        """Settings for the API clients the runs still make (Prefect's concurrency service makes one per
        target lock, on its own loop's thread, so one per run):

        - no CSRF token when the server has CSRF protection off (its default): each new client
          otherwise learns that by one refused request;
        - on a plain ``http://`` API, a one-certificate CA file: each client builds a TLS context from
          ``PREFECT_API_SSL_CERT_FILE`` (by default ``$SSL_CERT_FILE``, else certifi's bundle): ~25 ms
          of CPU, a fifth of this worker's at a fleet's minute, though no TLS is ever spoken to that API.

        Process-wide (``process_settings``): the concurrency service's thread does not see a context's."""
        updates: dict[Any, Any] = {}
        try:
            await self.client.request("GET", "/csrf-token", params={"client": f"stashflow-worker-{self.name}"})
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code == 404 or "CSRF protection is disabled" in exc.response.text:
                updates[PREFECT_CLIENT_CSRF_SUPPORT_ENABLED] = False
        with contextlib.ExitStack() as stack:
            if str(PREFECT_API_URL.value() or "").startswith("http://") \
                    and not PREFECT_API_TLS_INSECURE_SKIP_VERIFY.value():
                folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="stashflow-worker-"))
                updates[PREFECT_API_SSL_CERT_FILE] = _one_certificate(Path(folder) / "unused-ca.pem")
            stack.enter_context(process_settings(updates))
            yield

    @contextlib.asynccontextmanager
    async def _shared_clients(self) -> AsyncIterator[None]:
        """One Prefect API client (and one sync client) for every run of the process, through Prefect's own
        client contexts: the engine and ``get_client()`` take the one in context. Each new client costs
        ~25 ms of CPU to build its TLS context (certifi's bundle, even for an http:// API) and new
        connections; a session run made five, half the worker's CPU at a fleet's minute (``bench/fanout.py``).
        Its requests enter its connection pool no more at once than it has connections (``admission.py``)."""
        limits = {"limits": httpx.Limits(max_connections=SHARED_CLIENT_CONNECTIONS,
                                         max_keepalive_connections=SHARED_CLIENT_CONNECTIONS, keepalive_expiry=25)}
        sync, shared = SyncClientContext(httpx_settings=limits), AsyncClientContext(httpx_settings=limits)
        # get_client() reuses a context's client only when asked for the same settings, and the runs ask for
        # none: the contexts are built with these limits and then stand for "no settings"
        sync._httpx_settings = shared._httpx_settings = None
        with sync:
            async with shared:
                if shared.client is not None and not admission.admit(shared.client._client, SHARED_CLIENT_CONNECTIONS):
                    self._logger.debug("the API client's transport is not httpx's pooled one: requests not admitted")
                yield

    @contextlib.asynccontextmanager
    async def _shared_watch(self) -> AsyncIterator[None]:
        """One suspension observer and heartbeat thread for all runs (``inprocess.SharedWatch``); if the
        observer cannot start, each run starts Prefect's own, as in a subprocess."""
        try:
            self._shared = await SharedWatch().__aenter__()
        except Exception as exc:  # noqa: BLE001 - the runs still work, each with its own observer
            self._logger.warning("one suspension observer for all runs could not start (%s): each run starts "
                                 "its own", exc)
            self._shared = None
        try:
            yield
        finally:
            if self._shared is not None:
                await self._shared.__aexit__(None, None, None)
                self._shared = None

    async def stop_runs(self, reason: str) -> None:
        """End every running run with its cleanup (see the module docstring)."""
        self._stopping = reason
        running = list(self._running.values())
        for run in running:
            run.control.stop_reason = reason
            run.task.cancel(msg=reason)
        if running:
            self._logger.info("stopping %d running flow run(s): %s", len(running), reason)
            await asyncio.gather(*(asyncio.shield(r.task) for r in running), return_exceptions=True)

    def request_stop(self, reason: str) -> None:
        """Called on the loop's thread when the process is asked to stop: refuse new runs at once."""
        self._stopping = self._stopping or reason

    # -- one flow run ------------------------------------------------------------------------

    async def run(self, flow_run: FlowRun, configuration: StashflowJobConfiguration,
                  task_status: anyio.abc.TaskStatus[Any] | None = None) -> StashflowWorkerResult:
        identifier = f"{socket.gethostname()}:{os.getpid()}:{flow_run.id}"
        if not self._stopping:
            flow = await self._flow_of(configuration)
            current = await self.client.read_flow_run(flow_run.id)  # its state now, not the poll's
        # asked again after those awaits: a stop that came meanwhile has already ended the runs it found
        # (stop_runs), and this one was not among them; from here to being listed there is no await
        if self._stopping:
            await self._hand_back(flow_run)
            if task_status is not None:
                task_status.started(identifier)
            return StashflowWorkerResult(identifier=identifier, status_code=0)
        control = RunControl(flow_run.id)
        task = asyncio.create_task(run_flow_run(flow, current, control, self._shared), name=f"flow-run-{flow_run.id}")
        self._running[flow_run.id] = _Running(task, control, current)
        self.tally.started += 1
        self.tally.ids.append(flow_run.id)
        if task_status is not None:
            task_status.started(identifier)
        try:
            try:
                await asyncio.shield(task)
            except BaseException:  # noqa: BLE001 - the run's own end; recorded below, never the worker's
                pass
            return await self._conclude(flow_run, task, control, identifier)
        finally:
            self._running.pop(flow_run.id, None)
            if self._cancelling_observer is not None:
                self._cancelling_observer.remove_in_flight_flow_run_id(flow_run.id)

    async def _conclude(self, flow_run: FlowRun, task: asyncio.Task[Any], control: RunControl,
                        identifier: str) -> StashflowWorkerResult:
        """After the run's task ended: make sure the API shows a final state that says why."""
        if not task.done():  # the worker itself is being torn down: end the run with cleanup
            control.stop_reason = control.stop_reason or "the stashflow worker stopped"
            task.cancel(msg=control.stop_reason)
            await asyncio.gather(task, return_exceptions=True)
        logger = self.get_flow_run_logger(flow_run)
        raised = None if task.cancelled() else task.exception()
        error = raised if isinstance(raised, Exception) else None
        returned = task.result() if not task.cancelled() and raised is None else None
        try:  # the engine's final state is the one the API accepted; only other ends are read back
            state = returned if isinstance(returned, State) and returned.is_final() and not control.cancel_requested \
                and control.stop_reason is None else (await self.client.read_flow_run(flow_run.id)).state
        except Exception:  # noqa: BLE001 - the API is away; Prefect's late-run handling takes over
            logger.exception("could not read the final state of flow run %s", flow_run.id)
            return StashflowWorkerResult(identifier=identifier, status_code=0)
        if control.cancel_requested:
            self.tally.cancelled += 1
            if state is not None and not state.is_final():  # cancelled before the engine had started it
                await self._mark_flow_run_as_cancelled(flow_run, {"message": "Flow run was cancelled."})
        elif control.stop_reason is not None and not control.started and (state is None or not state.is_final()):
            await self._hand_back(flow_run)  # claimed ahead of its time, never begun: another worker takes it
            return StashflowWorkerResult(identifier=identifier, status_code=0)
        elif control.stop_reason is not None:
            self.tally.stopped += 1
            if state is None or not state.is_final() or state.is_crashed():
                await self.client.set_flow_run_state(flow_run.id, Crashed(message=control.stop_reason), force=True)
                logger.warning("flow run ended: %s", control.stop_reason)
        else:
            self.tally.finished += 1
        if error is not None:
            logger.error("flow run %s ended with %s: %s", flow_run.id, type(error).__name__, error)
        # non-zero makes Prefect's base propose Crashed, which is right only if nothing final was recorded
        code = 0 if state is not None and state.is_final() else 1
        return StashflowWorkerResult(identifier=identifier, status_code=code)

    async def _hand_back(self, flow_run: FlowRun) -> None:
        """A run claimed (Pending, or waiting for its time) while the worker stops: Scheduled again, at
        its own time, for another worker."""
        self.tally.handed_back += 1
        when = flow_run.next_scheduled_start_time or flow_run.expected_start_time
        await self.client.set_flow_run_state(
            flow_run.id, Scheduled(scheduled_time=when, message=f"handed back: {self._stopping}"), force=True)

    async def _flow_of(self, configuration: StashflowJobConfiguration) -> Flow[..., Any]:
        """The deployment's flow, imported once per entrypoint and catalog."""
        entrypoint = configuration.entrypoint()
        if not entrypoint:
            raise ValueError("the flow run has no deployment entrypoint: the stashflow worker runs deployments")
        paths = tuple(configuration.catalog_paths())
        key = (entrypoint, paths if entrypoint.startswith(ADDON_FLOWS) else ())
        async with self._flow_lock:
            if key not in self._flows:
                if entrypoint.startswith(ADDON_FLOWS):  # the catalog is the run's, not the process's env
                    flows = await asyncio.to_thread(addon_flows.flows_of, list(paths))
                    name = entrypoint[len(ADDON_FLOWS):]
                    if name not in flows:
                        raise ValueError(f"no flow {name} in the catalog {os.pathsep.join(paths)}")
                    self._flows[key] = flows[name]
                else:
                    self._flows[key] = await asyncio.to_thread(load_flow_from_entrypoint, entrypoint)
        return self._flows[key]

    async def _setup_cancellation_observer(self) -> None:
        """Prefect's base observes cancellations only with ``PREFECT_WORKER_ENABLE_CANCELLATION`` (for runs
        still Pending: a subprocess watches for its own). Here the runs are this process's tasks, so the
        worker always observes the Cancelling events of its pool (websocket, polling as fallback)."""
        if self._cancelling_observer is not None or self._work_pool is None:
            return
        def on_cancelling(flow_run_id: UUID) -> None:
            assert self._runs_task_group is not None  # set while the worker runs
            self._runs_task_group.start_soon(self._cancel_run, flow_run_id)

        observer: FlowRunCancellingObserver = await self._exit_stack.enter_async_context(FlowRunCancellingObserver(
            on_cancelling=on_cancelling,
            polling_interval=min(get_current_settings().worker.cancellation_poll_seconds, 30),
            event_filter=EventFilter(event=EventNameFilter(name=["prefect.flow-run.Cancelling"]),
                                     any_resource=EventAnyResourceFilter(id=[f"prefect.work-pool.{self._work_pool.id}"])),
        ))
        self._cancelling_observer = observer
        for flow_run_id in self._running:
            observer.add_in_flight_flow_run_id(flow_run_id)

    async def _cancel_run(self, flow_run_id: UUID) -> None:
        """The cancellation observer saw Cancelling: a run of this process is cancelled here; one
        still Pending elsewhere is Prefect's base case."""
        running = self._running.get(flow_run_id)
        if running is None:
            await super()._cancel_run(flow_run_id)
            return
        self.get_flow_run_logger(running.flow_run).info("cancelling flow run %s", flow_run_id)
        running.control.cancel_requested = True
        running.task.cancel(msg="the flow run was cancelled")

    async def _submit_run(self, flow_run: FlowRun) -> None:
        """Prefect's base stops observing a run's cancellation once its infrastructure started (a
        subprocess watches for its own); here the run is this process's task, so it is observed again."""
        await super()._submit_run(flow_run)
        if flow_run.id in self._running and self._cancelling_observer is not None:
            self._cancelling_observer.add_in_flight_flow_run_id(flow_run.id)

    async def _submit_scheduled_flow_runs(self, flow_run_response: list[WorkerFlowRunResponse]) -> list[FlowRun]:
        if self._stopping:
            return []
        return await super()._submit_scheduled_flow_runs(flow_run_response)

    def running(self) -> list[UUID]:
        return list(self._running)
