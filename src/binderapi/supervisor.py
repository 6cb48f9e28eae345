"""One owner for long-lived background work (cleaner, quota watch, warm pool, builds).

A task that dies is logged and restarted after a pause, never lost silently; everything is
cancelled and awaited on shutdown so nothing outlives the app.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)


class Supervisor:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    def run_forever(self, name: str, factory: Callable[[], Awaitable[Any]], restart_delay: float = 5.0) -> asyncio.Task[Any]:
        """Run ``factory()`` again whenever it returns or crashes, until shutdown."""

        async def loop() -> None:
            while not self._closing:
                try:
                    await factory()
                    log.debug("Background task %s returned; restarting", name)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("Background task %s crashed; restarting in %.0fs", name, restart_delay)
                await asyncio.sleep(restart_delay)

        return self.spawn(loop(), name=name)

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        """Run a one-off coroutine owned by the app (e.g. a build nobody watches any more)."""
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("Background task %s failed", task.get_name(), exc_info=task.exception())

    @property
    def tasks(self) -> set[asyncio.Task[Any]]:
        return set(self._tasks)

    async def close(self, grace: float = 10.0) -> None:
        self._closing = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
