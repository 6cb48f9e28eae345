"""One owner for long-lived background work (cleaner, quota watch, warm pool, builds).

A task that dies is logged and restarted after a pause, never lost silently; everything is
cancelled and awaited on shutdown so nothing outlives the app. A task that keeps failing (say the
build cleaner while the engine is away) is an outage, not a stream of tracebacks: one line when it
starts, restarts spaced by a growing pause, one line when the task runs again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .retry import Backoff

log = logging.getLogger(__name__)

#: after ``restart_delay``, a crashed task waits about 1, 2, 4 ... seconds more, at most a minute
#: (jittered: :mod:`binderapi.retry`)
RESTART_BACKOFF = (1.0, 60.0)
#: a task that has run this long without crashing counts as running again
HEALTHY_AFTER = 60.0


class Supervisor:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    def run_forever(self, name: str, factory: Callable[[], Awaitable[Any]], restart_delay: float = 5.0, *,
                    first_delay: float = 0.0) -> asyncio.Task[Any]:
        """Run ``factory()`` (first after ``first_delay``) again whenever it returns, after
        ``restart_delay``, or crashes, after ``restart_delay`` and a pause that grows from about
        1 s up to a minute, until shutdown.

        A crash starts an outage: one WARNING naming the error (the traceback is at DEBUG), then
        nothing while it keeps failing. It ends, with one INFO line, when ``factory()`` returns or
        has run ``HEALTHY_AFTER`` seconds without crashing; the pause then starts short again. So a
        periodic job is best one round per ``factory()``, with ``restart_delay`` its interval: each
        round that completes says it works."""

        async def loop() -> None:
            first, longest = RESTART_BACKOFF
            backoff = Backoff(transient=lambda e: True, attempts=None, delay=first, cap=longest,
                              what=f"Background task {name}", level=logging.DEBUG)
            failures = 0

            def running_again() -> None:
                nonlocal failures
                if failures:
                    log.info("Background task %s is running again (after %d failed %s)",
                             name, failures, "try" if failures == 1 else "tries")
                failures = 0
                backoff.reset()

            await asyncio.sleep(first_delay)
            while not self._closing:
                healthy = asyncio.get_running_loop().call_later(HEALTHY_AFTER, running_again)
                try:
                    await factory()
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    failures += 1
                    if failures == 1:
                        log.warning("Background task %s failed (%s: %s); restarting it with backoff, "
                                    "quietly until it runs again", name, type(e).__name__, e)
                    log.debug("Background task %s failed (%d in a row)", name, failures, exc_info=True)
                    healthy.cancel()
                    await asyncio.sleep(restart_delay)
                    await backoff.failed(e)  # the growing part of the pause: the one retry policy's
                    continue
                else:
                    log.debug("Background task %s returned; restarting", name)
                    running_again()
                finally:
                    healthy.cancel()
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
