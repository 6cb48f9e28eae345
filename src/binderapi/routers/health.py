"""``GET|HEAD /health``: 200 when every hard check passes, else 503."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from ..services import ServicesDep

router = APIRouter(tags=["service"])


class HealthCheckResult(BaseModel):
    model_config = ConfigDict(extra="allow")
    service: str = Field(description="What was checked, e.g. `Docker registry`, `JupyterHub API`.")
    ok: bool


class HealthResponse(BaseModel):
    ok: bool = Field(description="False when any check without `_ignore_failure` failed.")
    checks: list[HealthCheckResult]


#: a healthy service with a registry and a hub (a soft check's failure would not change `ok`)
HEALTH_EXAMPLE = {"ok": True, "checks": [
    {"service": "Docker registry", "ok": True},
    {"service": "JupyterHub API", "ok": True},
    {"service": "Pod quota", "ok": True},
]}


@router.head("/health", include_in_schema=False)
@router.get("/health", response_model=HealthResponse, operation_id="getHealth",
            responses={200: {"content": {"application/json": {"example": HEALTH_EXAMPLE}}},
                       503: {"model": HealthResponse, "description": "A check failed (or `service` names none)."}})
async def health(request: Request, services: ServicesDep,
                 service: Annotated[list[str] | None, Query(
                     description="Run only the checks of these services (repeatable), e.g. `Build store`: a "
                     "readiness probe gated on what replicas share, not on the hub. A name no check has fails (503), so a typo shows.",
                     examples=[["Build store"]])] = None) -> Response:
    """Every check (or the named ones), each cached briefly; HEAD answers the status alone."""
    ok, checks = await services.health.run(set(service) if service else None)
    status = 200 if ok else 503
    if request.method == "HEAD":
        return Response(status_code=status)
    body: dict[str, Any] = {"ok": ok, "checks": checks}
    return JSONResponse(body, status_code=status)
