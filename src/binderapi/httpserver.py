"""uvicorn as binderapi serves it: the one place its options are chosen, plus the limits on request
heads that uvicorn does not have.

The Dockerfile serves uvicorn directly, with no proxy in front to cap what a client sends. uvicorn's
httptools protocol takes a head of any size (1 MB and 8 MB were answered 200), any number of headers
(20,000 were), and waits for a head forever (a slow-loris client keeps a connection, and its buffers,
as long as it likes). h11's only limit, ``h11_max_incomplete_event_size``, answers 400 and has no
clock either. So the httptools protocol is subclassed with three checks, each answered as HTTP says:
431 for a head too large or with too many fields, 408 for one that does not arrive in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

#: how long a refused connection is drained before it is closed
LINGER_SECONDS = 2.0


@dataclass(frozen=True)
class HeadLimits:
    max_bytes: int  # request line and header fields together
    max_fields: int
    timeout: float  # seconds from connection (or the request's first byte) to the end of its head


class _Refused(Exception):
    """Raised from a parser callback to stop parsing; the refusal is sent by ``send_400_response``."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with :class:`HeadLimits` (set on a subclass by :func:`protocol_class`).

    Bytes are counted twice: exactly, as the parser hands over the URL and each header (a head
    that arrives in one read), and raw, for every read that ends inside an unfinished head (a
    head arriving in many reads: the parser would buffer all of it before calling back)."""

    limits: HeadLimits

    # Slots, not instance attributes: uvicorn's protocol already sets 27, and CPython (3.11+) keeps
    # a compact key-sharing __dict__ only up to 30 keys. Six more made every connection's __dict__
    # an ordinary dict, 296 -> 1,584 bytes: 13 MB more RSS at 10,000 idle /build streams.
    __slots__ = ("_in_head", "_head_bytes", "_raw_head_bytes", "_head_fields", "_head_timer", "_refusal")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # a head is expected: the connection's first, or the next one
        self._head_bytes = 0
        self._raw_head_bytes = 0
        self._head_fields = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._refusal: tuple[int, str] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()  # a connection that never sends a head is a slow-loris one too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:
            return  # refused: what still comes is read and dropped until the lingering close
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            self._raw_head_bytes += len(data)
            if self._raw_head_bytes > self.limits.max_bytes:
                self._refuse(431, "Request header fields too large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = self._raw_head_bytes = self._head_fields = 0
        if self._head_timer is None:
            self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._count(len(url), 0)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4, 1)  # "name: value\r\n", before the parser keeps it
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._raw_head_bytes = 0
        self._disarm_head_timer()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a parser error; a callback's refusal is what stopped the parser."""
        if self._refusal is None:
            return super().send_400_response(msg)
        status, reason = self._refusal
        self._send_and_close(status, reason)

    def _count(self, size: int, fields: int) -> None:
        self._head_bytes += size
        self._head_fields += fields
        if self._head_fields > self.limits.max_fields:
            self._refusal = (431, "Too many request header fields")
            raise _Refused
        if self._head_bytes > self.limits.max_bytes:
            self._refusal = (431, "Request header fields too large")
            raise _Refused

    def _refuse(self, status: int, reason: str) -> None:
        self._refusal = (status, reason)
        self._send_and_close(status, reason)

    def _send_and_close(self, status: int, reason: str) -> None:
        self._disarm_head_timer()
        if self.transport.is_closing():
            return
        self.logger.info("%s:%s - refused before the app: %d %s", *(self.client or ("?", 0)), status, reason)
        body = reason.encode()
        self.transport.write(b"".join([
            STATUS_LINE[status],
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]))
        # A lingering close, as nginx does: closing with the client's unread bytes in our buffer
        # sends a reset that can destroy the answer before the client reads it. So the write side
        # is shut, the rest is read and dropped, and the connection closed soon in any case.
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.limits.timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head:
            self._refuse(408, "Request header not received in time")


def protocol_class(limits: HeadLimits) -> type[LimitedHttpToolsProtocol]:
    return type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), {"limits": limits})


def uvicorn_config(app: Any, binderhub: Any, **options: Any) -> Any:
    """The uvicorn configuration for ``binderhub`` settings (``options`` override, e.g. in tests)."""
    import uvicorn

    limits = HeadLimits(binderhub.max_request_header_size, binderhub.max_request_headers,
                        binderhub.request_header_timeout)
    return uvicorn.Config(app, **{
        "host": binderhub.ip or "0.0.0.0",
        "port": binderhub.port,
        "log_config": None,  # ours, from setup_logging
        "proxy_headers": False,  # X-Forwarded-For: the app's ProxyHeadersMiddleware, with trusted_proxies
        "server_header": False,
        "timeout_graceful_shutdown": 5,
        "http": protocol_class(limits),
        **options,
    })


#: what stops binderapi gracefully: Ctrl-C, and ``docker stop`` or Kubernetes
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Server(uvicorn.Server):
    """uvicorn's server, with ``on_stop`` run as it stops, and the stop signals left to
    :class:`StopSignals`.

    ``on_stop`` starts as soon as the server stops taking connections, while uvicorn waits for the
    open ones (``timeout_graceful_shutdown``): it ends what the event streams wait on, so each
    stream ends with its final event instead of being cancelled (a traceback) when the wait is over.

    uvicorn catches SIGINT and SIGTERM only while it serves, and raises them again once it is done
    so that the process ends "as the signal would have". binderapi still has its services to close
    then (launches cut short leave hub users to remove), and the signal raised again ends that:
    SIGTERM's default action kills the process before a single clean-up, and SIGINT makes asyncio
    cancel them half-way, with a KeyboardInterrupt traceback."""

    def __init__(self, config: uvicorn.Config, on_stop: Callable[[], Awaitable[None]] | None = None,
                 on_started: Callable[[], object] | None = None) -> None:
        super().__init__(config)
        self.on_stop = on_stop
        self.on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.on_started is not None:
            self.on_started()  # a worker of ``--workers`` tells its parent (binderapi.workers)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # scheduled now, it first runs once uvicorn has closed its listeners (before its first await)
        stopping = asyncio.ensure_future(self.on_stop()) if self.on_stop is not None else None
        try:
            await super().shutdown(sockets)
        finally:
            if stopping is not None:
                await stopping


class StopSignals:
    """SIGINT and SIGTERM, caught for the command's whole run: start-up, serving and the clean-ups
    after it. The first stops serving gracefully (one that comes during start-up, as soon as the
    server is up); a second SIGINT stops waiting for open connections, as uvicorn's does. The
    clean-ups after serving always run, each within its own bound (``Launcher.cleanup_timeout``),
    and the process then exits 0: a requested stop that finished is a success."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._server: Server | None = None

    def attach(self, server: Server) -> Server:
        self._server = server
        for sig in self.received:
            server.handle_exit(sig, None)
        return server

    def _handle(self, sig: int) -> None:
        self.received.append(sig)
        if self._server is not None:
            self._server.handle_exit(sig, None)

    def __enter__(self) -> StopSignals:
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self._handle, sig)
        return self

    def __exit__(self, *exc: object) -> None:
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
