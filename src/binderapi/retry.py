"""One retry policy for calls to services that may be briefly down (registry, Docker engine,
Kubernetes API): a few attempts, waiting ``delay``, ``2 * delay``, ... (at most 30 s) between them.
Each caller says which failures are worth another attempt; the rest pass through at once.

Work that retries for good (background tasks, the quota's engine watch) paces itself with a
:class:`Backoff` instead."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_DELAY = 30.0


async def retrying(op: Callable[[], Awaitable[T]], *, attempts: int, delay: float, what: str,
                   transient: Callable[[BaseException], bool], describe: Callable[[BaseException], str] = str,
                   level: int = logging.WARNING) -> T:
    """``op()``, again after a ``transient`` failure; the last failure, or any other, is raised."""
    for attempt in range(1, attempts + 1):
        try:
            return await op()
        except Exception as e:
            if attempt == attempts or not transient(e):
                raise
            wait = min(delay * 2 ** (attempt - 1), MAX_DELAY)
            log.log(level, "%s failed (attempt %d of %d): %s; retrying in %.1fs", what, attempt, attempts, describe(e), wait)
        await asyncio.sleep(wait)
    raise AssertionError("unreachable: the last attempt returns or raises")


class Backoff:
    """Pauses for work that is tried again until it works: ``first``, ``2 * first``, ... at most
    ``longest`` seconds, each drawn between half and all of that (so replicas do not knock in step).
    :meth:`reset` once the work succeeds, so the next outage starts short again."""

    def __init__(self, first: float, longest: float) -> None:
        self.first = first
        self.longest = longest
        self._next = first

    def reset(self) -> None:
        self._next = self.first

    def delay(self) -> float:
        """The next pause (and the one after it doubles)."""
        delay = self._next
        self._next = min(delay * 2, self.longest)
        return random.uniform(delay / 2, delay)

    async def wait(self) -> None:
        await asyncio.sleep(self.delay())
