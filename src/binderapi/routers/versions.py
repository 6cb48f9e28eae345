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


@router.get("/versions", response_model=VersionsResponse, response_model_exclude_none=True)
async def versions(services: ServicesDep) -> VersionsResponse:
    info = services.builder_info
    return VersionsResponse(binderhub=__version__, builder_info=info, builder=info.get("build_image"), binderapi=__version__)
