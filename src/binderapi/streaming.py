"""The ``/build`` event stream as an ASGI response that stays cheap when thousands of clients wait.

A stream is mostly idle: clients wait minutes for a build, hearing a ``:keepalive`` comment every
``keepalive_interval``. sse-starlette's ``EventSourceResponse`` runs four tasks per stream in an
anyio task group (the stream, a ping loop, a disconnect listener, a shutdown watcher): about 50 KB
and a timer per stream, 670 MB and keepalives seconds late at 10,000 streams (docs/performance.md).
Here a stream costs one task besides the request's own coroutine: the task making the frames
writes them itself, the request's coroutine only waits for the client to leave, and a single
:class:`KeepaliveTicker` writes keepalives to the streams that have been quiet.

Frames are complete ``data: ...\\n\\n`` byte strings made elsewhere (:func:`binderapi.events.encode`);
frames made before the response started go out in one write, which never splits or merges an event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.responses import Response

from .events import KEEPALIVE

log = logging.getLogger(__name__)

#: a stream that has ended within this long is answered as one plain response
QUICK_ANSWER_SECONDS = 0.05


def _body(chunk: bytes, more: bool = True) -> dict[str, Any]:
    return {"type": "http.response.body", "body": chunk, "more_body": more}


class FrameStream:
    """Runs a source of frames in a task; buffers them until a response attaches, then writes them.

    Most requests for an image that is already built, and every refusal, end within a
    millisecond; :meth:`finished_quickly` tells so, and :meth:`body` is then the whole answer.
    Otherwise :class:`EventStreamResponse` attaches its ``send`` and the task writes each frame as
    it comes, and the end of the response when the source ends. :meth:`cancel` (the client left)
    stops the source.
    """

    __slots__ = ("__weakref__", "_frames", "_keepalive", "_loop", "_send", "_task", "ended", "last_sent")

    def __init__(self, source: AsyncIterator[bytes]) -> None:
        self._frames: list[bytes] = []  # a list: an empty deque costs half a kilobyte, per stream
        self._send: Any = None
        self._keepalive: asyncio.Future[None] | None = None  # the keepalive being written, while it is
        self.ended = False
        self._loop = asyncio.get_running_loop()
        self.last_sent = self._loop.time()
        self._task = asyncio.ensure_future(self._run(source))

    async def _run(self, source: AsyncIterator[bytes]) -> None:
        try:
            async for frame in source:
                if not frame:
                    continue
                if self._send is None:
                    self._frames.append(frame)
                else:
                    await self.write(frame)
        except Exception:  # the source turns errors into `failed` events; this is a bug, not a hang
            log.exception("An event stream broke off")
        finally:
            self.ended = True
        if self._send is not None:  # completing the response also ends the request's wait
            await self._send(_body(b"", more=False))

    async def finished_quickly(self) -> bool:
        done, _ = await asyncio.wait((self._task,), timeout=QUICK_ANSWER_SECONDS)
        return bool(done)

    async def wait_for(self, other: asyncio.Future[Any], seconds: float) -> None:
        """Until ``other`` is done or the source has ended, at most ``seconds``."""
        await asyncio.wait((other, self._task), timeout=seconds, return_when=asyncio.FIRST_COMPLETED)

    def body(self) -> bytes:
        """Everything the finished source made."""
        self._task.result()
        return b"".join(self._frames)

    async def attach(self, send: Any) -> None:
        """Write what was made so far, then let the task write the rest (and the end) itself."""
        while self._frames:  # more may come while a write waits
            chunk = b"".join(self._frames)
            self._frames.clear()
            await self.write(chunk, send)
        self._send = send  # no await since the buffer was seen empty: nothing is lost or reordered
        if self.ended:
            await send(_body(b"", more=False))

    async def write(self, chunk: bytes, send: Any = None) -> None:
        self.last_sent = self._loop.time()
        await (send or self._send)(_body(chunk))

    def keepalive(self) -> None:
        """Write ``:keepalive`` now, in a task of its own: a slow reader must not hold up the ticker.
        While a reader is too slow to take the last one, no other piles up behind it."""
        if self._send is None or self.ended or self._keepalive is not None:
            return
        self.last_sent = self._loop.time()
        self._keepalive = asyncio.ensure_future(self._send(_body(KEEPALIVE)))
        self._keepalive.add_done_callback(self._keepalive_written)

    def _keepalive_written(self, task: asyncio.Future[None]) -> None:
        # dropped once written: a done task and its coroutine kept per idle stream were 5 MB at 10,000
        self._keepalive = None
        _log_failure(task)

    def cancel(self) -> None:
        self._task.cancel()


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("Writing a keepalive failed: %s", task.exception())


class KeepaliveTicker:
    """One timer for every open stream: writes a keepalive to those quiet for ``interval``.

    Runs only while streams are open, so nothing is left behind when the last one ends.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.tick = min(0.5, interval / 10)  # how late a keepalive may be, at most; a scan is cheap
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
                    stream.keepalive()


class EventStreamResponse(Response):
    """``text/event-stream`` from a :class:`FrameStream`, with the ticker's keepalives.

    The request's coroutine waits on ``receive()``: the server answers it with ``http.disconnect``
    when the client leaves, and also once the response is complete.
    """

    media_type = "text/event-stream"

    def __init__(self, stream: FrameStream, ticker: KeepaliveTicker, headers: Mapping[str, str] | None = None) -> None:
        self.stream = stream
        self.ticker = ticker
        self.status_code = 200
        self.background = None
        self.init_headers({"x-accel-buffering": "no", **(headers or {})})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        stream = self.stream
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            await stream.attach(send)
            self.ticker.add(stream)
            while (await receive())["type"] != "http.disconnect":
                pass
        finally:
            self.ticker.discard(stream)
            stream.cancel()
