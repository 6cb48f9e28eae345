"""The one retry policy, on tenacity, for calls to services that may be briefly down (provider
upstreams, registry, Docker engine, Kubernetes API): a few attempts, with exponential waits of
nominally ``delay``, ``2 * delay``, ``4 * delay`` ... capped at ``cap``, each drawn between half
and all of its nominal value ("equal jitter") so that replicas which failed together do not knock
again in step.

Every site keeps its own judgement and words: ``transient`` says which failures are worth another
attempt (the rest pass through at once), ``attempts`` and ``delay`` come from its settings, and
``exhausted`` says how the last failure reads once no attempt is left.

- :func:`retrying` runs one call under the policy.
- :class:`Backoff` serves a loop that resumes a stream (a watch, an event feed) or repeats a task
  (a launch, a clean-up): it waits after each failure in a row and starts over when the stream
  delivers again.
- :func:`wait_after` is the wait itself, for a site that schedules its next try instead of
  sleeping until it (the warm pool's pause after failed starts).

A site may also give a ``deadline`` (event-loop time: no attempt starts after it, so the policy
gives up rather than wait past it), its own ``sleep`` (one that a shutdown cuts short) and
``before_wait``, awaited with the failed attempt's number and the coming wait just before it
(where a site tells its client that it tries again).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

from tenacity import (
    AsyncRetrying,
    AttemptManager,
    RetryCallState,
    retry_if_exception,
    wait_exponential,
    wait_random_exponential,
)
from tenacity.wait import wait_base

log = logging.getLogger(__name__)

T = TypeVar("T")

#: the longest wait between two attempts unless a site says otherwise
MAX_DELAY = 30.0


def waits(delay: float, cap: float = MAX_DELAY) -> wait_base:
    """The policy's wait before attempt ``n + 1``: half of ``min(cap, delay * 2 ** (n - 1))`` for
    sure, plus a random share of the other half."""
    return (wait_exponential(multiplier=delay / 2, max=cap / 2)
            + wait_random_exponential(multiplier=delay / 2, max=cap / 2))


def wait_after(failures: int, delay: float, cap: float = MAX_DELAY) -> float:
    """The policy's wait after ``failures`` failures in a row, drawn afresh."""
    state = RetryCallState(None, None, (), {})
    state.attempt_number = max(failures, 1)
    return waits(delay, cap)(state)


def policy(*, transient: Callable[[BaseException], bool], attempts: int | None, delay: float, what: str,
           cap: float = MAX_DELAY, exhausted: Callable[[BaseException], BaseException] | None = None,
           describe: Callable[[BaseException], str] = str, level: int = logging.WARNING,
           deadline: float | None = None, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
           before_wait: Callable[[int, float], Awaitable[None]] | None = None) -> AsyncRetrying:
    """The policy as a tenacity ``AsyncRetrying``: ``attempts`` in all (``None``: until it works, or
    until ``deadline``), retrying only ``transient`` failures; each wait is logged at ``level`` as
    ``what`` failed, then ``before_wait`` is awaited, then ``sleep``."""

    def stop(state: RetryCallState) -> bool:
        if attempts and state.attempt_number >= attempts:
            return True
        return deadline is not None and asyncio.get_running_loop().time() + state.upcoming_sleep >= deadline

    async def on_wait(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        of = f" of {attempts}" if attempts else ""
        wait = state.next_action.sleep if state.next_action else 0.0
        log.log(level, "%s failed (attempt %d%s): %s; retrying in %.1fs", what, state.attempt_number, of,
                describe(error) if error is not None else "?", wait)
        if before_wait is not None:
            await before_wait(state.attempt_number, wait)

    def give_up(state: RetryCallState) -> NoReturn:
        error = state.outcome.exception() if state.outcome else None
        assert error is not None and exhausted is not None  # only failures are retried
        raise exhausted(error) from error

    return AsyncRetrying(
        sleep=sleep,
        stop=stop,
        wait=waits(delay, cap),
        retry=retry_if_exception(transient),
        before_sleep=on_wait,
        retry_error_callback=give_up if exhausted else None,
        reraise=True,
    )


async def retrying(op: Callable[[], Awaitable[T]], *, transient: Callable[[BaseException], bool], attempts: int,
                   delay: float, what: str, cap: float = MAX_DELAY,
                   exhausted: Callable[[BaseException], BaseException] | None = None,
                   describe: Callable[[BaseException], str] = str, level: int = logging.WARNING) -> T:
    """``op()``, again after a ``transient`` failure. Any other failure is raised at once; the last
    transient one as ``exhausted(error)`` (by default as itself)."""
    retries = policy(transient=transient, attempts=attempts, delay=delay, what=what, cap=cap,
                     exhausted=exhausted, describe=describe, level=level)

    async def call() -> T:  # tenacity awaits only coroutine functions, not a lambda returning a coroutine
        return await op()

    return await retries(call)


class Backoff:
    """The policy for a loop that resumes a stream or repeats a task: call :meth:`failed` after each
    failure, which waits before the next try (or raises, as :func:`retrying` would), and
    :meth:`reset` once the stream works again, so that only failures in a row count."""

    def __init__(self, *, transient: Callable[[BaseException], bool], attempts: int | None, delay: float,
                 what: str, cap: float = MAX_DELAY, exhausted: Callable[[BaseException], BaseException] | None = None,
                 describe: Callable[[BaseException], str] = str, level: int = logging.WARNING,
                 deadline: float | None = None, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 before_wait: Callable[[int, float], Awaitable[None]] | None = None) -> None:
        self._policy = policy(transient=transient, attempts=attempts, delay=delay, what=what, cap=cap,
                              exhausted=exhausted, describe=describe, level=level, deadline=deadline,
                              sleep=sleep, before_wait=before_wait)
        self.reset()

    def reset(self) -> None:
        """Start a fresh run of attempts: the next failure is the first. (Cheap: called per event.)"""
        self._attempt: AttemptManager | None = None

    async def failed(self, error: BaseException) -> None:
        """Count ``error`` as this attempt's outcome, then wait before the next attempt; raise
        instead when ``error`` is not transient or no attempt is left."""
        if self._attempt is None:
            self._attempts = aiter(self._policy)  # a fresh run of attempts
            self._attempt = await anext(self._attempts)  # its first: no wait
        with self._attempt:
            raise error
        self._attempt = await anext(self._attempts)
