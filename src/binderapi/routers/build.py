"""``GET /build/<prefix>/<spec>``: the event stream BinderHub's clients consume.

This router only parses the request and turns the pipeline's events into SSE frames. Errors are
HTTP 200 streams ending with a ``failed`` event, because EventSource clients cannot read an HTTP
error status; bans (403) and the rate limit (429) carry their status too, as in BinderHub.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any
from urllib.parse import unquote

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from ..auth import HubUser
from ..errors import BinderError, BuildError, RateLimitExceededError
from ..events import Event, FailedEvent, encode, line, stream_event_schemas
from ..pipeline import BuildPipeline, BuildRequest
from ..services import Services, ServicesDep
from ..streaming import EventStreamResponse, FrameStream
from ..tokens import request_origin

log = logging.getLogger(__name__)
router = APIRouter(tags=["build"])

#: the event models, added to the OpenAPI components by the app so the references below resolve
EVENT_SCHEMAS = stream_event_schemas("#/components/schemas/{model}")
#: one server-sent event as OpenAPI 3.2 describes them (``data``, ``event``, ``id``, ``retry``):
#: a ``data`` field holding one event as JSON, and nothing else (no ``event:``, ``id:`` or ``retry:``)
EVENT_STREAM_SCHEMA = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {"type": "string", "contentMediaType": "application/json",
                 "contentSchema": {"$ref": "#/components/schemas/BuildStreamEvent"}},
        "event": {"const": "message", "description": "No `event:` field is sent: every frame is a `message`."},
    },
    "additionalProperties": False,
}

#: ``{spec}`` is documented here rather than as an argument of the route: the spec is read from the
#: raw path (:func:`raw_spec`), where a ``%2F`` survives, never from FastAPI's decoded value
SPEC_DESCRIPTION = ("The provider's spec, as in a `/build` URL (e.g. `<owner>/<repo>/<ref>` for `gh`), taken as sent. "
                    "If the provider refuses that form and it holds no literal `/` (`org%2Frepo%2Fref`, as generated "
                    "clients encode a path parameter), it is percent-decoded once; never twice.")
SPEC_PARAMETER = {
    "name": "spec", "in": "path", "required": True, "description": SPEC_DESCRIPTION,
    "schema": {"type": "string", "title": "Spec", "description": SPEC_DESCRIPTION,
               "examples": ["binder-examples/requirements/HEAD"]},
}
#: ``build_only`` is documented here as the boolean it means, and parsed as BinderHub parses it
#: (:func:`build_response`): ``true`` in any case turns it on, any other value is false, never an error
BUILD_ONLY_PARAMETER = {
    "name": "build_only", "in": "query", "required": False,
    "description": "`true`: build and push only, no launch (needs `enable_api_only_mode`). As in BinderHub, `true` "
    "in any case turns it on and any other value means false.",
    "schema": {"type": "boolean", "default": False, "title": "Build Only", "examples": [True]},
}
#: ``Accept`` as a documented header, so a generated client sends it (OpenAPI 3.1 says tools "SHALL
#: ignore" an ``Accept`` parameter; those that do lose nothing, the description says it all)
ACCEPT_PARAMETER = {
    "name": "Accept", "in": "header", "required": True,
    "description": "Must list `text/event-stream` (e.g. `text/event-stream` or `text/event-stream, */*`): without it "
    "the answer is one `failed` event with `status_code` 400 and nothing is built, so a crawler or a followed link "
    "never starts a build. API clients may omit it when they send `build_only=true` and a token in the "
    "`Authorization` header (docs/events.md).",
    "schema": {"type": "string", "pattern": "text/event-stream", "default": "text/event-stream",
               "examples": ["text/event-stream"]},
}
#: the credentials ``/build`` reads (:func:`check_policy`), by the names ``security`` refers to
BUILD_TOKEN, HUB_TOKEN, HUB_TOKEN_QUERY, HUB_LOGIN = "buildToken", "hubToken", "hubTokenQuery", "hubLogin"
#: each one alone, or none: anonymous callers are valid outside auth mode, and every refusal is a
#: ``failed`` event rather than an HTTP error, so no credential is ever strictly required
BUILD_SECURITY: list[dict[str, list[str]]] = [{}, *({name: []} for name in (BUILD_TOKEN, HUB_TOKEN, HUB_TOKEN_QUERY, HUB_LOGIN))]


def security_schemes(cookie_name: str) -> dict[str, dict[str, str]]:
    """The OpenAPI ``securitySchemes`` of ``/build``; the login cookie is named by ``HubOAuth.cookie_name``."""
    return {
        BUILD_TOKEN: {"type": "apiKey", "in": "query", "name": "build_token",
                      "description": "A build token, as BinderHub mints them for its pages (`BinderHub.build_token_secret`): "
                      "bound to the spec and the page's origin; it exempts the request from the rate limit."},
        HUB_TOKEN: {"type": "http", "scheme": "bearer",
                    "description": "Auth mode (`BinderHub.auth_enabled`): a JupyterHub API token of a user or service with "
                    "access to this service, as `Authorization: Bearer <token>` (`token <token>` works too). A service "
                    "token may only build (`build_only=true`). Outside auth mode the header is not checked; it only marks "
                    "an API client that may omit `Accept`."},
        HUB_TOKEN_QUERY: {"type": "apiKey", "in": "query", "name": "token",
                          "description": "Auth mode: the same JupyterHub API token as a `?token=` query parameter."},
        HUB_LOGIN: {"type": "apiKey", "in": "cookie", "name": cookie_name,
                    "description": "Auth mode: the signed login cookie `/oauth_login` sets, accepted from pages of this "
                    "site only (a browser's `Sec-Fetch-Site` or `Origin` must say so)."},
    }


#: a ``build_only`` build as the stream sends it (docs/events.md has the whole list of events)
STREAM_EXAMPLE = "".join(f"data: {event}\n\n" for event in (
    '{"phase":"waiting","message":"Waiting for build to start...\\n"}',
    '{"message":"Picked Git content provider.\\n","phase":"log"}',
    '{"message":"Step 1/9 : FROM binderapi/singleuser:latest\\n","phase":"building"}',
    '{"phase":"ready","message":"Done! Image built\\n","imageName":"127.0.0.1:5000/binder-demo-2drepo-1a2b3c:0123abcd"}',
))


def accepts_event_stream(accept: str | None) -> bool:
    """True when ``text/event-stream`` is among the accepted media types (with q > 0). A list such as
    ``text/event-stream, */*`` is accepted; ``*/*`` alone is not, so a browser tab or a bare curl
    learns it is talking to an event stream."""
    for item in (accept or "").split(","):
        media, *params = (part.strip() for part in item.split(";"))
        if media.lower() != "text/event-stream":
            continue
        q = next((p.split("=", 1)[1] for p in params if p.lower().startswith("q=")), "1")
        try:
            if float(q) > 0:
                return True
        except ValueError:
            return True
    return False


def streams_without_accept(request: Request, build_only: bool) -> bool:
    """API clients that send no ``Accept: text/event-stream`` (tljh-repo2docker's BinderHub backend,
    httpx's default ``*/*``) still get the stream for a ``build_only`` request carrying a token in
    its ``Authorization`` header: a crawler or a link followed in a browser sends no such header,
    so a bare GET still never starts a build. In auth mode the token is checked as always."""
    return build_only and bool(request.headers.get("authorization", "").strip())


def raw_spec(request: Request, prefix: str, base_url: str, route: str = "build/") -> str:
    """The spec as sent, from the raw path of ``<base_url><route><prefix>/<spec>``: ``%2F`` in
    ``gl``/``git``/``ckan`` specs survives (then :meth:`ProviderRegistry.path_spec` reads it). The
    base URL and the route take as many segments of the raw path as of the decoded one (a base URL
    may itself hold ``/build/``, e.g. a JupyterHub service named ``build``)."""
    skip = (base_url + route).count("/")
    raw = (request.scope.get("raw_path") or request.url.path.encode()).decode("utf-8", "replace")
    raw_prefix, _, spec = raw.split("/", skip)[-1].partition("/")
    if unquote(raw_prefix) != prefix:  # should not happen; fall back to the decoded form
        return request.url.path.split("/", skip)[-1].partition("/")[2]
    return spec


def failure_response(message: str, status_code: int | None = None, headers: dict[str, str] | None = None,
                     http_status: int = 200) -> Response:
    """A complete stream of one ``failed`` event, for refusals before any work starts. HTTP 200 is
    what an EventSource reads; the rate limit passes its 429 (as BinderHub answers it)."""
    body = encode(FailedEvent(message=line(message), status_code=status_code))
    return Response(body, status_code=http_status, media_type="text/event-stream",
                    headers={"cache-control": "no-cache", **(headers or {})})


async def check_policy(request: Request, services: Services, audience: str, build_token: str) -> tuple[HubUser | None, bool, dict[str, str]]:
    """Auth, build token, rate limit, in BinderHub's order. Returns the hub user or service (auth
    mode), whether a valid build token came, and the rate-limit headers; raises :class:`BinderError`."""
    settings = services.settings.BinderHub
    user = None
    if settings.auth_enabled:
        user = await services.hub_auth.user_for_request(request)
    has_token = False
    if build_token:
        origin = request_origin(request.headers.get("origin"), request.headers.get("host"))
        services.build_tokens.verify(build_token, audience, origin)
        has_token = True
    headers: dict[str, str] = {}
    limiter = services.rate_limiter
    if limiter.enabled and not has_token and user is None:
        state = await limiter.hit(request.state.client_ip)  # the only store round trip of a cached /build
        headers = state.headers()
        if state.exceeded:
            retry_after = state.retry_after()
            error = RateLimitExceededError(f"Rate limit exceeded. Try again in {retry_after} seconds.")
            error.headers = {**headers, "retry-after": str(retry_after)}  # type: ignore[attr-defined]
            raise error
    return user, has_token, headers


#: ``Last-Event-ID`` of a classic stream: ``<build id>.<seq>`` during the build, ``<build id>.done`` after it
_LAST_EVENT_ID = re.compile(r"([0-9a-f]{22})\.(done|[0-9]{1,12})")


def parse_last_event_id(value: str | None) -> tuple[str, int | None] | None:
    """``(build id, seq)`` of a ``Last-Event-ID`` this service sent (seq None: ``.done``); None for
    anything else, which is ignored (a normal request)."""
    match = _LAST_EVENT_ID.fullmatch((value or "").strip())
    if match is None:
        return None
    build_id, seq = match.groups()
    return build_id, None if seq == "done" else int(seq)


def log_incident(context: str) -> str:
    """Log the exception being handled under a fresh incident id; the message a user sees."""
    incident = uuid.uuid4().hex[:12]
    log.exception("Unexpected error in %s (incident %s)", context, incident)
    return f"Internal Server Error (incident {incident}); the operator's log has the details."


async def frames(events: AsyncIterator[Event | bytes], context: str) -> AsyncIterator[bytes]:
    """Encode events; any error ends the stream with exactly one ``failed`` event."""
    try:
        async for event in events:
            frame = event if isinstance(event, bytes) else encode(event)
            yield frame
            if isinstance(event, FailedEvent):
                return
    except BuildError as e:  # a build's failure names the build
        yield encode(FailedEvent(message=line(e.message), status_code=e.status_code,
                                 **({"build_id": e.build_id} if e.build_id else {})))
    except BinderError as e:
        yield encode(FailedEvent(message=line(e.message), status_code=e.status_code))
    except Exception:
        yield encode(FailedEvent(message=line(log_incident(context)), status_code=500))


@router.get(
    "/build/{prefix}/{spec:path}",
    operation_id="streamBuild",
    response_class=Response,
    summary="Resolve, build and launch a repository, streaming progress as server-sent events",
    responses={200: {
        "description": "A `text/event-stream` of `data: <json>` frames (see the event schemas) with "
        "`:keepalive` comments. Errors are also HTTP 200 streams ending with a `failed` event.",
        "content": {"text/event-stream": {"schema": EVENT_STREAM_SCHEMA, "example": STREAM_EXAMPLE}},
    }, 403: {
        "description": "A banned client network: the same stream of one `failed` event (`status_code` 403).",
        "content": {"text/event-stream": {"schema": EVENT_STREAM_SCHEMA}},
    }, 429: {
        "description": "The rate limit: one `failed` event (`status_code` 429), with `Retry-After` and the "
        "`x-ratelimit-*` headers.",
        "content": {"text/event-stream": {"schema": EVENT_STREAM_SCHEMA}},
    }},
    openapi_extra={"parameters": [SPEC_PARAMETER, BUILD_ONLY_PARAMETER, ACCEPT_PARAMETER], "security": BUILD_SECURITY},
)
async def build(request: Request,
                prefix: Annotated[str, Path(description="The provider, e.g. `gh`, `gl`, `git`, `zenodo`.", examples=["gh"])],
                services: ServicesDep,
                build_token: Annotated[str, Query(description="A build token, as BinderHub mints them for its pages.")] = "") -> Any:
    # Served by DirectBuildRoute ahead of FastAPI; this route documents it and answers the same.
    return await build_response(request, services, prefix, request.query_params.get("build_only", ""), build_token)


async def build_response(request: Request, services: Services, prefix: str, build_only: str, build_token: str) -> Response:
    """The whole answer to ``GET /build/<prefix>/<spec>`` (the spec is read from the raw path)."""
    settings = services.settings.BinderHub
    wants_build_only = build_only.lower() == "true"
    if not accepts_event_stream(request.headers.get("accept")) and not streams_without_accept(request, wants_build_only):
        return failure_response("Missing Accept header: text/event-stream (API clients may instead send "
                                "build_only=true with a token in the Authorization header)", 400)
    if wants_build_only and not settings.enable_api_only_mode:
        return failure_response(
            "Building but not launching is not permitted when the API only mode was not enabled by "
            "setting `enable_api_only_mode` to True. ", 400)
    spec = services.providers.path_spec(prefix, raw_spec(request, prefix, settings.base_url))
    try:
        user, has_build_token, headers = await check_policy(request, services, f"{prefix}/{spec}", build_token)
    except BinderError as e:
        # BinderHub's 429 is an HTTP error: @jupyterhub/binderhub-client and raise_for_status see it
        http_status = 429 if isinstance(e, RateLimitExceededError) else 200
        return failure_response(e.message, e.status_code, getattr(e, "headers", None), http_status)
    if user is not None and user.kind == "service" and not wants_build_only:
        return failure_response(f"The token of JupyterHub service {user.name!r} may only build (build_only=true): "
                                "servers are launched for users, with a user's token or login", 403)
    resume = parse_last_event_id(request.headers.get("last-event-id"))
    if resume is not None and resume[1] is None:
        return failure_response("This launch already ran (its stream ended after the build): open the link again "
                                "to launch again.", 409, headers)
    spec = spec.rstrip("/")
    host = request.url.netloc  # the Host header, checked by HostHeaderMiddleware, or our own address
    build_request = BuildRequest(
        prefix=prefix,
        spec=spec,
        build_only=wants_build_only,
        client_ip=request.state.client_ip,
        launch_host=settings.badge_base_url or f"{request.url.scheme}://{host}{settings.base_url}",
        origin=settings.normalized_origin or host,
        request_origin=request.headers.get("origin") or request.headers.get("sec-fetch-site") or "",
        build_token=has_build_token,
        username=user.name if user is not None and user.kind == "user" else None,
        resume_build=resume[0] if resume is not None else "",
        resume_seq=(resume[1] or 0) if resume is not None else 0,
        joined=asyncio.get_running_loop().create_future(),
    )
    stream = FrameStream(frames(BuildPipeline(services).run(build_request), f"/build/{prefix}/{spec}"))
    headers = {"cache-control": "no-cache", **headers}
    quick = await stream.finished_quickly()
    joined = build_request.joined
    if not quick and joined is not None and not joined.done():
        # the build's id goes in a header: wait (a little) for the request to join its build
        await stream.wait_for(joined, settings.keepalive_interval)
    build_request.joined = None  # not kept for the stream's life
    if joined is not None and joined.done() and joined.result():
        headers["x-build-id"] = joined.result()
    del joined, build_request
    if quick:
        return Response(stream.body(), media_type="text/event-stream", headers=headers)
    return EventStreamResponse(stream, services.keepalives, headers)


class DirectBuildRoute:
    """Serves ``GET <base_url>build/<prefix>/<spec>`` from the ASGI stack, ahead of FastAPI's router.

    A stream can stay open for an hour while its build runs, and FastAPI's per-request machinery
    (routing frames, dependency solving, exit stacks, the exception middleware, per-request HTTP
    metrics) would be held all that time: about 11 KB a stream, 110 MB at 10,000 streams, and a
    quarter of the CPU of a cached answer. The FastAPI route above stays for the OpenAPI schema.
    It sits inside the client-address and CORS middlewares, so bans and CORS apply as everywhere.
    """

    def __init__(self, app: Any, *, base_url: str) -> None:
        self.app = app
        self.path = base_url + "build/"

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or not scope["path"].startswith(self.path):
            return await self.app(scope, receive, send)
        prefix, slash, _ = scope["path"][len(self.path):].partition("/")
        if not prefix or not slash:  # the FastAPI route would not match either: its 404 or redirect
            return await self.app(scope, receive, send)
        request = Request(scope, receive)
        try:
            response = await build_response(request, scope["app"].state.services, prefix,
                                            request.query_params.get("build_only", ""),
                                            request.query_params.get("build_token", ""))
        except Exception:
            response = failure_response(log_incident(scope["path"]), 500)
        del request  # not kept (parsed headers, query) for the hour a stream may last
        await response(scope, receive, send)
