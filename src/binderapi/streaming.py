"""The ``/build`` event stream as an ASGI response that stays cheap when thousands of clients wait.

A stream is mostly idle: clients wait minutes for a build, hearing a ``:keepalive`` comment every
``keepalive_interval``. sse-starlette's ``EventSourceResponse`` runs four tasks per stream in an
anyio task group (the stream, a ping loop, a disconnect listener, a shutdown watcher): about 50 KB
and a timer per stream, 670 MB and keepalives seconds late at 10,000 streams (docs/performance.md).
Here a stream is the request's own coroutine, the task making its frames and one small task
waiting for the client to leave; a single :class:`KeepaliveTicker` wakes the quiet ones.

Frames are complete ``data: ...\\n\\n`` byte strings made elsewhere (:func:`binderapi.events.encode`);
several made at once go out in one write, which never splits or merges an event.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.responses import Response

from .events import KEEPALIVE

#: a stream that has ended within this long is answered as one plain response
QUICK_ANSWER_SECONDS = 0.05


class FrameStream:
    """Runs a source of frames in a task, buffering what it makes until the response sends it.

    Most requests for an image that is already built, and every refusal, end within a
    millisecond; :meth:`finished_quickly` tells so, and :meth:`body` is then the whole answer.
    Otherwise :class:`EventStreamResponse` sends the frames as they come. Cancelling the stream
    (the client went away) cancels the source.
    """

    __slots__ = ("__weakref__", "_ended", "_frames", "_keepalive_due", "_loop", "_task", "_waiter", "last_sent")

    def __init__(self, source: AsyncIterator[bytes]) -> None:
        self._frames: list[bytes] = []  # a list: an empty deque costs half a kilobyte, per stream
        self._ended = False
        self._keepalive_due = False
        self._waiter: asyncio.Future[None] | None = None
        self._loop = asyncio.get_running_loop()
        self.last_sent = self._loop.time()
        self._task = asyncio.ensure_future(self._run(source))

    async def _run(self, source: AsyncIterator[bytes]) -> None:
        try:
            async for frame in source:
                if frame:
                    self._frames.append(frame)
                    self._wake()
        finally:
            self._ended = True
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def finished_quickly(self) -> bool:
        done, _ = await asyncio.wait((self._task,), timeout=QUICK_ANSWER_SECONDS)
        return bool(done)

    def body(self) -> bytes:
        """Everything the finished source made."""
        self._task.result()
        return b"".join(self._frames)

    def request_keepalive(self) -> None:
        self._keepalive_due = True
        self._wake()

    def cancel(self) -> None:
        """Stop the source and end the stream (its next chunk is the end)."""
        self._task.cancel()
        self._ended = True
        self._frames.clear()
        self._wake()

    async def next_chunk(self) -> bytes | None:
        """The frames made since the last call, else a keepalive when one is due; None at the end."""
        while True:
            if self._frames:
                chunk = b"".join(self._frames)
                self._frames.clear()
                break
            if self._ended:
                return None
            if self._keepalive_due:
                chunk = KEEPALIVE
                break
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        self._keepalive_due = False
        self.last_sent = self._loop.time()
        return chunk


class KeepaliveTicker:
    """One timer for every open stream: asks those quiet for ``interval`` for a keepalive.

    Runs only while streams are open, so nothing is left behind when the last one ends.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.tick = min(1.0, interval / 4)
        self._streams: set[FrameStream] = set()
        self._task: asyncio.Task[None] | None = None

    def add(self, stream: FrameStream) -> None:
        self._streams.add(stream)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    def discard(self, stream: FrameStream) -> None:
        self._streams.discard(stream)

    def __len__(self) -> int:
        return len(self._streams)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._streams:
            await asyncio.sleep(self.tick)
            due = loop.time() - self.interval
            for stream in self._streams:
                if stream.last_sent <= due:
                    stream.request_keepalive()


async def _client_gone(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class EventStreamResponse(Response):
    """``text/event-stream`` from a :class:`FrameStream`, with the ticker's keepalives."""

    media_type = "text/event-stream"

    def __init__(self, stream: FrameStream, ticker: KeepaliveTicker, headers: Mapping[str, str] | None = None) -> None:
        self.stream = stream
        self.ticker = ticker
        self.status_code = 200
        self.background = None
        self.init_headers({"x-accel-buffering": "no", **(headers or {})})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        stream = self.stream
        gone = asyncio.ensure_future(_client_gone(receive))
        gone.add_done_callback(lambda _: stream.cancel())
        self.ticker.add(stream)
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            while (chunk := await stream.next_chunk()) is not None:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if not gone.done():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self.ticker.discard(stream)
            gone.cancel()
            stream.cancel()
