"""Launch quotas: how many servers may run, in total and per repository.

BinderHub listed every single-user pod on every check. Here the counts are kept current from the
engine's (or cluster's) event stream and recounted in full only every ``resync_interval``, so a
check costs the same with 10 or 10,000 servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError

from .errors import QuotaExceededError
from .naming import repo_of_image

if TYPE_CHECKING:
    from .settings import Settings
    from .supervisor import Supervisor

log = logging.getLogger(__name__)

#: while the engine is down, the events watch tries again after 1, 2, 4 ... seconds, at most this
#: many (each wait drawn between half and all of it, so replicas do not knock in step)
EVENTS_RETRY_MIN = 1.0
EVENTS_RETRY_MAX = 60.0


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


class DockerLaunchQuota(CountingQuota):
    """Counts running single-user containers on the Docker engine (DockerSpawner's)."""

    def __init__(self, settings: Settings, supervisor: Supervisor | None = None) -> None:
        super().__init__(settings, supervisor)
        self.config = settings.DockerLaunchQuota
        self.total_quota = self.config.total_quota
        self.prefix = self.config.container_filter
        self.supervisor = supervisor
        from .executors.docker import engine_url

        self.docker = aiodocker.Docker(url=engine_url(settings.DockerBuildExecutor.docker_host))
        self.resyncs = 0
        self.engine_down: str | None = None  # why, while the engine cannot be reached
        self._synced = asyncio.Event()

    def _is_server(self, name: str) -> bool:
        return name.lstrip("/").startswith(self.prefix)

    async def resync(self) -> None:
        containers = await self.docker.containers.list(filters={"status": ["running"]})
        self.replace_all({c["Id"]: c["Image"] for c in containers if any(self._is_server(n) for n in c["Names"])})
        self.resyncs += 1
        self._synced.set()

    async def _follow_events(self) -> None:
        """Follow the engine's container events until the stream ends or the engine fails."""
        subscriber = self.docker.events.subscribe(filters={"type": ["container"], "event": ["start", "die", "destroy"]})
        try:
            await self.resync()  # after subscribing, so no start/stop falls between the two
            self._engine_answered()
            while True:
                event = await subscriber.get()
                if event is None:
                    return  # stream ended; _watch_events follows again (and resyncs)
                attributes = event.get("Actor", {}).get("Attributes", {})
                if not self._is_server(attributes.get("name", "")):
                    continue
                if event.get("Action") == "start":
                    self.added(event["Actor"]["ID"], attributes.get("image", event.get("from", "")))
                else:
                    self.removed(event["Actor"]["ID"])
        finally:
            with contextlib.suppress(Exception):
                await self.docker.events.stop()

    async def _watch_events(self) -> None:
        """Follow the events for good. An engine that is down is a state, not a crash: one
        WARNING when it goes, one INFO when it is back, and in between attempts spaced by a
        capped, jittered exponential backoff (not a traceback every 2 s)."""
        delay = EVENTS_RETRY_MIN
        while True:
            try:
                await self._follow_events()
            except (DockerError, OSError, TimeoutError, aiohttp.ClientError) as e:
                if self.engine_down is None:  # a new outage
                    self.engine_down = str(e) or type(e).__name__
                    log.warning("quota: the Docker engine cannot be reached (%s); launch counts are frozen "
                                "until it is back, retrying with backoff", self.engine_down)
                    delay = EVENTS_RETRY_MIN
            else:
                delay = EVENTS_RETRY_MIN  # the stream ended normally: follow again soon
            await asyncio.sleep(random.uniform(delay / 2, delay))
            delay = min(delay * 2, EVENTS_RETRY_MAX)

    def _engine_answered(self) -> None:
        if self.engine_down is not None:
            log.info("quota: the Docker engine is back; launch counts resynced")
            self.engine_down = None

    async def _resync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.resync_interval)
            if self.engine_down is None:  # while it is down, the events watch owns the retries
                with contextlib.suppress(DockerError, OSError, TimeoutError, aiohttp.ClientError):
                    await self.resync()

    async def start(self) -> None:
        assert self.supervisor is not None
        self.supervisor.run_forever("quota: docker events", self._watch_events)
        self.supervisor.run_forever("quota: docker resync", self._resync_forever)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._synced.wait(), 10)

    async def close(self) -> None:
        with contextlib.suppress(DockerError):
            await self.docker.close()


KNOWN_QUOTAS = {
    "none": "binderapi.quota:LaunchQuota",
    "LaunchQuota": "binderapi.quota:LaunchQuota",
    "docker": "binderapi.quota:DockerLaunchQuota",
    "DockerLaunchQuota": "binderapi.quota:DockerLaunchQuota",
    "kubernetes": "binderapi.kube.quota:KubernetesLaunchQuota",
    "KubernetesLaunchQuota": "binderapi.kube.quota:KubernetesLaunchQuota",
}
