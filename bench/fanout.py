"""Workload 3: K clients ask at once for one image not yet built (a new commit in the bench's own
repository per round, asked for by its SHA). Builds started are counted from the Docker engine (builder containers
created with the bench's namespace label during the round); the time until every client saw
``ready`` is compared with one build alone, measured just before in the same run."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from .report import Report, Row, percentile
from .sse import stream
from .stack import Stack

WORKLOAD = "fan-out onto one new image"
BINDERHUB = {10: "10 builds, all ready after 7.8 s", 50: "50 builds, all ready after 36 s"}


def builder_watcher(namespace: str):
    """The engine's container events for the stack's builder namespace (the tests' own watcher)."""
    tests = str(Path(__file__).resolve().parents[1] / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from fixtures.stack import DockerWatcher

    return DockerWatcher(namespace)


async def round_(stack: Stack, clients: int) -> tuple[float, list[float], int, int]:
    """A new commit, then ``clients`` at once: (all-ready seconds, per-client seconds, builds, errors)."""
    sha = await stack.git.new_nonce("fanout")
    url = stack.build_url("fanout", ref=sha)  # the commit itself: no branch TTL to wait out
    async with builder_watcher(stack.build_namespace) as watcher:
        started = time.perf_counter()
        results = await asyncio.gather(*(stream(url, keep_events=False) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    errors = [r for r in results if not r.ok]
    if errors:
        print(f"[bench] fan-out error: {errors[0].describe()}")
    return elapsed, [r.seconds for r in results], len(watcher.actions("create")), len(errors)


async def run(stack: Stack, report: Report, levels: list[int]) -> None:
    for clients in levels:
        alone, _, alone_builds, alone_errors = await round_(stack, 1)
        everyone, each, builds, errors = await round_(stack, clients)
        ratio = everyone / alone
        met = builds == 1 and errors == 0 and (ratio <= 1.2 if clients == 50 else True)
        report.add(Row(WORKLOAD, f"{clients} clients", {
            "builds": builds, "all_ready_s": round(everyone, 2), "alone_s": round(alone, 2),
            "ratio": round(ratio, 2), "client_p50_s": round(percentile(each, 50), 2), "errors": errors},
            "exactly 1 build" + (", all ready within 1.2x one build alone" if clients == 50 else ""), met,
            note=f"BinderHub: {BINDERHUB.get(clients, 'n/a')}; alone: {alone_builds} build, {alone_errors} errors"))
