"""HTTP for providers: the shared client, with retries, per-hop network checks and safe messages.

Upstreams fail in two ways that matter to a user. A 4xx is an answer ("no such ref") and is returned
at once. A 5xx, a timeout or a refused connection is a hiccup: it is retried a bounded number of
times with exponential backoff, and only then reported as "<upstream> is unreachable", naming the
host but never a token. Redirects are followed by hand so that every hop passes the
``denied_networks`` check (a DOI may point anywhere).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import httpx

from ..errors import UpstreamError, UpstreamRateLimitError
from ._net import check_url, denied_networks, display_url, host_of

if TYPE_CHECKING:
    from ..settings import models
    from .base import ProviderContext

log = logging.getLogger(__name__)

REDIRECTS = (301, 302, 303, 307, 308)


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

    Returns any response below 500 (including redirects when not following them). Credentials
    (``headers``/``auth``) are only sent to the first host: a redirect elsewhere drops them.
    """
    denied = denied_networks(config.denied_networks)
    first_host = urlsplit(url).netloc
    for _hop in range(max_redirects + 1):
        await check_url(url, denied, upstream)
        same_host = urlsplit(url).netloc == first_host
        response = await _get_with_retries(
            context, config, upstream, url,
            headers=headers if same_host else None,
            params=params if _hop == 0 else None,
            auth=auth if same_host else None,
        )
        location = response.headers.get("location")
        if not (follow_redirects and response.status_code in REDIRECTS and location):
            return response
        url = urljoin(str(response.url), location)
    raise UpstreamError(f"{upstream} redirected more than {max_redirects} times; giving up.")


async def _get_with_retries(
    context: ProviderContext,
    config: models.RepoProvider,
    upstream: str,
    url: str,
    **kwargs: Any,
) -> httpx.Response:
    reason = ""
    for attempt in range(1, config.retries + 1):
        started = time.monotonic()
        try:
            response = await context.http.get(url, timeout=config.request_timeout, **kwargs)
        except httpx.TimeoutException:
            reason = f"no answer within {config.request_timeout:g} seconds"
        except httpx.TransportError as e:
            reason = _transport_reason(e)
        else:
            log.debug("GET %s -> %s (%.3fs)", display_url(str(response.url)), response.status_code,
                      time.monotonic() - started)
            if response.status_code < 500:
                return response
            reason = f"HTTP {response.status_code}"
        log.warning("%s request to %s failed (attempt %d/%d): %s", upstream, display_url(url), attempt,
                    config.retries, reason)
        if attempt < config.retries:
            await asyncio.sleep(config.retry_delay * 2 ** (attempt - 1))
    raise UpstreamError(f"{upstream} ({host_of(url)}) is unreachable or failing ({reason}). Please try again later.")


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
