"""A light JSON request on raw asyncio streams, the ``/api/v1`` counterpart of :mod:`bench.sse`: a
new connection per request (as the ``/build`` workloads open one), so a ``POST /api/v1/builds``
costs the client what a cached ``/build`` stream costs it, and the two rates compare."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass
class JSONResult:
    status: int = 0
    body: Any = None
    error: str | None = None

    def describe(self) -> str:
        return self.error or f"HTTP {self.status}: {json.dumps(self.body)[:200]}"


async def request(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> JSONResult:
    """``method url`` with ``body`` as JSON; the answer's status and JSON body (``Connection: close``,
    so the body is read to the end of the connection whatever its framing)."""
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    payload = b"" if body is None else json.dumps(body).encode()
    result = JSONResult()
    writer: asyncio.StreamWriter | None = None
    try:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        content = f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n" if body is not None else ""
        writer.write(f"{method} {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: application/json\r\n"
                     f"{content}{extra}Connection: close\r\n\r\n".encode() + payload)
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
        result.status = int(head.split(" ", 2)[1])
        raw = await reader.read()
        if "transfer-encoding: chunked" in head:
            raw = _unchunk(raw)
        result.body = json.loads(raw) if raw else None
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
        result.error = f"{type(e).__name__}: {e}"
    finally:
        if writer is not None:
            writer.transport.abort()
    return result


def _unchunk(raw: bytes) -> bytes:
    out = b""
    while raw:
        size_line, _, raw = raw.partition(b"\r\n")
        size = int(size_line.split(b";", 1)[0], 16)
        if size == 0:
            break
        out, raw = out + raw[:size], raw[size + 2:]
    return out
