"""Builds shared by everyone who asks for the same image: deduplication, a real FIFO queue, log
tails for late joiners, the maximum build time, and the cleaner. Backends only run containers or
pods (:mod:`binderapi.executors`); everything here is the same for all of them.

A build belongs to the process, not to a request: it is a background task, so a client that
disconnects never stops a build others watch, and a build nobody watches still finishes (a retry
then finds the image). Its output is encoded once into a :class:`BuildLog` that any number of
watchers read at their own pace, which is what keeps thousands of idle streams cheap.

This is the story of one process. Replicas sharing a store (claims, builds followed from another
replica, leases, cancel through another replica) are :mod:`binderapi.replicas`, which the manager
makes only then and calls at a few named points.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from itertools import islice
from typing import TYPE_CHECKING, Any

from . import metrics
from .errors import BinderError
from .events import WaitingEvent, builder_line_to_event, event_json, frame, line
from .executors.base import BuildBackend, BuildExistsError, BuildJob
from .recorder import Recorder
from .store.base import (
    BuildRecord,
    BuildState,
    BuildStore,
    StoredEvent,
    StoredLog,
    StoreError,
    new_build_id,
    process_owner,
)
from .supervisor import Supervisor

if TYPE_CHECKING:
    from .replicas import ReplicaSync

log = logging.getLogger(__name__)

#: a finished, successful build keeps answering late joiners for this long
SUCCESS_RETENTION_SECONDS = 60.0
#: frames kept in memory per build; late joiners get the last ``log_tail_lines`` of them
LOG_CAPACITY = 2000
#: a finished build container/pod is removed by the cleaner only after this long, so every
#: replica following it has read its exit status
FINISHED_GRACE_SECONDS = 30.0
#: events read from the store at a time
PAGE = 1000
#: how often a build running in another process is looked up in the store by a follower
POLL_SECONDS = 1.0

CANCELLED_MESSAGE = "The build was cancelled by an operator; open the link again to start a new build."
VANISHED_MESSAGE = "The builder of this build was gone when binderapi restarted; start it again."
SHUTDOWN_MESSAGE = "binderapi is shutting down; the build continues and a retry will rejoin it"
TAKEN_OVER_MESSAGE = ("Another binderapi replica took this build over (this one lost the build store for a while); "
                      "open the link again to follow it there.")
#: the phases of a build resource's terminal event (only the terminal event has them in its stream)
TERMINAL_PHASES = ("ready", "failed")


class BuildFinishedError(Exception):
    """The build has already finished (cancelling it is a conflict); ``record`` is how it ended."""

    def __init__(self, record: BuildRecord) -> None:
        super().__init__(f"Build {record.id} already finished ({record.state})")
        self.record = record


@dataclass(frozen=True)
class BuildOutcome:
    success: bool
    message: str = ""
    status_code: int | None = None  # of the failed event, e.g. 503 when the engine went away
    cancelled: bool = False


def draft_record(job: BuildJob, spec: str = "") -> BuildRecord:
    """A new build's record, before it is started (``spec`` is ``<prefix>/<spec>`` as in a ``/build`` URL)."""
    return BuildRecord(id=job.build_id or new_build_id(), spec=spec, provider=job.provider, repo_url=job.repo_url,
                       resolved_ref=job.ref, image_name=job.image_name, build_name=job.name)


def _now() -> datetime:
    return datetime.now().astimezone()


class BuildLog:
    """A build's events, each numbered (``seq`` 1, 2, ...) and encoded once: the JSON (what the
    store and ``/api/v1`` events carry) and the classic ``/build`` frame (``id: <build>.<seq>``).
    Memory is bounded: watchers keep a cursor (a seq); one that falls more than the capacity
    behind skips ahead rather than holding memory for everyone.

    The terminal event (``ready`` or ``failed`` of the build resource) is kept apart: a classic
    ``/build`` client goes on to the launch, and would stop at a ``ready``. The builder's raw
    output lines are kept alongside, for a ``follow`` of the log.
    """

    def __init__(self, build_id: str = "", capacity: int = LOG_CAPACITY) -> None:
        self.build_id = build_id
        self._entries: deque[tuple[StoredEvent, bytes]] = deque(maxlen=capacity)
        self.total = 0  # the seq of the newest event
        self.terminal: StoredEvent | None = None
        self.output: deque[str] = deque(maxlen=capacity)
        self.output_total = 0
        self.closed = False
        self._changed = asyncio.Event()

    def append(self, data: str, seq: int | None = None) -> StoredEvent:
        """Add an event (its JSON, ``build_id`` included); ``seq`` only to restore stored ones."""
        event = StoredEvent(self.total + 1 if seq is None else seq, data)
        self._entries.append((event, frame(data, f"{self.build_id}.{event.seq}" if self.build_id else None)))
        self.total = event.seq
        self._wake()
        return event

    def end(self, data: str | None) -> StoredEvent | None:
        """Close the log, with the build resource's terminal event if any."""
        if data is not None and self.terminal is None:
            self.terminal = StoredEvent(self.total + 1, data)
        self.closed = True
        self._wake()
        return self.terminal

    def add_output(self, text: str) -> None:
        self.output.append(text)
        self.output_total += 1
        self._wake()

    def close(self) -> None:
        self.end(None)

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    @property
    def first_seq(self) -> int:
        """The seq of the oldest event still in memory."""
        return self.total - len(self._entries) + 1

    def cursor_for_tail(self, tail: int) -> int:
        return self.total - min(tail, len(self._entries))

    async def changed(self) -> None:
        await self._changed.wait()

    async def wait(self, cursor: int) -> None:
        """Until there is something after ``cursor``, or the log is closed."""
        while cursor >= self.total and not self.closed:
            await self._changed.wait()

    def _after(self, cursor: int) -> islice[tuple[StoredEvent, bytes]]:
        return islice(self._entries, max(0, cursor - self.first_seq + 1), None)

    def events_after(self, cursor: int) -> list[StoredEvent]:
        return [event for event, _ in self._after(cursor)]

    async def read(self, cursor: int) -> tuple[list[bytes], int]:
        """Classic frames after ``cursor`` (waiting for some), and the new cursor; empty once closed."""
        await self.wait(cursor)
        return [data for _, data in self._after(cursor)], self.total

    def output_after(self, cursor: int) -> tuple[list[str], int]:
        first = self.output_total - len(self.output)
        return list(islice(self.output, max(0, cursor - first), None)), self.output_total

    async def follow_output(self, cursor: int) -> AsyncIterator[str]:
        """The builder output after ``cursor``, as it comes, until the build ends (a local build's
        ``logs?follow=true`` and a remote one's, fed from the store, both read it so)."""
        while True:
            lines, cursor = self.output_after(cursor)
            if lines:
                yield "".join(lines)
            if self.closed and cursor >= self.output_total:
                return
            if cursor >= self.output_total:
                await self.changed()


_NOT_RECORDED = Recorder(None)


class Build:
    """One build of one image, shared by all its watchers. ``record`` is its live state, as the
    store and ``/api/v1`` show it; every change goes to the :class:`~binderapi.recorder.Recorder`."""

    def __init__(self, job: BuildJob, record: BuildRecord, recorder: Recorder = _NOT_RECORDED) -> None:
        if job.build_id != record.id:
            job = replace(job, build_id=record.id)
        self.job = job
        self.id = record.id
        self.record = record
        self.recorder = recorder
        self.log = BuildLog(record.id)
        self.outcome: asyncio.Future[BuildOutcome] = asyncio.get_running_loop().create_future()
        self.queue_position: int | None = None
        self.slot: asyncio.Future[None] | None = None
        self.holds_slot = False
        self.watchers = 0
        self.cancelled = False  # cancel() asked for it
        self.task: asyncio.Task[Any] | None = None
        self.finishing = False  # past the point where a cancel can stop it
        #: run by another replica and followed here from the shared store (never written from here)
        self.remote = False
        self.wake: asyncio.Event | None = None  # set when the store says a remote build changed
        self.caught_up: asyncio.Event | None = None  # set once a remote build's log has what the store had
        self.log_chars = 0  # of a remote build: the characters of the stored log's head fed to ``log``
        self.claimed = False  # run here under a claim in the shared store (its heartbeat renews it)
        self.lost = False  # its claim was adopted by another replica (this one could not renew it)

    @property
    def done(self) -> bool:
        return self.outcome.done()

    def emit(self, event: dict[str, Any]) -> StoredEvent:
        """Add an event to the build's stream: numbered, given the build's id, encoded once, recorded."""
        stored = self.log.append(event_json({**event, "build_id": self.id}))
        self.recorder.event(self.id, stored)
        return stored

    def output(self, text: str) -> None:
        """The builder's output (the message of one of its lines), for the build's log."""
        if text:
            self.log.add_output(text)
            self.recorder.log(self.record, text)

    def set_queue_position(self, position: int | None) -> None:
        self.queue_position = self.record.queue_position = position
        self.recorder.save(self.record)

    def building(self) -> None:
        record = self.record
        if record.state is not BuildState.building:
            record.state, record.queue_position = BuildState.building, None
            record.started_at = record.started_at or _now()
            self.recorder.save(record)

    def finish(self, outcome: BuildOutcome, final: bool = True) -> None:
        """The build ended; ``final`` is False at a shutdown, which leaves the record as it is (the
        build goes on, and the next start re-attaches it)."""
        if not self.outcome.done():
            self.outcome.set_result(outcome)
        record = self.record
        if not final or record.state.finished:
            self.log.close()
            return
        if outcome.success:
            record.state = BuildState.built
            terminal = {"phase": "ready", "message": "Done! Image built\n", "imageName": self.job.image_name}
        else:
            record.state = BuildState.cancelled if outcome.cancelled else BuildState.failed
            terminal = {"phase": "failed", "message": line(outcome.message)}
            if outcome.status_code is not None:
                terminal["status_code"] = outcome.status_code
            if outcome.cancelled:
                terminal["cancelled"] = True
        record.message = "" if outcome.success else outcome.message
        record.queue_position = None
        record.finished_at = _now()
        event = self.log.end(event_json({**terminal, "build_id": self.id}))
        if event is not None:
            self.recorder.event(self.id, event)
        self.recorder.save(record)
        self.recorder.finished(self.id)


class BuildWatch:
    """A client's view of a build: the last ``tail`` frames (or those after ``after_seq``), then
    live frames until the build ends. ``outcome`` is known once iteration ends; ``start`` is the
    seq the watch started after (the id of a frame sent before the build's own)."""

    def __init__(self, build: Build, tail: int, after_seq: int | None = None) -> None:
        self.build = build
        log_ = build.log
        if after_seq is None:
            self.cursor = log_.cursor_for_tail(tail)
        else:
            self.cursor = max(log_.first_seq - 1, min(after_seq, log_.total))
        self.start = self.cursor

    @property
    def build_id(self) -> str:
        return self.build.id

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
            for data in frames:
                yield data
            if log_.closed and self.cursor >= log_.total:
                return

    @property
    def outcome(self) -> BuildOutcome:
        return self.build.outcome.result()


def _owner_gone(owner: str) -> bool:
    """Whether the process named by a record's ``owner`` (``host:pid:start``) is gone: a process
    on this host that no longer runs (or whose pid is now ours: a container's previous life), or a
    process on another host (a replaced pod; replicas on several hosts need leases, a later step)."""
    node, _, rest = owner.partition(":")
    pid_text, _, _ = rest.partition(":")
    if not owner or node != os.uname().nodename:
        return True
    try:
        pid = int(pid_text)
    except ValueError:
        return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


class BuildManager:
    """Runs each needed build once and lets every request for it watch. Builds are also resources
    (``/api/v1/builds``): each has an id, a record and an event stream, written to the store by
    ``recorder`` when there is one."""

    def __init__(
        self,
        backend: BuildBackend,
        supervisor: Supervisor,
        *,
        concurrent_build_limit: int,
        log_tail_lines: int,
        max_age: float,
        image_exists: Callable[[str], Awaitable[bool]] | None = None,
        recorder: Recorder | None = None,
        lease_seconds: float = 15.0,
    ) -> None:
        self.backend = backend
        self.supervisor = supervisor
        self.limit = concurrent_build_limit
        self.log_tail_lines = log_tail_lines
        self.max_age = max_age
        self.image_exists = image_exists
        self.recorder = recorder or _NOT_RECORDED
        self.builds: dict[str, Build] = {}  # by build name
        self.by_id: dict[str, Build] = {}
        self.queue: deque[Build] = deque()
        self.running: set[str] = set()
        self.owner = process_owner()
        #: replicas sharing the store (claims, remote builds, leases); None for one process
        self.replicas: ReplicaSync | None = None
        if self.recorder.store is not None and self.recorder.store.shared:
            from .replicas import ReplicaSync  # it builds on this module

            self.replicas = ReplicaSync(self, self.recorder.store, lease_seconds)

    @property
    def store(self) -> BuildStore | None:
        return self.recorder.store

    @property
    def shared(self) -> bool:
        """Replicas share the store: it decides who builds what (claims), and builds run by
        another replica are followed from it (:attr:`replicas`)."""
        return self.replicas is not None

    # -- public -----------------------------------------------------------------------------------
    async def start(self) -> None:
        """After a restart: re-attach builds that outlived a previous process under their ids, so
        their clients can rejoin and their records go on; a recorded build whose builder is gone
        is marked failed. With a shared store, builds are adopted by leases instead (a replica
        cannot tell from here whether another one runs a build): the heartbeat starts, and with it
        the adoption of builds whose owner stopped, this process's previous life included."""
        if self.replicas is not None:
            self.replicas.start()
            return
        records = await self._orphaned_records()
        for info in await self.backend.list_builds():
            if info.name in self.builds:
                continue
            record = records.pop(info.build_id, None) if info.build_id else None
            if record is not None and record.build_name == info.name:
                job = BuildJob(name=info.name, image_name=record.image_name, repo_url=record.repo_url,
                               ref=record.resolved_ref, provider=record.provider, build_id=record.id)
                build = Build(job, record, self.recorder)
                skip = await self._restore(build)
                log.info("Re-attaching to build %s (%s, id %s)", info.name, info.image_name, record.id)
                self._launch(build, attach=True, owner=True, skip_bytes=skip)
            elif info.running:
                job = BuildJob(name=info.name, image_name=info.image_name, repo_url=info.repo_url, ref="",
                               build_id=info.build_id)
                log.info("Re-attaching to running build %s (%s)", info.name, info.image_name)
                # its owner died with our previous life: we clean it up when it ends
                self._launch(Build(job, draft_record(job)), attach=True, owner=True)
        for record in records.values():
            log.warning("Build %s (%s) was unfinished and its builder is gone: marking it failed", record.id,
                        record.build_name)
            record.state, record.message = BuildState.failed, VANISHED_MESSAGE
            record.queue_position, record.finished_at = None, _now()
            self.recorder.save(record)
            await self._end_stream(record, {"phase": "failed", "message": line(VANISHED_MESSAGE)})

    async def _end_stream(self, record: BuildRecord, terminal: dict[str, Any]) -> None:
        """Give a build settled outside its task (gone at a restart, cancelled in another process)
        the terminal event its stream ends with, after the events stored."""
        store = self.store
        if store is None:
            return
        last = 0
        try:
            async for event in self._replay(store, record.id, 0):
                last = event.seq
        except StoreError as e:
            self.recorder.failed(str(e))
            return
        self.recorder.event(record.id, StoredEvent(last + 1, event_json({**terminal, "build_id": record.id})))

    async def _orphaned_records(self) -> dict[str, BuildRecord]:
        """The store's unfinished builds whose process is gone (ours, before a restart)."""
        store = self.store
        if store is None:
            return {}
        try:
            unfinished = await store.unfinished()
        except StoreError as e:
            self.recorder.failed(str(e))
            return {}
        return {record.id: record for record in unfinished if _owner_gone(record.owner)}

    async def _restore(self, build: Build) -> int | None:
        """A re-attached build's stored events (its seq goes on after them) and log; how many
        bytes of the builder's output the store already has (None: unknown, replay a tail)."""
        store = self.store
        assert store is not None
        build.record.owner = self.owner
        try:
            stored = await store.read_log(build.id)
            after = 0
            while True:
                page = await store.events_after(build.id, after, PAGE)
                for event in page:
                    build.log.append(event.data, event.seq)
                if len(page) < PAGE:
                    break
                after = page[-1].seq
        except StoreError as e:
            self.recorder.failed(str(e))
            return None
        if stored is None:
            return 0
        self.recorder.resume_log(build.id, stored)
        return len(stored.head.encode()) + stored.dropped_bytes + len(stored.tail.encode())

    def in_progress(self, name: str) -> bool:
        """Whether this process is running (or queueing, or following) the build ``name``."""
        build = self.builds.get(name)
        return build is not None and not build.done

    def live(self, build_id: str) -> Build | None:
        """The build with this id if this process runs it or ran it lately."""
        return self.by_id.get(build_id)

    def running_build(self, build_name: str) -> Build | None:
        """The unfinished build of ``build_name`` in this process."""
        build = self.builds.get(build_name)
        return build if build is not None and not build.done else None

    async def running_build_id(self, build_name: str, image_name: str) -> str | None:
        """The id of the unfinished build of ``build_name``: this process's, or (shared store)
        another replica's, from the store (one indexed read; StoreError if it fails)."""
        build = self.running_build(build_name)
        if build is not None:
            return build.id
        if self.replicas is None:
            return None
        record = await self.replicas.store.latest_for_image(image_name, cached=False)
        if record is None or record.state.finished or record.build_name != build_name:
            return None
        return record.id

    async def ensure(self, job: BuildJob, record: BuildRecord) -> Build:
        """Join the running build of ``job.name``, or start one from ``record`` (a draft, ignored
        when joining). A finished build is never joined: a forced rebuild must build again. With a
        shared store, the build another replica runs is joined (followed from the store)."""
        finished = self.builds.get(job.name)
        if finished is not None and finished.done:
            self._forget(finished, keep_id=SUCCESS_RETENTION_SECONDS)
        return await self._claimed(job, record)

    async def join(self, job: BuildJob, record: BuildRecord | None = None) -> BuildWatch:
        """:meth:`watch` for every replica: the build of ``job.name`` wherever it runs."""
        return BuildWatch(await self._claimed(job, record), self.log_tail_lines)

    async def resumable(self, build_id: str) -> Build | None:
        """The build ``build_id`` as :meth:`live`, or (shared store) one another replica runs, to
        resume a client's stream; None if unknown."""
        build = self.by_id.get(build_id)
        if build is None and self.replicas is not None:
            with contextlib.suppress(StoreError):
                build = await self.replicas.unfinished(build_id)
        return build

    def watch(self, job: BuildJob, record: BuildRecord | None = None, after_seq: int | None = None) -> BuildWatch:
        """Join the build of ``job.name``, starting it if nobody is building it; from the events
        after ``after_seq`` when given (a client resuming), else from the log's tail."""
        return BuildWatch(self._join(job, record), self.log_tail_lines, after_seq)

    def _join(self, job: BuildJob, record: BuildRecord | None) -> Build:
        build = self._joinable(job.name)
        if build is None:
            record = record or draft_record(job)
            record.owner = self.owner
            build = Build(job, record, self.recorder)
            self.recorder.save(record)
            self._launch(build, attach=False, owner=False)
        return build

    def _joinable(self, name: str) -> Build | None:
        """The build of ``name`` a request joins: running, or built lately (a failed one is retried)."""
        build = self.builds.get(name)
        if build is None or (build.done and not build.outcome.result().success):
            return None
        return build

    async def _claimed(self, job: BuildJob, record: BuildRecord | None) -> Build:
        """The build of ``job.name``: joined here, or (shared store) claimed through the replicas,
        wherever one of them runs it."""
        build = self._joinable(job.name)
        if build is not None or self.replicas is None:
            return build or self._join(job, record)
        return await self.replicas.join(job, record)

    async def record(self, build_id: str) -> BuildRecord | None:
        """The build's record: live if this process runs it, else the store's (StoreError if it fails)."""
        build = self.by_id.get(build_id)
        if build is not None:
            return build.record
        return await self.store.get(build_id) if self.store is not None else None

    async def cancel(self, build_id: str) -> BuildRecord | None:
        """Cancel a queued or running build: it leaves the queue, or its builder is removed; every
        watcher gets a ``failed`` event saying so. None if unknown; :class:`BuildFinishedError` if
        it already ended."""
        build = self.by_id.get(build_id)
        if build is None and self.replicas is not None:
            record = await self.replicas.store.get(build_id)
            if record is None:
                return None
            if record.state.finished:
                raise BuildFinishedError(record)
            build = await self.replicas.follow(build_id)
        if build is None:
            return await self._cancel_elsewhere(build_id)
        if build.done:
            raise BuildFinishedError(build.record)
        if build.remote:
            assert self.replicas is not None  # only replicas follow remote builds
            return await self.replicas.cancel_remote(build)
        if not build.finishing and build.task is not None:
            build.cancelled = True
            build.task.cancel()
        await asyncio.shield(build.outcome)
        if not build.outcome.result().cancelled:
            raise BuildFinishedError(build.record)
        return build.record

    async def _cancel_elsewhere(self, build_id: str) -> BuildRecord | None:
        """A build this process does not run: one a restart could not settle, or another process's."""
        if self.store is None:
            return None
        record = await self.store.get(build_id)
        if record is None:
            return None
        if record.state.finished:
            raise BuildFinishedError(record)
        info = await self.backend.inspect(record.build_name)
        if info is not None and info.build_id == build_id:
            await self.backend.stop(record.build_name)
        if self.replicas is not None:  # its stream ends with the cancellation, for followers on every replica
            return await self.replicas.record_cancel(record)
        record.state, record.message = BuildState.cancelled, CANCELLED_MESSAGE
        record.queue_position, record.finished_at = None, _now()
        await self.store.save([record])
        await self._end_stream(record, {"phase": "failed", "message": line(CANCELLED_MESSAGE), "cancelled": True})
        return record

    # -- a build's stream and log, from the store and from memory ---------------------------------
    async def follow_events(self, build_id: str, after: int = 0) -> AsyncIterator[StoredEvent]:
        """The build's events after ``after``: replayed from the store, then live until the
        terminal event. For a finished build: the replay, then the end."""
        cursor = after
        build = self.by_id.get(build_id)
        store = self.store
        if store is not None and (build is None or cursor < build.log.first_seq - 1):
            try:
                async for event in self._replay(store, build_id, cursor):
                    yield event
                    cursor = event.seq
            except StoreError:
                if build is None:
                    raise
        if build is None:
            build = self.by_id.get(build_id)
        if build is None and self.replicas is not None:
            build = await self.replicas.unfinished(build_id)
        if build is None:
            if store is not None:
                async for event in self._poll(store, build_id, cursor):
                    yield event
            return
        log_ = build.log
        while True:
            await log_.wait(cursor)
            for event in log_.events_after(cursor):
                yield event
                cursor = event.seq
            if log_.closed and cursor >= log_.total:
                if log_.terminal is not None and log_.terminal.seq > cursor:
                    yield log_.terminal
                return

    @staticmethod
    async def _replay(store: BuildStore, build_id: str, after: int) -> AsyncIterator[StoredEvent]:
        while True:
            page = await store.events_after(build_id, after, PAGE)
            for event in page:
                yield event
            if len(page) < PAGE:
                return
            after = page[-1].seq

    async def _poll(self, store: BuildStore, build_id: str, cursor: int) -> AsyncIterator[StoredEvent]:
        """A build recorded as unfinished but not running here (another process's): follow the
        store until its record says it ended."""
        while True:
            record = await store.get(build_id)
            async for event in self._replay(store, build_id, cursor):
                yield event
                cursor = event.seq
            if record is None or record.state.finished:
                return
            await asyncio.sleep(POLL_SECONDS)

    async def read_log(self, build_id: str) -> StoredLog | None:
        """The build's log: from memory while it runs here, else from the store; None if unknown."""
        held = self.recorder.log_snapshot(build_id)
        if held is not None:
            return held
        return await self.store.read_log(build_id) if self.store is not None else None

    async def follow_log(self, build_id: str) -> AsyncIterator[str]:
        """The log so far, then new output until the build ends."""
        build = self.by_id.get(build_id)
        if build is None and self.replicas is not None:
            build = await self.replicas.unfinished(build_id)
        if build is not None and build.remote:
            assert self.replicas is not None  # only replicas follow remote builds
            async for chunk in self.replicas.follow_log(build):
                yield chunk
            return
        held = self.recorder.log_snapshot(build_id)
        if build is None or held is None:
            stored = await self.read_log(build_id)
            if stored is not None and stored.text():
                yield stored.text()
            return
        # the cursor is taken with the snapshot, no await between: nothing lost or repeated
        new_output = build.log.follow_output(build.log.output_total)
        if held.text():
            yield held.text()
        async for chunk in new_output:
            yield chunk

    # -- running a build --------------------------------------------------------------------------
    def _launch(self, build: Build, attach: bool, owner: bool, skip_bytes: int | None = None) -> None:
        self.builds[build.job.name] = build
        self.by_id[build.id] = build
        build.task = self.supervisor.spawn(self._run(build, attach, owner, skip_bytes), name=f"build {build.job.name}")
        build.task.add_done_callback(lambda task: self._never_ran(build, task))

    def _never_ran(self, build: Build, task: asyncio.Task[Any]) -> None:
        """A build task cancelled before its first step (a cancel right after the build was
        created, a shutdown) never runs ``_run``'s handlers: its outcome is settled here, or its
        watchers and ``cancel()`` would wait forever. Nothing was started, so nothing is stopped."""
        if not task.cancelled() or build.done:
            return
        if build.cancelled:
            build.finish(BuildOutcome(False, CANCELLED_MESSAGE, cancelled=True))
        else:
            build.finish(BuildOutcome(False, SHUTDOWN_MESSAGE), final=False)
        self._forget(build, keep_id=SUCCESS_RETENTION_SECONDS)

    async def _run(self, build: Build, attach: bool, owner: bool, skip_bytes: int | None = None) -> None:
        """Run or follow one build. The owner (who created it, or adopted it after a restart)
        removes it when it ends; others only follow. A cancel removes it whoever owns it."""
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
            build.building()
            if skip_bytes is not None:  # re-attached with its record: the whole output, minus what is stored
                outcome = await self._follow(build, replay_tail=None, skip_bytes=skip_bytes)
            else:
                outcome = await self._follow(build, replay_tail=self.log_tail_lines if attach else None)
        except asyncio.CancelledError:
            if not build.cancelled:
                build.finish(BuildOutcome(False, TAKEN_OVER_MESSAGE if build.lost else SHUTDOWN_MESSAGE), final=False)
                if not build.lost:
                    raise
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            if build.lost:  # the builder is another replica's now: neither stopped nor recorded from here
                self._forget(build)
                return
            outcome = BuildOutcome(False, CANCELLED_MESSAGE, cancelled=True)
            owner = True  # whatever was started goes
        except BinderError as e:
            outcome = BuildOutcome(False, e.message, e.status_code)
        except Exception:
            log.exception("Unexpected error running build %s", name)
            outcome = BuildOutcome(False, f"Unexpected error while running the build {name}; the service log has details")
        finally:
            build.finishing = True
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
        if self.replicas is not None:
            await self.replicas.release(build)
        if outcome.success:
            asyncio.get_running_loop().call_later(SUCCESS_RETENTION_SECONDS, self._forget, build)
        else:
            self._forget(build, keep_id=SUCCESS_RETENTION_SECONDS)

    def _forget(self, build: Build, keep_id: float = 0.0) -> None:
        """Stop answering for ``build``: by name at once (the next request starts a new build), by
        id after ``keep_id`` seconds, so its record is read from memory until the recorder has
        written its end to the store (a read in between would find no build at all)."""
        if self.builds.get(build.job.name) is build:
            del self.builds[build.job.name]
        if keep_id:
            asyncio.get_running_loop().call_later(keep_id, self._forget_id, build)
        else:
            self._forget_id(build)

    def _forget_id(self, build: Build) -> None:
        if self.by_id.get(build.id) is build:
            del self.by_id[build.id]

    async def _follow(self, build: Build, replay_tail: int | None, skip_bytes: int = 0) -> BuildOutcome:
        name = build.job.name
        info = await self.backend.inspect(name)
        started_at = (info.started_at if info and info.started_at else time.time())
        remaining = self.max_age - (time.time() - started_at) if self.max_age else None
        failure = ""
        try:
            async with asyncio.timeout(remaining):
                async for text in self.backend.follow_logs(name, tail=replay_tail):
                    event = builder_line_to_event(text)
                    output = event.get("message") or ""  # what repo2docker wrote for people, as it wrote it
                    if skip_bytes > 0:  # recorded before a restart
                        skip_bytes -= len(output.encode())
                        continue
                    build.output(output)
                    if event.get("phase") in ("failed", "failure"):
                        failure = event.get("message") or failure  # the pipeline sends the one final `failed`
                        continue
                    build.emit(event)
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
        if build.queue_position is not None:
            build.set_queue_position(None)
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
                build.set_queue_position(position)
                ahead = "next in line" if position == 1 else f"{position - 1} ahead of it"
                build.emit(WaitingEvent(
                    message=line(f"Waiting for a free build slot: position {position} of {length} in the queue ({ahead})"),
                    queue_position=position, queue_length=length).model_dump(exclude_none=True))

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
