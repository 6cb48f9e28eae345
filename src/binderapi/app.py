"""The application factory: routes under ``base_url``, middleware, and start-up/shutdown."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_fastapi_instrumentator import Instrumentator
from starlette.exceptions import HTTPException as StarletteHTTPException
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from . import __version__, problems
from .middleware import ClientAddressMiddleware, CORSMiddleware, HostHeaderMiddleware
from .netutil import NetworkSet
from .routers import api_v1, build, config, health, oauth, versions
from .services import Services
from .settings import Settings

log = logging.getLogger(__name__)

DESCRIPTION = """BinderHub's API-only core: resolve a repository spec, build it with repo2docker,
push it, launch it on JupyterHub, and stream every step as server-sent events. Existing BinderHub
clients work unchanged."""

#: every tag the operations use, described (an SDK generator groups its modules by them)
TAGS = [
    {"name": "build", "description": "BinderHub's `/build` event stream: resolve a repository spec, build its image "
     "and launch it (or only build it), with progress as server-sent events."},
    {"name": "service", "description": "Operating the service: health checks, versions and Prometheus metrics."},
    {"name": "frontend", "description": "What an external frontend needs to render itself: providers, banner and "
     "about texts."},
    {"name": "auth", "description": "Browser logins through JupyterHub's OAuth, in auth mode (`BinderHub.auth_enabled`)."},
    {"name": "builds", "description": "Builds as resources (`/api/v1`): start one, read it, list the history, follow its "
     "events (resumable with `Last-Event-ID`) and its log, cancel it. Errors are RFC 9457 problem details "
     "(`application/problem+json`)."},
    {"name": "images", "description": "Whether a spec's image exists (`/api/v1`), without building anything."},
]


def create_app(settings: Settings, services: Services | None = None) -> FastAPI:
    """The ASGI app. Given ``services``, the caller owns them (the CLI starts them first so a
    start-up problem is one clear message); otherwise the app starts and closes its own."""
    binderhub = settings.BinderHub
    base = binderhub.base_url

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if services is not None:
            app.state.services = services
            yield
            return
        for notice in settings.warnings:
            log.warning(notice)
        app.state.services = await Services.start(settings)
        try:
            yield
        finally:
            await app.state.services.close()

    app = FastAPI(
        title="binderapi",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=TAGS,
        docs_url=base + "docs",
        redoc_url=None,
        openapi_url=base + "openapi.json",
    )
    app.state.settings = settings
    prefix = base.rstrip("/")
    for module in (build, health, versions, config, oauth, api_v1):
        app.include_router(module.router, prefix=prefix)
    api_v1_path = base + "api/v1/"

    @app.exception_handler(StarletteHTTPException)
    async def json_errors(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Every unknown path or method is a JSON answer, never an HTML page; under ``/api/v1`` a
        problem (the routes themselves answer theirs, :class:`problems.ProblemRoute`)."""
        if request.url.path.startswith(api_v1_path) or request.url.path == api_v1_path[:-1]:
            problem = problems.ProblemError(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))
            return problems.problem_response(problem, request.url.path)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    default_openapi = app.openapi

    def openapi() -> dict:
        """FastAPI's schema plus the event models the `/build` stream is made of and the credentials
        it reads. Paths are relative to the one server, ``base_url`` (without its trailing slash, as
        tools join it with paths starting with ``/``), so a client given a host finds every route."""
        if app.openapi_schema is None:
            schema = default_openapi()
            components = schema.setdefault("components", {})
            components.setdefault("schemas", {}).update({**build.EVENT_SCHEMAS, **problems.problem_schemas()})
            components["securitySchemes"] = {**build.security_schemes(settings.HubOAuth.cookie_name),
                                             **api_v1.SECURITY_SCHEMES}
            schema["servers"] = [{"url": prefix or "/"}]
            schema["paths"] = {path.removeprefix(prefix): item for path, item in schema["paths"].items()}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    Instrumentator(excluded_handlers=[base + "metrics"], should_group_status_codes=False).instrument(app).expose(
        app, endpoint=base + "metrics", include_in_schema=True, tags=["service"], summary="Prometheus metrics",
        operation_id="getMetrics",
        response_class=PlainTextResponse,  # documents text/plain; the handler sets the exact content type
        responses={200: {"description": "The Prometheus text exposition format, BinderHub's metric families included."}})

    app.add_middleware(build.DirectBuildRoute, base_url=base)  # inside the two below, outside the metrics
    app.add_middleware(ClientAddressMiddleware, base_url=base, banned=NetworkSet(binderhub.ban_networks))
    app.add_middleware(HostHeaderMiddleware, base_url=base, allowed_hosts=binderhub.allowed_hosts)
    # X-Forwarded-For/-Proto believed only from trusted_proxies (an empty list trusts no one); the
    # client is the right-most hop that is not a trusted proxy, never a hop the client wrote itself
    app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=[str(n) for n in binderhub.trusted_proxies])
    app.add_middleware(CORSMiddleware, allow_origin=binderhub.cors_allow_origin, base_url=base)
    return app
