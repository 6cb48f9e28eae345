"""The /build response: streams that end at once are one plain body, others stream with the
shared ticker's keepalives, and a client leaving stops the stream's source."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from binderapi.events import KEEPALIVE
from binderapi.streaming import EventStreamResponse, FrameStream, KeepaliveTicker


async def quick() -> AsyncIterator[bytes]:
    yield b"data: {}\n\n"
    await asyncio.sleep(0)  # a cache hit still awaits
    yield b'data: {"phase":"ready"}\n\n'


async def test_a_stream_that_ends_at_once_is_one_body():
    stream = FrameStream(quick())
    assert await stream.finished_quickly() is True
    assert stream.body() == b'data: {}\n\ndata: {"phase":"ready"}\n\n'


class Client:
    """The ASGI side of one HTTP connection: records what is sent, can hang up."""

    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.gone = asyncio.Event()
        self.got_body = asyncio.Event()

    async def receive(self) -> dict:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        self.sent.append(message)
        if message["type"] == "http.response.body":
            self.got_body.set()
            if not message.get("more_body"):
                self.gone.set()  # as uvicorn: receive() answers http.disconnect once the response is complete

    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")

    def ended(self) -> bool:
        return any(m["type"] == "http.response.body" and not m.get("more_body") for m in self.sent)


async def test_a_slow_stream_sends_every_frame_in_order_then_ends():
    release = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"
        await release.wait()
        yield b"data: 2\n\n"
        yield b"data: 3\n\n"

    stream = FrameStream(slow())
    assert await stream.finished_quickly() is False
    client, ticker = Client(), KeepaliveTicker(3600)
    response = asyncio.ensure_future(EventStreamResponse(stream, ticker).__call__({}, client.receive, client.send))
    await asyncio.wait_for(client.got_body.wait(), 5)
    release.set()
    await asyncio.wait_for(response, 5)
    assert client.sent[0]["type"] == "http.response.start"
    assert dict(client.sent[0]["headers"])[b"content-type"].startswith(b"text/event-stream")
    assert client.body() == b"data: 1\n\ndata: 2\n\ndata: 3\n\n" and client.ended()
    assert len(ticker) == 0  # an ended stream leaves the ticker


async def test_quiet_streams_get_keepalives_from_one_ticker():
    never = asyncio.Event()

    async def waiting() -> AsyncIterator[bytes]:
        yield b"data: waiting\n\n"
        await never.wait()

    ticker = KeepaliveTicker(0.05)
    clients = [Client() for _ in range(3)]
    streams = [FrameStream(waiting()) for _ in clients]
    responses = [asyncio.ensure_future(EventStreamResponse(s, ticker).__call__({}, c.receive, c.send))
                 for s, c in zip(streams, clients, strict=True)]
    for client in clients:
        while client.body().count(KEEPALIVE) < 2:
            client.got_body.clear()
            await asyncio.wait_for(client.got_body.wait(), 5)
    assert len(ticker) == 3
    for client in clients:
        assert client.body().startswith(b"data: waiting\n\n")
        assert set(client.body().removeprefix(b"data: waiting\n\n").split(KEEPALIVE)) == {b""}
        client.gone.set()
    await asyncio.wait_for(asyncio.gather(*responses), 5)
    assert len(ticker) == 0


async def test_a_client_leaving_stops_the_source():
    stopped = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"data: tick\n\n"
                await asyncio.sleep(0.02)
        finally:
            stopped.set()

    stream = FrameStream(endless())
    assert await stream.finished_quickly() is False
    client = Client()
    response = asyncio.ensure_future(EventStreamResponse(stream, KeepaliveTicker(3600)).__call__({}, client.receive, client.send))
    await asyncio.wait_for(client.got_body.wait(), 5)
    client.gone.set()
    await asyncio.wait_for(stopped.wait(), 5)
    await asyncio.wait_for(response, 5)
    assert not client.ended()  # nothing is sent to a client that left


async def test_a_source_ending_before_the_response_starts_still_completes_it():
    release = asyncio.Event()

    async def late() -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"
        await release.wait()
        yield b"data: 2\n\n"

    stream = FrameStream(late())
    assert await stream.finished_quickly() is False
    release.set()
    assert await stream.finished_quickly() is True  # ended, with no response attached yet
    client = Client()
    await asyncio.wait_for(EventStreamResponse(stream, KeepaliveTicker(3600)).__call__({}, client.receive, client.send), 5)
    assert client.body() == b"data: 1\n\ndata: 2\n\n" and client.ended()


async def test_a_reader_too_slow_for_one_keepalive_gets_no_pile_of_them():
    never = asyncio.Event()

    async def waiting() -> AsyncIterator[bytes]:
        yield b"data: waiting\n\n"
        await never.wait()

    class StalledClient(Client):
        """Takes the first frame, then stops reading: every later write waits (a full socket)."""

        def __init__(self) -> None:
            super().__init__()
            self.writes_waiting = 0
            self.stalled = asyncio.Event()

        async def send(self, message: dict) -> None:
            if message["type"] == "http.response.body" and self.got_body.is_set():
                self.writes_waiting += 1
                self.stalled.set()
                await self.gone.wait()
                return
            await super().send(message)

    ticker = KeepaliveTicker(0.02)
    client = StalledClient()
    response = asyncio.ensure_future(EventStreamResponse(FrameStream(waiting()), ticker).__call__({}, client.receive, client.send))
    await asyncio.wait_for(client.stalled.wait(), 5)
    await asyncio.sleep(ticker.interval * 10)  # ten more keepalives due while the first cannot be written
    assert client.writes_waiting == 1
    client.gone.set()
    await asyncio.wait_for(response, 5)


async def test_a_written_keepalive_is_not_kept():
    """Each of 10,000 idle streams kept its last keepalive's done task (and coroutine): 5 MB."""
    never = asyncio.Event()

    async def waiting() -> AsyncIterator[bytes]:
        yield b"data: waiting\n\n"
        await never.wait()

    client, stream = Client(), FrameStream(waiting())
    response = asyncio.ensure_future(EventStreamResponse(stream, KeepaliveTicker(1.0)).__call__({}, client.receive, client.send))
    while KEEPALIVE not in client.body():
        client.got_body.clear()
        await asyncio.wait_for(client.got_body.wait(), 5)
    for _ in range(100):  # the write's task ends, then its done callback runs
        if stream._keepalive is None:
            break
        await asyncio.sleep(0)
    assert stream._keepalive is None
    client.gone.set()
    await asyncio.wait_for(response, 5)
