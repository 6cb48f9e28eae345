"""HTTP for providers: the shared client, with retries, per-hop network checks and safe messages.

Upstreams fail in two ways that matter to a user. A 4xx is an answer ("no such ref") and is returned
at once. A 5xx, a timeout or a refused connection is a hiccup: it is retried a bounded number of
times under the retry policy (:mod:`binderapi.retry`), and only then reported as "<upstream> is unreachable", naming the
host but never a token. Redirects are followed by hand so that every hop passes the
``denied_networks`` check (a DOI may point anywhere), and each hop's connection is pinned to the
address checked (:class:`PinningTransport`).

Every answer is bounded: its body is streamed and cut off past ``max_response_size``, each attempt
may take ``request_timeout`` in all (not per read, which a server dripping bytes never trips), and
the whole call (attempts, waits between them, redirect hops) ``request_deadline``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx

from .. import retry
from ..errors import UpstreamError, UpstreamRateLimitError
from ._net import DEFAULT_PORTS, Pin, check_url, denied_networks, display_url, host_of

if TYPE_CHECKING:
    from ..settings import models
    from .base import ProviderContext

log = logging.getLogger(__name__)

REDIRECTS = (301, 302, 303, 307, 308)
#: request extension carrying the :class:`~._net.Pin` a request must connect through
PIN = "binderapi.pin"


#: ``(host, port, address)`` the connection being made for the current request must use
_CONNECT_TO: ContextVar[tuple[str, int, str] | None] = ContextVar("binderapi_connect_to", default=None)


class _PinnedNetworkBackend(httpcore.AsyncNetworkBackend):
    """Opens the connection of a pinned request to its pinned address. Everything else about the
    connection (pooled under the host name, TLS server name and certificate check) stays the host's."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self.inner = inner

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,  # noqa: ASYNC109 (httpcore interface)
                          local_address: str | None = None, socket_options: Any = None) -> Any:
        target = _CONNECT_TO.get()
        if target is not None and (host, port) == target[:2]:
            host = target[2]
        return await self.inner.connect_tcp(host, port, timeout=timeout, local_address=local_address,
                                            socket_options=socket_options)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,  # noqa: ASYNC109
                                  socket_options: Any = None) -> Any:
        return await self.inner.connect_unix_socket(path, timeout=timeout, socket_options=socket_options)

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class PinningTransport(httpx.AsyncHTTPTransport):
    """httpx's transport, except that a request carrying a :data:`PIN` connects to the pinned
    address instead of resolving its host again. Connections stay pooled under the host name, so
    one is never reused for another name, and TLS names and verifies the host as usual.

    httpx has no public hook for where a connection goes, so this wraps the connection pool's
    network backend (``_pool._network_backend``); tests/test_providers_net.py fails if that changes.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        pool = self._pool
        if isinstance(pool, httpcore.AsyncConnectionPool):  # not through a proxy, which resolves itself
            pool._network_backend = _PinnedNetworkBackend(pool._network_backend)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        pin: Pin | None = request.extensions.get(PIN)
        if pin is None:
            return await super().handle_async_request(request)
        port = request.url.port or DEFAULT_PORTS[request.url.scheme]
        token = _CONNECT_TO.set((request.url.raw_host.decode("ascii"), port, pin.address))
        try:
            return await super().handle_async_request(request)
        finally:
            _CONNECT_TO.reset(token)


def make_client(limits: httpx.Limits | None = None, **kwargs: Any) -> httpx.AsyncClient:
    """The providers' HTTP client: never follows redirects itself (:func:`fetch` checks every hop)
    and honours pins. (``limits`` go to the transport: a client ignores them given one.)"""
    transport = PinningTransport(**({"limits": limits} if limits else {}))
    return httpx.AsyncClient(transport=transport, follow_redirects=False, **kwargs)


async def fetch(
    context: ProviderContext,
    config: models.RepoProvider,
    upstream: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    auth: httpx.Auth | tuple[str, str] | None = None,
    follow_redirects: bool = False,
    max_redirects: int = 10,
) -> httpx.Response:
    """GET ``url`` through the shared client; ``upstream`` names it in errors (``"GitHub"``).

    Returns any response below 500 (including redirects when not following them), its body read
    in full (at most ``max_response_size``). Credentials (``headers``/``auth``) are only sent to the
    first host: a redirect elsewhere drops them. The whole call is bounded by ``request_deadline``.
    """
    try:
        async with asyncio.timeout(config.request_deadline):
            return await _fetch(context, config, upstream, url, headers=headers, params=params, auth=auth,
                                follow_redirects=follow_redirects, max_redirects=max_redirects)
    except TimeoutError:
        raise UpstreamError(
            f"{upstream} ({host_of(url)}) did not answer within {config.request_deadline:g} seconds "
            "(retries and redirects included). Please try again later.") from None


async def _fetch(
    context: ProviderContext,
    config: models.RepoProvider,
    upstream: str,
    url: str,
    *,
    headers: dict[str, str] | None,
    params: dict[str, str] | None,
    auth: httpx.Auth | tuple[str, str] | None,
    follow_redirects: bool,
    max_redirects: int,
) -> httpx.Response:
    denied = denied_networks(config.denied_networks)
    first_host = urlsplit(url).netloc
    for _hop in range(max_redirects + 1):
        pin = await check_url(url, denied, upstream)
        same_host = urlsplit(url).netloc == first_host
        response = await _get_with_retries(
            context, config, upstream, url,
            headers=headers if same_host else None,
            params=params if _hop == 0 else None,
            auth=auth if same_host else None,
            extensions={PIN: pin} if pin else None,
        )
        location = response.headers.get("location")
        if not (follow_redirects and response.status_code in REDIRECTS and location):
            return response
        url = urljoin(str(response.url), location)
    raise UpstreamError(f"{upstream} redirected more than {max_redirects} times; giving up.")


class _Hiccup(Exception):
    """A failed attempt another may cure (5xx, timeout, broken connection); its text is the reason."""


async def _get_with_retries(
    context: ProviderContext,
    config: models.RepoProvider,
    upstream: str,
    url: str,
    **kwargs: Any,
) -> httpx.Response:
    """GET ``url``, each attempt bounded by ``request_timeout``, under the retry policy."""

    async def attempt() -> httpx.Response:
        started = time.monotonic()
        try:
            async with asyncio.timeout(config.request_timeout):
                response = await _get_bounded(context, config, upstream, url, **kwargs)
        except (httpx.TimeoutException, TimeoutError):
            raise _Hiccup(f"no answer within {config.request_timeout:g} seconds") from None
        except httpx.TransportError as e:
            raise _Hiccup(_transport_reason(e)) from None
        log.debug("GET %s -> %s (%.3fs)", display_url(str(response.url)), response.status_code,
                  time.monotonic() - started)
        if response.status_code >= 500:
            raise _Hiccup(f"HTTP {response.status_code}")
        return response

    return await retry.retrying(
        attempt, attempts=config.retries, delay=config.retry_delay,
        what=f"{upstream} request to {display_url(url)}", transient=lambda e: isinstance(e, _Hiccup),
        exhausted=lambda e: UpstreamError(
            f"{upstream} ({host_of(url)}) is unreachable or failing ({e}). Please try again later."))


async def _get_bounded(
    context: ProviderContext,
    config: models.RepoProvider,
    upstream: str,
    url: str,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    auth: httpx.Auth | tuple[str, str] | None = None,
    extensions: dict[str, Any] | None = None,
) -> httpx.Response:
    """GET ``url``, reading at most ``max_response_size`` bytes of (decoded) body: a larger answer
    is abandoned, its connection closed, before it can fill the memory."""
    request = context.http.build_request("GET", url, headers=headers, params=params,
                                         timeout=config.request_timeout, extensions=extensions)
    response = await context.http.send(request, auth=auth if auth is not None else httpx.USE_CLIENT_DEFAULT,
                                       stream=True)
    limit = config.max_response_size
    chunks: list[bytes] = []
    size = 0
    try:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _too_large(upstream, url, limit)
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > limit:
                raise _too_large(upstream, url, limit)
            chunks.append(chunk)
    finally:
        await response.aclose()
    # the body is decoded already: the new response must not decode it again
    kept = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in ("content-encoding", "content-length")]
    return httpx.Response(response.status_code, headers=kept, content=b"".join(chunks),
                          request=response.request, extensions=response.extensions)


def _too_large(upstream: str, url: str, limit: int) -> UpstreamError:
    return UpstreamError(f"{upstream} ({host_of(url)}) sent an answer larger than {_size(limit)}, the most "
                         "this service reads (RepoProvider.max_response_size).")


def _size(n: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= factor:
            return f"{n / factor:g} {unit}"
    return f"{n} bytes"


def _transport_reason(error: httpx.TransportError) -> str:
    if isinstance(error, httpx.ConnectError):
        return "could not connect"
    if isinstance(error, httpx.RemoteProtocolError):
        return "the connection broke"
    return type(error).__name__


def rate_limit_error(upstream: str, response: httpx.Response, now: float | None = None) -> UpstreamRateLimitError | None:
    """An error saying when to retry, if ``response`` is a rate-limit refusal (403/429 with
    ``x-ratelimit-remaining: 0``, or 429 alone); else ``None``."""
    remaining = response.headers.get("x-ratelimit-remaining")
    if response.status_code not in (403, 429) or (remaining != "0" and response.status_code != 429):
        return None
    minutes = retry_minutes(response, now)
    when = f"in {minutes} minute{'s' if minutes != 1 else ''}" if minutes else "later"
    return UpstreamRateLimitError(f"{upstream} rate limit exceeded. Try again {when}.")


def retry_minutes(response: httpx.Response, now: float | None = None) -> int | None:
    """Minutes until the limit resets (rounded up, at least 1), from ``x-ratelimit-reset`` (an epoch
    time) or ``retry-after`` (seconds)."""
    now = time.time() if now is None else now
    seconds: float | None = None
    try:
        if "x-ratelimit-reset" in response.headers:
            seconds = float(response.headers["x-ratelimit-reset"]) - now
        elif "retry-after" in response.headers:
            seconds = float(response.headers["retry-after"])
    except ValueError:
        return None
    if seconds is None:
        return None
    return max(1, -(-int(seconds) // 60))


def json_body(upstream: str, response: httpx.Response) -> Any:
    """The JSON body, or an :class:`UpstreamError` saying the upstream answered nonsense."""
    try:
        return response.json()
    except ValueError:
        raise UpstreamError(f"{upstream} ({response.url.host}) sent an answer that is not JSON.") from None
