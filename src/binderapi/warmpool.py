"""The warm pool: servers already started on JupyterHub, handed over instead of spawned.

For each configured image (``WarmPool.images``) and, with ``top_n``, the images this process has
launched most, the pool keeps a few servers running, each for its own temporary user with its own
launch token, started through :meth:`Launcher.launch` exactly as a real launch would be. A launch
of such an image takes one (:meth:`WarmPool.take`, synchronous: no ``await`` between looking and
taking, so a server is never handed out twice) and the pool starts a replacement in the background.
Auth mode never uses the pool: there, servers belong to logged-in users.

What a warm server carries (its ``user_options``, hence its ``BINDER_*`` environment) is decided
before the client is known: ``repo_url``, ``binder_ref_url``, ``binder_launch_host``,
``binder_request`` and ``binder_persistent_request`` are those of the last launch of that image
(empty for a configured image not launched yet by this process, whose temporary user is then named
``binder-<random>``), and ``binder_client_ip`` is always empty: a server never carries another
client's address. The ``ready`` event itself carries the real request's values.

Warm servers are running servers: the launch quota counts them (their containers or pods, and
while they start the slot :meth:`LaunchQuota.reserve` holds). A refill that would exceed ``total_quota`` or the
repository's quota is skipped (a log line, ``binderapi_warm_pool_refills_skipped_total``); a
handover needs no quota check, the server already holds its slot.

Servers older than ``max_server_age`` are replaced (keep it below the hub culler's timeout); an
image without launches for ``idle_shrink_after`` seconds drops to zero servers; shutdown removes
every server and user the pool still holds. The pool's work runs in tasks of the app's
:class:`Supervisor`; removals are handed to the launcher, which finishes them before the hub client
closes (:meth:`Launcher.close`).

Recognising leftovers after a crash: the pool marks a ready warm server in JupyterHub itself, with
the only write its token's scopes allow besides starting and stopping: the server's
``last_activity`` is set to a time whose microseconds are a checksum of the user name. A handover
posts a newer activity time, which clears the mark, so a server handed to a client is never taken
for a leftover. At start-up, ready servers still carrying the mark are stopped and their users
deleted. That assumes one process per hub, so it is done only without a shared store.

Replicas sharing a store (PostgreSQL) share one pool through it (:class:`WarmServerRow`): each
server a pool starts is a row, ``starting`` then ``ready`` with its user, URL and token; a launch
takes one by deleting its row in one statement (``FOR UPDATE SKIP LOCKED``), so whichever replica
it reaches, a server is handed out once; a refill adds a ``starting`` row only while the image has
fewer rows than its target (counted over every replica, under a lock), so the pool's size is the
pool's, not each replica's; launches of an image are counted in the store too (``top_n``, idle
shrinking and what new servers carry). Each replica renews a lease on its rows every pass; the
ready servers of a replica whose lease ran out are adopted by another one (they still run), its
``starting`` rows dropped (that launch died with it; the hub's culler or orphan sweep ends it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import zlib
from collections import Counter, deque
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from . import metrics
from .errors import BinderError
from .hub import HubAPI, format_hub_time, user_path
from .launcher import LaunchedServer, Launcher, LaunchRequest
from .retry import wait_after
from .store.base import StoreError, WarmImageRow, WarmServerRow, process_owner

if TYPE_CHECKING:
    from .quota import LaunchQuota, QuotaSlot
    from .settings import Settings
    from .store.base import BuildStore
    from .supervisor import Supervisor

log = logging.getLogger(__name__)

MARKER_SALT = "binderapi-warm-pool:"
FAILURE_BACKOFF = (5.0, 300.0)  # first and longest pause after a failed warm start of an image (jittered)
#: a replica's rows in a shared pool stay its own this long after its last pass (passes run at
#: most every 30 s; a pass checks each of its servers on the hub, which may be slow)
LEASE_PASSES, LEASE_MARGIN = 3, 60.0


def marker_microseconds(username: str) -> int:
    """The microseconds of the ``last_activity`` time that marks ``username``'s server as warm."""
    return zlib.crc32((MARKER_SALT + username).encode()) % 1_000_000


def marked_time(username: str, now: datetime) -> datetime:
    """A time just after ``now`` whose microseconds mark the server as warm (newer than anything
    the hub recorded when the server became ready, so the hub keeps it)."""
    return now.replace(microsecond=marker_microseconds(username)) + timedelta(seconds=1)


def unmarked_time(username: str, marked: datetime | None, now: datetime) -> datetime:
    """A time newer than the mark whose microseconds do not mark the server."""
    when = max(now, marked + timedelta(microseconds=1)) if marked else now
    if when.microsecond == marker_microseconds(username):
        when += timedelta(microseconds=1)
    return when


def carries_mark(username: str, last_activity: str | None) -> bool:
    if not last_activity:
        return False
    try:
        when = datetime.fromisoformat(last_activity.replace("Z", "+00:00"))
    except ValueError:
        return False
    return when.microsecond == marker_microseconds(username)


@dataclass
class WarmServer:
    server: LaunchedServer
    ready_at: float  # event loop time
    marked: datetime | None = None  # the last_activity time that marks it, once posted


@dataclass
class ImagePool:
    """The servers kept for one image, and what new ones are started with."""

    image: str
    template: LaunchRequest  # the last launch of this image, client address removed
    repo_quota: int  # the repository's per-repo quota (0: none) as of the last launch
    last_launch: float  # event loop time of the last launch (or of the pool's start)
    ready: deque[WarmServer] = field(default_factory=deque)
    starts: set[asyncio.Task[None]] = field(default_factory=set)  # each holding a quota slot
    retry_at: float = 0.0  # no new start before this (after failures)
    failures: int = 0
    refill_blocked: str = ""  # the quota that stopped the last refill, for logging changes only
    published: bool = False  # has metric series (kept off for images that never had a server)

    @property
    def starting(self) -> int:
        return len(self.starts)


class WarmPool:
    """Owns every warm server: takes, refills, recycles, shrinks, and removes them."""

    def __init__(self, settings: Settings, launcher: Launcher, hub: HubAPI, quota: LaunchQuota,
                 supervisor: Supervisor, store: BuildStore | None = None) -> None:
        self.config = settings.WarmPool
        self.default_repo_quota = settings.BinderHub.per_repo_quota
        self.launcher = launcher
        self.hub = hub
        self.quota = quota
        self.supervisor = supervisor
        self.pools: dict[str, ImagePool] = {}
        self.launches: Counter[str] = Counter()
        self._unmarking: set[asyncio.Task[None]] = set()  # handovers whose mark close waits to clear
        self._wake = asyncio.Event()
        self._closing = False
        self.leftovers_removed = 0
        self.swept = False  # the start-up look for leftovers is done
        # shared by replicas through the store (PostgreSQL), else this process's own
        self.store = store
        self.owner = process_owner()
        self.interval = max(0.2, min(30.0, self.config.max_server_age / 4, self.config.idle_shrink_after / 4))
        self.lease = LEASE_PASSES * self.interval + LEASE_MARGIN
        self.rows: list[WarmServerRow] = []  # the shared pool as last read (health, ready_users)
        self.adopted = 0  # ready servers taken over from replicas whose lease ran out
        self._starting_rows: set[str] = set()  # this replica's "starting" rows whose launch runs

    # -- the launch path -------------------------------------------------------------------------

    async def take(self, request: LaunchRequest, repo_quota: int = 0) -> LaunchedServer | None:
        """A ready warm server for ``request.image`` (now removed from the pool), or None.
        Either way the launch is remembered: it keeps the image's pool alive and tells new warm
        servers what to carry. Without a shared store, no ``await`` between looking and taking."""
        if self._closing or request.username is not None:
            return None
        loop_time = asyncio.get_running_loop().time()
        pool = self.pools.get(request.image)
        if pool is None and not self.config.top_n:
            metrics.WARM_POOL_HANDOVERS.labels(result="miss").inc()
            return None  # neither configured nor a candidate for the most launched
        self.launches[request.image] += 1
        template = replace(request, client_ip="", username=None, server_name=None)
        if pool is None:
            pool = self.pools[request.image] = ImagePool(request.image, template, repo_quota, loop_time)
        else:
            pool.template, pool.repo_quota, pool.last_launch = template, repo_quota, loop_time
        if self.store is not None:
            return await self._take_shared(pool, template, repo_quota)
        warm = pool.ready.popleft() if pool.ready else None
        metrics.WARM_POOL_HANDOVERS.labels(result="hit" if warm else "miss").inc()
        self._publish(pool)
        self._wake.set()  # refill, or start a pool for a newly popular image
        if warm is None:
            return None
        return self._handed_over(warm)

    def _handed_over(self, warm: WarmServer) -> LaunchedServer:
        task = self.supervisor.spawn(self._unmark(warm), f"warm pool: unmark {warm.server.username}")
        self._unmarking.add(task)
        task.add_done_callback(self._unmarking.discard)
        return warm.server

    async def _take_shared(self, pool: ImagePool, template: LaunchRequest, repo_quota: int) -> LaunchedServer | None:
        """Take a ready server of any replica from the store, recording the launch there too. A
        store that fails is a miss (the launch spawns as usual)."""
        assert self.store is not None
        launch = WarmImageRow(pool.image, 1, time.time(), json.dumps(asdict(template)), repo_quota)
        try:
            row = await self.store.warm_take(pool.image, launch)
        except StoreError as e:
            log.warning("Warm pool: the shared store failed; launching %s without it: %s", pool.image, e)
            row = None
        metrics.WARM_POOL_HANDOVERS.labels(result="hit" if row else "miss").inc()
        self._wake.set()
        if row is None:
            return None
        self.rows = [r for r in self.rows if r.id != row.id]
        self._publish(pool)
        return self._handed_over(self._warm_of(row))

    @staticmethod
    def _warm_of(row: WarmServerRow) -> WarmServer:
        server = LaunchedServer(url=row.url, token=row.token, username=row.username, server_name=row.server_name)
        marked = datetime.fromtimestamp(row.marked_at, UTC) if row.marked_at else None
        return WarmServer(server, asyncio.get_running_loop().time(), marked)

    # -- life cycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the configured images' pools and start the background work (leftovers first)."""
        now = asyncio.get_running_loop().time()
        for image in self.config.images:
            empty = LaunchRequest(image=image, repo_url="", ref_url="", launch_host="", binder_request="",
                                  binder_persistent_request="", client_ip="")
            self.pools[image] = ImagePool(image, empty, self.default_repo_quota, now)
        self.supervisor.spawn(self._run(), name="warm pool")

    async def close(self) -> None:
        """Stop and delete every server the pool holds, including those still starting. Runs
        before the supervisor closes (which would cancel a handover's unmark half-way) and before
        the launcher does (which finishes the removals handed to it here)."""
        self._closing = True
        self._wake.set()
        starts = [task for pool in self.pools.values() for task in pool.starts]
        for task in starts:
            task.cancel()  # the launcher removes what a cancelled launch created
        if starts:
            await asyncio.wait(starts)
        if self._unmarking:
            await asyncio.wait(set(self._unmarking))
        if self.store is not None:
            await self._close_shared()
        for pool in self.pools.values():
            while pool.ready:
                self._retire(pool.ready.popleft(), pool, "shutdown")
            self._publish(pool)

    async def _close_shared(self) -> None:
        """Remove this replica's servers (each taken from the store first, so never both handed
        out and removed) and its dead starts' rows. If the store fails, the rows stay and another
        replica adopts the servers once this one's lease runs out."""
        assert self.store is not None
        try:
            mine = [row for row in await self.store.warm_servers() if row.owner == self.owner]
            for row in mine:
                if await self.store.warm_delete(row.id) and row.state == "ready":
                    pool = self.pools.get(row.image) or ImagePool(row.image, self._template(row.image), 0, 0.0)
                    self._retire(self._warm_of(row), pool, "shutdown")
        except StoreError as e:
            log.warning("Warm pool: could not remove this replica's servers from the shared store (another "
                        "replica adopts them): %s", e)
        self.rows = []

    async def _run(self) -> None:
        try:
            if self.store is None:  # marks tell leftovers only with one process per hub; else: leases
                await self.remove_leftovers()
        except Exception:
            log.warning("Could not look for warm servers left by a previous process", exc_info=True)
        self.swept = True
        interval = self.interval
        while not self._closing:
            try:
                await self.maintain()
            except Exception:
                log.warning("Warm pool maintenance failed", exc_info=True)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)

    async def remove_leftovers(self) -> None:
        """Stop and delete ready servers still marked warm: a previous process's pool."""
        leftovers = []
        async for page in self.hub.user_pages("warm-pool leftovers", "state=ready&"):
            for user in page.data:
                server = (user.get("servers") or {}).get("")
                if isinstance(server, dict) and carries_mark(user.get("name", ""), server.get("last_activity")):
                    leftovers.append(user["name"])
        for username in leftovers:
            log.info("Removing warm server %s left by a previous process", username)
            await self.launcher.remove_temporary_user(username)
            metrics.WARM_POOL_RETIRED.labels(reason="leftover").inc()
        self.leftovers_removed += len(leftovers)

    # -- keeping the pools at their size ---------------------------------------------------------

    def targets(self) -> dict[str, int]:
        """How many servers each image should have now."""
        now = asyncio.get_running_loop().time()
        top = {image for image, _ in self.launches.most_common(self.config.top_n)} if self.config.top_n else set()
        wanted = {}
        for image, pool in self.pools.items():
            if now - pool.last_launch > self.config.idle_shrink_after:
                wanted[image] = 0
            else:
                count = self.config.images.get(image, 0)
                wanted[image] = max(count, self.config.top_n_size) if image in top else count
        return wanted

    async def maintain(self) -> None:
        """One pass: drop servers the hub lost, recycle old ones, shrink idle pools, refill."""
        if self.store is not None:
            await self._maintain_shared()
            return
        await self._drop_lost()
        now = asyncio.get_running_loop().time()
        targets = self.targets()
        for pool in list(self.pools.values()):
            for warm in [w for w in pool.ready if now - w.ready_at > self.config.max_server_age]:
                pool.ready.remove(warm)
                self._retire(warm, pool, "age")
            while len(pool.ready) > targets.get(pool.image, 0):
                self._retire(pool.ready.pop(), pool, "idle")
        self.refill()

    async def _drop_lost(self) -> None:
        """Servers the hub no longer reports as ready (culled, crashed) are never handed out."""
        for pool in list(self.pools.values()):
            for warm in list(pool.ready):
                response = await self.hub.request("GET", user_path(warm.server.username))
                server = ((response.data or {}).get("servers") or {}).get("") if response.status == 200 else None
                if response.status in (200, 404) and not (isinstance(server, dict) and server.get("ready")):
                    if warm in pool.ready:  # not handed over meanwhile
                        log.warning("Warm server %s of %s is gone; replacing it", warm.server.username, pool.image)
                        pool.ready.remove(warm)
                        self._retire(warm, pool, "lost")

    def refill(self) -> None:
        """Start servers where pools are short, at most ``refill_concurrency`` at once, within quotas."""
        if self._closing:
            return
        loop_time = asyncio.get_running_loop().time()
        targets = self.targets()
        in_flight = sum(p.starting for p in self.pools.values())
        for pool in self.pools.values():
            while (in_flight < self.config.refill_concurrency and loop_time >= pool.retry_at
                   and len(pool.ready) + pool.starting < targets[pool.image]):
                if not self._reserve(pool):
                    break
                in_flight += 1
                task = self.supervisor.spawn(self._start_one(pool), f"warm pool: start {pool.image}")
                pool.starts.add(task)
                # also when the task is cancelled before it ran (at shutdown)
                task.add_done_callback(lambda task, pool=pool: self._start_ended(pool, task))
                self._publish(pool)

    def _reserve(self, pool: ImagePool) -> bool:
        """Hold a quota slot for a new server of ``pool``; log (once) when a quota has no room."""
        return self._room(pool, self.quota.reserve(pool.image, pool.repo_quota) or "")

    def _room(self, pool: ImagePool, blocked: str) -> bool:
        if blocked:
            metrics.WARM_POOL_REFILLS_SKIPPED.labels(reason=blocked).inc()
            if pool.refill_blocked != blocked:
                log.info("Not refilling the warm pool of %s: %s reached", pool.image, blocked)
        elif pool.refill_blocked:
            log.info("Refilling the warm pool of %s again", pool.image)
        pool.refill_blocked = blocked
        return not blocked

    def _start_ended(self, pool: ImagePool, task: asyncio.Task[Any] | None, slot: QuotaSlot | None = None) -> None:
        """Give back a start's quota slot, once: the launch has ended (a ready server is counted
        by the quota itself from now on)."""
        if task is not None and task in pool.starts:
            pool.starts.discard(task)
            if slot is not None:
                self.quota.release_slot(slot)
            else:
                self.quota.release(pool.image)
            self._publish(pool)

    async def _start_one(self, pool: ImagePool, row_id: str | None = None) -> None:
        server: LaunchedServer | None = None
        try:
            server = await self.launcher.launch(pool.template)
        except BinderError as e:
            pool.failures += 1
            first, longest = FAILURE_BACKOFF
            pause = wait_after(pool.failures, first, longest)  # the one retry policy's wait, scheduled
            pool.retry_at = asyncio.get_running_loop().time() + pause
            metrics.WARM_POOL_START_FAILURES.inc()
            log.warning("Could not start a warm server for %s (trying again in %.0fs): %s", pool.image, pause,
                        e.message)
        finally:
            if row_id is None:  # a shared start's slot is given back by its done callback
                self._start_ended(pool, asyncio.current_task())
        if server is None:
            if row_id is not None:
                await self._delete_row(row_id)
            self._wake.set()
            return
        pool.failures, pool.retry_at = 0, 0.0
        warm = WarmServer(server, asyncio.get_running_loop().time())
        if self._closing:
            if row_id is not None:
                await self._delete_row(row_id)
            self._retire(warm, pool, "shutdown")
            return
        if row_id is not None:
            await self._ready_shared(pool, warm, row_id)
            return
        pool.ready.append(warm)
        self._publish(pool)
        log.info("Warm server %s ready for %s", server.username, pool.image)
        await self._mark(warm)
        self._wake.set()

    # -- the pool shared through the store ------------------------------------------------------

    def _template(self, image: str) -> LaunchRequest:
        pool = self.pools.get(image)
        return pool.template if pool else LaunchRequest(image=image, repo_url="", ref_url="", launch_host="",
                                                        binder_request="", binder_persistent_request="", client_ip="")

    async def _delete_row(self, row_id: str) -> None:
        assert self.store is not None
        try:
            await self.store.warm_delete(row_id)
        except StoreError as e:  # the row's lease runs out and another replica drops it
            log.warning("Warm pool: could not delete a row from the shared store: %s", e)

    async def _ready_shared(self, pool: ImagePool, warm: WarmServer, row_id: str) -> None:
        """Mark the server on the hub, then make its row ready: from then on any replica may hand
        it out (the mark is posted first, so it is never posted after a handover cleared it)."""
        assert self.store is not None
        await self._mark(warm)
        server, now = warm.server, time.time()
        row = WarmServerRow(id=row_id, image=pool.image, state="ready", owner=self.owner,
                            lease_expires=now + self.lease, username=server.username, server_name=server.server_name,
                            url=server.url, token=server.token, ready_at=now,
                            marked_at=warm.marked.timestamp() if warm.marked else None)
        try:
            recorded = await self.store.warm_ready(row)
        except StoreError as e:
            log.warning("Warm pool: could not record the warm server %s in the shared store; removing it: %s",
                        server.username, e)
            recorded = False
        if not recorded:  # the row is gone: another replica took this one for dead
            self._retire(warm, pool, "lost")
            return
        self.rows.append(row)
        self._publish(pool)
        log.info("Warm server %s ready for %s", server.username, pool.image)
        self._wake.set()

    def _merge_images(self, images: list[WarmImageRow]) -> None:
        """Every replica's launches, as the store counts them: pools for images launched through
        other replicas, their last launch and what new servers carry."""
        loop_now, now = asyncio.get_running_loop().time(), time.time()
        for row in images:
            self.launches[row.image] = max(self.launches[row.image], row.launches)
            last = loop_now - max(0.0, now - row.last_launch)
            pool = self.pools.get(row.image)
            if pool is None:
                if not self.config.top_n:
                    continue
                try:
                    template = LaunchRequest(**json.loads(row.template))
                except (TypeError, ValueError):
                    continue
                self.pools[row.image] = ImagePool(row.image, template, row.repo_quota, last)
            elif last > pool.last_launch:
                with contextlib.suppress(TypeError, ValueError):
                    pool.template = LaunchRequest(**json.loads(row.template))
                pool.last_launch, pool.repo_quota = last, row.repo_quota

    async def _maintain_shared(self) -> None:
        """One pass over the shared pool: renew this replica's lease, adopt the servers of replicas
        whose lease ran out, then, on this replica's servers, what :meth:`maintain` does; shrink
        and refill count every replica's servers."""
        store = self.store
        assert store is not None
        now = time.time()
        await store.warm_renew(self.owner, now, self.lease)
        adopted, dropped = await store.warm_adopt(self.owner, now, self.lease)
        for row in adopted:
            log.info("Adopted warm server %s of %s from a replica that stopped (%s)", row.username, row.image, row.owner)
        for row in dropped:
            log.info("Dropped a warm start of %s by a replica that stopped (%s)", row.image, row.owner)
        self.adopted += len(adopted)
        self._merge_images(await store.warm_images())
        rows = await store.warm_servers()
        for row in rows:  # a start of ours that ended without its row (an unexpected error): free it
            if row.owner == self.owner and row.state == "starting" and row.id not in self._starting_rows:
                await store.warm_delete(row.id, state="starting")  # (not one that turned ready meanwhile)
        mine = [row for row in rows if row.owner == self.owner and row.state == "ready"]
        for row in mine:
            reason = await self._row_lost(row) or ("age" if now - (row.ready_at or now) > self.config.max_server_age else "")
            if reason and await store.warm_delete(row.id):
                if reason == "lost":
                    log.warning("Warm server %s of %s is gone; replacing it", row.username, row.image)
                self._retire(self._warm_of(row), self.pools.get(row.image) or self._pool_of(row), reason)
        targets = self.targets()
        for image in {row.image for row in rows} & set(targets):  # (another replica's own images: its call)
            for row in await store.warm_trim(image, targets[image]):
                self._retire(self._warm_of(row), self.pools.get(row.image) or self._pool_of(row), "idle")
        self.rows = await store.warm_servers()
        for pool in self.pools.values():
            self._publish(pool)
        await self._refill_shared(targets)

    def _pool_of(self, row: WarmServerRow) -> ImagePool:
        """A pool for a row of an image this replica has none for (retiring it still counts)."""
        return ImagePool(row.image, self._template(row.image), 0, 0.0)

    async def _row_lost(self, row: WarmServerRow) -> str:
        response = await self.hub.request("GET", user_path(row.username))
        server = ((response.data or {}).get("servers") or {}).get("") if response.status == 200 else None
        if response.status in (200, 404) and not (isinstance(server, dict) and server.get("ready")):
            return "lost"
        return ""

    async def _refill_shared(self, targets: dict[str, int]) -> None:
        """Start servers where the shared pool is short: a ``starting`` row claimed in the store
        (none if every replica's rows reach the target), a quota slot held (in the store), then
        the launch; at most ``refill_concurrency`` at once from this replica."""
        assert self.store is not None
        if self._closing:
            return
        loop_time = asyncio.get_running_loop().time()
        in_flight = sum(p.starting for p in self.pools.values())
        for pool in list(self.pools.values()):
            target = targets.get(pool.image, 0)
            while in_flight < self.config.refill_concurrency and loop_time >= pool.retry_at and target and not self._closing:
                row_id = await self.store.warm_claim_start(pool.image, target, self.owner, time.time(), self.lease)
                if row_id is None:
                    break
                self._starting_rows.add(row_id)
                slot = await self.quota.acquire(pool.image, pool.repo_quota)
                if not self._room(pool, slot.blocked or ""):
                    self._starting_rows.discard(row_id)
                    await self._delete_row(row_id)
                    break
                in_flight += 1
                task = self.supervisor.spawn(self._start_one(pool, row_id), f"warm pool: start {pool.image}")
                pool.starts.add(task)
                task.add_done_callback(lambda task, pool=pool, slot=slot, row_id=row_id: (
                    self._starting_rows.discard(row_id), self._start_ended(pool, task, slot)))
                self._publish(pool)

    # -- hub-side marks and removal --------------------------------------------------------------

    async def _post_activity(self, username: str, when: datetime) -> bool:
        stamp = format_hub_time(when)
        response = await self.hub.request("POST", f"{user_path(username)}/activity",
                                          {"last_activity": stamp, "servers": {"": {"last_activity": stamp}}})
        if response.status >= 300:
            log.info("Could not set the activity of %s: HTTP %d %s", username, response.status, response.message)
        return response.status < 300

    async def _mark(self, warm: WarmServer) -> None:
        when = marked_time(warm.server.username, datetime.now(UTC))
        if await self._post_activity(warm.server.username, when):
            warm.marked = when

    async def _unmark(self, warm: WarmServer) -> None:
        """Clear the mark of a server handed to a client: it is the client's now."""
        username = warm.server.username
        await self._post_activity(username, unmarked_time(username, warm.marked, datetime.now(UTC)))

    def _retire(self, warm: WarmServer, pool: ImagePool, reason: str) -> None:
        """Stop and delete a server already taken out of ``pool.ready`` (so never handed out)."""
        metrics.WARM_POOL_RETIRED.labels(reason=reason).inc()
        self._publish(pool)
        self.launcher.start_removing_temporary_user(warm.server.username)
        self._wake.set()

    # -- what is visible -------------------------------------------------------------------------

    def _ready_count(self, pool: ImagePool, *, everyone: bool = False) -> int:
        """Ready servers of ``pool``: this process's; with a shared store, this replica's rows (the
        metric: summed over replicas it is the pool's), or ``everyone``'s (health)."""
        if self.store is None:
            return len(pool.ready)
        return sum(1 for row in self.rows
                   if row.image == pool.image and row.state == "ready" and (everyone or row.owner == self.owner))

    def _publish(self, pool: ImagePool) -> None:
        ready = self._ready_count(pool)
        if not (pool.published or ready or pool.starting):
            return
        pool.published = True
        metrics.WARM_POOL_SERVERS.labels(image=pool.image, state="ready").set(ready)
        metrics.WARM_POOL_SERVERS.labels(image=pool.image, state="starting").set(pool.starting)

    def ready_users(self, image: str) -> list[str]:
        """Users of the ready servers of ``image``: this process's, or the shared pool's as last read."""
        if self.store is not None:
            return [row.username for row in self.rows if row.image == image and row.state == "ready"]
        pool = self.pools.get(image)
        return [w.server.username for w in pool.ready] if pool else []

    async def health(self) -> dict[str, Any]:
        """The soft ``Warm pool`` check: ready, starting and wanted servers per image (with a shared
        store: every replica's, as last read)."""
        targets = self.targets()

        def counts(pool: ImagePool) -> dict[str, int]:
            ready = self._ready_count(pool, everyone=True)
            starting = (sum(1 for row in self.rows if row.image == pool.image and row.state == "starting")
                        if self.store is not None else pool.starting)
            return {"ready": ready, "starting": starting, "target": targets[pool.image]}

        images = {pool.image: c for pool in self.pools.values() if (c := counts(pool))["ready"] or c["starting"] or c["target"]}
        return {"ok": all(i["ready"] + i["starting"] >= i["target"] for i in images.values()), "images": images}
