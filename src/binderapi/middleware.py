"""Pure ASGI middleware (no buffering, so event streams flow): Host check, client address, bans, CORS.

Each ``__call__`` is a plain function returning the awaitable to run (the app's, or a refusal),
not a coroutine awaiting it: a coroutine would stay suspended, with its frame, for as long as the
request lasts, and a ``/build`` stream may last an hour (about 0.5 KiB a stream for the three,
5 MB at 10,000 idle streams).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable
from http import HTTPStatus

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .events import FailedEvent, encode
from .netutil import NetworkSet, client_address, host_name


async def refuse(scope: Scope, send: Send, base_url: str, message: str, status: int) -> None:
    """A refusal before any work: on ``/build`` the one-event ``failed`` stream every client reads
    (with the HTTP status, as BinderHub answers), on ``/api/v1`` a problem (RFC 9457), elsewhere a
    JSON ``detail``."""
    if scope["path"].startswith(base_url + "build/"):
        content_type = b"text/event-stream"
        body = encode(FailedEvent(message=message + "\n", status_code=status))
    elif scope["path"].startswith(base_url + "api/v1/"):
        content_type = b"application/problem+json"
        body = json.dumps({"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status,
                           "detail": message, "instance": scope["path"]}).encode()
    else:
        content_type = b"application/json"
        body = json.dumps({"detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class HostHeaderMiddleware:
    """Refuses (400) a request whose ``Host`` is not a well-formed ``host[:port]``, or not one of
    ``allowed_hosts`` when that is set. The host becomes ``binder_launch_host``, the appendix's
    ``binder_url`` (baked into a shared image), the launch event's origin and the token origin:
    ``Host: evil.example PATH=/tmp/evil`` must never get that far. A request without ``Host``
    (HTTP/1.0) is answered: its URL is the server's own address."""

    def __init__(self, app: ASGIApp, *, base_url: str, allowed_hosts: list[str]) -> None:
        self.app = app
        self.base_url = base_url
        self.allowed = frozenset(allowed_hosts)
        self.probe_paths = {base_url + "health", base_url + "versions"}  # probes use the pod's address

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        hosts = [value for key, value in scope.get("headers", ()) if key == b"host"]
        if hosts:
            name = host_name(hosts[0].decode("latin-1")) if len(hosts) == 1 else None
            if name is None:
                return refuse(scope, send, self.base_url, "Invalid Host header: expected one host[:port]", 400)
            if self.allowed and name not in self.allowed and scope["path"] not in self.probe_paths:
                return refuse(scope, send, self.base_url, f"Unknown host {name}: not one of this service's names", 400)
        return self.app(scope, receive, send)


class ClientAddressMiddleware:
    """Sets ``scope["state"]["client_ip"]`` and refuses clients from ``ban_networks``.

    It runs inside uvicorn's ``ProxyHeadersMiddleware`` (wired in the app), which alone decides how
    much of ``X-Forwarded-For`` to believe.

    ``/health`` and ``/versions`` stay open so federation peers can probe. A banned ``/build``
    request gets HTTP 403 (as from BinderHub) with the body every stream client reads: a ``failed`` event.
    """

    def __init__(self, app: ASGIApp, *, base_url: str, banned: NetworkSet) -> None:
        self.app = app
        self.base_url = base_url
        self.banned = banned
        self.open_paths = {base_url + "health", base_url + "versions"}

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        ip = client_address(scope.get("client"))
        scope.setdefault("state", {})["client_ip"] = ip
        if self.banned and scope["path"] not in self.open_paths:
            label = self.banned.match(ip)
            if label is not None:
                return refuse(scope, send, self.base_url, f"Requests from {label} are not allowed", 403)
        return self.app(scope, receive, send)


class CORSMiddleware:
    """BinderHub's CORS: ``cors_allow_origin`` on every response (``*`` on ``/versions`` when
    unset), ``cache-control`` allowed as a request header, and an empty 200 for preflights; a
    ``/build`` stream's ``X-Build-Id`` is readable there and a resuming ``Last-Event-ID`` allowed."""

    def __init__(self, app: ASGIApp, *, allow_origin: str, base_url: str) -> None:
        self.app = app
        self.allow_origin = allow_origin.encode()
        self.versions_path = base_url + "versions"
        self.api_v1_path = base_url + "api/v1/"

    def _headers(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        origin = self.allow_origin or (b"*" if scope["path"] == self.versions_path else b"")
        headers = [(b"access-control-allow-headers",
                    b"cache-control, authorization, content-type, x-xsrftoken, last-event-id")]
        if origin:
            # a page of another origin may read which build its /build stream joined
            headers += [(b"access-control-allow-origin", origin), (b"access-control-expose-headers", b"x-build-id")]
        return headers

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        extra = self._headers(scope)
        if scope["path"].startswith(self.api_v1_path):  # a frontend reads where a new build is
            extra.append((b"access-control-expose-headers", b"location, retry-after"))
        if scope["method"] == "OPTIONS":
            methods = b"GET, HEAD, OPTIONS, POST, DELETE" if scope["path"].startswith(self.api_v1_path) else b"GET, HEAD, OPTIONS"
            return self._preflight(send, extra, methods)

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        return self.app(scope, receive, send_with_cors)

    @staticmethod
    async def _preflight(send: Send, extra: list[tuple[bytes, bytes]], methods: bytes) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [
            *extra, (b"access-control-allow-methods", methods), (b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
