"""Requests let into httpx's connection pool no more at once than it has connections.

httpcore (1.0.9) keeps the requests waiting for a connection in a list and, whenever a request
starts or ends, walks every waiting request against every connection, and every idle connection
against all the others; a connection that frees up is offered to every waiting request, and the
losers walk again. At a fleet's minute ~200 of the runs' requests wait at once for the shared
client's connections: a third of the worker's CPU went there (py-spy on ``bench/fanout.py``; the
upstream fix, encode/httpcore#1035, is not released). Waiting here instead costs nothing per
waiter (an ``asyncio.Semaphore``), and the pool never has more requests than connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import TracebackType

import httpx

__all__ = ["AdmittedTransport", "admit"]


class AdmittedTransport(httpx.AsyncBaseTransport):
    """``inner``, with at most ``slots`` requests in it at a time: a request holds its slot until its
    response is closed (httpx closes each response once it is read, or when reading it fails)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, slots: int) -> None:
        self.inner = inner
        self.slots = slots
        self._free = asyncio.Semaphore(slots)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await self._free.acquire()
        try:
            response = await self.inner.handle_async_request(request)
        except BaseException:
            self._free.release()
            raise
        response.stream = _Releasing(response.stream, self._free)
        return response

    async def __aenter__(self) -> AdmittedTransport:
        await self.inner.__aenter__()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None = None, exc_value: BaseException | None = None,
                        traceback: TracebackType | None = None) -> None:
        await self.inner.__aexit__(exc_type, exc_value, traceback)

    async def aclose(self) -> None:
        await self.inner.aclose()


class _Releasing(httpx.AsyncByteStream):
    """A response's body; closing it frees the request's slot (once)."""

    def __init__(self, stream: httpx.SyncByteStream | httpx.AsyncByteStream, free: asyncio.Semaphore) -> None:
        assert isinstance(stream, httpx.AsyncByteStream)  # an async transport's response
        self._stream = stream
        self._free: asyncio.Semaphore | None = free

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            free, self._free = self._free, None
            if free is not None:
                free.release()


def admit(client: httpx.AsyncClient, slots: int) -> bool:
    """Put ``client``'s transport (the one its base URL uses) behind ``slots`` admissions. False, and
    the client unchanged, when its transport is not the plain pooled one httpx builds (an ASGI app,
    a transport of the user's)."""
    inner = getattr(client, "_transport", None)  # httpx keeps it here; no public setter exists
    if not isinstance(inner, httpx.AsyncHTTPTransport):
        return False
    client._transport = AdmittedTransport(inner, slots)
    return True
