"""The /build router answers streams that end at once with one plain response, others stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from binderapi.routers.build import QUICK_ANSWER_SECONDS, QuickOrStreaming


async def quick() -> AsyncIterator[bytes]:
    yield b"data: {}\n\n"
    await asyncio.sleep(0)  # a cache hit still awaits
    yield b'data: {"phase":"ready"}\n\n'


async def test_a_stream_that_ends_at_once_is_one_body():
    stream = QuickOrStreaming(quick())
    assert await stream.finished_quickly() is True
    assert stream.body() == b'data: {}\n\ndata: {"phase":"ready"}\n\n'


async def test_a_slow_stream_streams_every_frame_in_order():
    release = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield b"1"
        await release.wait()
        yield b"2"
        yield b"3"

    stream = QuickOrStreaming(slow())
    assert await stream.finished_quickly() is False
    received = []
    async for frame in stream:
        received.append(frame)
        if frame == b"1":
            release.set()
    assert received == [b"1", b"2", b"3"]


async def test_leaving_the_stream_stops_its_source():
    stopped = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"tick"
                await asyncio.sleep(QUICK_ANSWER_SECONDS)
        finally:
            stopped.set()

    stream = QuickOrStreaming(endless())
    assert await stream.finished_quickly() is False
    relay = aiter(stream)
    assert await anext(relay) == b"tick"
    await relay.aclose()  # what the response does when the client goes away
    await asyncio.wait_for(stopped.wait(), 5)
