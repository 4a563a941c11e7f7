"""Two processes joined by a pipe, where the reader sees end-of-file only if the writer succeeded.

``producer | consumer`` in a shell gives the consumer end-of-file as soon as the producer exits,
whatever its exit code: ``restic backup --stdin`` then commits a snapshot of a truncated dump.
Here the executor keeps its own copy of the pipe's write end open while the producer runs. When
the producer exits 0, that copy is closed and the consumer finishes normally; when it fails, the
consumer is interrupted first (restic then removes its lock and commits nothing) and only then
sees the pipe close. The bytes go straight from one process to the other: nothing is copied
through Python and nothing is written to disk.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, IO

TAIL_LINES = 20
INTERRUPT_GRACE_SECONDS = 30.0  # restic needs a moment to remove its lock after SIGINT

LineHandler = Callable[[str], None]
_TERMINAL_CODES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # restic clears lines even when writing to a pipe


@dataclass
class Command:
    """One process of the pipeline: its argv (never through a shell) and environment."""

    argv: list[str]
    env: dict[str, str]
    interrupt: int = signal.SIGTERM
    """The signal that asks it to stop without finishing (restic: SIGINT)."""
    count: re.Pattern[str] | None = None
    """Count the stderr lines that match (e.g. psql's ``ERROR:`` lines)."""

    @property
    def name(self) -> str:
        return os.path.basename(self.argv[0])


@dataclass
class Ended:
    """How a process of the pipeline ended."""

    name: str
    returncode: int
    stderr_tail: list[str] = field(default_factory=list)
    interrupted: bool = False
    """The executor stopped it (because the other side failed)."""
    counted: int = 0
    """stderr lines that matched ``Command.count``."""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe(self) -> str:
        """``pg_dumpall exited with code 1`` / ``was killed by SIGKILL``."""
        if self.returncode < 0:
            try:
                sig = signal.Signals(-self.returncode).name
            except ValueError:
                sig = f"signal {-self.returncode}"
            return f"{self.name} was killed by {sig}"
        return f"{self.name} exited with code {self.returncode}"


class Pipeline:
    """Runs ``producer | consumer`` as described in the module docstring."""

    def __init__(self, producer: Command, consumer: Command, *, consumer_stdout: LineHandler | IO[bytes] | None = None,
                 log: IO[str] | None = None) -> None:
        self.producer = producer
        self.consumer = consumer
        self.consumer_stdout = consumer_stdout
        self.log = log or sys.stderr
        self._log_lock = threading.Lock()
        self._procs: list[subprocess.Popen[bytes]] = []
        self.stopped_by: int | None = None

    # -------------------------------------------------------------- output

    def _emit(self, line: str) -> None:
        with self._log_lock:
            self.log.write(line + "\n")
            self.log.flush()

    def _pump(self, stream: IO[bytes], tail: deque[str] | None, handler: LineHandler | None,
              count: re.Pattern[str] | None = None, counter: list[int] | None = None) -> threading.Thread:
        def run() -> None:
            for raw in iter(stream.readline, b""):
                line = _TERMINAL_CODES.sub("", raw.decode("utf-8", errors="replace")).rstrip("\r\n")
                if handler is not None:
                    handler(line)
                    continue
                if tail is not None and line.strip():
                    tail.append(line)
                if count is not None and counter is not None and count.search(line):
                    counter[0] += 1
                self._emit(line)
            stream.close()
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    # -------------------------------------------------------------- running

    def stop(self, signum: int) -> None:
        """From a signal handler: stop the producer; the normal path then interrupts the consumer."""
        self.stopped_by = signum
        if not self._procs:
            return
        producer, consumer = self._procs
        if producer.poll() is None:
            _signal(producer, signal.SIGTERM)
        else:  # the dump is complete and restic is finishing: stop it without a snapshot
            _signal(consumer, self.consumer.interrupt)

    def run(self) -> tuple[Ended, Ended]:
        read_end, write_end = os.pipe()
        producer_tail: deque[str] = deque(maxlen=TAIL_LINES)
        consumer_tail: deque[str] = deque(maxlen=TAIL_LINES)
        handler = self.consumer_stdout if callable(self.consumer_stdout) else None
        stdout_target = subprocess.PIPE if self.consumer_stdout is None or callable(self.consumer_stdout) \
            else self.consumer_stdout
        try:
            consumer = subprocess.Popen(self.consumer.argv, env=self.consumer.env, stdin=read_end,
                                        stdout=stdout_target, stderr=subprocess.PIPE)
        except OSError as exc:
            os.close(read_end)
            os.close(write_end)
            return Ended(self.producer.name, 0), Ended(self.consumer.name, 127, [_start_error(self.consumer, exc)])
        os.close(read_end)
        try:
            producer = subprocess.Popen(self.producer.argv, env=self.producer.env, stdin=subprocess.DEVNULL,
                                        stdout=write_end, stderr=subprocess.PIPE)
        except OSError as exc:
            _signal(consumer, self.consumer.interrupt)
            os.close(write_end)
            _wait(consumer)
            return Ended(self.producer.name, 127, [_start_error(self.producer, exc)]), \
                Ended(self.consumer.name, consumer.returncode, [], interrupted=True)
        self._procs = [producer, consumer]
        counted = [[0], [0]]
        pumps = [self._pump(producer.stderr, producer_tail, None,  # type: ignore[arg-type]
                            self.producer.count, counted[0]),
                 self._pump(consumer.stderr, consumer_tail, None,  # type: ignore[arg-type]
                            self.consumer.count, counted[1])]
        if consumer.stdout is not None:
            pumps.append(self._pump(consumer.stdout, consumer_tail if handler is None else None, handler))

        # A consumer that dies early (bad repository, full disk) must not leave the producer blocked.
        def watch_consumer() -> None:
            consumer.wait()
            if producer.poll() is None:
                _signal(producer, signal.SIGTERM)
        threading.Thread(target=watch_consumer, daemon=True).start()

        producer.wait()
        interrupted = False
        if producer.returncode != 0 and consumer.poll() is None:
            _signal(consumer, self.consumer.interrupt)  # before the pipe closes: no end-of-file
            interrupted = True
        os.close(write_end)
        _wait(consumer)
        for pump in pumps:
            pump.join()
        return (Ended(self.producer.name, producer.returncode, list(producer_tail), counted=counted[0][0]),
                Ended(self.consumer.name, consumer.returncode, list(consumer_tail), interrupted=interrupted,
                      counted=counted[1][0]))


def _signal(proc: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it has ended already
        proc.send_signal(signum)


def _wait(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.wait(timeout=INTERRUPT_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _start_error(command: Command, exc: OSError) -> str:
    return f"cannot start {command.argv[0]}: {exc.strerror or exc}"
