"""Workloads 3 and 4 across two replicas (issue 13): the same clients as :mod:`bench.fanout` and
:mod:`bench.idle`, split alternately across two binderapi processes sharing one PostgreSQL store
(``Stack.start(replicas=2)``), as a load balancer spreads them.

* fan-out: K clients ask at once for one image not yet built, half through each replica. Builds
  are counted from the Docker engine (builder containers created with the bench's namespace label
  during the round): the store must make the replicas build it once.
* idle: K clients hold ``/build`` streams on one slow build, half on each replica (one of them
  builds, the other follows it through the store). Measured per replica: peak RSS, threads and
  descriptors (from /proc); the largest gap between frames any client saw beyond the keepalive
  interval; and the builder containers created (one: the replicas share the build).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from .fanout import builder_watcher
from .idle import CONNECT_BATCH, Holder
from .report import Report, Row, percentile
from .sse import stream
from .stack import Stack

FANOUT = "fan-out across two replicas"
IDLE = "idle streams across two replicas"


async def fanout(stack: Stack, report: Report, clients: int) -> None:
    replicas = len(stack.api_urls)
    sha = await stack.git.new_nonce("fanout")
    async with builder_watcher(stack.build_namespace) as watcher:
        started = time.perf_counter()
        results = await asyncio.gather(*(stream(stack.build_url("fanout", ref=sha, replica=i), keep_events=False)
                                         for i in range(clients)))
        elapsed = time.perf_counter() - started
    builds = len(watcher.actions("create"))
    errors = [r for r in results if not r.ok]
    per_replica = [sum(1 for i, r in enumerate(results) if i % replicas == n and r.ok) for n in range(replicas)]
    report.add(Row(FANOUT, f"{clients} clients, {replicas} replicas", {
        "builds": builds, "all_ready_s": round(elapsed, 2), "client_p50_s": round(percentile([r.seconds for r in results], 50), 2),
        "ready_per_replica": "/".join(map(str, per_replica)), "errors": len(errors)},
        "exactly 1 build, every client ready", builds == 1 and not errors,
        note=f"first error: {errors[0].describe()}" if errors else ""))


async def idle(stack: Stack, report: Report, clients: int, hold_seconds: float) -> None:
    pids = stack.api_pids
    sha = await stack.git.new_nonce("slow")
    interval = stack.keepalive_interval
    holders = [Holder() for _ in range(clients)]
    urls = [stack.build_url("slow", ref=sha, replica=i) for i in range(clients)]
    tasks: list[asyncio.Task[None]] = []
    peaks: dict[int, dict[str, float]] = {pid: {} for pid in pids}

    def sample() -> None:
        for pid in pids:
            with contextlib.suppress(OSError):
                for key, value in stack.process_status(pid).items():
                    peaks[pid][key] = max(peaks[pid].get(key, 0), value)

    before = {pid: stack.process_status(pid).get("rss_mb") for pid in pids}
    connect_started = time.perf_counter()
    async with builder_watcher(stack.build_namespace) as watcher:
        try:
            for batch in range(0, clients, CONNECT_BATCH):
                group = range(batch, min(clients, batch + CONNECT_BATCH))
                tasks += [asyncio.create_task(holders[i].hold(urls[i])) for i in group]
                for _ in range(600):  # up to 60 s for the batch's first frames
                    if all(holders[i].first is not None or holders[i].ended for i in group):
                        break
                    await asyncio.sleep(0.1)
                sample()
            connect_s = time.perf_counter() - connect_started
            hold_started = time.monotonic()
            while time.monotonic() - hold_started < hold_seconds:
                sample()
                await asyncio.sleep(1.0)
            sample()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    builds = len(watcher.actions("create"))
    held = [sum(1 for i, h in enumerate(holders) if i % len(pids) == n and h.first is not None and not h.ended)
            for n in range(len(pids))]
    worst = max((h.max_gap for h in holders if h.first is not None), default=float("nan"))
    late = max(0.0, worst - interval)
    errors = [h.error for h in holders if h.ended]
    rss = [peaks[pid].get("rss_mb", 0.0) for pid in pids]
    met = sum(held) == clients and max(rss) < 300 and late <= 2.0 and builds == 1
    report.add(Row(IDLE, f"{clients} streams, {len(pids)} replicas", {
        "held_per_replica": "/".join(map(str, held)), "rss_mb_per_replica": "/".join(f"{r:g}" for r in rss),
        "rss_before_mb": "/".join(str(before[pid]) for pid in pids),
        "threads": "/".join(str(peaks[pid].get("threads")) for pid in pids),
        "fds": "/".join(str(peaks[pid].get("fds")) for pid in pids),
        "max_gap_s": round(worst, 2), "keepalive_late_s": round(late, 2), "connect_s": round(connect_s, 1),
        "builds": builds},
        "all held, RSS of each replica < 300 MB, keepalive late <= 2 s, 1 build", met,
        note=f"keepalive every {interval:g} s, held {hold_seconds:g} s" + (f"; first error: {errors[0]}" if errors else "")))
    with contextlib.suppress(Exception):
        await asyncio.sleep(2)
