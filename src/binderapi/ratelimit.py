"""Per-client fixed-window rate limit on ``/build`` (BinderHub's ``RateLimiter``)."""

from __future__ import annotations

import ipaddress
import math
import time
from dataclasses import dataclass

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
    windows are swept every ``clean_seconds``."""

    def __init__(self, limit: int, period_seconds: int, clean_seconds: int) -> None:
        self.limit = limit
        self.period = period_seconds
        self.clean_seconds = clean_seconds
        self._windows: dict[str, Window] = {}
        self._next_clean: float | None = None

    @property
    def enabled(self) -> bool:
        return self.limit > 0

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
