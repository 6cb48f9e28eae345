"""Everything a request needs, built once from settings at start-up and closed at shutdown.

Routers receive it through :func:`get_services`; nothing is read from the environment or created
lazily on the request path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Annotated, Any

import httpx
from fastapi import Depends, Request

from . import __version__
from .health import HealthChecks
from .providers import ProviderContext, ProviderRegistry
from .settings import Settings
from .supervisor import Supervisor

log = logging.getLogger(__name__)

USER_AGENT = f"binderapi/{__version__}"


@dataclass
class Services:
    settings: Settings
    http: httpx.AsyncClient
    providers: ProviderRegistry
    health: HealthChecks
    supervisor: Supervisor
    builder_info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    async def start(cls, settings: Settings) -> Services:
        http = httpx.AsyncClient(
            headers={"User-Agent": USER_AGENT},
            timeout=httpx.Timeout(settings.RepoProvider.request_timeout, connect=5.0),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            follow_redirects=False,
        )
        services = cls(
            settings=settings,
            http=http,
            providers=ProviderRegistry(settings, ProviderContext(http=http)),
            health=HealthChecks(),
            supervisor=Supervisor(),
        )
        return services

    async def close(self) -> None:
        await self.supervisor.close()
        await self.http.aclose()


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]
