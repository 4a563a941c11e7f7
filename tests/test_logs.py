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
