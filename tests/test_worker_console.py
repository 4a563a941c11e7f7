"""The worker writes plain lines where its stream is no terminal, and keeps Prefect's Rich handler on a
terminal (``worker/console.py``). On real loggers and handlers; the terminal is a pseudo-terminal."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator

import pytest
from prefect.logging.formatters import PrefectFormatter
from prefect.logging.handlers import PrefectConsoleHandler

from stashflow.worker.console import plain_console


@pytest.fixture
def loggers() -> Iterator[tuple[logging.Logger, logging.Logger]]:
    """Two loggers to share one Prefect console handler, as Prefect's logging.yml shares ``console``
    between the root, ``uvicorn`` and ``fastapi``. Every logger's handlers are put back after the test,
    and Prefect's console handlers that the test process has (on stderr, which pytest captures) are
    out of the way meanwhile, so that what is swapped is the test's alone."""
    root, other = logging.getLogger(), logging.getLogger("stashflow-test-console")
    every = [root] + [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    kept = {lg: list(lg.handlers) for lg in every}
    for lg in every:
        lg.handlers[:] = [h for h in lg.handlers if not isinstance(h, PrefectConsoleHandler)]
    yield root, other
    for lg, handlers in kept.items():
        lg.handlers[:] = handlers


def _console(stream: io.TextIOBase) -> PrefectConsoleHandler:
    handler = PrefectConsoleHandler(stream=stream, level=logging.INFO)  # type: ignore[arg-type]
    handler.setFormatter(PrefectFormatter(format="%(levelname)s | %(name)s - %(message)s"))
    handler.set_name("console")
    return handler


def test_a_console_that_is_no_terminal_becomes_a_plain_handler_writing_the_same_line(
        loggers: tuple[logging.Logger, logging.Logger]) -> None:
    root, other = loggers
    stream = io.StringIO()
    rich = _console(stream)
    root.handlers[:] = [rich]
    other.handlers[:] = [rich]
    record = logging.LogRecord("prefect.flow_runs", logging.INFO, __file__, 1,
                               "Finished in state %s :warning: [bold]x[/] http://h:1/a", ("Completed()",), None)
    expected = rich.format(record) + "\n"

    assert plain_console() == 1
    plain = root.handlers[0]
    assert type(plain) is logging.StreamHandler
    assert other.handlers[0] is plain, "a handler two loggers shared stays shared"
    assert (plain.stream, plain.level, plain.formatter, plain.get_name()) == (stream, logging.INFO, rich.formatter,
                                                                               "console")
    plain.handle(record)
    assert stream.getvalue() == expected  # Rich would have made :warning: an emoji
    assert plain_console() == 0, "nothing left to swap"


def test_a_console_on_a_terminal_keeps_prefects_handler(loggers: tuple[logging.Logger, logging.Logger]) -> None:
    root, _ = loggers
    main, side = os.openpty()
    with open(side, "w") as terminal:
        rich = _console(terminal)  # type: ignore[arg-type]
        root.handlers[:] = [rich]
        assert plain_console() == 0
        assert root.handlers == [rich]
    os.close(main)


def test_filters_of_prefects_handler_go_with_it(loggers: tuple[logging.Logger, logging.Logger]) -> None:
    root, _ = loggers
    stream = io.StringIO()
    rich = _console(stream)
    rich.addFilter(logging.Filter("kept"))
    root.handlers[:] = [rich]
    plain_console()
    root.handlers[0].handle(logging.LogRecord("dropped", logging.INFO, __file__, 1, "no", (), None))
    root.handlers[0].handle(logging.LogRecord("kept.child", logging.INFO, __file__, 1, "yes", (), None))
    assert stream.getvalue().splitlines() == ["INFO | kept.child - yes"]
