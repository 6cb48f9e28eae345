"""Launch quotas: how many servers may run, in total and per repository.

BinderHub listed every single-user pod on every check. Here the counts are kept current from the
engine's (or cluster's) event stream and recounted in full only every ``resync_interval``, so a
check costs the same with 10 or 10,000 servers.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import QuotaExceededError
from .naming import repo_of_image

if TYPE_CHECKING:
    from .settings import Settings
    from .supervisor import Supervisor

log = logging.getLogger(__name__)


@dataclass
class QuotaCheck:
    total: int
    matching: int
    quota: int | None


class LaunchQuota:
    """No limits (BinderHub's base class); subclasses count running servers."""

    def __init__(self, settings: Settings, supervisor: Supervisor | None = None) -> None:
        self.config = settings.LaunchQuota
        self.total_quota = self.config.total_quota
        self.reserved: Counter[str] = Counter()  # servers starting outside the count, per repository

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

    async def check(self, image_name: str, repo_config: dict[str, Any], repo_url: str) -> QuotaCheck | None:
        """Raise :class:`QuotaExceededError` with BinderHub's messages when a new server would not fit."""
        repo_quota = repo_config.get("quota") or 0
        if self.total_quota is None and not repo_quota:
            return None
        blocked = self.full(image_name, repo_quota)
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
