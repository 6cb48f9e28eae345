"""A light ``/build`` client on raw asyncio streams: one socket and one small buffer per stream, so
one process can hold 10,000 of them (httpx clients cost far more per connection, and the load
generator shares the 2 cores with the server it measures)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

FINAL_PHASES = ("ready", "failed")
KEEPALIVE = None  # what ``on_frame`` receives for a ``:keepalive`` comment


@dataclass
class StreamResult:
    status: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0  # request sent (connection opened) -> final event, or the error

    @property
    def final(self) -> dict[str, Any] | None:
        return self.events[-1] if self.events and self.events[-1].get("phase") in FINAL_PHASES else None

    @property
    def ok(self) -> bool:
        return self.error is None and self.final is not None and self.final.get("phase") == "ready"

    def describe(self) -> str:
        if self.error:
            return self.error
        final = self.final
        if final is None:
            return f"HTTP {self.status}, stream ended without a final event"
        return f"{final.get('phase')}: {(final.get('message') or '').strip()[:200]}"


async def _body(reader: asyncio.StreamReader, chunked: bool) -> AsyncIterator[bytes]:
    if not chunked:
        while data := await reader.read(65536):
            yield data
        return
    while True:
        size = int((await reader.readline()).split(b";", 1)[0], 16)
        if size == 0:
            return
        yield (await reader.readexactly(size + 2))[:-2]


def _parse(frame: bytes) -> dict[str, Any] | None:
    data = b"".join(line[5:] for line in frame.split(b"\n") if line.startswith(b"data:"))
    return json.loads(data) if data else KEEPALIVE


async def stream(url: str, *, until: tuple[str, ...] = FINAL_PHASES, keep_events: bool = True,
                 on_frame: Callable[[dict[str, Any] | None], None] | None = None,
                 headers: dict[str, str] | None = None) -> StreamResult:
    """GET ``url`` as an EventSource would and read frames until a phase in ``until`` (or the end).
    ``on_frame`` sees every frame as it arrives (``None`` for comments such as keepalives)."""
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    result = StreamResult()
    started = time.perf_counter()
    writer: asyncio.StreamWriter | None = None
    try:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: text/event-stream\r\n"
                     f"{extra}Connection: close\r\n\r\n".encode())
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
        result.status = int(head.split(" ", 2)[1])
        chunked = "transfer-encoding: chunked" in head
        buffer = b""
        async for data in _body(reader, chunked):
            buffer += data
            while b"\n\n" in buffer:
                frame, buffer = buffer.split(b"\n\n", 1)
                event = _parse(frame)
                if on_frame is not None:
                    on_frame(event)
                if event is None:
                    continue
                if keep_events or event.get("phase") in FINAL_PHASES:
                    result.events.append(event)
                if event.get("phase") in until:
                    return result
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
        result.error = f"{type(e).__name__}: {e}"
    finally:
        result.seconds = time.perf_counter() - started
        if writer is not None:
            writer.transport.abort()  # no lingering close handshake: the next request starts clean
    return result
