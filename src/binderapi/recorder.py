"""Writes what happens to builds into the build store, in batches, off every request's path.

A build's record, events and builder output are handed to the :class:`Recorder` as they happen
(plain in-memory appends) and written by one background task: every ``flush_interval`` seconds, or
at once when a batch reaches :data:`BATCH_EVENTS` events or a build has finished. So a build of
thousands of log lines costs a few transactions, and nothing a client waits for ever waits on the
store: when the store is down, full or corrupt, builds and the classic ``/build`` go on, the error
is logged once per outage and ``/health`` shows it as a soft check, and what could not be written
is tried again (within bounds) until the store answers.

The builder's output is capped at ``max_log_bytes``: the first half is kept as the log's head,
then only the last half (the tail, replaced at each flush), with the number of bytes dropped in
between (:class:`~binderapi.store.base.StoredLog`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass, field

from .store.base import BuildRecord, BuildStore, StoredEvent, StoredLog, StoreError

log = logging.getLogger(__name__)

#: a batch with this many events is written at once rather than at the next interval
BATCH_EVENTS = 500
#: events of one build kept for a retry while the store is down; older ones are given up
MAX_PENDING_EVENTS = 10_000
#: the pause between attempts while the store fails
RETRY_SECONDS = 5.0
#: how long the last flush at shutdown may take
CLOSE_SECONDS = 5.0


@dataclass
class _LogCap:
    """One running build's log as kept: the head (up to its budget), then only the tail, with
    what was dropped in between. Kept whole in memory while the build runs (at most
    ``max_log_bytes`` a build), so a read never waits for the store; what is already written is
    marked so each flush writes only what is new."""

    head_left: int  # bytes the head may still take; -1: no cap
    tail_budget: int
    head: list[str] = field(default_factory=list)
    head_written: int = 0  # pieces of ``head`` already in the store
    tail: deque[str] = field(default_factory=deque)
    tail_bytes: int = 0
    dropped: int = 0
    tail_version: int = 0  # bumped at each change of the tail
    tail_written: int = 0  # the version in the store

    def add(self, text: str) -> None:
        if self.head_left < 0:
            self.head.append(text)
            return
        data = text.encode()
        if not self.tail and len(data) <= self.head_left:
            self.head_left -= len(data)
            self.head.append(text)
            return
        if not self.tail and self.head_left:
            kept = data[:self.head_left].decode("utf-8", "ignore")
            self.head.append(kept)
            self.head_left = 0
            data = data[len(kept.encode()):]
        self.tail.append(data.decode("utf-8", "ignore"))
        self.tail_bytes += len(data)
        while self.tail_bytes > self.tail_budget and self.tail:
            first = self.tail[0].encode()
            excess = self.tail_bytes - self.tail_budget
            if len(first) <= excess:
                self.tail.popleft()
                self.tail_bytes -= len(first)
                self.dropped += len(first)
            else:
                rest = first[excess:].decode("utf-8", "ignore")
                cut = len(first) - len(rest.encode())
                self.tail[0] = rest
                self.tail_bytes -= cut
                self.dropped += cut
        self.tail_version += 1

    @property
    def unwritten(self) -> bool:
        return self.head_written < len(self.head) or self.tail_written != self.tail_version

    def snapshot(self) -> StoredLog:
        return StoredLog("".join(self.head), "".join(self.tail), self.dropped)


@dataclass
class _Pending:
    """What is waiting to be written for one build besides its log."""

    record: BuildRecord | None = None  # set when the record changed
    events: list[StoredEvent] = field(default_factory=list)


class Recorder:
    """Batches the store writes of every build of this process (see the module docstring).

    With no store (``BuildStore.enabled: false``, or a store that could not be opened at start:
    ``error`` says why) every method is a no-op and builds are simply not recorded.
    """

    def __init__(self, store: BuildStore | None, *, max_log_bytes: int = 1 << 20, flush_interval: float = 0.25,
                 error: str = "") -> None:
        self.store = store
        self.max_log_bytes = max_log_bytes
        self.flush_interval = flush_interval
        #: the store's last error while it fails (logged once per outage), else ""
        self.error = error
        #: store calls made (save and append), for tests and curiosity
        self.writes = 0
        self._pending: dict[str, _Pending] = {}
        self._logs: dict[str, _LogCap] = {}
        self._log_changed: set[str] = set()
        self._done: set[str] = set()  # finished builds whose log state goes after their last write
        self._dirty = asyncio.Event()
        self._urgent = asyncio.Event()
        self._lock = asyncio.Lock()  # one flush at a time: a log's pieces are appended in order
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def enabled(self) -> bool:
        return self.store is not None

    # -- what builds report -----------------------------------------------------------------------
    def save(self, record: BuildRecord) -> None:
        """The record changed (state, queue position, times); a finished one is written promptly."""
        if self.store is None:
            return
        self._for(record.id).record = record
        self._kick(urgent=record.state.finished)

    def event(self, build_id: str, event: StoredEvent) -> None:
        if self.store is None:
            return
        pending = self._for(build_id)
        pending.events.append(event)
        if len(pending.events) > MAX_PENDING_EVENTS:  # the store has been down a while: give up the oldest
            del pending.events[:len(pending.events) - MAX_PENDING_EVENTS]
        self._kick(urgent=len(pending.events) >= BATCH_EVENTS)

    def log(self, record: BuildRecord, text: str) -> None:
        """Builder output (whole lines, newlines included); counted in ``record.log_bytes``."""
        record.log_bytes += len(text.encode())
        if self.store is None:
            return
        cap = self._logs.get(record.id)
        if cap is None:
            cap = self._logs[record.id] = self._new_cap()
        cap.add(text)
        self._log_changed.add(record.id)
        self._kick()

    def finished(self, build_id: str) -> None:
        """The build ended: its log state goes once its last batch is written."""
        if self.store is not None:
            self._done.add(build_id)

    def log_snapshot(self, build_id: str) -> StoredLog | None:
        """A build's log as this process holds it (while it runs here, store up or not), else None."""
        cap = self._logs.get(build_id)
        return cap.snapshot() if cap is not None else None

    def resume_log(self, build_id: str, stored: StoredLog) -> None:
        """A build re-attached after a restart goes on from its stored log."""
        if self.store is None:
            return
        cap = self._new_cap()
        if stored.head:
            cap.head.append(stored.head)
            cap.head_written = 1
            if cap.head_left >= 0:
                cap.head_left = max(0, cap.head_left - len(stored.head.encode()))
        if stored.tail:
            cap.tail.append(stored.tail)
            cap.tail_bytes = len(stored.tail.encode())
        cap.dropped = stored.dropped_bytes
        self._logs[build_id] = cap

    def _new_cap(self) -> _LogCap:
        if self.max_log_bytes <= 0:
            return _LogCap(head_left=-1, tail_budget=0)
        half = self.max_log_bytes // 2
        return _LogCap(head_left=self.max_log_bytes - half, tail_budget=half)

    def _for(self, build_id: str) -> _Pending:
        pending = self._pending.get(build_id)
        if pending is None:
            pending = self._pending[build_id] = _Pending()
        return pending

    def _kick(self, urgent: bool = False) -> None:
        if self._closed:
            return
        self._dirty.set()
        if urgent:
            self._urgent.set()
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    # -- writing ----------------------------------------------------------------------------------
    async def _run(self) -> None:
        """Runs while there is something to write, so an idle service has no timer."""
        while self._dirty.is_set():
            if not self._urgent.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._urgent.wait(), self.flush_interval)
            self._dirty.clear()
            self._urgent.clear()
            if not await asyncio.shield(self.flush()):  # a close() waits for it rather than losing a batch
                self._dirty.set()  # try again after a pause
                await asyncio.sleep(RETRY_SECONDS)

    async def flush(self) -> bool:
        """Write everything pending now; False if the store failed (it is kept for a retry)."""
        if self.store is None:
            return True
        async with self._lock:
            return await self._flush(self.store)

    async def _flush(self, store: BuildStore) -> bool:
        batch, self._pending = self._pending, {}
        changed, self._log_changed = self._log_changed, set()
        try:
            records = [p.record for p in batch.values() if p.record is not None]
            if records:  # first: a build's events and log belong to a saved build
                self.writes += 1
                await store.save(records)
                for pending in batch.values():
                    pending.record = None  # written: a retry of the rest need not write it again
            for build_id in [*batch, *(changed - batch.keys())]:
                pending = batch.get(build_id) or _Pending()
                cap = self._logs.get(build_id)
                if not pending.events and (cap is None or not cap.unwritten):
                    continue
                head_end, tail_version = (len(cap.head), cap.tail_version) if cap is not None else (0, 0)
                head = "".join(cap.head[cap.head_written:head_end]) if cap is not None else ""
                tail = "".join(cap.tail) if cap is not None and cap.tail_written != tail_version else None
                self.writes += 1
                await store.append(build_id, pending.events, head, tail, cap.dropped if cap is not None else 0)
                pending.events = []
                if cap is not None:
                    cap.head_written, cap.tail_written = head_end, tail_version
                changed.discard(build_id)
        except Exception as e:
            if not isinstance(e, StoreError):
                log.exception("Unexpected error writing to the build store")
            self.failed(str(e) or type(e).__name__)
            for build_id, pending in batch.items():  # kept for the next try, ahead of anything newer
                if pending.record is not None or pending.events:
                    newer = self._pending.get(build_id)
                    if newer is not None:
                        pending.record = newer.record or pending.record
                        pending.events += newer.events
                    del pending.events[:max(0, len(pending.events) - MAX_PENDING_EVENTS)]
                    self._pending[build_id] = pending
            self._log_changed |= changed
            return False
        for build_id in list(self._done):
            if build_id not in self._pending and build_id not in self._log_changed:
                self._done.discard(build_id)
                self._logs.pop(build_id, None)
        if self.error:
            log.info("The build store answers again; builds are recorded")
            self.error = ""
        return True

    def failed(self, message: str) -> None:
        """The store failed (logged once per outage; /health shows it until a write succeeds)."""
        if not self.error:
            log.warning("The build store failed: %s. Builds go on and are recorded once it answers again "
                        "(see /health)", message)
        self.error = message

    # -- health and closing -----------------------------------------------------------------------
    async def health(self) -> dict[str, object]:
        """The soft ``/health`` check "Build store": the last error while writes fail (a store that
        answers again with nothing left to write is well again), else a round trip."""
        if self.store is None:
            if self.error:
                raise StoreError(self.error)
            return {"ok": True, "enabled": False}
        if self.error and (self._pending or self._log_changed):
            raise StoreError(self.error)
        try:
            await self.store.ping()
        except StoreError as e:
            self.failed(str(e))
            raise
        if self.error:
            log.info("The build store answers again")
            self.error = ""
        return {"ok": True}

    async def close(self) -> None:
        """Write what is pending (once, within :data:`CLOSE_SECONDS`), then stop."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush(), CLOSE_SECONDS)

    async def close_store(self) -> None:
        """:meth:`close`, then close the store."""
        await self.close()
        if self.store is not None:
            with contextlib.suppress(Exception):
                await self.store.close()
