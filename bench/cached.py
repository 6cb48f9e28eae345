"""Workload 1: ``build_only`` for an image that already exists, at 1/10/50/200 concurrent clients,
with the trivial ``/versions`` route at the same concurrency as a same-run floor.

Each request is a fresh connection reading the stream to its ``ready`` event, as BinderHub's
clients do. The spec names the branch ``main``, so the provider's branch-ref TTL (``cache_ttl``)
decides how often ``git ls-remote`` runs; the TTL is part of the result.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from .report import Report, Row, ms, percentile
from .sse import StreamResult, stream
from .stack import Stack

WORKLOAD = "cached build_only"
#: BinderHub's figures from the issue (same machine kind, API-only mode, local repo2docker executor)
BINDERHUB_RPS = {10: 110.0, 50: 148.0}


async def load(request: Callable[[], Awaitable[tuple[bool, str]]], clients: int, total: int) -> dict:
    """``clients`` workers sharing ``total`` requests; latencies and errors of all of them."""
    latencies: list[float] = []
    errors: list[str] = []
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            ok, error = await request()
            latencies.append(time.perf_counter() - started)
            if not ok:
                errors.append(error)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    return {"requests": total, "p50_ms": ms(percentile(latencies, 50)), "p95_ms": ms(percentile(latencies, 95)),
            "p99_ms": ms(percentile(latencies, 99)), "req_per_s": round(total / elapsed, 1),
            "errors": len(errors), "first_error": errors[0] if errors else ""}


async def ensure_built(stack: Stack, repo: str = "hello") -> StreamResult:
    result = await stream(stack.build_url(repo))
    if not result.ok:
        raise RuntimeError(f"building the {repo} image for the cached workload failed: {result.describe()}")
    return result


async def run(stack: Stack, report: Report, levels: list[int], requests_per_level: int) -> None:
    first = await ensure_built(stack)
    report.add(Row(WORKLOAD, "first build of the image (setup)", {"seconds": round(first.seconds, 1)},
                   note="not a target; makes the image exist"))
    url = stack.build_url("hello")

    async def build_only() -> tuple[bool, str]:
        result = await stream(url, keep_events=False)
        return result.ok, result.describe()

    async def versions() -> tuple[bool, str]:
        result = await stream(stack.api_url + "versions", keep_events=False)
        return result.status == 200 and result.error is None, result.error or f"HTTP {result.status}"

    for clients in levels:
        total = max(requests_per_level, clients * 5) if clients > 1 else max(50, requests_per_level // 5)
        figures = await load(build_only, clients, total)
        first_error = figures.pop("first_error")
        target, met = _target(clients, figures)
        report.add(Row(WORKLOAD, f"{clients} client{'s' if clients > 1 else ''}", figures, target, met,
                       note=(f"first error: {first_error}; " if first_error else "") + f"branch ref, cache_ttl {stack.cache_ttl:g} s"))
        floor = await load(versions, clients, total)
        floor.pop("first_error")
        report.add(Row("same-run floor: GET /versions", f"{clients} client{'s' if clients > 1 else ''}",
                       floor, note="trivial JSON route, same client, a new connection per request"))


def _target(clients: int, figures: dict) -> tuple[str, bool | None]:
    if clients == 1:
        return "p50 < 10 ms, 0 errors (BinderHub p50 56 ms)", figures["p50_ms"] < 10 and figures["errors"] == 0
    if clients == 50:
        want = 5 * BINDERHUB_RPS[50]
        return (f">= {want:.0f} req/s (5x BinderHub's 148), 0 errors",
                figures["req_per_s"] >= want and figures["errors"] == 0)
    if clients in BINDERHUB_RPS:
        return f"0 errors (BinderHub {BINDERHUB_RPS[clients]:.0f} req/s)", figures["errors"] == 0
    return "0 errors", figures["errors"] == 0


async def fresh_refs(stack: Stack, report: Report) -> None:
    """A new commit on a branch is served from the cached resolution until ``cache_ttl`` passes,
    then resolved and built: the cache never pins a moving ref for longer than its TTL."""
    before = await ensure_built(stack, "fanout")
    sha = await stack.git.new_nonce("fanout")
    within = await stream(stack.build_url("fanout"))
    await asyncio.sleep(stack.cache_ttl + 1)
    after = await stream(stack.build_url("fanout"))
    old, cached, new = (r.final.get("imageName", "") if r.final else "" for r in (before, within, after))
    met = cached == old and new.endswith(sha) and after.ok
    report.add(Row(WORKLOAD, "fresh refs: new commit on the branch",
                   {"within_ttl": "old image" if cached == old else cached or within.describe(),
                    "after_ttl": "new commit built" if new.endswith(sha) else new or after.describe()},
                   f"new commit served after cache_ttl ({stack.cache_ttl:g} s)", met))
