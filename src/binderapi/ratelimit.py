"""Per-client fixed-window rate limit on ``/build`` (BinderHub's ``RateLimiter``).

One process counts in memory. Replicas sharing a build store on PostgreSQL count in the store
(:meth:`BuildStore.hit`, one atomic upsert per counted request), so a client gets ``limit``
requests per window from the whole service, whichever replica answers. The ``limits`` library was
considered: its async storages are memory, Redis/Valkey, Memcached and MongoDB, none on SQL, and
a storage of our own under it would cost two round trips per request (``hit``, then the window's
stats for the ``x-ratelimit-*`` headers) where the store's upsert answers both at once.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .store.base import StoreError

if TYPE_CHECKING:
    from .store.base import BuildStore

log = logging.getLogger(__name__)

#: a shared counter that does not answer within this many seconds counts in the process instead
STORE_TIMEOUT = 2.0
#: after a store error, requests count in the process for this long before the store is tried again,
#: so an unreachable database does not add ``STORE_TIMEOUT`` to every ``/build``
STORE_RETRY_SECONDS = 5.0

#: one IPv6 client (one home, one VM) is given a whole /64 and can rotate addresses inside it freely
IPV6_BUCKET_PREFIX = 64


def client_bucket(client: str) -> str:
    """The rate-limit bucket of a client address: an IPv4 address, or an IPv6 address's /64."""
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return client  # not an address (e.g. a proxy's ``unknown``): one shared bucket
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/{IPV6_BUCKET_PREFIX}", strict=False))
    return str(address)


@dataclass
class Window:
    remaining: int
    reset: float  # epoch seconds when the window ends


@dataclass(frozen=True)
class RateLimitState:
    limit: int
    remaining: int
    reset: float

    @property
    def exceeded(self) -> bool:
        return self.remaining < 0

    def headers(self) -> dict[str, str]:
        return {"x-ratelimit-limit": str(self.limit), "x-ratelimit-remaining": str(max(self.remaining, 0)),
                "x-ratelimit-reset": str(int(self.reset))}

    def retry_after(self, now: float | None = None) -> int:
        return max(1, math.ceil(self.reset - (now or time.time())))


class RateLimiter:
    """``limit`` requests per ``period_seconds`` per client bucket (:func:`client_bucket`).
    ``remaining`` keeps counting below zero so the log shows how hard a client pushes; expired
    windows are swept every ``clean_seconds``.

    With a ``store`` (a shared one: :attr:`BuildStore.shared`), :meth:`hit` counts there. A window
    starts at a client's first request, as in memory and in BinderHub, so the answers are the same
    either way. A store that fails or is slow never fails a request: that request, and the next
    ones for :data:`STORE_RETRY_SECONDS`, count in this process (one warning per outage)."""

    def __init__(self, limit: int, period_seconds: int, clean_seconds: int, store: BuildStore | None = None) -> None:
        self.limit = limit
        self.period = period_seconds
        self.clean_seconds = clean_seconds
        self.store = store
        self._windows: dict[str, Window] = {}
        self._next_clean: float | None = None
        self._store_down_until: float | None = None  # monotonic time; None while the store answers

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    async def hit(self, client: str, now: float | None = None) -> RateLimitState:
        """Count one request of ``client``: in the shared store if there is one and it answers,
        else in this process (:meth:`increment`)."""
        if self.store is None or (self._store_down_until is not None and time.monotonic() < self._store_down_until):
            return self.increment(client, now)
        now = time.time() if now is None else now
        try:
            hits, reset = await asyncio.wait_for(self.store.hit(client_bucket(client), now, self.period), STORE_TIMEOUT)
        except (StoreError, TimeoutError) as e:
            if self._store_down_until is None:
                log.warning("The build store cannot count the rate limit (%s); counting in this process "
                            "until it answers again", str(e) or type(e).__name__)
            self._store_down_until = time.monotonic() + STORE_RETRY_SECONDS
            return self.increment(client, now)
        if self._store_down_until is not None:
            log.info("The build store counts the rate limit again")
            self._store_down_until = None
        return RateLimitState(self.limit, self.limit - hits, reset)

    async def sweep_store(self) -> None:
        """Delete the store's ended windows (every replica may run it: the delete is idempotent)."""
        if self.store is not None:
            await self.store.delete_hits_before(time.time())

    def increment(self, key: str, now: float | None = None) -> RateLimitState:
        now = time.time() if now is None else now
        if self._next_clean is None:
            self._next_clean = now + self.clean_seconds
        elif now >= self._next_clean:
            self._clean(now)
        key = client_bucket(key)
        window = self._windows.get(key)
        if window is None or now >= window.reset:
            window = self._windows[key] = Window(self.limit, now + self.period)
        window.remaining -= 1
        return RateLimitState(self.limit, window.remaining, window.reset)

    def _clean(self, now: float) -> None:
        self._windows = {k: w for k, w in self._windows.items() if w.reset > now}
        self._next_clean = now + self.clean_seconds

    def __len__(self) -> int:
        return len(self._windows)
