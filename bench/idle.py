"""Workload 4: K clients hold ``/build`` streams on one slow build (a Dockerfile that sleeps), with
a short keepalive interval. Measured: binderapi's RSS, threads and descriptors (from /proc), the
largest gap between frames any client saw beyond the keepalive interval, and how long a different
new build takes to start (its first builder line) and finish while the K streams are held."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from .report import Report, Row
from .sse import stream
from .stack import Stack

WORKLOAD = "idle streams on one slow build"
CONNECT_BATCH = 250  # connections opened at once; the next batch waits for their first frames


class Holder:
    """One idle client: when each frame arrived, and the largest gap between two of them."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.last: float | None = None
        self.max_gap = 0.0
        self.ended = False
        self.error: str | None = None

    def frame(self, event: dict[str, Any] | None) -> None:
        now = time.monotonic()
        if self.last is not None:
            self.max_gap = max(self.max_gap, now - self.last)
        else:
            self.first = now
        self.last = now

    async def hold(self, url: str) -> None:
        result = await stream(url, keep_events=False, on_frame=self.frame)
        self.ended = True  # only cancellation should end a held stream
        self.error = result.describe()


async def new_build_start(stack: Stack) -> dict[str, float | str]:
    """A different image, asked for while the streams are held: seconds to its first builder line
    (anything after ``waiting``) and to ``ready``."""
    sha = await stack.git.new_nonce("fanout")
    started = time.perf_counter()
    first: list[float] = []

    def seen(event: dict[str, Any] | None) -> None:
        if event is not None and event.get("phase") != "waiting" and not first:
            first.append(time.perf_counter() - started)

    result = await stream(stack.build_url("fanout", ref=sha), keep_events=False, on_frame=seen)
    return {"start_s": round(first[0], 2) if first else float("nan"), "ready_s": round(result.seconds, 2),
            "outcome": "ready" if result.ok else result.describe()}


async def run(stack: Stack, report: Report, levels: list[int], hold_seconds: float) -> None:
    sha = await stack.git.new_nonce("slow")
    url = stack.build_url("slow", ref=sha)
    interval = stack.keepalive_interval
    for clients in levels:
        holders = [Holder() for _ in range(clients)]
        tasks: list[asyncio.Task[None]] = []
        peak: dict[str, float] = {}

        def sample(peak: dict[str, float] = peak) -> None:
            for key, value in stack.process_status().items():
                peak[key] = max(peak.get(key, 0), value)

        before = stack.process_status()
        connect_started = time.perf_counter()
        try:
            for batch in range(0, clients, CONNECT_BATCH):
                group = holders[batch:batch + CONNECT_BATCH]
                tasks += [asyncio.create_task(h.hold(url)) for h in group]
                for _ in range(600):  # up to 60 s for the batch's first frames
                    if all(h.first is not None or h.ended for h in group):
                        break
                    await asyncio.sleep(0.1)
                sample()
            connect_s = time.perf_counter() - connect_started
            hold_started = time.monotonic()
            await asyncio.sleep(min(5.0, hold_seconds / 3))
            newcomer = asyncio.create_task(new_build_start(stack))
            while time.monotonic() - hold_started < hold_seconds or not newcomer.done():
                sample()
                await asyncio.sleep(1.0)
            newbuild = await newcomer
            sample()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        held = sum(1 for h in holders if h.first is not None and not h.ended)
        worst = max((h.max_gap for h in holders if h.first is not None), default=float("nan"))
        late = max(0.0, worst - interval)
        errors = [h.error for h in holders if h.ended]
        met = (held == clients and peak.get("rss_mb", 0) < 300 and late <= 2.0
               and newbuild["start_s"] <= 2.0 and newbuild["outcome"] == "ready")
        report.add(Row(WORKLOAD, f"{clients} streams", {
            "held": held, "rss_mb": peak.get("rss_mb"), "rss_before_mb": before.get("rss_mb"),
            "threads": peak.get("threads"), "fds": peak.get("fds"),
            "max_gap_s": round(worst, 2), "keepalive_late_s": round(late, 2),
            "new_build_start_s": newbuild["start_s"], "new_build_ready_s": newbuild["ready_s"],
            "connect_s": round(connect_s, 1)},
            "all held, RSS < 300 MB, keepalive late <= 2 s, new build starts <= 2 s", met,
            note=f"keepalive every {interval:g} s, held {hold_seconds:g} s"
            + (f"; first error: {errors[0]}" if errors else "")
            + ("" if newbuild["outcome"] == "ready" else f"; new build: {newbuild['outcome']}")))
        with contextlib.suppress(Exception):
            await asyncio.sleep(2)  # the server closes the streams before the next level
