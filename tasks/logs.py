"""Known failures are logged as their one line, not as a traceback.

When a step raises, Prefect's task engine logs "Task run failed with exception: …" with the
traceback. For a failure stashflow knows (a coded ``StashflowError``, a Job that failed) the
traceback says nothing the line and the diagnosis do not, and buries them: this filter drops it.
Anything else (a bug) keeps its traceback.
"""

from __future__ import annotations

import logging

from stashflow.addons.errors import StashflowError

#: The logger Prefect's task engine reports a task run's failure on.
TASK_RUN_LOGGER = "prefect.task_runs"


class KnownFailures(logging.Filter):
    """Strip the traceback from records about exceptions of ``known`` types."""

    def __init__(self, known: tuple[type[BaseException], ...]) -> None:
        super().__init__("stashflow-known-failures")
        self.known = known

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], self.known):
            record.exc_info = None
            record.exc_text = None
        return True


def quiet_known_failures(*known: type[BaseException]) -> None:
    """Install the filter once on Prefect's task-run logger (idempotent)."""
    logger = logging.getLogger(TASK_RUN_LOGGER)
    if not any(isinstance(f, KnownFailures) for f in logger.filters):
        logger.addFilter(KnownFailures((StashflowError, *known)))
