"""Builds shared by everyone who asks for the same image: deduplication, a real FIFO queue, log
tails for late joiners, the maximum build time, and the cleaner. Backends only run containers or
pods (:mod:`binderapi.executors`); everything here is the same for all of them.

A build belongs to the process, not to a request: it is a background task, so a client that
disconnects never stops a build others watch, and a build nobody watches still finishes (a retry
then finds the image). Its output is encoded once into a :class:`BuildLog` that any number of
watchers read at their own pace, which is what keeps thousands of idle streams cheap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from itertools import islice

from . import metrics
from .errors import BinderError
from .events import WaitingEvent, builder_line_to_event, encode, line
from .executors.base import BuildBackend, BuildExistsError, BuildJob
from .supervisor import Supervisor

log = logging.getLogger(__name__)

#: a finished, successful build keeps answering late joiners for this long
SUCCESS_RETENTION_SECONDS = 60.0
#: frames kept in memory per build; late joiners get the last ``log_tail_lines`` of them
LOG_CAPACITY = 2000
#: a finished build container/pod is removed by the cleaner only after this long, so every
#: replica following it has read its exit status
FINISHED_GRACE_SECONDS = 30.0


@dataclass(frozen=True)
class BuildOutcome:
    success: bool
    message: str = ""
    status_code: int | None = None  # of the failed event, e.g. 503 when the engine went away


class BuildLog:
    """Append-only frames with bounded memory. Watchers keep a cursor; a watcher that falls more
    than the capacity behind skips ahead rather than holding memory for everyone."""

    def __init__(self, capacity: int = LOG_CAPACITY) -> None:
        self._frames: deque[bytes] = deque(maxlen=capacity)
        self.total = 0
        self.closed = False
        self._changed = asyncio.Event()

    def append(self, frame: bytes) -> None:
        self._frames.append(frame)
        self.total += 1
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def cursor_for_tail(self, tail: int) -> int:
        return self.total - min(tail, len(self._frames))

    async def read(self, cursor: int) -> tuple[list[bytes], int]:
        """Frames after ``cursor`` (waiting for some), and the new cursor; empty once closed."""
        while cursor >= self.total and not self.closed:
            await self._changed.wait()
        first = self.total - len(self._frames)
        start = max(cursor, first)
        return list(islice(self._frames, start - first, None)), self.total


class Build:
    """One build of one image, shared by all its watchers."""

    def __init__(self, job: BuildJob) -> None:
        self.job = job
        self.log = BuildLog()
        self.outcome: asyncio.Future[BuildOutcome] = asyncio.get_running_loop().create_future()
        self.queue_position: int | None = None
        self.slot: asyncio.Future[None] | None = None
        self.holds_slot = False
        self.watchers = 0

    @property
    def done(self) -> bool:
        return self.outcome.done()

    def finish(self, outcome: BuildOutcome) -> None:
        if not self.outcome.done():
            self.outcome.set_result(outcome)
        self.log.close()


class BuildWatch:
    """A client's view of a build: the last ``tail`` frames, then live frames until the build ends.
    ``outcome`` is known once iteration ends."""

    def __init__(self, build: Build, tail: int) -> None:
        self.build = build
        self.cursor = build.log.cursor_for_tail(tail)

    async def __aenter__(self) -> BuildWatch:
        self.build.watchers += 1
        metrics.BUILD_WATCHERS.inc()
        metrics.BUILDS_INPROGRESS.inc()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.build.watchers -= 1
        metrics.BUILD_WATCHERS.dec()
        metrics.BUILDS_INPROGRESS.dec()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        log_ = self.build.log
        while True:
            frames, self.cursor = await log_.read(self.cursor)
            for frame in frames:
                yield frame
            if log_.closed and self.cursor >= log_.total:
                return

    @property
    def outcome(self) -> BuildOutcome:
        return self.build.outcome.result()


class BuildManager:
    """Runs each needed build once and lets every request for it watch."""

    def __init__(
        self,
        backend: BuildBackend,
        supervisor: Supervisor,
        *,
        concurrent_build_limit: int,
        log_tail_lines: int,
        max_age: float,
        image_exists: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        self.backend = backend
        self.supervisor = supervisor
        self.limit = concurrent_build_limit
        self.log_tail_lines = log_tail_lines
        self.max_age = max_age
        self.image_exists = image_exists
        self.builds: dict[str, Build] = {}
        self.queue: deque[Build] = deque()
        self.running: set[str] = set()

    # -- public -----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Re-attach to builds that outlived a previous process, so their clients can rejoin."""
        for info in await self.backend.list_builds():
            if info.running and info.name not in self.builds:
                job = BuildJob(name=info.name, image_name=info.image_name, repo_url=info.repo_url, ref="")
                log.info("Re-attaching to running build %s (%s)", info.name, info.image_name)
                # its owner died with our previous life: we clean it up when it ends
                self._launch(Build(job), attach=True, owner=True)

    def in_progress(self, name: str) -> bool:
        """Whether this process is running (or queueing, or following) the build ``name``."""
        build = self.builds.get(name)
        return build is not None and not build.done

    def watch(self, job: BuildJob) -> BuildWatch:
        """Join the build of ``job.name``, starting it if nobody is building it."""
        build = self.builds.get(job.name)
        if build is None or (build.done and not build.outcome.result().success):
            build = Build(job)
            self._launch(build, attach=False, owner=False)
        return BuildWatch(build, self.log_tail_lines)

    # -- running a build --------------------------------------------------------------------------
    def _launch(self, build: Build, attach: bool, owner: bool) -> None:
        self.builds[build.job.name] = build
        self.supervisor.spawn(self._run(build, attach, owner), name=f"build {build.job.name}")

    async def _run(self, build: Build, attach: bool, owner: bool) -> None:
        """Run or follow one build. The owner (who created it, or adopted it after a restart)
        removes it when it ends; others only follow."""
        name = build.job.name
        started = time.monotonic()
        try:
            if not attach:
                info = await self.backend.inspect(name)
                if info is not None and info.running:
                    attach = True  # another replica (or our previous life) is building it
                else:
                    if info is not None:  # a finished leftover under our name: clear it
                        await self.backend.stop(name)
                    await self._acquire_slot(build)
                    try:
                        await self.backend.start(build.job)
                        owner = True
                    except BuildExistsError:
                        attach = True
            outcome = await self._follow(build, replay_tail=self.log_tail_lines if attach else None)
        except asyncio.CancelledError:
            build.finish(BuildOutcome(False, "binderapi is shutting down; the build continues and a retry will rejoin it"))
            raise
        except BinderError as e:
            outcome = BuildOutcome(False, e.message, e.status_code)
        except Exception:
            log.exception("Unexpected error running build %s", name)
            outcome = BuildOutcome(False, f"Unexpected error while running the build {name}; the service log has details")
        finally:
            self._release_slot(build)
        if owner:
            with contextlib.suppress(Exception):
                await self.backend.stop(name)
        status = "success" if outcome.success else "failure"
        if not attach:
            metrics.BUILD_TIME.labels(status=status).observe(time.monotonic() - started)
            metrics.count_build(status, provider=build.job.provider, repo=build.job.repo_url)
        log.info("Build %s of %s: %s %s", name, build.job.image_name, status, outcome.message)
        build.finish(outcome)
        if outcome.success:
            asyncio.get_running_loop().call_later(SUCCESS_RETENTION_SECONDS, self._forget, build)
        else:
            self._forget(build)

    def _forget(self, build: Build) -> None:
        if self.builds.get(build.job.name) is build:
            del self.builds[build.job.name]

    async def _follow(self, build: Build, replay_tail: int | None) -> BuildOutcome:
        name = build.job.name
        info = await self.backend.inspect(name)
        started_at = (info.started_at if info and info.started_at else time.time())
        remaining = self.max_age - (time.time() - started_at) if self.max_age else None
        failure = ""
        try:
            async with asyncio.timeout(remaining):
                async for text in self.backend.follow_logs(name, tail=replay_tail):
                    event = builder_line_to_event(text)
                    if event.get("phase") in ("failed", "failure"):
                        failure = event.get("message") or failure  # the pipeline sends the one final `failed`
                        continue
                    build.log.append(encode(event))
                exit_code = await self.backend.wait(name)
        except TimeoutError:
            await self.backend.stop(name)
            return BuildOutcome(False, f"The build took longer than the maximum of {self.max_age:.0f} seconds and was stopped.")
        if exit_code == 0:
            return BuildOutcome(True)
        if exit_code is None:
            # BinderHub #583: a vanished build is a success only if its image exists
            if self.image_exists is not None and await self.image_exists(build.job.image_name):
                return BuildOutcome(True)
            return BuildOutcome(False, "The build stopped before finishing (its container or pod was removed).")
        reason = failure.strip() or f"repo2docker exited with code {exit_code}"
        return BuildOutcome(False, f"Build failed: {reason}")

    # -- the queue --------------------------------------------------------------------------------
    async def _acquire_slot(self, build: Build) -> None:
        if len(self.running) < self.limit and not self.queue:
            self._take_slot(build)
            return
        build.slot = asyncio.get_running_loop().create_future()
        self.queue.append(build)
        self._announce_positions()
        try:
            await build.slot
        except asyncio.CancelledError:
            if build in self.queue:
                self.queue.remove(build)
                self._announce_positions()
            raise

    def _take_slot(self, build: Build) -> None:
        self.running.add(build.job.name)
        build.holds_slot = True
        build.queue_position = None
        metrics.BUILDS_RUNNING.set(len(self.running))

    def _release_slot(self, build: Build) -> None:
        if build.holds_slot:
            build.holds_slot = False
            self.running.discard(build.job.name)
        while self.queue and len(self.running) < self.limit:
            next_build = self.queue.popleft()
            self._take_slot(next_build)
            if next_build.slot is not None and not next_build.slot.done():
                next_build.slot.set_result(None)
        metrics.BUILDS_RUNNING.set(len(self.running))
        self._announce_positions()

    def _announce_positions(self) -> None:
        """Tell each queued build's watchers where it stands, whenever that changes."""
        metrics.BUILD_QUEUE_LENGTH.set(len(self.queue))
        length = len(self.queue)
        for position, build in enumerate(self.queue, start=1):
            if build.queue_position != position:
                build.queue_position = position
                ahead = "next in line" if position == 1 else f"{position - 1} ahead of it"
                build.log.append(encode(WaitingEvent(
                    message=line(f"Waiting for a free build slot: position {position} of {length} in the queue ({ahead})"),
                    queue_position=position, queue_length=length)))

    # -- cleaning ---------------------------------------------------------------------------------
    async def clean(self, grace: float = FINISHED_GRACE_SECONDS) -> None:
        """Remove finished builds nobody here follows any more and stop builds past ``max_age``,
        orphans of a restart or of another replica included. Finished builds are kept ``grace``
        seconds so every replica following one has read its exit status."""
        now = time.time()
        for info in await self.backend.list_builds():
            ours = self.builds.get(info.name)
            if info.running:
                if self.max_age and info.started_at and now - info.started_at > self.max_age:
                    log.warning("Stopping build %s: running for %.0fs, past max_age", info.name, now - info.started_at)
                    await self.backend.stop(info.name)
            elif (ours is None or ours.done) and (info.finished_at is None or now - info.finished_at >= grace):
                log.info("Removing finished build %s", info.name)
                await self.backend.stop(info.name)
