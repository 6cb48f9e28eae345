"""``GET /versions``: what runs here, as BinderHub reports it (federation redirectors compare it)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from .. import __version__
from ..services import ServicesDep

router = APIRouter(tags=["service"])


class VersionsResponse(BaseModel):
    binderhub: str = Field(description="Version of this service (BinderHub's key, kept for clients).")
    builder_info: dict[str, Any] = Field(description="The build backend, e.g. `{\"build_image\": ...}`.")
    builder: str | None = Field(None, description="Copy of `builder_info.build_image`, for older clients.")
    binderapi: str = Field(description="binderapi's version.")


VERSIONS_EXAMPLE = {"binderhub": "0.1.0", "builder_info": {"build_image": "quay.io/jupyterhub/repo2docker:2024.07.0"},
                    "builder": "quay.io/jupyterhub/repo2docker:2024.07.0", "binderapi": "0.1.0"}


@router.get("/versions", response_model=VersionsResponse, response_model_exclude_none=True, operation_id="getVersions",
            responses={200: {"content": {"application/json": {"example": VERSIONS_EXAMPLE}}}})
async def versions(services: ServicesDep) -> VersionsResponse:
    info = services.builder_info
    return VersionsResponse(binderhub=__version__, builder_info=info, builder=info.get("build_image"), binderapi=__version__)
