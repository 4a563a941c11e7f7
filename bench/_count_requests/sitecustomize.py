"""Loaded by every Python process the fan-out bench starts (on PYTHONPATH): counts the process's
Kubernetes API requests (kubernetes_asyncio's REST client) and Prefect API requests (httpx to
$PREFECT_API_URL), and writes them to $STASHFLOW_BENCH_COUNTS/<pid>.json at exit and every 5 s.
It patches the two modules only when the process imports them, so a process that never talks to
an API pays nothing (no import, no memory)."""

from __future__ import annotations

import atexit
import importlib.abc
import importlib.machinery
import json
import os
import sys
import threading

_DIR = os.environ.get("STASHFLOW_BENCH_COUNTS")
_COUNTS = {"kubernetes": 0, "prefect": 0}
_KINDS: dict[str, int] = {}  # Kubernetes requests by method and path shape ("GET namespaces/*/jobs")
_PREFECT_KINDS: dict[str, int] = {}  # Prefect requests by method and path shape ("POST flow_runs/*/set_state")
_EVENTS: dict[str, int] = {}  # events sent to the Prefect API's websocket, by name
_CALLERS: dict[str, int] = {}  # with STASHFLOW_BENCH_CALLERS=1: Prefect requests by shape and calling code
_WANT_CALLERS = os.environ.get("STASHFLOW_BENCH_CALLERS") == "1"


def _callers() -> str:
    """The innermost stashflow and Prefect frames that led to a request (not httpx's own)."""
    frames, frame = [], sys._getframe(3)
    while frame is not None and len(frames) < 4:
        name = frame.f_code.co_filename
        if ("prefect" in name or "stashflow" in name or "/main/" in name) and "/client/base.py" not in name:
            frames.append(f"{name.rsplit('/', 2)[-2]}/{name.rsplit('/', 1)[-1]}:{frame.f_code.co_name}")
        frame = frame.f_back
    return " < ".join(frames)
_API = os.environ.get("PREFECT_API_URL", "")


def _write() -> None:
    try:
        with open(os.path.join(_DIR, f"{os.getpid()}.json"), "w") as out:
            json.dump({**_COUNTS, "argv": sys.argv[:4], "kubernetes_by": _KINDS, "prefect_by": _PREFECT_KINDS,
                       "events": _EVENTS, "prefect_callers": _CALLERS}, out)
    except OSError:
        pass


def _patch_rest(module) -> None:  # type: ignore[no-untyped-def]
    original = module.RESTClientObject.request

    async def request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        _COUNTS["kubernetes"] += 1
        method, url = (list(args) + [kwargs.get("method"), kwargs.get("url")])[:2]
        path = str(url).split("://", 1)[-1].split("?", 1)[0].split("/")[1:]
        start = 2 if path[:1] == ["api"] else 3  # api/v1/... or apis/GROUP/VERSION/...
        shape = "/".join(seg if i % 2 == 0 else "*" for i, seg in enumerate(path[start:]))
        key = f"{method} {shape}"
        _KINDS[key] = _KINDS.get(key, 0) + 1
        return await original(self, *args, **kwargs)
    module.RESTClientObject.request = request


def _count_prefect(request) -> None:  # type: ignore[no-untyped-def]
    url = str(request.url)
    if not (_API and url.startswith(_API)):
        return
    _COUNTS["prefect"] += 1
    parts = url[len(_API):].split("?", 1)[0].strip("/").split("/")
    shape = "/".join("*" if len(seg) == 36 and seg.count("-") == 4 else seg for seg in parts)
    key = f"{request.method} {shape}"
    _PREFECT_KINDS[key] = _PREFECT_KINDS.get(key, 0) + 1
    if _WANT_CALLERS:
        key = f"{key} <- {_callers()}"
        _CALLERS[key] = _CALLERS.get(key, 0) + 1


def _patch_httpx(module) -> None:  # type: ignore[no-untyped-def]
    original_async, original_sync = module.AsyncClient.send, module.Client.send

    async def send_async(self, request, *args, **kwargs):  # type: ignore[no-untyped-def]
        _count_prefect(request)
        return await original_async(self, request, *args, **kwargs)

    def send_sync(self, request, *args, **kwargs):  # type: ignore[no-untyped-def]
        _count_prefect(request)
        return original_sync(self, request, *args, **kwargs)
    module.AsyncClient.send, module.Client.send = send_async, send_sync


def _patch_events(module) -> None:  # type: ignore[no-untyped-def]
    original = module.PrefectEventsClient._emit

    async def emit(self, event):  # type: ignore[no-untyped-def]
        _EVENTS[event.event] = _EVENTS.get(event.event, 0) + 1
        return await original(self, event)
    module.PrefectEventsClient._emit = emit


_PATCHES = {"kubernetes_asyncio.client.rest": _patch_rest, "httpx": _patch_httpx,
            "prefect.events.clients": _patch_events}


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):  # type: ignore[no-untyped-def]
        if name not in _PATCHES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        loader, patch = spec.loader, _PATCHES[name]

        class Loader(importlib.abc.Loader):
            def create_module(self, spec):  # type: ignore[no-untyped-def]
                return loader.create_module(spec)

            def exec_module(self, module):  # type: ignore[no-untyped-def]
                loader.exec_module(module)
                patch(module)
        spec.loader = Loader()
        return spec


if _DIR:
    sys.meta_path.insert(0, _Finder())
    atexit.register(_write)

    def _every_5s() -> None:
        while True:
            threading.Event().wait(5)
            _write()
    threading.Thread(target=_every_5s, daemon=True, name="bench-counts").start()
