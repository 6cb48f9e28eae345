"""The resolution cache: LRU bound, per-entry TTL, stale revalidation, single flight, errors uncached."""

from __future__ import annotations

import asyncio

import pytest

from binderapi.providers._cache import Resolution, ResolutionCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def counting(value="v", ttl=10.0, etag=""):
    calls: list[Resolution | None] = []

    async def compute(stale):
        calls.append(stale)
        return Resolution(f"{value}{len(calls)}", ttl, etag)

    return compute, calls


async def test_fresh_entries_are_reused_until_their_ttl():
    clock = Clock()
    cache = ResolutionCache(10, clock=clock)
    compute, calls = counting(ttl=10)
    assert await cache.get_or_compute("k", compute) == "v1"
    clock.now += 9
    assert await cache.get_or_compute("k", compute) == "v1"
    clock.now += 2
    assert await cache.get_or_compute("k", compute) == "v2"
    assert cache.stats.hits == 1 and cache.stats.misses == 2 and cache.stats.revalidations == 1


async def test_expired_entry_is_handed_to_compute_for_revalidation():
    clock = Clock()
    cache = ResolutionCache(10, clock=clock)
    compute, calls = counting(ttl=1, etag='"abc"')
    await cache.get_or_compute("k", compute)
    clock.now += 5
    await cache.get_or_compute("k", compute)
    assert calls[0] is None
    assert calls[1] == Resolution("v1", 1, '"abc"')


async def test_immutable_entries_never_expire_and_zero_ttl_is_not_kept():
    clock = Clock()
    cache = ResolutionCache(10, clock=clock)
    forever, calls = counting(ttl=None)
    await cache.get_or_compute("sha", forever)
    clock.now += 10**9
    await cache.get_or_compute("sha", forever)
    assert len(calls) == 1
    never, never_calls = counting(ttl=0)
    await cache.get_or_compute("x", never)
    await cache.get_or_compute("x", never)
    assert len(never_calls) == 2 and cache.peek("x") is None


async def test_lru_bound_evicts_least_recently_used():
    cache = ResolutionCache(2)
    compute, _ = counting(ttl=None)
    await cache.get_or_compute("a", compute)
    await cache.get_or_compute("b", compute)
    await cache.get_or_compute("a", compute)  # a is now the most recent
    await cache.get_or_compute("c", compute)
    assert len(cache) == 2
    assert cache.peek("b") is None and cache.peek("a") is not None and cache.peek("c") is not None


async def test_size_zero_caches_nothing_but_still_single_flights():
    cache = ResolutionCache(0)
    gate = asyncio.Event()
    calls = 0

    async def compute(stale):
        nonlocal calls
        calls += 1
        await gate.wait()
        return Resolution("v", 10)

    tasks = [asyncio.create_task(cache.get_or_compute("k", compute)) for _ in range(5)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*tasks) == ["v"] * 5
    assert calls == 1 and len(cache) == 0


async def test_concurrent_lookups_share_one_computation():
    cache = ResolutionCache(10)
    gate = asyncio.Event()
    calls = 0

    async def compute(stale):
        nonlocal calls
        calls += 1
        await gate.wait()
        return Resolution("v", 10)

    tasks = [asyncio.create_task(cache.get_or_compute("k", compute)) for _ in range(50)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*tasks) == ["v"] * 50
    assert calls == 1 and cache.stats.joins == 49


async def test_errors_reach_every_waiter_and_are_not_cached():
    cache = ResolutionCache(10)
    gate = asyncio.Event()

    async def failing(stale):
        await gate.wait()
        raise RuntimeError("upstream down")

    tasks = [asyncio.create_task(cache.get_or_compute("k", failing)) for _ in range(3)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    compute, _ = counting()
    assert await cache.get_or_compute("k", compute) == "v1"


async def test_a_cancelled_waiter_does_not_cancel_the_computation():
    cache = ResolutionCache(10)
    gate = asyncio.Event()

    async def compute(stale):
        await gate.wait()
        return Resolution("v", None)

    first = asyncio.create_task(cache.get_or_compute("k", compute))
    second = asyncio.create_task(cache.get_or_compute("k", compute))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    gate.set()
    assert await second == "v"
    assert cache.peek("k") == Resolution("v", None)
