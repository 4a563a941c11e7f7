"""The worker's console: plain lines where nobody reads colours.

Prefect logs to the console through Rich (``PrefectConsoleHandler``): per line it asks the
environment whether it writes to a terminal, highlights the line and renders it as segments, even
when the stream is a Pod's log or a file and the colours are dropped. A worker prints every line of
every run it holds (~30 per backup session), and at a fleet's minute that was 7 % of its CPU
(``bench/fanout.py`` at 200 targets, py-spy). Where the stream is not a terminal the handler is
swapped for the standard library's ``StreamHandler`` with the same formatter, level and filters:
the same text, one write per line. On a terminal Prefect's handler stays, colours and all.
"""

from __future__ import annotations

import logging
from typing import IO

from prefect.logging.handlers import PrefectConsoleHandler

__all__ = ["plain_console"]


def _is_terminal(stream: IO[str] | None) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def plain_console() -> int:
    """Swap each of Prefect's console handlers that writes to no terminal for a plain one, on every
    logger that has it (one handler is shared by several loggers: it stays shared); returns how many
    handlers were swapped."""
    loggers = [logging.getLogger()] + [logger for logger in logging.Logger.manager.loggerDict.values()
                                       if isinstance(logger, logging.Logger)]
    plain: dict[int, logging.Handler] = {}
    for logger in loggers:
        for i, handler in enumerate(logger.handlers):
            if not isinstance(handler, PrefectConsoleHandler) or _is_terminal(handler.stream):
                continue
            if id(handler) not in plain:
                swapped = logging.StreamHandler(handler.stream)
                swapped.setLevel(handler.level)
                swapped.setFormatter(handler.formatter)
                for f in handler.filters:
                    swapped.addFilter(f)
                swapped.set_name(handler.get_name())
                plain[id(handler)] = swapped
            logger.handlers[i] = plain[id(handler)]
    return len(plain)
