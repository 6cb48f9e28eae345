"""The ``/api/v1`` workloads (issue 12), each against a baseline measured in the same run.

``api``: ``POST /api/v1/builds`` for an image that already exists (the answer is the ``built``,
``cached: true`` resource: remembered per image after the first, no store read, no build), at 1 and 50 clients, against the cached
classic ``build_only`` stream of :mod:`bench.cached` at the same concurrency, measured just before.

``replay``: K concurrent ``GET /api/v1/builds/{id}/events`` streams of one finished build, each
replayed from the store to the terminal event: the time until every stream has ended, binderapi's
RSS, and as the floor K concurrent cached classic ``build_only`` streams (the same connections, one
event each). A finished build stays in memory for ``SUCCESS_RETENTION_SECONDS`` (late joiners of a
build are served from it), so the workload waits that long before the store's replay; with
``settle`` 0 (the smoke test) the streams are served from memory, and the row says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from .cached import ensure_built, load
from .report import Report, Row, ms, percentile
from .rest import request
from .sse import stream
from .stack import Stack

WORKLOAD_CREATE = "POST /api/v1/builds, cached image"
WORKLOAD_REPLAY = "events replayed from the store"
FINISHED = ("built", "failed", "cancelled")
#: binderapi keeps a finished build in memory this long (``builds.SUCCESS_RETENTION_SECONDS``, 60 s)
SETTLE_SECONDS = 62.0


def _clients(n: int) -> str:
    return f"{n} client{'s' if n > 1 else ''}"


async def run_create(stack: Stack, report: Report, levels: list[int], requests_per_level: int) -> None:
    await ensure_built(stack)  # the classic build: the image exists before either side is measured
    url = stack.api_url + "api/v1/builds"
    body = {"spec": stack.spec("hello")}
    first = await request("POST", url, body)
    if first.status != 200 or not isinstance(first.body, dict) or not first.body.get("cached"):
        raise RuntimeError(f"POST /api/v1/builds for the built hello image: {first.describe()}")
    classic_url = stack.build_url("hello")

    async def create() -> tuple[bool, str]:
        result = await request("POST", url, body)
        ok = result.status == 200 and isinstance(result.body, dict) and result.body.get("state") == "built"
        return ok, result.describe()

    async def classic() -> tuple[bool, str]:
        result = await stream(classic_url, keep_events=False)
        return result.ok, result.describe()

    for clients in levels:
        total = max(requests_per_level, clients * 5) if clients > 1 else max(50, requests_per_level // 5)
        baseline = await load(classic, clients, total)
        baseline.pop("first_error")
        report.add(Row(WORKLOAD_CREATE, f"{_clients(clients)}, baseline: cached classic build_only", baseline,
                       note="GET /build/...?build_only=true, a new connection per request"))
        figures = await load(create, clients, total)
        first_error = figures.pop("first_error")
        figures["rps_ratio"] = round(figures["req_per_s"] / baseline["req_per_s"], 2) if baseline["req_per_s"] else float("nan")
        figures["p50_ratio"] = round(figures["p50_ms"] / baseline["p50_ms"], 2) if baseline["p50_ms"] else float("nan")
        report.add(Row(WORKLOAD_CREATE, _clients(clients), figures, "0 errors", figures["errors"] == 0,
                       note=(f"first error: {first_error}; " if first_error else "")
                       + "ratios against the baseline row above; a new connection per request"))


async def finished_build(stack: Stack, repo: str = "fanout", within: float = 300) -> dict[str, Any]:
    """A new build through ``POST /api/v1/builds`` (a new commit, so it really builds), polled to
    its end: the finished resource."""
    sha = await stack.git.new_nonce(repo)
    created = await request("POST", stack.api_url + "api/v1/builds", {"spec": stack.spec(repo, sha)})
    if created.status not in (200, 201) or not isinstance(created.body, dict) or "id" not in created.body:
        raise RuntimeError(f"POST /api/v1/builds for a new commit: {created.describe()}")
    resource = created.body
    deadline = time.monotonic() + within
    while resource.get("state") not in FINISHED:
        if time.monotonic() > deadline:
            raise RuntimeError(f"build {resource['id']} did not finish within {within:g} s: {resource}")
        await asyncio.sleep(0.5)
        answer = await request("GET", stack.api_url + f"api/v1/builds/{resource['id']}")
        if answer.status != 200:
            raise RuntimeError(f"GET /api/v1/builds/{resource['id']}: {answer.describe()}")
        resource = answer.body
    if resource["state"] != "built":
        raise RuntimeError(f"the build for the replay workload ended {resource['state']}: {resource.get('message')}")
    return resource


async def _concurrently(url: str, streams: int) -> tuple[float, list[float], list[int], list[str]]:
    """``streams`` streams of ``url`` opened at once, each read to its final event: the time until
    the last ended, each one's time, its event count, and the errors."""
    counts = [0] * streams

    async def one(i: int) -> tuple[float, str | None]:
        def seen(event: dict[str, Any] | None) -> None:
            if event is not None:
                counts[i] += 1
        result = await stream(url, keep_events=False, on_frame=seen)
        return result.seconds, None if result.ok else result.describe()

    started = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(streams)))
    elapsed = time.perf_counter() - started
    return elapsed, [s for s, _ in results], counts, [e for _, e in results if e]


async def run_replay(stack: Stack, report: Report, levels: list[int], settle: float = SETTLE_SECONDS) -> None:
    build = await finished_build(stack)
    settled = time.monotonic() + settle
    url = stack.api_url + f"api/v1/builds/{build['id']}/events"
    alone = await stream(url)
    if not alone.ok:
        raise RuntimeError(f"replaying build {build['id']}'s events: {alone.describe()}")
    events = len(alone.events)
    report.add(Row(WORKLOAD_REPLAY, "1 stream alone (setup)", {"events": events, "ms": ms(alone.seconds)},
                   note=f"build {build['id']}, finished"))
    await ensure_built(stack)
    classic_url = stack.build_url("hello")
    await asyncio.sleep(max(0.0, settled - time.monotonic()))  # the build left binderapi's memory
    source = "from the store" if settle >= SETTLE_SECONDS else "from memory (the build finished just now)"
    for streams in levels:
        floor_s, _, _, floor_errors = await _concurrently(classic_url, streams)
        report.add(Row(WORKLOAD_REPLAY, f"{streams} streams, floor: cached classic build_only",
                       {"all_done_s": round(floor_s, 2), "errors": len(floor_errors)},
                       note="the same number of connections at once, one event each"))
        peak: dict[str, float] = {}
        before = stack.process_status()

        async def sample(peak: dict[str, float] = peak) -> None:
            while True:
                for key, value in stack.process_status().items():
                    peak[key] = max(peak.get(key, 0), value)
                await asyncio.sleep(0.1)

        sampler = asyncio.create_task(sample())
        try:
            elapsed, seconds, counts, errors = await _concurrently(url, streams)
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        complete = sum(1 for c in counts if c == events)
        figures = {"streams": streams, "complete": complete, "errors": len(errors), "events_each": events,
                   "all_done_s": round(elapsed, 2), "p50_ms": ms(percentile(seconds, 50)),
                   "p99_ms": ms(percentile(seconds, 99)), "events_per_s": round(streams * events / elapsed),
                   "rss_mb": peak.get("rss_mb"), "rss_before_mb": before.get("rss_mb"),
                   "vs_floor": round(elapsed / floor_s, 2) if floor_s else float("nan")}
        report.add(Row(WORKLOAD_REPLAY, f"{streams} streams", figures,
                       "every stream replays every event to the terminal one, 0 errors",
                       complete == streams and not errors,
                       note=f"{source}, opened at once{'; first error: ' + errors[0] if errors else ''}"))
