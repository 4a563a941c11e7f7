"""Running one fuzz case in-process, bounded in time and memory, and judging its output.

A case is ``stashflow <argv>`` through ``stashflow.deployments.cli.main`` (every command)
with stdout and stderr captured. It fails when the command hangs past ``CASE_SECONDS``
(SIGALRM), grows the process by more than ``CASE_MEMORY`` (``ru_maxrss``; every
``TRACE_EVERY``-th case also under ``tracemalloc`` for its Python peak), exits other than
0/1, prints a traceback or an ``internal-error``, or prints an error line that is not
``FILE:LINE: CODE: ...`` (``<command line>`` as FILE with LINE >= 1).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import resource
import signal
import time
import tracemalloc
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

CASE_SECONDS = 5.0
CASE_MEMORY = 256 * 2**20  # bytes a case may add to the process's peak RSS
TRACE_EVERY = 10
HEAVY = ("laughs", "deep", "alias", "merge", "x" * 20)  # cases always traced: where memory could go

ERROR_LINE = re.compile(r"^(?:<command line>:[1-9][0-9]*|[^:<\n][^:\n]*:[0-9]+): ([a-z][a-z-]*): \S")
SUMMARY_LINE = re.compile(r"^[0-9]+ problem\(s\) in [0-9]+ file\(s\)$")


@dataclass
class Outcome:
    command: str
    what: str
    rc: int | str
    out: str
    err: str
    seconds: float
    peak: int | None  # tracemalloc peak (bytes), for sampled cases
    rss_growth: int
    codes: list[str] = field(default_factory=list)
    failure: str | None = None


@dataclass
class Figures:
    """What the suite prints at the end."""

    cases: Counter = field(default_factory=Counter)
    outcomes: dict[str, Counter] = field(default_factory=dict)
    slowest: tuple[float, str, str] = (0.0, "", "")
    peak: tuple[int, str, str] = (0, "", "")
    max_rss: int = 0
    failures: list[str] = field(default_factory=list)
    checks: Counter = field(default_factory=Counter)

    def add(self, o: Outcome) -> None:
        self.cases[o.command] += 1
        key = "ok" if o.rc == 0 else (o.codes[0] if o.codes else str(o.rc))
        self.outcomes.setdefault(o.command, Counter())[key] += 1
        if o.seconds > self.slowest[0]:
            self.slowest = (o.seconds, o.command, o.what)
        if o.peak is not None and o.peak > self.peak[0]:
            self.peak = (o.peak, o.command, o.what)
        self.max_rss = max(self.max_rss, _max_rss())
        if o.failure:
            self.failures.append(f"{o.command} [{o.what}]: {o.failure}")

    def lines(self) -> list[str]:
        out = [f"cases: {sum(self.cases.values())} ("
               + ", ".join(f"{c} {n}" for c, n in sorted(self.cases.items())) + ")"]
        for command, counter in sorted(self.outcomes.items()):
            out.append(f"  {command}: " + ", ".join(f"{k} {v}" for k, v in counter.most_common()))
        for name, n in sorted(self.checks.items()):
            out.append(f"  re-checked {name}: {n}")
        out.append(f"slowest case: {self.slowest[0]:.3f} s ({self.slowest[1]}: {self.slowest[2]})")
        out.append(f"peak Python memory of a traced case: {self.peak[0] / 2**20:.1f} MiB ({self.peak[1]}: {self.peak[2]}); "
                   f"process peak RSS: {self.max_rss / 2**20:.0f} MiB")
        out.append(f"failures: {len(self.failures)}")
        out += [f"  {f}" for f in self.failures[:20]]
        return out


FIGURES = Figures()


class _Hang(BaseException):
    """A case past its time bound (a BaseException, so the code under test cannot catch it)."""


def _max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def judge(o: Outcome) -> str | None:
    """Why the outcome is a failure of stashflow, or None."""
    text = o.out + o.err
    if o.rc == "hang":
        return f"hung past {CASE_SECONDS} s"
    if "Traceback (most recent call last)" in text:
        return "printed a traceback:\n" + text[-2000:]
    if o.rc not in (0, 1):
        return f"exit code {o.rc}: {text[-500:]!r}"
    if o.rss_growth > CASE_MEMORY:
        return f"grew the process by {o.rss_growth / 2**20:.0f} MiB"
    if o.peak is not None and o.peak > CASE_MEMORY:
        return f"Python peak {o.peak / 2**20:.0f} MiB"
    if o.rc == 1:
        lines = [line for line in (o.err.splitlines() + (o.out.splitlines() if o.command == "validate" else []))
                 if line and not SUMMARY_LINE.match(line)]
        if not lines:
            return "exit 1 without an error line"
        for line in lines:
            match = ERROR_LINE.match(line)
            if not match:
                return f"error line not FILE:LINE: CODE: ...: {line[:300]!r}"
            o.codes.append(match.group(1))
        if "internal-error" in o.codes:
            return "internal-error: " + "\n".join(lines)[:1500]
        from stashflow.addons.errors import CODES

        unknown = [c for c in o.codes if c not in CODES]
        if unknown:
            return f"codes not in CODES: {unknown}"
    return None


def run_case(command: str, argv: Sequence[str], what: str, *, index: int = 0) -> Outcome:
    """``stashflow <argv>`` in-process, bounded; the outcome is judged and counted."""
    from stashflow.deployments.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_env = dict(os.environ)
    hung = False

    def on_alarm(signum: int, frame: object) -> None:
        nonlocal hung
        hung = True
        raise _Hang()

    trace = index % TRACE_EVERY == 0 or any(k in what for k in HEAVY)
    previous = signal.signal(signal.SIGALRM, on_alarm)
    rss_before = _max_rss()
    if trace:
        tracemalloc.start()
    started = time.perf_counter()
    rc: int | str
    try:
        signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(list(argv))
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 2
    except _Hang:
        rc = "hang"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        seconds = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1] if trace else None
        if trace:
            tracemalloc.stop()
        os.environ.clear()
        os.environ.update(saved_env)
    if hung:
        rc = "hang"
    outcome = Outcome(command, what, rc, out.getvalue(), err.getvalue(), seconds, peak, _max_rss() - rss_before)
    outcome.failure = judge(outcome)
    FIGURES.add(outcome)
    return outcome


def case_count(default: int) -> int:
    """Cases per command: ``STASHFLOW_FUZZ_CASES`` when set (more on demand), else ``default``."""
    value = os.environ.get("STASHFLOW_FUZZ_CASES")
    return int(value) if value else default
