"""Everything a request needs, built once from settings at start-up and closed at shutdown.

Routers receive it through :data:`ServicesDep`; nothing is read from the environment or created
lazily on the request path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import httpx
from fastapi import Depends, Request

from . import __version__
from ._importing import resolve
from .auth import HubAuth
from .builds import BuildManager
from .errors import BinderError
from .eventlog import EventLog
from .executors import KNOWN_BACKENDS, BuildBackend
from .health import HealthChecks
from .hub import HubAPI
from .launcher import Launcher
from .providers import ProviderContext, ProviderRegistry
from .providers._http import make_client
from .quota import KNOWN_QUOTAS, LaunchQuota
from .ratelimit import RateLimiter
from .registry import ImageStore, make_image_store
from .settings import Settings
from .streaming import KeepaliveTicker
from .supervisor import Supervisor
from .tokens import BuildTokens

if TYPE_CHECKING:
    from .warmpool import WarmPool  # imported when enabled: most deployments never need it

log = logging.getLogger(__name__)

USER_AGENT = f"binderapi/{__version__}"


class StartupError(Exception):
    """binderapi cannot serve with this configuration and environment; the message says why."""


def make_backend(settings: Settings) -> BuildBackend:
    try:
        backend_class = resolve(settings.BinderHub.build_class, KNOWN_BACKENDS, "build backend")
    except ImportError as e:
        raise StartupError(f"BinderHub.build_class: {e}") from None
    return backend_class(settings)


def executor_section(settings: Settings, kind: str) -> Any:
    """The settings section of the build backend in use."""
    return settings.DockerBuildExecutor if kind == "docker" else settings.KubernetesBuildExecutor


def cleaner_max_age(settings: Settings, kind: str) -> int:
    return (settings.DockerCleaner if kind == "docker" else settings.KubernetesCleaner).max_age


def make_quota(settings: Settings, supervisor: Supervisor) -> LaunchQuota:
    try:
        quota_class = resolve(settings.BinderHub.launch_quota_class, KNOWN_QUOTAS, "launch quota")
    except ImportError as e:
        raise StartupError(f"BinderHub.launch_quota_class: {e}") from None
    return quota_class(settings, supervisor)


@dataclass
class Services:
    settings: Settings
    http: httpx.AsyncClient
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
    warm_pool: WarmPool | None = None  # off by default, never in auth mode

    @property
    def builder_info(self) -> dict[str, Any]:
        return self.backend.builder_info

    @property
    def executor_settings(self) -> Any:
        return executor_section(self.settings, self.backend.kind)

    @classmethod
    async def start(cls, settings: Settings) -> Services:
        binderhub = settings.BinderHub
        http = make_client(
            headers={"User-Agent": USER_AGENT},
            timeout=httpx.Timeout(settings.RepoProvider.request_timeout, connect=5.0),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        )
        supervisor = Supervisor()
        try:
            providers = ProviderRegistry(settings, ProviderContext(http=http))
        except ValueError as e:
            await http.aclose()
            raise StartupError(str(e)) from None
        backend = make_backend(settings)
        try:
            images = make_image_store(settings, http)
        except ValueError as e:
            await http.aclose()
            raise StartupError(str(e)) from None
        hub = HubAPI.from_settings(settings, http)
        builds = BuildManager(
            backend, supervisor,
            concurrent_build_limit=binderhub.concurrent_build_limit,
            log_tail_lines=executor_section(settings, backend.kind).log_tail_lines,
            max_age=cleaner_max_age(settings, backend.kind),
            image_exists=images.image_exists,
        )
        services = cls(
            settings=settings, http=http, providers=providers, health=HealthChecks(), supervisor=supervisor,
            backend=backend, images=images, builds=builds, quota=make_quota(settings, supervisor),
            launcher=Launcher(settings, http, hub), event_log=EventLog(settings.EventLog),
            build_tokens=BuildTokens(binderhub.build_token_secret, binderhub.build_token_expires_seconds,
                                     binderhub.build_token_check_origin),
            rate_limiter=RateLimiter(settings.RateLimiter.limit, settings.RateLimiter.period_seconds,
                                     settings.RateLimiter.clean_seconds),
            hub_auth=HubAuth.from_settings(settings, hub),
            keepalives=KeepaliveTicker(binderhub.keepalive_interval),
        )
        if settings.WarmPool.enabled:
            if binderhub.auth_enabled:
                log.warning("WarmPool.enabled is ignored in auth mode: servers belong to their users")
            else:
                from .warmpool import WarmPool

                services.warm_pool = WarmPool(settings, services.launcher, hub, services.quota, supervisor)
        try:
            await services._start_background()
        except BaseException:
            await services.close()
            raise
        services._register_health_checks()
        return services

    async def _start_background(self) -> None:
        binderhub = self.settings.BinderHub
        try:
            await self.backend.check()
            await self.builds.start()
        except Exception as e:
            if binderhub.builder_required:
                raise StartupError(f"The build backend ({binderhub.build_class}) is unreachable: {e}. "
                                   "Fix it, or set BinderHub.builder_required: false to start anyway.") from None
            log.warning("The build backend is unreachable (%s); continuing because builder_required is false", e)
        if binderhub.build_cleaner_class != "none":
            self.supervisor.run_forever("build cleaner", lambda: self.builds.clean_forever(binderhub.build_cleanup_interval))
        try:
            await self.quota.start()
        except StartupError as e:
            if binderhub.builder_required:
                raise StartupError(f"{e}. Fix it, or set BinderHub.builder_required: false to start anyway.") from None
            log.warning("%s; continuing because builder_required is false (see /health)", e)
        launcher = self.launcher
        if launcher.config.orphan_sweep_interval and launcher.hub.configured and not binderhub.auth_enabled:
            self.supervisor.run_forever("temporary user sweep",
                                        lambda: launcher.remove_orphans_forever(launcher.config.orphan_sweep_interval))
        if self.warm_pool is not None:
            await self.warm_pool.start()  # after the quota, which counts its servers

    def _register_health_checks(self) -> None:
        if self.settings.BinderHub.use_registry:
            self.health.add("Docker registry", self.images.health, timeout=self.settings.DockerRegistry.timeout + 2)
        if self.settings.BinderHub.hub_url:
            self.health.add("JupyterHub API", self.launcher.health)
        self.health.add("Builder", self.backend.check)
        self.health.add("Pod quota", lambda: self.quota.health(len(self.builds.running)), soft=True, cache_seconds=60)
        if self.warm_pool is not None:
            self.health.add("Warm pool", self.warm_pool.health, soft=True, cache_seconds=5)

    async def close(self) -> None:
        if self.warm_pool is not None:
            await self.warm_pool.close()  # first: removing its servers needs the hub client
        await self.supervisor.close()
        await self.launcher.close()  # ends launches and finishes hub clean-ups, before the hub client closes
        for closer in (self.quota.close, self.images.close, self.backend.close):
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
