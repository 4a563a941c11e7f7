"""A known failure is logged as its line; a bug keeps its traceback (tasks/logs.py)."""

from __future__ import annotations

import logging

import pytest

from stashflow.addons.errors import RunError
from stashflow.tasks.logs import TASK_RUN_LOGGER, quiet_known_failures
from stashflow.tasks.steps import JobFailed

# outside a flow run Prefect's API handler warns that it has no run to send the record to
pytestmark = pytest.mark.filterwarnings("ignore:Logger 'prefect.task_runs' attempted to send logs")


def _logged(exc: BaseException, caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    quiet_known_failures(JobFailed)
    logger = logging.getLogger(TASK_RUN_LOGGER)
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger=TASK_RUN_LOGGER):
        try:
            raise exc
        except BaseException:
            logger.error("Task run failed with exception: %r", exc, exc_info=True)
    (record,) = caplog.records
    return record


def test_a_coded_failure_is_one_line(caplog: pytest.LogCaptureFixture) -> None:
    record = _logged(RunError("the Job failed", code="job-exit-code"), caplog)
    assert record.exc_info is None
    assert "Traceback" not in caplog.text and "job-exit-code" in caplog.text


def test_a_bug_keeps_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    record = _logged(KeyError("surprise"), caplog)
    assert record.exc_info is not None
    assert "Traceback" in caplog.text


def test_installing_twice_adds_one_filter() -> None:
    quiet_known_failures(JobFailed)
    quiet_known_failures(JobFailed)
    filters = [f for f in logging.getLogger(TASK_RUN_LOGGER).filters if type(f).__name__ == "KnownFailures"]
    assert len(filters) == 1


def test_the_cli_quiets_prefects_console_handlers_only() -> None:
    """`stashflow` without -v drops tracebacks from Prefect's console output, and from nothing else: a
    handler of the program embedding it (here, one of the test's own) keeps its formatter."""
    from stashflow.flows.cli import quiet_prefect_tracebacks

    own = logging.StreamHandler()
    own_formatter = logging.Formatter("%(message)s")
    own.setFormatter(own_formatter)
    root = logging.getLogger()
    root.addHandler(own)
    try:
        quiet_prefect_tracebacks(verbose=False)
        assert own.formatter is own_formatter
        prefects = [h for lg in (logging.getLogger("prefect"), root) for h in lg.handlers
                    if type(h).__module__.startswith("prefect.") and "APILogHandler" not in type(h).__name__]
        assert prefects and all(type(h.formatter).__name__ == "_NoTraceback" for h in prefects)
    finally:
        root.removeHandler(own)
