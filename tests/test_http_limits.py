"""Limits on request heads (httpserver.py), against the real uvicorn server on a socket: what a
client sends is written raw, as a flooding or slow-loris client would."""

from __future__ import annotations

import asyncio
import contextlib
import sys

import pytest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from fixtures.server import make_settings, serve

#: the service starts the Docker backend (build_class docker), which checks the engine at start-up
pytestmark = pytest.mark.docker


def settings(**binderhub):
    return make_settings(build_class="docker", use_registry=False, **binderhub)


def request(*headers: str, path: str = "/versions") -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *headers, "Connection: close", "", ""]
    return "\r\n".join(lines).encode()


async def exchange(port: int, data: bytes, *, drip: bytes = b"", interval: float = 0.0, drips: int = 0) -> bytes:
    """Send ``data`` (then ``drip`` every ``interval`` seconds), and read the whole answer. The
    server may close while we still write: that is an answer too."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def write() -> None:
        with contextlib.suppress(ConnectionError):
            writer.write(data)
            await writer.drain()
            for _ in range(drips):
                await asyncio.sleep(interval)
                writer.write(drip)
                await writer.drain()

    writing = asyncio.create_task(write())
    try:
        answer = await asyncio.wait_for(reader.read(), 60)
    except ConnectionResetError:
        answer = b""
    writing.cancel()
    with contextlib.suppress(asyncio.CancelledError, ConnectionError):
        await writing
    writer.close()
    return answer


def status(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split(b" ", 2)[1])


@pytest.mark.parametrize("size", [1024**2, 8 * 1024**2])
async def test_a_huge_header_is_431(size):
    async with serve(settings()) as svc:
        answer = await exchange(svc.server.config.port, request("X-Big: " + "a" * size))
    assert status(answer) == 431
    assert answer.endswith(b"Request header fields too large")


async def test_a_head_under_the_limit_is_served():
    async with serve(settings()) as svc:
        answer = await exchange(svc.server.config.port, request("Cookie: " + "a" * 60_000))
        bigger = await exchange(svc.server.config.port, request("Cookie: " + "a" * 70_000))
    assert status(answer) == 200 and status(bigger) == 431


@pytest.mark.parametrize("count", [101, 20_000])
async def test_too_many_headers_is_431(count):
    async with serve(settings()) as svc:
        answer = await exchange(svc.server.config.port, request(*(f"X-H{i}: v" for i in range(count))))
    assert status(answer) == 431
    assert answer.endswith(b"Too many request header fields")


async def test_limits_are_settings():
    async with serve(settings(max_request_headers=200, max_request_header_size="1M")) as svc:
        many = await exchange(svc.server.config.port, request(*(f"X-H{i}: v" for i in range(150))))
        big = await exchange(svc.server.config.port, request("Cookie: " + "a" * 500_000))
    assert status(many) == status(big) == 200


async def test_a_slow_loris_head_is_408_and_disconnected():
    async with serve(settings(request_header_timeout=1)) as svc:
        # one header line every 0.2 s, for up to 60 s: the server hangs up long before
        answer = await exchange(svc.server.config.port, b"GET /versions HTTP/1.1\r\nHost: 127.0.0.1\r\n",
                                drip=b"X-Slow: 1\r\n", interval=0.2, drips=300)
    assert status(answer) == 408
    assert answer.endswith(b"Request header not received in time")


async def test_a_silent_connection_is_408_and_disconnected():
    async with serve(settings(request_header_timeout=1)) as svc:
        answer = await exchange(svc.server.config.port, b"")
    assert status(answer) == 408


async def test_keep_alive_requests_get_a_fresh_clock():
    """The clock runs for a head only, not between requests nor while an answer streams."""
    async with serve(settings(request_header_timeout=1)) as svc:
        reader, writer = await asyncio.open_connection("127.0.0.1", svc.server.config.port)
        answers = []
        for _ in range(2):
            writer.write(b"GET /versions HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
            await reader.readexactly(length)
            answers.append(status(head))
            await asyncio.sleep(1.5)  # idle longer than the head timeout (within uvicorn's 5 s keep-alive)
        writer.close()
    assert answers == [200, 200]


async def test_a_connection_past_its_head_keeps_no_timer_and_a_compact_dict():
    """What 10,000 idle /build streams hold: 10,000 connections past their heads. None keeps its
    head timer, and the limits' state lives in slots: the connection's ``__dict__`` stays the
    compact, key-sharing one of uvicorn's own protocol (CPython gives up key sharing past 30 keys,
    and six more attributes made it an ordinary dict: 1,584 bytes instead of 296)."""
    async with serve(settings()) as svc:
        reader, writer = await asyncio.open_connection("127.0.0.1", svc.server.config.port)
        writer.write(b"GET /versions HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        assert status(head) == 200
        [connection] = svc.server.server_state.connections  # kept alive, idle
        plain = HttpToolsProtocol(config=svc.server.config, server_state=svc.server.server_state, app_state={})
        assert connection._head_timer is None
        # a connected protocol has a few more keys than a fresh one (288 or 296 bytes, both
        # key-sharing); an ordinary dict would be 1,584
        assert sys.getsizeof(vars(connection)) < 2 * sys.getsizeof(vars(plain))
        writer.close()
