"""Launch quotas: how many servers may run, in total and per repository.

BinderHub listed every single-user pod on every check. Here the counts are kept current from the
engine's (or cluster's) event stream and recounted in full only every ``resync_interval``, so a
check costs the same with 10 or 10,000 servers.

A count alone cannot keep a quota exact: a server is counted once its container or pod runs,
seconds after the check that let it start, so launches checked meanwhile (in this process or in
another replica) would all see room for the last one. A launch therefore holds a slot
(:meth:`LaunchQuota.admit`) from its check until it has ended, and a check counts the slots held:
in this process's memory, or, when replicas share a store (PostgreSQL), in the store, taken under
a lock (:meth:`~binderapi.store.base.BuildStore.hold_launch_slot`). A slot is given back when the
launch ends, so for the seconds between its server's container starting and the launch ending
that server counts twice: a launch at the very limit may be refused a moment early, never let
through one too many.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import QuotaExceededError
from .naming import repo_of_image
from .store.base import StoreError, new_build_id, process_owner

if TYPE_CHECKING:
    from .settings import Settings
    from .store.base import BuildStore
    from .supervisor import Supervisor

log = logging.getLogger(__name__)


@dataclass
class QuotaCheck:
    total: int
    matching: int
    quota: int | None


@dataclass
class QuotaSlot:
    """Room for one server being started, held from the check until the start has ended."""

    image_name: str
    blocked: str | None = None  # the quota that had no room: nothing is held
    store_id: str = ""  # the slot's row when replicas share the store, else held in memory
    released: bool = False


class LaunchQuota:
    """No limits (BinderHub's base class); subclasses count running servers."""

    #: the replicas' shared store (PostgreSQL), where launch slots are held; None: this process's memory
    store: BuildStore | None = None

    def __init__(self, settings: Settings, supervisor: Supervisor | None = None) -> None:
        self.config = settings.LaunchQuota
        self.total_quota = self.config.total_quota
        self.reserved: Counter[str] = Counter()  # servers starting outside the count, per repository
        # a slot in the store outlives a launch only if its replica died: it then expires
        launcher = settings.Launcher
        self.slot_seconds = launcher.launch_timeout + launcher.cleanup_timeout + 60
        self.owner = process_owner()
        self._releases: set[asyncio.Task[None]] = set()
        self._store_failed = False

    async def start(self) -> None:
        """Begin counting (subclasses start their watch here)."""

    async def close(self) -> None:
        """Stop counting."""

    # counts ---------------------------------------------------------------------------------------
    def total_servers(self) -> int:
        return 0

    def servers_of(self, repo: str) -> int:
        return 0

    # checks ---------------------------------------------------------------------------------------
    def full(self, image_name: str, repo_quota: int = 0) -> str | None:
        """The quota a new server of ``image_name`` would exceed (``"total_quota"`` or
        ``"repo_quota"``, with ``repo_quota`` the repository's, 0 for none), else None."""
        if self.total_quota is not None and self.total_servers() >= self.total_quota:
            return "total_quota"
        if repo_quota and self.servers_of(repo_of_image(image_name)) >= repo_quota:
            return "repo_quota"
        return None

    def reserve(self, image_name: str, repo_quota: int = 0) -> str | None:
        """Hold a slot for a server that starts outside the count (a warm server: the quota
        counts it once it runs, and it must not be handed a slot a launch takes meanwhile).
        None once held, else the quota that has no room (see :meth:`full`); :meth:`release` it
        when the start has ended either way."""
        blocked = self.full(image_name, repo_quota)
        if blocked is None:
            self.reserved[repo_of_image(image_name)] += 1
        return blocked

    def release(self, image_name: str) -> None:
        """Give back a slot :meth:`reserve` held."""
        repo = repo_of_image(image_name)
        self.reserved[repo] -= 1
        if self.reserved[repo] <= 0:
            del self.reserved[repo]

    async def acquire(self, image_name: str, repo_quota: int = 0) -> QuotaSlot:
        """Hold a slot for a new server of ``image_name`` if both quotas have room (counting the
        slots every replica holds); ``slot.blocked`` names the quota that has none. Give it back
        with :meth:`release_slot` once the start has ended, either way."""
        store = self.store
        if store is not None:
            repo = repo_of_image(image_name)
            slot = QuotaSlot(image_name, store_id=new_build_id())
            now = time.time()
            try:
                slot.blocked = await store.hold_launch_slot(
                    slot.store_id, self.owner, repo, self.total_servers(), self.servers_of(repo), self.total_quota,
                    repo_quota, now, now + self.slot_seconds)
            except StoreError as e:
                if not self._store_failed:
                    log.warning("Launch quota: the shared store failed (%s); counting this replica's launches "
                                "only until it answers again", e)
                self._store_failed = True
            else:
                if self._store_failed:
                    log.info("Launch quota: the shared store answers again")
                self._store_failed = False
                return slot
        return QuotaSlot(image_name, blocked=self.reserve(image_name, repo_quota))

    def release_slot(self, slot: QuotaSlot | None) -> None:
        """Give back what :meth:`acquire` held (once; nothing for a blocked slot). A slot in the
        store is deleted in the background (:meth:`settle` waits for it)."""
        if slot is None or slot.blocked or slot.released:
            return
        slot.released = True
        if not slot.store_id:
            self.release(slot.image_name)
            return
        task = asyncio.ensure_future(self._release_stored(slot.store_id))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release_stored(self, slot_id: str) -> None:
        assert self.store is not None
        try:
            await self.store.release_launch_slot(slot_id)
        except StoreError as e:  # it expires after slot_seconds
            log.warning("Launch quota: could not give back a slot in the shared store (it expires): %s", e)

    async def settle(self) -> None:
        """Wait for slots being given back (before the store closes)."""
        if self._releases:
            await asyncio.wait(set(self._releases))

    async def admit(self, image_name: str, repo_config: dict[str, Any], repo_url: str) -> QuotaSlot | None:
        """:meth:`check` that also holds the slot the new server takes (None: no quota applies);
        the launch gives it back with :meth:`release_slot` when it has ended."""
        repo_quota = repo_config.get("quota") or 0
        if self.total_quota is None and not repo_quota:
            return None
        slot = await self.acquire(image_name, repo_quota)
        self._refuse(slot.blocked, image_name, repo_quota, repo_url)
        return slot

    async def check(self, image_name: str, repo_config: dict[str, Any], repo_url: str) -> QuotaCheck | None:
        """Raise :class:`QuotaExceededError` with BinderHub's messages when a new server would not fit."""
        repo_quota = repo_config.get("quota") or 0
        if self.total_quota is None and not repo_quota:
            return None
        return self._refuse(self.full(image_name, repo_quota), image_name, repo_quota, repo_url)

    def _refuse(self, blocked: str | None, image_name: str, repo_quota: int, repo_url: str) -> QuotaCheck:
        """BinderHub's refusal for the quota ``blocked`` names, if any; else the counts."""
        total = self.total_servers()
        if blocked == "total_quota":
            log.info("Launch quota exceeded: %d servers, total quota %d", total, self.total_quota)
            raise QuotaExceededError("Too many users on this BinderHub! Try again soon.", "pod_quota")
        matching = self.servers_of(repo_of_image(image_name))
        if blocked == "repo_quota":
            log.info("Per-repo quota exceeded for %s: %d servers, quota %d", repo_url, matching, repo_quota)
            raise QuotaExceededError(f"Too many users running {repo_url}! Try again soon.", "repo_quota")
        if repo_quota and matching >= 0.5 * repo_quota:
            log.warning("%s is using %d of its %d servers", repo_url, matching, repo_quota)
        return QuotaCheck(total, matching, repo_quota or None)

    async def health(self, build_count: int) -> dict[str, Any]:
        """BinderHub's soft ``Pod quota`` check, read by federation redirectors."""
        users = self.total_servers()
        total = users + build_count
        return {"total_pods": total, "build_pods": build_count, "user_pods": users, "quota": self.total_quota,
                "ok": self.total_quota is None or total <= self.total_quota}


class CountingQuota(LaunchQuota):
    """Counts kept in memory, updated by subclasses as servers start and stop."""

    def __init__(self, settings: Settings, supervisor: Supervisor | None = None) -> None:
        super().__init__(settings, supervisor)
        self.servers: dict[str, str] = {}  # server id -> repository (image without tag)
        self.per_repo: Counter[str] = Counter()

    def total_servers(self) -> int:
        return len(self.servers) + sum(self.reserved.values())

    def servers_of(self, repo: str) -> int:
        return self.per_repo[repo] + self.reserved[repo]

    def added(self, server_id: str, image: str) -> None:
        if server_id in self.servers:
            return
        repo = repo_of_image(image)
        self.servers[server_id] = repo
        self.per_repo[repo] += 1

    def removed(self, server_id: str) -> None:
        repo = self.servers.pop(server_id, None)
        if repo is not None:
            self.per_repo[repo] -= 1
            if not self.per_repo[repo]:
                del self.per_repo[repo]

    def replace_all(self, servers: dict[str, str]) -> None:
        self.servers = {sid: repo_of_image(image) for sid, image in servers.items()}
        self.per_repo = Counter(self.servers.values())
