"""Pure ASGI middleware (no buffering, so event streams flow): client address, bans, CORS."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .events import FailedEvent, encode
from .netutil import NetworkSet, client_address


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        ip = client_address(scope.get("client"))
        scope.setdefault("state", {})["client_ip"] = ip
        if self.banned and scope["path"] not in self.open_paths:
            label = self.banned.match(ip)
            if label is not None:
                return await self._refuse(scope, send, f"Requests from {label} are not allowed")
        await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, send: Send, message: str) -> None:
        if scope["path"].startswith(self.base_url + "build/"):
            status, content_type = 403, b"text/event-stream"
            body = encode(FailedEvent(message=message + "\n", status_code=403))
        else:
            status, content_type = 403, b"application/json"
            body = json.dumps({"detail": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class CORSMiddleware:
    """BinderHub's CORS: ``cors_allow_origin`` on every response (``*`` on ``/versions`` when
    unset), ``cache-control`` allowed as a request header, and an empty 200 for preflights."""

    def __init__(self, app: ASGIApp, *, allow_origin: str, base_url: str) -> None:
        self.app = app
        self.allow_origin = allow_origin.encode()
        self.versions_path = base_url + "versions"

    def _headers(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        origin = self.allow_origin or (b"*" if scope["path"] == self.versions_path else b"")
        headers = [(b"access-control-allow-headers", b"cache-control, authorization, content-type, x-xsrftoken")]
        if origin:
            headers.append((b"access-control-allow-origin", origin))
        return headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        extra = self._headers(scope)
        if scope["method"] == "OPTIONS":
            await send({"type": "http.response.start", "status": 200, "headers": [
                *extra, (b"access-control-allow-methods", b"GET, HEAD, OPTIONS"), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_cors)


def request_state(scope_or_request: Any) -> dict[str, Any]:
    scope = getattr(scope_or_request, "scope", scope_or_request)
    return scope.setdefault("state", {})
