"""Workload 3: K clients ask at once for one image not yet built (a new commit in the bench's own
repository per round, asked for by its SHA). Builds started are counted from the Docker engine (builder containers
created with the bench's namespace label during the round); the time until every client saw
``ready`` is compared with one build alone, measured just before in the same run."""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiodocker

from .report import Report, Row, percentile
from .sse import stream
from .stack import Stack

WORKLOAD = "fan-out onto one new image"
BINDERHUB = {10: "10 builds, all ready after 7.8 s", 50: "50 builds, all ready after 36 s"}


class BuilderStarts:
    """Counts builder containers created with the stack's namespace label while it is entered."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.created = 0
        self._task: asyncio.Task[None] | None = None

    async def _follow(self, docker: aiodocker.Docker) -> None:
        subscriber = docker.events.subscribe(filters={"type": ["container"], "event": ["create"],
                                                      "label": [f"binderapi.namespace={self.namespace}"]})
        while await subscriber.get() is not None:
            self.created += 1

    async def __aenter__(self) -> BuilderStarts:
        self.docker = aiodocker.Docker()
        self._task = asyncio.create_task(self._follow(self.docker))
        await asyncio.sleep(0.3)  # subscribed before the round starts
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.sleep(0.5)  # late events arrive
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task
        with contextlib.suppress(Exception):
            await self.docker.events.stop()
        await self.docker.close()


async def round_(stack: Stack, clients: int) -> tuple[float, list[float], int, int]:
    """A new commit, then ``clients`` at once: (all-ready seconds, per-client seconds, builds, errors)."""
    sha = await stack.git.new_nonce("fanout")
    url = stack.build_url("fanout", ref=sha)  # the commit itself: no branch TTL to wait out
    async with BuilderStarts(stack.build_namespace) as starts:
        started = time.perf_counter()
        results = await asyncio.gather(*(stream(url, keep_events=False) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    errors = [r for r in results if not r.ok]
    if errors:
        print(f"[bench] fan-out error: {errors[0].describe()}")
    return elapsed, [r.seconds for r in results], starts.created, len(errors)


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
