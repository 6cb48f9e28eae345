"""The one retry policy (binderapi.retry): jittered exponential waits under a cap, only transient
failures retried, the last one reported in the caller's words, and Backoff's runs of failures."""

from __future__ import annotations

import logging

import pytest
from tenacity import AsyncRetrying, RetryCallState

from binderapi import retry


class Hiccup(Exception):
    """A failure the caller counts as transient."""


class Refusal(Exception):
    """A definite answer: never retried."""


def transient(error: BaseException) -> bool:
    return isinstance(error, Hiccup)


def wait_before(strategy, attempt: int) -> float:
    """The wait the strategy picks after failed attempt ``attempt``."""
    state = RetryCallState(AsyncRetrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    return strategy(state)


def test_waits_grow_exponentially_with_jitter_and_stay_under_the_cap():
    strategy = retry.policy(transient=transient, attempts=10, delay=1.0, cap=8.0, what="x").wait
    for attempt, nominal in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0), (30, 8.0), (2000, 8.0)]:
        samples = [wait_before(strategy, attempt) for _ in range(200)]
        assert all(nominal / 2 <= s <= nominal for s in samples), (attempt, min(samples), max(samples))
        # jittered: replicas that failed together spread out, at the cap too
        assert max(samples) - min(samples) > nominal / 4, (attempt, samples[:5])


def test_no_delay_means_no_wait():
    strategy = retry.waits(0.0)
    assert {wait_before(strategy, n) for n in (1, 2, 5)} == {0.0}


async def test_transient_failures_are_retried_until_success():
    calls = []

    async def op():
        calls.append(1)
        if len(calls) < 3:
            raise Hiccup("busy")
        return "ok"

    assert await retry.retrying(op, transient=transient, attempts=4, delay=0.001, what="op") == "ok"
    assert len(calls) == 3


async def test_an_op_returning_an_awaitable_is_awaited():
    async def none():
        return None

    assert await retry.retrying(lambda: none(), transient=transient, attempts=2, delay=0, what="op") is None


async def test_other_failures_pass_through_at_once():
    calls = []

    async def op():
        calls.append(1)
        raise Refusal("no")

    with pytest.raises(Refusal, match="no"):
        await retry.retrying(op, transient=transient, attempts=4, delay=0.001, what="op",
                             exhausted=lambda e: RuntimeError(f"gave up: {e}"))
    assert len(calls) == 1


async def test_the_last_failure_reads_as_the_caller_says(caplog):
    calls = []

    async def op():
        calls.append(1)
        raise Hiccup(f"HTTP 50{len(calls)}")

    caplog.set_level(logging.INFO, logger="binderapi.retry")
    with pytest.raises(RuntimeError, match=r"^the registry is down \(HTTP 503\)$") as error:
        await retry.retrying(op, transient=transient, attempts=3, delay=0.001, what="Checking the image",
                             exhausted=lambda e: RuntimeError(f"the registry is down ({e})"), level=logging.INFO)
    assert len(calls) == 3
    assert isinstance(error.value.__cause__, Hiccup)
    waits = [r.getMessage() for r in caplog.records if r.name == "binderapi.retry"]
    assert len(waits) == 2 and waits[0].startswith("Checking the image failed (attempt 1 of 3): HTTP 501; retrying in")
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == "binderapi.retry")


async def test_without_exhausted_the_last_failure_is_raised_as_itself():
    async def op():
        raise Hiccup("still busy")

    with pytest.raises(Hiccup, match="still busy"):
        await retry.retrying(op, transient=transient, attempts=2, delay=0.001, what="op")


async def test_backoff_counts_failures_in_a_row_and_starts_over_on_reset():
    backoff = retry.Backoff(transient=transient, attempts=3, delay=0.001, what="watch",
                            exhausted=lambda e: RuntimeError(f"gave up ({e})"))
    for _ in range(3):  # three runs of two failures: never three in a row
        await backoff.failed(Hiccup("broken"))
        await backoff.failed(Hiccup("broken"))
        backoff.reset()
    await backoff.failed(Hiccup("1"))
    await backoff.failed(Hiccup("2"))
    with pytest.raises(RuntimeError, match=r"gave up \(3\)"):
        await backoff.failed(Hiccup("3"))


async def test_backoff_raises_other_failures_at_once_and_can_go_on_forever():
    backoff = retry.Backoff(transient=transient, attempts=None, delay=0.0, what="watch")
    for _ in range(50):
        await backoff.failed(Hiccup("down"))
    with pytest.raises(Refusal):
        await backoff.failed(Refusal("forbidden"))


async def test_backoff_announces_each_wait_in_the_sites_sleep_and_gives_up_at_the_deadline():
    """The launch's attempts: "retrying" is said just before each wait (sleep given by the site),
    and no attempt starts past the deadline: the policy gives up instead of waiting past it."""
    import asyncio

    said: list[tuple[int, float]] = []
    slept: list[float] = []

    async def before_wait(number: int, wait: float) -> None:
        assert len(slept) == len(said)  # announced before the wait, not after
        said.append((number, wait))

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    deadline = asyncio.get_running_loop().time() + 4.0  # (the fake sleep lets no time pass)
    backoff = retry.Backoff(transient=transient, attempts=None, delay=4.0, what="launch", deadline=deadline,
                            sleep=sleep, before_wait=before_wait)
    await backoff.failed(Hiccup("spawn failed"))  # waits 2-4 s: ends before the deadline
    with pytest.raises(Hiccup):  # the next wait (4-8 s) would end past it: gives up, nothing slept
        await backoff.failed(Hiccup("spawn failed"))
    assert [n for n, _ in said] == [1] and slept == [said[0][1]] and 2.0 <= slept[0] <= 4.0


def test_a_scheduled_wait_is_the_policys():
    """The warm pool's pause after failed starts (5 s doubling up to 300 s), jittered."""
    for failures, nominal in [(1, 5.0), (2, 10.0), (3, 20.0), (7, 300.0), (50, 300.0)]:
        samples = [retry.wait_after(failures, 5.0, 300.0) for _ in range(100)]
        assert all(nominal / 2 <= s <= nominal for s in samples) and len(set(samples)) > 1, (failures, samples[:3])


def test_no_hand_written_backoff_loop_remains():
    """Every growing pause goes through retry.py: no ``delay *= 2`` or ``2 ** n`` elsewhere."""
    import re
    from pathlib import Path

    src = Path(retry.__file__).parent
    loops = re.compile(r"\*= ?2\b|\b2 ?\*\* ?|\* ?2 ?\*\*|min\([^)]*\* ?2\b")
    found = [f"{path.relative_to(src)}:{number}: {text.strip()}"
             for path in src.rglob("*.py") if path.name != "retry.py"
             for number, text in enumerate(path.read_text().splitlines(), 1) if loops.search(text)]
    assert found == []
