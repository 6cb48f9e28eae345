"""Single flight: concurrent calls for one key share one computation.

Used wherever a burst of identical requests should cost one upstream call: the resolution cache
(providers), registry tokens, "does this image exist" checks, ``/health`` checks.

The computation runs as a task of its own, so a caller that goes away (a client disconnecting, a
timeout) does not cancel it for the callers still waiting, and what it stores is still stored. The
key is free again as soon as the computation ends: whether its answer is kept is up to the caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from functools import partial
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """The computations running now, by key."""

    def __init__(self) -> None:
        self._running: dict[Hashable, asyncio.Future[T]] = {}

    def __contains__(self, key: Hashable) -> bool:
        """Whether a computation for ``key`` is running (a call now would join it)."""
        return key in self._running

    async def run(self, key: Hashable, compute: Callable[[], Awaitable[T]]) -> T:
        """The result of the computation running for ``key``, or of ``compute()`` started now."""
        running = self._running.get(key)
        if running is None:
            running = self._running[key] = asyncio.ensure_future(compute())
            running.add_done_callback(partial(self._done, key))
        return await asyncio.shield(running)

    def _done(self, key: Hashable, running: asyncio.Future[T]) -> None:
        if self._running.get(key) is running:
            del self._running[key]
        if not running.cancelled():
            running.exception()  # seen: every waiter may have gone away; those that stayed got it
