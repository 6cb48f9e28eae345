"""binderapi.singleflight, the one single-flight mechanism (provider resolutions, registry tokens,
image existence checks, /health checks all go through it)."""

from __future__ import annotations

import asyncio
import gc

import pytest

from binderapi.health import HealthChecks
from binderapi.singleflight import SingleFlight


async def settle() -> None:
    """Let every ready task run to its next wait."""
    for _ in range(5):
        await asyncio.sleep(0)


def gated():
    """A computation that counts its starts and waits for ``gate``."""
    gate, starts = asyncio.Event(), []

    async def compute() -> str:
        starts.append(1)
        await gate.wait()
        return f"answer {len(starts)}"

    return compute, gate, starts


async def test_concurrent_calls_for_a_key_share_one_computation_and_the_key_is_then_free():
    flight: SingleFlight[str] = SingleFlight()
    compute, gate, starts = gated()
    callers = [asyncio.ensure_future(flight.run("k", compute)) for _ in range(5)]
    other = asyncio.ensure_future(flight.run("other", compute))
    await settle()
    assert "k" in flight and len(starts) == 2  # one for "k", one for "other"
    gate.set()
    assert await asyncio.gather(*callers) == ["answer 2"] * 5
    await other
    assert "k" not in flight and "other" not in flight
    assert await flight.run("k", compute) == "answer 3"  # a later call starts afresh


async def test_a_caller_going_away_does_not_cancel_it_for_the_others():
    flight: SingleFlight[str] = SingleFlight()
    compute, gate, starts = gated()
    leaving, staying = (asyncio.ensure_future(flight.run("k", compute)) for _ in range(2))
    await settle()
    leaving.cancel()
    gate.set()
    assert await staying == "answer 1"
    assert leaving.cancelled() and len(starts) == 1


async def test_a_failure_reaches_every_waiter_and_is_not_left_unretrieved():
    flight: SingleFlight[str] = SingleFlight()
    gate = asyncio.Event()

    async def failing() -> str:
        await gate.wait()
        raise RuntimeError("upstream down")

    waiters = [asyncio.ensure_future(flight.run("k", failing)) for _ in range(3)]
    await settle()
    gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert [str(r) for r in results] == ["upstream down"] * 3
    assert "k" not in flight  # errors are not kept: the next call tries again

    # every waiter gone: the exception is still marked retrieved (no "never retrieved" error logged)
    unretrieved: list[dict] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: unretrieved.append(context))
    try:
        gate.clear()
        alone = asyncio.ensure_future(flight.run("k", failing))
        await settle()
        alone.cancel()
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await alone
        for _ in range(3):
            await settle()
        del alone
        gc.collect()
    finally:
        loop.set_exception_handler(previous)
    assert not [c for c in unretrieved if "never retrieved" in c.get("message", "")]


async def test_concurrent_health_probes_run_a_check_once():
    checks = HealthChecks()
    gate, runs = asyncio.Event(), []

    async def check() -> bool:
        runs.append(1)
        await gate.wait()
        return True

    checks.add("Slow dependency", check)
    probes = [asyncio.ensure_future(checks.run()) for _ in range(4)]
    await settle()
    gate.set()
    assert [ok for ok, _ in await asyncio.gather(*probes)] == [True] * 4
    assert len(runs) == 1
