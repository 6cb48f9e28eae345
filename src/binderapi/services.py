"""Everything a request needs, built once from settings at start-up and closed at shutdown.

Routers receive it through :data:`ServicesDep`; nothing is read from the environment or created
lazily on the request path.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import httpx
from fastapi import Depends, Request

from . import __version__
from .auth import HubAuth
from .backends import ActiveKind, launch_quota_class, open_kind
from .builds import BuildManager
from .errors import BinderError, StartupError
from .eventlog import EventLog
from .executors import BuildBackend
from .health import HealthChecks
from .hub import HubAPI
from .launcher import Launcher
from .providers import ProviderContext, ProviderRegistry
from .providers._http import make_client
from .quota import LaunchQuota
from .ratelimit import RateLimiter
from .recorder import Recorder
from .registry import ImageStore, make_image_store
from .settings import Settings
from .store import BuildStore, StoreError, open_store, shared_store, sweep
from .streaming import KeepaliveTicker
from .supervisor import Supervisor
from .tokens import BuildTokens

if TYPE_CHECKING:
    from .warmpool import WarmPool  # imported when enabled: most deployments never need it

log = logging.getLogger(__name__)

USER_AGENT = f"binderapi/{__version__}"
#: the retention sweep of the build store: first this long after start, then every hour
SWEEP_FIRST_DELAY = 60.0
SWEEP_INTERVAL = 3600.0
#: the build store's ``/health`` check, by the name a readiness probe selects it with (``?service=``)
STORE_HEALTH_CHECK = "Build store"
#: how often a store that could not be opened is tried again
STORE_REOPEN_INTERVAL = 30.0


#: an error message that already starts by naming its setting (``Launcher.pre_launch_hook: ...``,
#: ``BinderHub.repo_providers['gh']: ...``) is kept as it is
_NAMES_A_SETTING = re.compile(r"^[A-Z]\w*\.[a-z_]+(\[[^\]]*\])?: ")


class StartupSteps:
    """The one wrapper around every step of :meth:`Services.start`.

    A step that fails raises a :class:`StartupError` naming it (by the setting that chose what it
    builds, unless the error names its setting already); leaving the ``async with`` block by an
    error then closes everything built before it, newest first, so a bad setting leaks no HTTP
    client, engine client or task.
    """

    def __init__(self) -> None:
        self._closers: list[Callable[[], Awaitable[Any] | None]] = []

    async def __aenter__(self) -> StartupSteps:
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        closers, self._closers = self._closers, []
        if exc_type is None:
            return  # started: Services.close() owns everything now
        for close in reversed(closers):
            try:
                result = close()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.debug("Error while closing after a failed start", exc_info=True)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        try:
            yield
        except StartupError:
            raise
        except Exception as e:
            message = str(e) or type(e).__name__
            raise StartupError(message if _NAMES_A_SETTING.match(message) else f"{name}: {message}") from e

    def close_on_failure(self, close: Callable[[], Awaitable[Any] | None]) -> None:
        """Close something just built if a later step fails."""
        self._closers.append(close)

    def hand_over(self, close: Callable[[], Awaitable[Any]]) -> None:
        """From here on one closer (:meth:`Services.close`) closes everything built so far."""
        self._closers = [close]


@dataclass
class Services:
    settings: Settings
    http: httpx.AsyncClient
    kind: ActiveKind
    providers: ProviderRegistry
    health: HealthChecks
    supervisor: Supervisor
    backend: BuildBackend
    images: ImageStore
    builds: BuildManager
    quota: LaunchQuota
    launcher: Launcher
    event_log: EventLog
    build_tokens: BuildTokens
    rate_limiter: RateLimiter
    hub_auth: HubAuth
    keepalives: KeepaliveTicker
    #: writes builds to the store in batches; its ``error`` says why the store is down, if it is
    recorder: Recorder = field(default_factory=lambda: Recorder(None))
    warm_pool: WarmPool | None = None  # off by default, never in auth mode
    _stopping: asyncio.Future[None] | None = field(default=None, init=False, repr=False)

    @property
    def store(self) -> BuildStore | None:
        """The build store: None when ``BuildStore.enabled`` is false or it could not be opened at
        start (``recorder.error`` says why); its calls raise :class:`StoreError` when it fails."""
        return self.recorder.store

    @property
    def builder_info(self) -> dict[str, Any]:
        return self.backend.builder_info

    @property
    def executor_settings(self) -> Any:
        return self.kind.executor_settings

    @classmethod
    async def start(cls, settings: Settings) -> Services:
        """Build everything from ``settings`` and start the background work; a
        :class:`StartupError` saying what is wrong, with nothing left open, if that fails."""
        binderhub = settings.BinderHub
        async with StartupSteps() as steps:
            with steps.step("the HTTP client"):
                http = make_client(
                    headers={"User-Agent": USER_AGENT},
                    timeout=httpx.Timeout(settings.RepoProvider.request_timeout, connect=5.0),
                    limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
                )
            steps.close_on_failure(http.aclose)
            supervisor = Supervisor()
            steps.close_on_failure(supervisor.close)
            with steps.step("BinderHub.repo_providers"):
                providers = ProviderRegistry(settings, ProviderContext(http=http))
            with steps.step("BinderHub.build_class"):
                kind = open_kind(settings)
            steps.close_on_failure(kind.close)  # the engine client: closed after every part sharing it
            with steps.step("BinderHub.build_class"):
                backend = kind.build_backend()
            steps.close_on_failure(backend.close)
            with steps.step("BinderHub.registry_class"):
                images = make_image_store(settings, http, kind.local_images)
            steps.close_on_failure(images.close)
            recorder = await cls._open_store(settings)
            steps.close_on_failure(recorder.close_store)
            with steps.step("the build manager"):
                builds = BuildManager(
                    backend, supervisor,
                    concurrent_build_limit=binderhub.concurrent_build_limit,
                    log_tail_lines=kind.executor_settings.log_tail_lines,
                    max_age=kind.cleaner_settings.max_age,
                    image_exists=images.image_exists,
                    recorder=recorder,
                    lease_seconds=settings.BuildStore.lease_seconds,
                )
            with steps.step("BinderHub.launch_quota_class"):
                quota = kind.launch_quota(launch_quota_class(binderhub.launch_quota_class), supervisor)
                if recorder.store is not None and recorder.store.shared:
                    quota.store = recorder.store  # replicas hold launch slots there
            steps.close_on_failure(quota.close)
            hub = HubAPI.from_settings(settings, http)
            with steps.step("Launcher"):
                launcher = Launcher(settings, http, hub)
                steps.close_on_failure(launcher.close)
            with steps.step("EventLog"):
                event_log = EventLog(settings.EventLog)
            steps.close_on_failure(event_log.close)
            with steps.step("BinderHub.build_token_secret"):
                build_tokens = BuildTokens(binderhub.build_token_secret, binderhub.build_token_expires_seconds,
                                           binderhub.build_token_check_origin)
            with steps.step("RateLimiter"):
                # replicas sharing a store count there; one process (SQLite) counts in memory
                store = recorder.store
                rate_limiter = RateLimiter(settings.RateLimiter.limit, settings.RateLimiter.period_seconds,
                                           settings.RateLimiter.clean_seconds,
                                           store=store if store is not None and store.shared else None)
            with steps.step("HubOAuth"):
                hub_auth = HubAuth.from_settings(settings, hub)
            services = cls(
                settings=settings, http=http, kind=kind, providers=providers, health=HealthChecks(), supervisor=supervisor,
                backend=backend, images=images, builds=builds, quota=quota, launcher=launcher, event_log=event_log,
                build_tokens=build_tokens, rate_limiter=rate_limiter, hub_auth=hub_auth,
                keepalives=KeepaliveTicker(binderhub.keepalive_interval), recorder=recorder,
            )
            steps.hand_over(services.close)
            if settings.WarmPool.enabled:
                if binderhub.auth_enabled:
                    log.warning("WarmPool.enabled is ignored in auth mode: servers belong to their users")
                else:
                    with steps.step("WarmPool"):
                        from .warmpool import WarmPool

                        store = services.store
                        services.warm_pool = WarmPool(settings, services.launcher, hub, services.quota, supervisor,
                                                      store=store if store is not None and store.shared else None)
            await services._start_background(steps)
            services._register_health_checks()
        return services

    @staticmethod
    async def _open_store(settings: Settings) -> Recorder:
        """The build store and its recorder. A store that cannot be opened is logged, not fatal:
        the classic ``/build`` works without it (``/api/v1`` answers 503, ``/health`` says why).
        A shared store (PostgreSQL) is: a replica without the store its peers share would count
        its own rate limit and see none of their builds, so it does not start (and is restarted)."""
        section = settings.BuildStore
        if not section.enabled:
            return Recorder(None)
        try:
            store = await open_store(settings)
        except StoreError as e:
            if shared_store(section):
                raise StartupError(f"BuildStore.url: {e}. Replicas sharing a PostgreSQL store do not start without it") from None
            log.error("The build store cannot be opened: %s. Serving /build without it; /api/v1 answers 503", e)
            return Recorder(None, max_log_bytes=int(section.max_log_bytes), flush_interval=section.flush_interval,
                            error=str(e) or type(e).__name__)
        return Recorder(store, max_log_bytes=int(section.max_log_bytes), flush_interval=section.flush_interval)

    async def _store_health(self) -> dict[str, object]:
        """The "Build store" check: the recorder's view for one process's store; for a shared one a
        live ping decides (hard: readiness), so a replica is back in service as soon as the
        database answers, whatever write failed before."""
        store = self.store
        if store is None or not store.shared:
            return await self.recorder.health()
        await store.ping()
        return {"ok": True, **({"last_error": self.recorder.error} if self.recorder.error else {})}

    async def _reopen_store(self) -> None:
        """A store that could not be opened at start is tried again (a database that was still
        starting); from then on builds are recorded. A failure is logged once per outage."""
        if self.store is not None:
            return
        try:
            store = await open_store(self.settings)
        except StoreError as e:
            self.recorder.failed(str(e) or type(e).__name__)
            return
        log.info("The build store is open now; builds are recorded from here on")
        self.recorder.store, self.recorder.error = store, ""

    async def _sweep_builds(self) -> None:
        """One retention sweep (run again every :data:`SWEEP_INTERVAL` by the supervisor)."""
        if self.store is None:
            return
        try:
            removed = await sweep(self.store, self.settings.BuildStore.retention_days)
        except StoreError as e:
            self.recorder.failed(str(e))
            return
        if removed:
            log.info("Removed %d builds older than %s days from the build store", removed,
                     self.settings.BuildStore.retention_days)

    async def _start_background(self, steps: StartupSteps) -> None:
        binderhub = self.settings.BinderHub
        try:
            await self.backend.check()
            await self.builds.start()
        except Exception as e:
            if binderhub.builder_required:
                raise StartupError(f"The build backend ({binderhub.build_class}) is unreachable: {e}. "
                                   "Fix it, or set BinderHub.builder_required: false to start anyway.") from None
            log.warning("The build backend is unreachable (%s); continuing because builder_required is false", e)
        if self.settings.BuildStore.enabled and self.store is None:
            self.supervisor.run_forever("build store reopen", self._reopen_store, restart_delay=STORE_REOPEN_INTERVAL,
                                        first_delay=STORE_REOPEN_INTERVAL)
        if self.settings.BuildStore.enabled and self.settings.BuildStore.retention_days > 0:
            self.supervisor.run_forever("build store sweep", self._sweep_builds, restart_delay=SWEEP_INTERVAL,
                                        first_delay=SWEEP_FIRST_DELAY)
        if binderhub.build_cleaner_class != "none":
            interval = binderhub.build_cleanup_interval
            self.supervisor.run_forever("build cleaner", self.builds.clean, restart_delay=interval, first_delay=interval)
        with steps.step("BinderHub.launch_quota_class"):
            try:
                await self.quota.start()
            except StartupError as e:
                if binderhub.builder_required:
                    raise StartupError(f"{e}. Fix it, or set BinderHub.builder_required: false to start anyway.") from None
                log.warning("%s; continuing because builder_required is false (see /health)", e)
        if self.rate_limiter.store is not None and self.rate_limiter.enabled:
            clean = self.rate_limiter.clean_seconds
            self.supervisor.run_forever("rate limit sweep", self.rate_limiter.sweep_store, restart_delay=clean,
                                        first_delay=clean)
        launcher = self.launcher
        if launcher.config.orphan_sweep_interval and launcher.hub.configured and not binderhub.auth_enabled:
            self.supervisor.run_forever("temporary user sweep",
                                        lambda: launcher.remove_orphans_forever(launcher.config.orphan_sweep_interval))
        if self.warm_pool is not None:
            with steps.step("WarmPool"):
                await self.warm_pool.start()  # after the quota, which counts its servers

    def _register_health_checks(self) -> None:
        if self.settings.BinderHub.use_registry:
            self.health.add("Docker registry", self.images.health, timeout=self.settings.DockerRegistry.timeout + 2)
        if self.settings.BinderHub.hub_url:
            self.health.add("JupyterHub API", self.launcher.health)
        for name, check in self.kind.health_checks(self.backend):
            self.health.add(name, check)
        if self.settings.BuildStore.enabled:
            # hard when replicas share the store: a replica that cannot reach it leaves the Service
            # (the replicas overlay's readiness probe runs this check alone)
            self.health.add(STORE_HEALTH_CHECK, self._store_health, soft=not shared_store(self.settings.BuildStore),
                            cache_seconds=5, timeout=5)
        self.health.add("Pod quota", lambda: self.quota.health(len(self.builds.running)), soft=True, cache_seconds=60)
        if self.warm_pool is not None:
            self.health.add("Warm pool", self.warm_pool.health, soft=True, cache_seconds=5)

    async def stop(self) -> None:
        """End what open event streams wait on, so each ends with its final event rather than being
        cut off: launches (``binderapi is shutting down; try again in a moment``, then their hub
        clean-ups, within ``Launcher.cleanup_timeout``), builds and background work. The server
        calls it as soon as it stops taking requests (httpserver.Server); :meth:`close` calls it too."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop())
        await asyncio.shield(self._stopping)

    async def _stop(self) -> None:
        if self.warm_pool is not None:
            await self.warm_pool.close()  # first: removing its servers needs the hub client
        await self.supervisor.close()
        await self.launcher.close()  # ends launches and finishes hub clean-ups, before the hub client closes
        await self.quota.settle()  # launch slots given back to the store before it closes

    async def close(self) -> None:
        await self.stop()
        await self.recorder.close_store()  # after the builds stopped: their last events are written
        for closer in (self.quota.close, self.images.close, self.backend.close, self.kind.close):  # the engine last
            try:
                await closer()
            except Exception:
                log.debug("Error while closing", exc_info=True)
        self.event_log.close()
        await self.http.aclose()


async def get_services(request: Request) -> Services:
    """Async on purpose: FastAPI runs a plain ``def`` dependency in a worker thread, a thread hop
    per request on the hottest path."""
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]

__all__ = ["BinderError", "Services", "ServicesDep", "StartupError", "get_services"]
