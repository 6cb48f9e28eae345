"""The build store's one small interface: what binderapi keeps about builds beyond a process's life.

Everything above this module (the build manager, the recorder, the ``/api/v1`` routes) talks to a
:class:`BuildStore` only, never to SQL or to a file: the embedded default is SQLite, and PostgreSQL
goes under the same interface for several replicas. Nothing here may assume one process: every
write is keyed by build id and sequence number, so two writers never need to coordinate in memory.

A :class:`StoreError` is the only error the store raises; callers treat the store as optional for
the classic ``/build`` (logged, a soft ``/health`` check) and as required for ``/api/v1`` (503).
"""

from __future__ import annotations

import abc
import enum
import os
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime


class BuildState(enum.StrEnum):
    queued = "queued"
    building = "building"
    built = "built"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (BuildState.built, BuildState.failed, BuildState.cancelled)


def new_build_id() -> str:
    """A build id that sorts by creation time (newest first is ``ORDER BY id DESC``) and is unique
    across processes and replicas: 12 hex digits of milliseconds since the epoch, 10 random ones."""
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(5)}"


@dataclass
class BuildRecord:
    """One build as the store keeps it; the ``/api/v1`` resource is made from it."""

    id: str
    spec: str  # "<prefix>/<spec>", exactly as in a /build URL
    provider: str  # the provider's name, e.g. "GitHub"
    repo_url: str
    resolved_ref: str
    image_name: str
    build_name: str  # the backend's container or pod name
    state: BuildState = BuildState.queued
    cached: bool = False  # the image existed: nothing was built
    message: str = ""  # why it failed or was cancelled
    queue_position: int | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now().astimezone())
    started_at: datetime | None = None
    finished_at: datetime | None = None
    log_bytes: int = 0  # every byte of builder output seen, including any dropped past the cap
    owner: str = ""  # which process runs it (hostname:pid:start); replicas use it with leases


@dataclass(frozen=True)
class StoredEvent:
    """One event of a build's stream: ``seq`` increases from 1 within a build; ``data`` is the
    event's JSON (BinderHub's wire format, with ``build_id``), without the SSE framing."""

    seq: int
    data: str


@dataclass(frozen=True)
class StoredLog:
    """A build's builder output as kept: ``head`` then, if output was dropped past the cap,
    ``dropped_bytes`` and the ``tail``."""

    head: str
    tail: str = ""
    dropped_bytes: int = 0

    def text(self) -> str:
        if not self.dropped_bytes:
            return self.head + self.tail
        marker = f"\n[... {self.dropped_bytes} bytes of build output omitted (BuildStore.max_log_bytes) ...]\n"
        return self.head + marker + self.tail


@dataclass(frozen=True)
class Claim:
    """Who builds ``build_name`` now (a shared store's ``build_claims`` row): the build ``build_id``,
    run by the process ``owner`` while its lease lasts (renewed by its heartbeat)."""

    build_name: str
    build_id: str
    owner: str


#: NOTIFY channels of a shared store: a build's record, events or log changed (payload: its id);
#: a build's owner is asked to cancel it (payload: its id)
BUILDS_CHANNEL = "binderapi_builds"
CANCEL_CHANNEL = "binderapi_cancel"


@dataclass(frozen=True)
class Notification:
    """One message of :meth:`BuildStore.listen`; ``channel`` "" means (re)connected: anything
    notified while not listening is lost, so a listener catches up from the store."""

    channel: str
    payload: str = ""


class StoreError(Exception):
    """The store is unreachable, full, corrupt or refused a write."""


@dataclass(frozen=True)
class BuildFilter:
    state: BuildState | None = None
    spec_prefix: str | None = None  # matches spec == value or spec starting with value
    image_name: str | None = None
    before: str | None = None  # cursor: only ids sorting before this one (newer pages come first)
    limit: int = 50


@dataclass(frozen=True)
class WarmServerRow:
    """A server the warm pool started, as replicas sharing the store see it (:mod:`binderapi.warmpool`).
    ``state`` is ``starting`` (a replica is launching it: only ``id``, ``image``, ``owner`` are
    set) or ``ready`` (every field set). A handed-over server has no row: taking one deletes it."""

    id: str
    image: str
    state: str  # "starting" | "ready"
    owner: str  # the replica that started or adopted it (process_owner())
    lease_expires: float  # epoch seconds; the owner renews it, a survivor adopts rows past it
    username: str = ""
    server_name: str = ""
    url: str = ""
    token: str = ""  # opens the server; leaves the store with the row when the server is handed over
    ready_at: float | None = None  # epoch seconds
    marked_at: float | None = None  # the hub last_activity mark posted (epoch seconds), if any


@dataclass(frozen=True)
class WarmImageRow:
    """What every replica's warm pool knows of an image: how often and when it was last launched,
    and what its next warm servers carry (the last launch's request, JSON, client address removed)."""

    image: str
    launches: int
    last_launch: float  # epoch seconds
    template: str  # JSON object of LaunchRequest fields
    repo_quota: int


class BuildStore(abc.ABC):
    """The store. Implementations raise :class:`StoreError` (never a driver's own error)."""

    #: True when several processes may use this store at once (PostgreSQL, not SQLite): the rate
    #: limit then counts in it (:meth:`hit`), and its ``/health`` check is hard, so a replica that
    #: cannot reach it is taken out of service (readiness) rather than answering on its own
    shared: bool = False

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and bring the schema up to date (migrations); raise StoreError if impossible."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> None:
        """A cheap round trip, for ``/health``."""

    # -- builds -----------------------------------------------------------------------------------
    @abc.abstractmethod
    async def save(self, records: list[BuildRecord]) -> None:
        """Insert or update these builds (whole records, by id), in one transaction."""

    @abc.abstractmethod
    async def get(self, build_id: str) -> BuildRecord | None: ...

    @abc.abstractmethod
    async def list(self, query: BuildFilter) -> list[BuildRecord]:
        """Builds matching ``query``, newest first (by id), at most ``query.limit``."""

    @abc.abstractmethod
    async def latest_for_image(self, image_name: str, *, cached: bool | None = None) -> BuildRecord | None:
        """The newest build of ``image_name`` (optionally only cached or only real ones)."""

    @abc.abstractmethod
    async def unfinished(self) -> list[BuildRecord]:
        """Builds in ``queued`` or ``building``: what a restart must re-attach or fail."""

    # -- events and logs --------------------------------------------------------------------------
    @abc.abstractmethod
    async def append(self, build_id: str, events: list[StoredEvent], log_head: str = "",
                     log_tail: str | None = None, dropped_bytes: int = 0) -> None:
        """In one transaction: add ``events`` (ignoring a ``seq`` already stored), append
        ``log_head`` to the head of the log, and, when ``log_tail`` is not None, replace the tail
        and its ``dropped_bytes``."""

    @abc.abstractmethod
    async def events_after(self, build_id: str, after: int = 0, limit: int = 1000) -> list[StoredEvent]:
        """Events with ``seq > after``, in order, at most ``limit``."""

    @abc.abstractmethod
    async def read_log(self, build_id: str) -> StoredLog | None: ...

    async def read_log_from(self, build_id: str, offset: int) -> StoredLog | None:
        """The log with its head from character ``offset`` on (what a follower has not read yet)."""
        stored = await self.read_log(build_id)
        return None if stored is None else StoredLog(stored.head[offset:], stored.tail, stored.dropped_bytes)

    # -- the rate limit's counters (shared stores) -----------------------------------------------
    async def hit(self, key: str, now: float, period_seconds: int) -> tuple[int, float]:
        """Count one request of ``key`` (a client bucket) at ``now`` (epoch seconds), atomically
        across processes: ``(requests in its window so far, the window's end)``. A window starts at
        the first request after the previous one ended and lasts ``period_seconds``."""
        raise StoreError(f"{type(self).__name__} keeps no rate-limit counters")

    async def delete_hits_before(self, now: float) -> int:
        """Delete the counters of windows ended by ``now``; how many."""
        raise StoreError(f"{type(self).__name__} keeps no rate-limit counters")

    # -- replicas: who builds what, and push between them (shared stores) ---------------------------
    async def claim(self, record: BuildRecord, lease_seconds: float) -> str:
        """In one transaction: the id of the build that owns ``record.build_name`` now. Ours
        (``record.id``, and ``record`` is saved in the same transaction, so every replica sees it
        at once) if the name was free or its build finished; else the holder's. A holder whose
        lease expired with its build unfinished is not taken over here: :meth:`adopt` does that.
        One process (not shared): always ours, nothing written."""
        return record.id

    async def renew(self, owner: str, lease_seconds: float) -> set[str]:
        """The heartbeat: extend the lease of every claim of ``owner``; the ids of its builds."""
        return set()

    async def release(self, build_name: str, build_id: str) -> None:  # noqa: B027 - optional
        """The build ended: its name is free (only if ``build_id`` still holds it)."""

    async def expired_claims(self) -> list[Claim]:
        """Claims whose lease ran out while their build is unfinished: their owner stopped."""
        return []

    async def adopt(self, claim: Claim, owner: str, lease_seconds: float) -> bool:
        """Take over an expired claim (exactly one survivor wins); True if ``owner`` got it."""
        return False

    async def notify(self, channel: str, payload: str) -> None:  # noqa: B027 - optional
        """Tell every listening process (PostgreSQL ``NOTIFY``); nothing for one process."""

    def listen(self, channels: list[str]) -> AsyncIterator[Notification]:
        """Notifications on ``channels`` for as long as the caller iterates, reconnecting (with
        a ``Notification("")`` after each (re)connect) when the connection is lost."""
        raise StoreError(f"{type(self).__name__} has no notifications")

    # -- the warm pool, shared by replicas (shared stores) ----------------------------------------
    # Rows of servers the pools started; every change is one statement or one locked transaction,
    # so a server is handed out once and the pool's size is counted over all replicas.
    async def warm_claim_start(self, image: str, target: int, owner: str, now: float, lease: float) -> str | None:
        """If ``image`` has fewer than ``target`` rows (starting or ready, any owner), add a
        ``starting`` row owned by ``owner`` and return its id, else None; atomically across
        processes, so two replicas short of one server start one, not two."""
        raise StoreError(f"{type(self).__name__} keeps no warm pool")

    async def warm_ready(self, row: WarmServerRow) -> bool:
        """Turn the ``starting`` row ``row.id`` into ``row`` (ready); False if it is gone (a survivor
        took this replica for dead and dropped it: the caller removes the server)."""
        raise StoreError(f"{type(self).__name__} keeps no warm pool")

    async def warm_delete(self, row_id: str, *, state: str | None = None) -> WarmServerRow | None:
        """Delete one row (a failed start, or a server the pool removes), only while in ``state`` if
        given; the row, or None if another replica deleted or took it first (or its state differs)."""
        raise StoreError(f"{type(self).__name__} keeps no warm pool")

    async def warm_take(self, image: str, launch: WarmImageRow | None = None,
                        ready_before: float | None = None) -> WarmServerRow | None:
        """Take a ready server of ``image`` (the oldest; only those ready before ``ready_before``
        if given) by deleting its row: never the same row for two callers. With ``launch``, the
        same transaction records a launch of ``image`` (:meth:`warm_images`)."""
        raise StoreError(f"{type(self).__name__} keeps no warm pool")

    async def warm_trim(self, image: str, keep: int) -> list[WarmServerRow]:
        """Delete ready rows of ``image`` (newest first) while it has more than ``keep`` rows in
        all; the rows deleted. Atomic across processes, so replicas shrinking a pool at once
        remove the excess once, not once each."""
        raise StoreError(f"{type(self).__name__} keeps no warm pool")

    async def warm_servers(self) -> list[WarmServerRow]:
        """Every row, oldest first."""
        raise StoreError(f"{type(self).__name__} keeps no warm pool")

    async def warm_images(self) -> list[WarmImageRow]:
        raise StoreError(f"{type(self).__name__} keeps no warm pool")

    async def warm_renew(self, owner: str, now: float, lease: float) -> list[WarmServerRow]:
        """The owner's heartbeat: extend the lease of its rows; its rows, after renewing."""
        raise StoreError(f"{type(self).__name__} keeps no warm pool")

    async def warm_adopt(self, owner: str, now: float, lease: float) -> tuple[list[WarmServerRow], list[WarmServerRow]]:
        """Rows whose lease ended (their replica died): ready ones become ``owner``'s (adopted),
        starting ones are deleted (their launch died with the replica). ``(adopted, deleted)``."""
        raise StoreError(f"{type(self).__name__} keeps no warm pool")

    # -- launch quota slots (shared stores) -------------------------------------------------------
    async def hold_launch_slot(self, slot_id: str, owner: str, repo: str, running_total: int, running_repo: int,
                               total_quota: int | None, repo_quota: int, now: float, expires_at: float) -> str | None:
        """Hold a launch slot unless ``running_* +`` the slots every process holds (unexpired) reach
        a quota: ``"total_quota"`` or ``"repo_quota"`` if one would be exceeded, else None (held
        until :meth:`release_launch_slot` or ``expires_at``). Atomic across processes."""
        raise StoreError(f"{type(self).__name__} keeps no launch slots")

    async def release_launch_slot(self, slot_id: str) -> None:
        raise StoreError(f"{type(self).__name__} keeps no launch slots")

    # -- retention --------------------------------------------------------------------------------
    @abc.abstractmethod
    async def delete_finished_before(self, cutoff: datetime) -> int:
        """Delete finished builds created before ``cutoff``, with their events and logs; how many."""


def process_owner() -> str:
    """This process's name in ``BuildRecord.owner``."""
    return f"{os.uname().nodename}:{os.getpid()}:{int(time.time())}"
