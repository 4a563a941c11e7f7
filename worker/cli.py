"""``stashflow worker --pool P [--limit N]``: the stashflow worker as a command.

The worker's event loop runs on its own thread so that SIGTERM and SIGINT stay with the main
thread (Prefect's flow engine installs a SIGTERM handler only on the main thread; with many runs
in one loop that handler would interrupt whichever run happened to be executing). The first
signal stops taking runs and ends the running ones with their cleanup (``worker.py``); the
command then prints what it did and exits 0. A second signal exits at once (143/130).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import sys
import threading
from typing import Any

SIGNAL_NAMES: dict[int, str] = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT"}


def cmd_worker(args: argparse.Namespace) -> int:
    from stashflow.addons.errors import InputError, Location
    from stashflow.flows import cli as flows_cli

    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be at least 1, not {args.limit}", code="invalid-argument",
                         location=flows_cli.option_at(args.argv, "--limit"), field="--limit",
                         hint="leave it out for no limit")
    if args.prefetch_seconds is not None and not 0 <= args.prefetch_seconds <= 3600:  # NaN fails too
        raise InputError(f"--prefetch-seconds must be between 0 and 3600, not {args.prefetch_seconds}",
                         code="invalid-argument", location=flows_cli.option_at(args.argv, "--prefetch-seconds"),
                         field="--prefetch-seconds", hint="how far ahead of their time runs are claimed; leave it "
                                                          "out for 60")
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise InputError("a worker needs a Prefect server: PREFECT_API_URL is not set", code="prefect-unavailable",
                         location=Location(flows_cli.COMMAND_LINE, 1), field="PREFECT_API_URL",
                         hint="export PREFECT_API_URL=http://HOST:4200/api (the server the deployments are on)")
    if args.catalog:
        os.environ[flows_cli.CATALOG_ENV] = os.pathsep.join(os.path.abspath(p) for p in args.catalog)
    flows_cli.quiet_prefect_tracebacks(args.verbose)
    from .console import plain_console
    from .worker import StashflowWorker

    plain_console()  # before the first run logs: Rich's console per line costs where no terminal reads it
    worker = StashflowWorker(work_pool_name=args.pool, work_queues=args.work_queue or None, name=args.name,
                             limit=args.limit, prefetch_seconds=args.prefetch_seconds)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    outcome: dict[str, Any] = {}
    _tune_collector()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            outcome["tally"] = loop.run_until_complete(worker.serve(stop))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            outcome["error"] = exc
        finally:
            loop.close()

    received: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        if received:  # a second signal: no more waiting for cleanup
            os._exit(128 + signum)
        received.append(signum)
        reason = f"the stashflow worker {worker.name} stopped ({SIGNAL_NAMES.get(signum, signum)})"
        loop.call_soon_threadsafe(worker.request_stop, reason)
        loop.call_soon_threadsafe(stop.set)

    previous = {s: signal.signal(s, on_signal) for s in SIGNAL_NAMES}
    thread = threading.Thread(target=serve, name="stashflow-worker", daemon=True)
    try:
        thread.start()
        while thread.is_alive():
            thread.join(0.5)  # short joins, so the signal handler runs promptly
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if "error" in outcome:
        raise outcome["error"]
    tally = outcome["tally"]
    print(f"stashflow worker {worker.name} stopped: {tally.started} run(s) started, {tally.finished} finished, "
          f"{tally.cancelled} cancelled, {tally.stopped} ended by the stop, {tally.handed_back} handed back",
          file=sys.stderr)
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser("worker", help="run the flow runs of a work pool concurrently in this process")
    p.add_argument("--pool", required=True, help="the work pool to take flow runs from (created if missing)")
    p.add_argument("--limit", type=int, help="at most this many flow runs at once (default: no limit)")
    p.add_argument("--prefetch-seconds", type=float, metavar="S",
                   help="claim runs due within this many seconds, so each waits here ready for its time (default: "
                        "$PREFECT_WORKER_PREFETCH_SECONDS if set, else 60)")
    p.add_argument("--name", help="the worker's name in Prefect (default: a generated one)")
    p.add_argument("--work-queue", action="append", metavar="QUEUE", help="only these queues of the pool")
    p.add_argument("--catalog", action="extend", nargs="+", metavar="PATH",
                   help="Addon/Function files or folders (default: $STASHFLOW_CATALOG, else the built-in catalog)")
    p.set_defaults(func=cmd_worker)


def _tune_collector() -> None:
    """Fewer, cheaper collector passes for a process holding hundreds of runs. What it has made so far
    (Prefect's and stashflow's modules, ~170,000 objects that live as long as it does) is kept out of the
    full passes; and young objects are collected every 10,000 allocations, not 700, so that the older
    generations, and the full passes that walk the whole heap, come ten times less often. At a fleet's
    minute the runs' objects set those passes off every few seconds: at 200 runs, 18 of them took 6.9 s
    of the worker's ~60 s of CPU (``bench/fanout.py``)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
