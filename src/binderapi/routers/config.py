"""What an external frontend needs to render itself: ``/_config`` and BinderHub's
``/api/repoproviders``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from ..services import ServicesDep

router = APIRouter(tags=["frontend"])


class ProviderDisplayConfig(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str = Field(description="The spec prefix, e.g. `gh`.")
    displayName: str
    spec: dict[str, Any] = Field(default_factory=dict)
    detect: dict[str, Any] | None = None
    repo: dict[str, Any] = Field(default_factory=dict)
    ref: dict[str, Any] = Field(default_factory=dict)


class FrontendConfig(BaseModel):
    base_url: str
    badge_base_url: str
    banner_message: str
    about_message: str
    repo_providers: list[ProviderDisplayConfig]


@router.get("/_config", response_model=FrontendConfig, operation_id="getConfig")
async def frontend_config(services: ServicesDep) -> FrontendConfig:
    binderhub = services.settings.BinderHub
    return FrontendConfig(
        base_url=binderhub.base_url,
        badge_base_url=binderhub.badge_base_url,
        banner_message=binderhub.banner_message,
        about_message=binderhub.about_message,
        repo_providers=services.providers.display_configs(),
    )


@router.get("/api/repoproviders", response_model=list[ProviderDisplayConfig], response_model_exclude_none=True,
            operation_id="listRepoProviders")
async def repo_providers(services: ServicesDep) -> list[dict[str, Any]]:
    return services.providers.display_configs()
