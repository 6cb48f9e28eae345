"""Progress on a channel of its own: a step reports events through a ``report`` callback and returns
its result, so no caller sorts results out of a stream of events with ``isinstance``.

:class:`Relay` turns such a step back into events as they happen, for a caller that is itself a
stream (the ``/build`` pipeline is an async generator feeding the response): it runs the step in a
task and yields what it reports the moment it reports it; once the step has ended, ``result`` is
what it returned (or iterating raises what it raised). A consumer that stops early (the client
went away) cancels the step and waits for it to unwind, so its clean-ups run before it returns.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, TypeVar

E = TypeVar("E")
T = TypeVar("T")

#: how a step reports one progress event (awaited: a slow reader may hold the step back)
Report = Callable[[E], Awaitable[None]]


async def ignore(event: object) -> None:
    """The report of a caller that does not follow progress."""


class Relay(Generic[E, T]):
    """``async for event in Relay(step)`` runs ``step(report)`` and yields each event it reports,
    as it reports it; then :attr:`result` holds what ``step`` returned."""

    def __init__(self, step: Callable[[Report[E]], Awaitable[T]]) -> None:
        self._step = step

    @property
    def result(self) -> T:
        return self._result

    async def __aiter__(self) -> AsyncIterator[E]:
        done = object()
        queue: asyncio.Queue[object] = asyncio.Queue()

        async def report(event: E) -> None:
            queue.put_nowait(event)

        task = asyncio.ensure_future(self._step(report))
        task.add_done_callback(lambda _: queue.put_nowait(done))  # after every event it reported
        try:
            while (item := await queue.get()) is not done:
                yield item  # type: ignore[misc]
            self._result = task.result()
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait([task])
