"""The stashflow worker's one heartbeat thread for all its runs (``worker/inprocess.py``), and what it
spares each run's preparation (``worker/worker.py``).

The engines here are fakes: Prefect's engine sends a heartbeat at most every 30 s, which a test cannot
wait for; what is faked is only what the thread calls. That the real engine's heartbeats reach a real
API through this thread is ``tests/schedules/test_worker.py``'s first test.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from stashflow.worker.inprocess import _Heartbeats


@dataclass
class State:
    final: bool = False

    def is_final(self) -> bool:
        return self.final


@dataclass
class FlowRun:
    state: State = field(default_factory=State)


@dataclass
class FakeEngine:
    name: str
    heartbeat_seconds: int = 0  # every pass of the thread
    flow_run: FlowRun = field(default_factory=FlowRun)
    sent: list[Any] = field(default_factory=list)
    beat: threading.Event = field(default_factory=threading.Event)
    logger: Any = None

    def _build_heartbeat_event_template(self) -> tuple[str, str]:
        return f"resource-{self.name}", f"related-{self.name}"

    def _emit_flow_run_heartbeat(self, resource: str, related: str) -> None:
        self.sent.append((resource, related))
        self.beat.set()


def test_one_thread_beats_for_every_run_registered_and_stops_for_removed_and_final_runs() -> None:
    before = threading.active_count()
    beats = _Heartbeats()
    try:
        engines = [FakeEngine(str(i)) for i in range(20)]
        keys = [beats.add(e) for e in engines]
        assert threading.active_count() == before + 1  # one thread, not one per run
        for engine in engines:  # each beats at once, with its own template
            assert engine.beat.wait(10), engine.name
            assert engine.sent[0] == (f"resource-{engine.name}", f"related-{engine.name}")
        removed, finished, going = engines[0], engines[1], engines[2]
        beats.remove(keys[0])
        finished.flow_run.state.final = True
        sent_removed, sent_finished = len(removed.sent), len(finished.sent)
        going.beat.clear()
        assert going.beat.wait(10)  # a pass after the change: the others are past it too
        going.beat.clear()
        assert going.beat.wait(10)
        assert len(removed.sent) == sent_removed
        assert len(finished.sent) == sent_finished
    finally:
        beats.close()


def test_a_failing_heartbeat_does_not_stop_the_others() -> None:
    class Broken(FakeEngine):
        def _emit_flow_run_heartbeat(self, resource: str, related: str) -> None:
            self.beat.set()
            raise RuntimeError("the API is away")

    beats = _Heartbeats()
    try:
        broken, fine = Broken("broken", logger=logging.getLogger(__name__)), FakeEngine("fine")
        beats.add(broken)
        beats.add(fine)
        assert broken.beat.wait(10) and fine.beat.wait(10)
        fine.beat.clear()
        assert fine.beat.wait(10)  # the thread lived on
    finally:
        beats.close()


def test_a_runs_configuration_keeps_the_deployments_env_and_builds_no_settings_env(tmp_path) -> None:
    """Prefect serialises every setting into a child process's environment per run; a run of this
    worker shares its process, so only the deployment's own env (its catalog) is kept."""
    import ssl
    from uuid import uuid4

    from prefect.client.schemas.objects import FlowRun as PrefectFlowRun

    from stashflow.worker.worker import StashflowJobConfiguration, _one_certificate

    from prefect.settings import PREFECT_API_URL, temporary_settings

    config = StashflowJobConfiguration(env={"STASHFLOW_CATALOG": "/a:/b"})
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        config.prepare_for_flow_run(PrefectFlowRun(id=uuid4(), name="r", flow_id=uuid4()))
    assert config.catalog_paths() == ["/a", "/b"]
    assert not [k for k in config.env if k.startswith("PREFECT_") and not k.startswith("PREFECT__")], config.env
    # the CA file the runs' clients load on a plain http:// API: one certificate, a valid one
    context = ssl.create_default_context(cafile=_one_certificate(tmp_path / "ca.pem"))
    assert len(context.get_ca_certs()) == 1


def test_runs_are_claimed_a_minute_ahead_unless_prefect_or_the_command_says_otherwise() -> None:
    """A minute ahead, so a fleet's runs are claimed and set up before their instant (``bench/fanout.py``);
    Prefect's own setting, when set, and ``--prefetch-seconds`` (0 too) win."""
    from prefect.settings import PREFECT_WORKER_PREFETCH_SECONDS, temporary_settings

    from stashflow.worker.worker import StashflowWorker

    assert StashflowWorker(work_pool_name="p")._prefetch_seconds == 60
    assert StashflowWorker(work_pool_name="p", prefetch_seconds=0)._prefetch_seconds == 0
    with temporary_settings(updates={PREFECT_WORKER_PREFETCH_SECONDS: 5}):
        assert StashflowWorker(work_pool_name="p")._prefetch_seconds == 5
        assert StashflowWorker(work_pool_name="p", prefetch_seconds=30)._prefetch_seconds == 30


def test_settings_for_the_runs_clients_reach_every_thread_of_the_process(tmp_path) -> None:
    """Prefect's concurrency service makes an API client per target lock on a thread of its own, which a
    context's settings do not reach: it loaded ``$SSL_CERT_FILE``'s or certifi's whole bundle per run
    (a fifth of the worker's CPU at a fleet's minute) until the one-certificate file was set process-wide."""
    import ssl

    from prefect.settings import PREFECT_API_SSL_CERT_FILE

    from stashflow.worker.worker import _one_certificate, process_settings

    def on_a_thread() -> str | None:
        seen: list[str | None] = []
        thread = threading.Thread(target=lambda: seen.append(PREFECT_API_SSL_CERT_FILE.value()))
        thread.start()
        thread.join()
        return seen[0]

    before = on_a_thread()
    one = _one_certificate(tmp_path / "ca.pem")
    assert before != one
    with process_settings({PREFECT_API_SSL_CERT_FILE: one}):
        assert PREFECT_API_SSL_CERT_FILE.value() == one
        assert on_a_thread() == one
        assert len(ssl.create_default_context(cafile=on_a_thread()).get_ca_certs()) == 1
    assert on_a_thread() == before
