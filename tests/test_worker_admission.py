"""The worker's API client lets no more requests into its pool than it has slots, and every way a
request ends gives its slot back (``worker/admission.py``). Against a real HTTP server on a local
socket, through httpx's own pooled transport."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import pytest

from stashflow.worker.admission import AdmittedTransport, admit

SLOTS = 4


@dataclass
class Server:
    """Answers each request once ``gate`` is open; counts the requests it holds at once. A request for
    /drop is answered by closing the connection."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    holding: int = 0
    most: int = 0
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                async with self.arrived:
                    self.holding += 1
                    self.most = max(self.most, self.holding)
                    self.arrived.notify_all()
                try:
                    if b" /drop " in head.split(b"\r\n", 1)[0]:
                        writer.close()
                        return
                    await self.gate.wait()
                finally:
                    self.holding -= 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def until(self, test: Callable[[], bool]) -> None:
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(test), timeout=10)


@asynccontextmanager
async def serving() -> AsyncIterator[tuple[Server, httpx.AsyncClient]]:
    server = Server()
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    limits = httpx.Limits(max_connections=SLOTS, max_keepalive_connections=SLOTS)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits) as client:
        assert admit(client, SLOTS)
        yield server, client
    listener.close()
    await listener.wait_closed()


def free_slots(client: httpx.AsyncClient) -> int:
    transport = client._transport
    assert isinstance(transport, AdmittedTransport)
    return transport._free._value


def test_a_burst_waits_outside_the_pool_and_every_request_is_answered() -> None:
    async def scenario() -> tuple[int, list[int], int]:
        async with serving() as (server, client):
            burst = [asyncio.create_task(client.get(f"/r{i}")) for i in range(40)]
            await server.until(lambda: server.holding == SLOTS)
            for _ in range(50):  # every request has run as far as it can
                await asyncio.sleep(0)
            transport = client._transport
            assert isinstance(transport, AdmittedTransport)
            in_pool = len(transport.inner._pool._requests)  # httpcore's list, walked at every change
            server.gate.set()
            answers = await asyncio.gather(*burst)
            return in_pool, [r.status_code for r in answers], free_slots(client)

    in_pool, statuses, free = asyncio.run(scenario())
    assert in_pool == SLOTS  # not 40: the other 36 wait outside it
    assert statuses == [200] * 40
    assert free == SLOTS


def test_cancelled_and_failed_requests_give_their_slots_back() -> None:
    async def scenario() -> tuple[int, int, list[int]]:
        async with serving() as (server, client):
            waiting = [asyncio.create_task(client.get(f"/w{i}")) for i in range(SLOTS + 3)]
            await server.until(lambda: server.holding == SLOTS)
            for task in waiting:  # some in the pool, some still waiting for a slot
                task.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)
            after_cancel = free_slots(client)
            with pytest.raises(httpx.TransportError):
                await client.get("/drop")
            after_failure = free_slots(client)
            server.gate.set()
            again = await asyncio.gather(*(client.get(f"/a{i}") for i in range(SLOTS * 2)))
            return after_cancel, after_failure, [r.status_code for r in again]

    after_cancel, after_failure, statuses = asyncio.run(scenario())
    assert (after_cancel, after_failure) == (SLOTS, SLOTS)
    assert statuses == [200] * (SLOTS * 2)


def test_a_transport_that_is_not_httpx_pooled_one_is_left_alone() -> None:
    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        raise AssertionError("never called")

    async def scenario() -> bool:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
            admitted = admit(client, SLOTS)
            assert isinstance(client._transport, httpx.ASGITransport)
            return admitted

    assert asyncio.run(scenario()) is False
