"""Builds shared by replicas through one store (PostgreSQL): who builds what, and every other
replica following along (docs/scaling.md). :mod:`binderapi.builds` is the story of one process;
this module is what a :class:`~binderapi.builds.BuildManager` adds when its store is shared, kept
apart so each story reads on its own.

- A **claim** per build name in the store decides which replica builds an image; the others
  follow that build from the store as a *remote* :class:`~binderapi.builds.Build` (never recorded
  here), fed on each NOTIFY of a change with the events numbered as everywhere.
- A **heartbeat** renews this process's leases, and adopts the builds of replicas whose lease ran
  out (they stopped).
- A **cancel** of a build another replica runs goes to that replica by NOTIFY.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from .builds import (
    CANCELLED_MESSAGE,
    SHUTDOWN_MESSAGE,
    SUCCESS_RETENTION_SECONDS,
    TERMINAL_PHASES,
    Build,
    BuildFinishedError,
    BuildOutcome,
    draft_record,
)
from .events import event_json, line
from .executors.base import BuildJob
from .store.base import (
    BUILDS_CHANNEL,
    CANCEL_CHANNEL,
    BuildRecord,
    BuildState,
    BuildStore,
    Claim,
    StoredEvent,
    StoredLog,
    StoreError,
)

if TYPE_CHECKING:
    from .builds import BuildManager

log = logging.getLogger(__name__)

ORPHANED_MESSAGE = ("The binderapi replica running this build stopped ({owner}) and its builder was gone; "
                    "start the build again.")


class ReplicaSync:
    """The shared-store half of a :class:`~binderapi.builds.BuildManager`, made by it only when
    its store is shared. The manager calls :meth:`start`, :meth:`join` (claim a build name),
    :meth:`unfinished` / :meth:`follow` (a build run elsewhere), :meth:`follow_log`,
    :meth:`cancel_remote` / :meth:`record_cancel` (cancel elsewhere) and :meth:`release`; this
    works on the manager's tables of builds (``builds``, ``by_id``) and runs adopted builds through
    it, so a build is a build whichever replica started it. Its background tasks belong to the
    manager's supervisor, which stops them at shutdown."""

    def __init__(self, manager: BuildManager, store: BuildStore, lease_seconds: float) -> None:
        self.manager = manager
        self.store = store
        #: how long a claim on a build outlives its owner's last heartbeat
        self.lease_seconds = lease_seconds
        self.remote: dict[str, Build] = {}  # builds of other replicas followed here, by id
        self._joining: dict[str, asyncio.Future[Build]] = {}  # claims in flight, by build name
        #: since when heartbeats succeed (monotonic): builds are adopted only after a full lease of
        #: them, so after an outage every replica has renewed its own leases first
        self._renewing_since: float | None = -math.inf

    def start(self) -> None:
        """The LISTEN loop and the heartbeat (which adopts the builds of stopped replicas, this
        process's previous life included)."""
        supervisor = self.manager.supervisor
        supervisor.run_forever("build notifications", self._listen, restart_delay=1.0)
        supervisor.run_forever("build leases", self.heartbeat, restart_delay=self.lease_seconds / 3)

    # -- who builds what --------------------------------------------------------------------------
    async def join(self, job: BuildJob, record: BuildRecord | None) -> Build:
        """The build of ``job.name`` when this process has none to join: claimed in the store (one
        claim per name in flight in this process), then run here or followed from the replica
        that holds it."""
        pending = self._joining.get(job.name)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Build] = asyncio.get_running_loop().create_future()
        self._joining[job.name] = future
        try:
            build = await self._claim(job, record)
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            del self._joining[job.name]
        future.set_result(build)
        return build

    async def _claim(self, job: BuildJob, record: BuildRecord | None) -> Build:
        manager, store = self.manager, self.store
        record = record or draft_record(job)
        record.owner = manager.owner
        claimed, build = False, None
        try:
            for attempt in range(2):
                holder = await store.claim(record, self.lease_seconds)
                claimed = holder == record.id
                build = None if claimed else await self.follow(holder, job)
                if build is None or not build.done or build.outcome.result().success or attempt:
                    break
                # a build that failed here a moment ago, its end not written yet: write it, claim again
                await manager.recorder.flush()
        except StoreError as e:  # the store is away: the container or pod name still guards
            manager.recorder.failed(str(e))
            build = None
        if build is None:
            build = manager._join(job, record)
            build.claimed = claimed and build.id == record.id
        return build

    async def release(self, build: Build) -> None:
        """The build ended here: its name is free for the next claim (a finished build's claim
        is free anyway; this only tidies)."""
        try:
            await self.store.release(build.job.name, build.id)
        except StoreError as e:
            self.manager.recorder.failed(str(e))

    # -- following a build another replica runs ---------------------------------------------------
    async def unfinished(self, build_id: str) -> Build | None:
        """The build ``build_id`` as followed here, if the store has it and it has not ended
        (StoreError if the store fails)."""
        record = await self.store.get(build_id)
        if record is None or record.state.finished:
            return None
        return await self.follow(build_id)

    async def follow(self, build_id: str, job: BuildJob | None = None) -> Build | None:
        """The build ``build_id`` as followed here from the store (another replica runs it);
        None if the store has no such build. Raises StoreError."""
        by_id = self.manager.by_id
        build = by_id.get(build_id) or self.remote.get(build_id)
        if build is None:
            record = await self.store.get(build_id)
            build = by_id.get(build_id) or self.remote.get(build_id)  # joined while we read
            if build is None and record is not None:
                build = self._new_remote(record, job)
        if build is not None and build.caught_up is not None:
            # its log holds what the store had when it was asked for: a client resuming after an
            # event id, or joining at the log's tail, starts where it should
            await build.caught_up.wait()
        return build

    def _new_remote(self, record: BuildRecord, job: BuildJob | None) -> Build:
        manager = self.manager
        if job is None or job.name != record.build_name:
            job = BuildJob(name=record.build_name, image_name=record.image_name, repo_url=record.repo_url,
                           ref=record.resolved_ref, provider=record.provider, build_id=record.id)
        build = Build(job, record)  # not recorded here: its owner records it
        build.remote, build.wake, build.caught_up = True, asyncio.Event(), asyncio.Event()
        self.remote[build.id] = build
        manager.by_id[build.id] = build
        if manager._joinable(job.name) is None:
            manager.builds[job.name] = build
        build.task = manager.supervisor.spawn(self._follow_remote(build), name=f"remote build {job.name}")
        build.task.add_done_callback(lambda _: self._remote_ended(build))
        return build

    async def _follow_remote(self, build: Build) -> None:
        """Feed a remote build's log from the store: its events (the same seq as everywhere), its
        output, its record, each time the store notifies a change (or every lease, should a
        notification be lost), until its terminal event."""
        assert build.wake is not None and build.caught_up is not None
        try:
            await self._feed_remote(build, build.wake, build.caught_up)
        finally:
            build.caught_up.set()

    async def _feed_remote(self, build: Build, wake: asyncio.Event, caught_up: asyncio.Event) -> None:
        store = self.store
        cursor, dropped = build.log.total, 0
        ended_since: float | None = None  # when the record first said it ended
        while True:
            wake.clear()
            try:
                record = await store.get(build.id)
                events = [event async for event in self.manager._replay(store, build.id, cursor)]
                stored_log = await store.read_log_from(build.id, build.log_chars)
            except StoreError:
                record, events, stored_log = None, [], None  # the next notification or poll tries again
            if record is not None:
                build.record = record
            if stored_log is not None:
                if stored_log.head:
                    build.log.add_output(stored_log.head)
                    build.log_chars += len(stored_log.head)
                dropped = stored_log.dropped_bytes
            for event in events:
                data = json.loads(event.data)
                if data.get("phase") in TERMINAL_PHASES:
                    if dropped and stored_log is not None:
                        build.log.add_output(StoredLog("", stored_log.tail, dropped).text())
                    self._remote_finished(build, event, data)
                    return
                build.log.append(event.data, event.seq)
                cursor = event.seq
            if record is not None and record.state.finished:
                ended_since = ended_since or time.monotonic()
                if time.monotonic() - ended_since > self.lease_seconds:
                    # its owner stopped between writing the record and the terminal event: the
                    # record says how it ended
                    data = self._terminal_from(record)
                    self._remote_finished(build, StoredEvent(cursor + 1, event_json(data)), data)
                    return
            caught_up.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.lease_seconds):  # not wait_for: it can swallow a shutdown's cancel
                    await wake.wait()

    @staticmethod
    def _terminal_from(record: BuildRecord) -> dict[str, Any]:
        if record.state is BuildState.built:
            data: dict[str, Any] = {"phase": "ready", "message": "Done! Image built\n", "imageName": record.image_name}
        else:
            data = {"phase": "failed", "message": line(record.message or f"The build {record.state.value}")}
            if record.state is BuildState.cancelled:
                data["cancelled"] = True
        return {**data, "build_id": record.id}

    def _remote_finished(self, build: Build, terminal: StoredEvent, data: dict[str, Any]) -> None:
        success = data.get("phase") == "ready"
        message = str(data.get("message") or "").removesuffix("\n")
        if not build.outcome.done():
            build.outcome.set_result(BuildOutcome(success, "" if success else message, data.get("status_code"),
                                                  bool(data.get("cancelled"))))
        build.log.end(terminal.data)

    def _remote_ended(self, build: Build) -> None:
        """A remote build's follower ended: at its terminal event, or cut short by a shutdown."""
        if self.remote.get(build.id) is build:
            del self.remote[build.id]
        if not build.done:
            build.outcome.set_result(BuildOutcome(False, SHUTDOWN_MESSAGE))
            build.log.close()
        if build.outcome.result().success:
            asyncio.get_running_loop().call_later(SUCCESS_RETENTION_SECONDS, self.manager._forget, build)
        else:
            self.manager._forget(build)

    async def follow_log(self, build: Build) -> AsyncIterator[str]:
        """A remote build's log: what its follower fed so far, as the store has it (memory keeps
        only the newest chunks), then what it feeds next, until the build ends."""
        new_output, fed = build.log.follow_output(build.log.output_total), build.log_chars
        if fed:
            stored = await self.store.read_log(build.id)
            if stored is not None and stored.head[:fed]:
                yield stored.head[:fed]
        async for chunk in new_output:
            yield chunk

    # -- notifications ----------------------------------------------------------------------------
    async def _listen(self) -> None:
        """Wake the followers of remote builds on the store's notifications (all of them after a
        reconnect: what was notified meanwhile was lost), and cancel what another replica asks."""
        manager = self.manager
        async for note in self.store.listen([BUILDS_CHANNEL, CANCEL_CHANNEL]):
            if note.channel == BUILDS_CHANNEL:
                build = self.remote.get(note.payload)
                if build is not None and build.wake is not None:
                    build.wake.set()
            elif note.channel == CANCEL_CHANNEL:
                build = manager.by_id.get(note.payload)
                if build is not None and not build.remote and not build.done:
                    manager.supervisor.spawn(self._cancel_quietly(build.id), name=f"cancel {build.id}")
            else:
                for build in list(self.remote.values()):
                    if build.wake is not None:
                        build.wake.set()

    async def _cancel_quietly(self, build_id: str) -> None:
        with contextlib.suppress(BuildFinishedError):
            await self.manager.cancel(build_id)

    # -- leases -----------------------------------------------------------------------------------
    async def heartbeat(self) -> None:
        """One round: renew this process's leases, then adopt the builds of replicas whose lease
        ran out (they stopped): re-attached if their builder still exists, else failed."""
        manager, store = self.manager, self.store
        try:
            claimed = [b for b in manager.by_id.values() if b.claimed and not b.done]  # their claims are committed
            held = await store.renew(manager.owner, self.lease_seconds)
            for build in claimed:
                if build.id not in held and not build.done and build.task is not None:
                    # split brain: this process could not renew for a lease, and another adopted the
                    # build (it follows the builder now); stop following it here, leave the builder
                    log.warning("Build %s was taken over by another replica (this one could not reach the "
                                "build store for longer than BuildStore.lease_seconds); leaving it to it", build.id)
                    build.lost = True
                    build.task.cancel()
            now = time.monotonic()
            if self._renewing_since is None:
                self._renewing_since = now
            if now - self._renewing_since < self.lease_seconds:
                return
            for claim in await store.expired_claims():
                if claim.owner != manager.owner and await store.adopt(claim, manager.owner, self.lease_seconds):
                    await self._adopt(claim)
        except StoreError as e:
            self._renewing_since = None
            manager.recorder.failed(str(e))

    async def _adopt(self, claim: Claim) -> None:
        """A build whose replica stopped is now ours: follow its builder to the end if it is still
        there (running, or exited with a status to read), else fail it, so that every stream on
        it, on any replica, gets an outcome."""
        manager, store = self.manager, self.store
        record = await store.get(claim.build_id)
        if record is None or record.state.finished:
            await store.release(claim.build_name, claim.build_id)
            return
        job = BuildJob(name=record.build_name, image_name=record.image_name, repo_url=record.repo_url,
                       ref=record.resolved_ref, provider=record.provider, build_id=record.id)
        build = Build(job, record, manager.recorder)
        skip = await manager._restore(build)
        info = await manager.backend.inspect(record.build_name)
        if info is not None and info.build_id == record.id:
            log.warning("Adopting build %s (%s) of the stopped replica %s: following its builder", record.id,
                        record.build_name, claim.owner)
            build.claimed = True
            manager._launch(build, attach=True, owner=True, skip_bytes=skip)
            return
        log.warning("Build %s (%s) of the stopped replica %s has no builder left: marking it failed", record.id,
                    record.build_name, claim.owner)
        build.finish(BuildOutcome(False, ORPHANED_MESSAGE.format(owner=claim.owner)))
        await store.release(claim.build_name, claim.build_id)

    # -- cancel elsewhere -------------------------------------------------------------------------
    async def cancel_remote(self, build: Build) -> BuildRecord:
        """Ask the replica that runs the build to cancel it (NOTIFY), and wait for its outcome; a
        replica that does not answer within two leases is bypassed (its builder stopped here, the
        build settled in the store)."""
        await self.store.notify(CANCEL_CHANNEL, build.id)
        try:
            async with asyncio.timeout(2 * self.lease_seconds):
                await asyncio.shield(build.outcome)
        except TimeoutError:
            record = await self.manager._cancel_elsewhere(build.id)
            if record is None:
                raise BuildFinishedError(build.record) from None
            return record
        if not build.outcome.result().cancelled:
            raise BuildFinishedError(build.record)
        return build.record

    async def record_cancel(self, record: BuildRecord) -> BuildRecord:
        """A build cancelled from here whose builder another process ran (and is stopped now):
        ended as if it ran here, so its stream ends with the cancellation for followers on every
        replica, and its name is free."""
        manager = self.manager
        job = BuildJob(name=record.build_name, image_name=record.image_name, repo_url=record.repo_url,
                       ref=record.resolved_ref, provider=record.provider, build_id=record.id)
        build = Build(job, record, manager.recorder)
        await manager._restore(build)
        build.finish(BuildOutcome(False, CANCELLED_MESSAGE, cancelled=True))
        await manager.recorder.flush()
        await self.release(build)
        return record
