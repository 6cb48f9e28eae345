"""``/api/v1``: builds as resources (create, read, list, follow, cancel) and image status.

A build here is what :class:`~binderapi.builds.BuildManager` runs for the classic ``/build`` too:
the same deduplication, queue and backend, with an id, a record in the build store, its events and
its log. This router only checks who may do what, resolves specs (``BuildPipeline.resolve``) and
shapes the answers; every error is an RFC 9457 problem (:mod:`binderapi.problems`).

Policy, as for ``/build``: creating a build goes through ``check_policy`` (auth mode, build token,
rate limit); reading needs what building the spec needs minus the rate limit (a login in auth
mode, a spec no ban refuses). ``force`` and cancelling need operator rights
(``BinderHub.operator_tokens`` or a JupyterHub admin). Client-network bans apply to every path
(``ClientAddressMiddleware``).
"""

from __future__ import annotations

import json
import logging
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Path, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ..auth import is_operator, operator_token_matches
from ..errors import ForbiddenError, SpecError
from ..pipeline import BuildPipeline, BuildRequest, ResolvedRepo
from ..problems import ProblemError, ProblemRoute, problem_responses, store_unavailable
from ..services import Services, ServicesDep
from ..store.base import (
    BuildFilter,
    BuildRecord,
    BuildState,
    BuildStore,
    StoredEvent,
    StoreError,
    new_build_id,
)
from ..streaming import EventStreamResponse, FrameStream
from .build import (
    BUILD_TOKEN,
    EVENT_STREAM_SCHEMA,
    HUB_LOGIN,
    HUB_TOKEN,
    HUB_TOKEN_QUERY,
    SPEC_DESCRIPTION,
    check_policy,
    raw_spec,
)

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", route_class=ProblemRoute)

#: the bearer scheme of ``BinderHub.operator_tokens``
OPERATOR_TOKEN = "operatorToken"
SECURITY_SCHEMES = {
    OPERATOR_TOKEN: {"type": "http", "scheme": "bearer",
                     "description": "Operator rights on `/api/v1` (cancel, `force`): one of `BinderHub.operator_tokens` as "
                     "`Authorization: Bearer <token>`. In auth mode a JupyterHub admin's token or login has them too."},
}
#: who may read: anyone outside auth mode; a hub login (or an operator token) in auth mode
READ_SECURITY: list[dict[str, list[str]]] = [{}, *({name: []} for name in (HUB_TOKEN, HUB_TOKEN_QUERY, HUB_LOGIN, OPERATOR_TOKEN))]
CREATE_SECURITY: list[dict[str, list[str]]] = [*READ_SECURITY, {BUILD_TOKEN: []}]
#: cancelling is never anonymous
OPERATOR_SECURITY: list[dict[str, list[str]]] = [{name: []} for name in (OPERATOR_TOKEN, HUB_TOKEN, HUB_TOKEN_QUERY, HUB_LOGIN)]

#: a build id as :func:`~binderapi.store.base.new_build_id` makes them
BUILD_ID_EXAMPLE = "0193f2a1c0de1a2b3c4d5e"
PAGE_LIMIT = 100
#: the largest event id a client may send (far past any build's events; keeps the number a 64-bit integer)
MAX_EVENT_ID = 1 << 62


# -- the resource models ----------------------------------------------------------------------------


class Links(BaseModel):
    """Where the build's other views are (absolute paths on this service)."""

    self: str = Field(description="This build.")
    events: str = Field(description="Its event stream (`text/event-stream`).")
    logs: str = Field(description="Its builder output (`text/plain`).")


class BuildResource(BaseModel):
    """One build of one image: queued, building, then built, failed or cancelled."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": BUILD_ID_EXAMPLE, "spec": "gh/binder-examples/requirements/HEAD", "provider": "GitHub",
        "repo_url": "https://github.com/binder-examples/requirements",
        "resolved_ref": "a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5",
        "image_name": "127.0.0.1:5000/binder-binder-2dexamples-2drequirements-55ab5c:a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5",
        "state": "built", "queue_position": None, "cached": False, "message": "",
        "created_at": "2026-12-01T03:00:00Z", "started_at": "2026-12-01T03:00:01Z", "finished_at": "2026-12-01T03:02:10Z",
        "log_bytes": 18234,
        "links": {"self": f"/api/v1/builds/{BUILD_ID_EXAMPLE}", "events": f"/api/v1/builds/{BUILD_ID_EXAMPLE}/events",
                  "logs": f"/api/v1/builds/{BUILD_ID_EXAMPLE}/logs"},
    }]})

    id: str = Field(description="The build's id: ids sort by creation time.")
    spec: str = Field(description="`<prefix>/<spec>`, as in a `/build` URL.")
    provider: str = Field(description="The repository provider's name, e.g. `GitHub`.")
    repo_url: str
    resolved_ref: str = Field(description="The immutable ref (commit, DOI version...) the spec resolved to.")
    image_name: str
    state: BuildState = Field(description="`queued` and `building` may change; `built`, `failed` and `cancelled` are final.")
    queue_position: int | None = Field(None, description="1 = next to start, while `queued`; else null.")
    cached: bool = Field(description="The image already existed: nothing was built.")
    message: str = Field(description="Why the build failed or was cancelled; empty otherwise.")
    created_at: datetime
    started_at: datetime | None = Field(None, description="When the builder started; null while queued.")
    finished_at: datetime | None = Field(None, description="When the build ended; null until it does.")
    log_bytes: int = Field(description="Bytes of builder output seen, including any dropped past `BuildStore.max_log_bytes`.")
    links: Links


class BuildList(BaseModel):
    """A page of the build history, newest first. ``next`` is the cursor of the following (older)
    page, given back as ``?cursor=``; null on the last page."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [], "next": None}]})

    items: list[BuildResource]
    next: str | None = Field(None, description="Pass as `cursor` to get the next page; null when there is none.")


class ImageStatus(BaseModel):
    """Whether a spec's image exists, without building anything."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "image_name": "127.0.0.1:5000/binder-binder-2dexamples-2drequirements-55ab5c:a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5",
        "resolved_ref": "a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5", "exists": True, "build_id": None}]})

    image_name: str
    resolved_ref: str
    exists: bool = Field(description="The image is in the registry (or the local engine without a registry).")
    build_id: str | None = Field(None, description="The build of this image running now, if any; else null.")


class CreateBuild(BaseModel):
    """What to build."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"spec": "gh/binder-examples/requirements/HEAD", "force": False},
        {"spec": "git/https%3A%2F%2Fgithub.com%2Fbinder-examples%2Frequirements/HEAD"},
    ]})

    spec: str = Field(min_length=3, max_length=2048, pattern=r"^[^/]+/.*[^/].*$",
                      description="`<prefix>/<spec>`, written exactly as in a `/build` URL (for `git`, the "
                      "percent-encoded repository URL, then the ref).")
    force: bool = Field(False, description="Build again even if the image exists (needs operator rights).")


# -- helpers ----------------------------------------------------------------------------------------


def require_store(services: Services) -> BuildStore:
    """The build store, or a 503 problem: disabled (``BuildStore.enabled``), or not open (yet)."""
    store = services.store
    if store is None:
        raise store_unavailable()
    return store


def resource(record: BuildRecord, base_url: str) -> BuildResource:
    path = f"{base_url}api/v1/builds/{record.id}"
    return BuildResource(
        id=record.id, spec=record.spec, provider=record.provider, repo_url=record.repo_url,
        resolved_ref=record.resolved_ref, image_name=record.image_name, state=record.state,
        queue_position=record.queue_position if record.state == BuildState.queued else None,
        cached=record.cached, message=record.message, created_at=record.created_at, started_at=record.started_at,
        finished_at=record.finished_at, log_bytes=record.log_bytes,
        links=Links(self=path, events=path + "/events", logs=path + "/logs"),
    )


def split_spec(spec: str) -> tuple[str, str]:
    prefix, _, rest = spec.partition("/")
    rest = rest.rstrip("/")
    if not prefix or not rest:
        raise ProblemError(400, f"A spec is <prefix>/<spec>, as in a /build URL (e.g. gh/org/repo/ref), not {spec!r}")
    return prefix, rest


def operator_message(services: Services, action: str) -> str:
    how = "send one of BinderHub.operator_tokens as 'Authorization: Bearer <token>'"
    if services.settings.BinderHub.auth_enabled:
        how += ", or use a JupyterHub admin's token or login"
    return f"{action} needs operator rights: {how}"


async def require_operator(request: Request, services: Services, action: str) -> None:
    binderhub = services.settings.BinderHub
    try:
        allowed = await is_operator(request, binderhub.operator_tokens,
                                    services.hub_auth if binderhub.auth_enabled else None)
    except ForbiddenError:
        allowed = False
    if not allowed:
        raise ProblemError(403, operator_message(services, action))


async def check_reader(request: Request, services: Services) -> bool:
    """Reading needs what building needs, without the rate limit: in auth mode a valid login (or
    an operator token). Whether the caller holds an operator token (bans do not hide from it)."""
    binderhub = services.settings.BinderHub
    operator = operator_token_matches(request.headers.get("authorization"), binderhub.operator_tokens)
    if binderhub.auth_enabled and not operator:
        await services.hub_auth.user_for_request(request)
    return operator


async def readable(request: Request, services: Services, build_id: str) -> BuildRecord:
    """The build, if this caller may read it: also a spec no ``banned_specs`` refuses now."""
    operator = await check_reader(request, services)
    record = await find(services, build_id)
    if not operator and spec_banned(services, record.spec):
        raise ProblemError(403, f"Sorry, {record.spec} is not allowed. Please contact admins for more info!")
    return record


def spec_banned(services: Services, spec: str) -> bool:
    prefix, _, rest = spec.partition("/")
    try:
        return services.providers.create(prefix, rest).is_banned()
    except SpecError:  # a provider removed since: no ban of its own applies
        return False


async def find(services: Services, build_id: str) -> BuildRecord:
    require_store(services)
    record = await services.builds.record(build_id)
    if record is None:
        raise ProblemError(404, f"No build {build_id!r}: it never existed, or retention removed it")
    return record


def build_request(request: Request, services: Services, prefix: str, spec: str, *, build_token: bool = False,
                  username: str | None = None) -> BuildRequest:
    """The pipeline's request for a build without a launch, as ``/build?build_only=true`` makes it."""
    settings = services.settings.BinderHub
    host = request.url.netloc
    return BuildRequest(
        prefix=prefix, spec=spec, build_only=True, client_ip=request.state.client_ip,
        launch_host=settings.badge_base_url or f"{request.url.scheme}://{host}{settings.base_url}",
        origin=settings.normalized_origin or host,
        request_origin=request.headers.get("origin") or request.headers.get("sec-fetch-site") or "",
        build_token=build_token, username=username,
    )


def draft_record(repo: ResolvedRepo, prefix: str, spec: str, **fields: Any) -> BuildRecord:
    return BuildRecord(id=new_build_id(), spec=f"{prefix}/{spec}", provider=repo.provider.name, repo_url=repo.repo_url,
                       resolved_ref=repo.ref, image_name=repo.image_name, build_name=repo.build_name, **fields)


class CachedRecords:
    """The cached record answering ``POST /api/v1/builds`` for each image, remembered in this
    process (the least recently used dropped past ``size``), so a cached POST after the first
    costs no store round trip. The store stays the source of truth: such a record never changes,
    and only the retention sweep deletes it, at the earliest ``retention_days`` after it was made,
    so one that old is read from the store again (gone: a new one is made)."""

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self.records: OrderedDict[str, BuildRecord] = OrderedDict()

    def get(self, image_name: str, retention_days: float) -> BuildRecord | None:
        record = self.records.get(image_name)
        if record is None:
            return None
        if retention_days > 0 and record.created_at <= datetime.now(UTC) - timedelta(days=retention_days):
            del self.records[image_name]  # the sweep may have deleted it: ask the store
            return None
        self.records.move_to_end(image_name)
        return record

    def put(self, record: BuildRecord) -> None:
        self.records[record.image_name] = record
        self.records.move_to_end(record.image_name)
        while len(self.records) > self.size:
            self.records.popitem(last=False)


#: one memo per store object (a store opened again, or another app's in tests, starts empty)
_CACHED_RECORDS: weakref.WeakKeyDictionary[BuildStore, CachedRecords] = weakref.WeakKeyDictionary()


async def cached_record(store: BuildStore, repo: ResolvedRepo, prefix: str, spec: str,
                        retention_days: float = 0) -> BuildRecord:
    """The record answering for an image that exists: the last one made for it, else a new one
    (``built``, ``cached``) whose event stream is the one ``ready`` event. Remembered per image
    (:class:`CachedRecords`): one SELECT the first time in this process, writes only if none was."""
    memo = _CACHED_RECORDS.setdefault(store, CachedRecords())
    if (record := memo.get(repo.image_name, retention_days)) is not None:
        return record
    record = await store.latest_for_image(repo.image_name, cached=True)
    if record is not None:
        memo.put(record)
        return record
    record = draft_record(repo, prefix, spec, state=BuildState.built, cached=True)
    record.started_at = record.finished_at = record.created_at
    ready = {"phase": "ready", "message": "Done! Found built image\n", "imageName": repo.image_name,
             "build_id": record.id}
    await store.save([record])
    await store.append(record.id, [StoredEvent(1, json.dumps(ready, separators=(",", ":")))])
    memo.put(record)
    return record


def last_event_id(header: str | None, query: int | None) -> int:
    """Where to resume: ``?last_event_id=`` or the ``Last-Event-ID`` header (an integer, or the
    classic stream's ``<build_id>.<seq>``); anything else starts from the beginning."""
    if query is not None:
        return query
    text = (header or "").strip().rpartition(".")[2]
    return int(text) if text.isdigit() and len(text) < 19 else 0


# -- routes -----------------------------------------------------------------------------------------

EVENTS_EXAMPLE = "".join(f"id: {seq}\ndata: {event}\n\n" for seq, event in enumerate((
    '{"phase":"waiting","message":"Waiting for build to start...\\n","build_id":"0193f2a1c0de1a2b3c4d5e"}',
    '{"phase":"building","message":"Step 1/9 : FROM binderapi/singleuser:latest\\n","build_id":"0193f2a1c0de1a2b3c4d5e"}',
    '{"phase":"ready","message":"Done! Image built\\n","imageName":"127.0.0.1:5000/binder-demo-2drepo-1a2b3c:0123abcd",'
    '"build_id":"0193f2a1c0de1a2b3c4d5e"}',
), start=1))
BUILD_ID_PATH = Path(description="The build's id.", examples=[BUILD_ID_EXAMPLE], max_length=64)


@router.post(
    "/builds", operation_id="createBuild", tags=["builds"], status_code=201, response_model=BuildResource,
    summary="Build a spec's image (or find it built)",
    description="Resolves the spec and names its image. **201** with `Location`: a build started. **200**: the "
    "image is being built already (that build), or exists (a `built` resource with `cached: true`; nothing is "
    "built). The policy of `/build` applies (bans, build tokens, auth mode, the rate limit), and building without "
    "a launch must be allowed (`BinderHub.enable_api_only_mode`). `force: true` builds again even if the image "
    "exists, with operator rights.",
    responses={
        200: {"description": "The build of this image running now, or a cached one: the image exists.",
              "model": BuildResource},
        201: {"description": "A build started.",
              "headers": {"Location": {"description": "The new build's path.", "schema": {"type": "string"}}}},
        **problem_responses(400, 403, 404, 422, 429, 500, 502, 503),
    },
    openapi_extra={"security": CREATE_SECURITY},
)
async def create_build(
    request: Request, services: ServicesDep,
    body: Annotated[CreateBuild, Body(openapi_examples={
        "github": {"summary": "A GitHub repository at HEAD", "value": {"spec": "gh/binder-examples/requirements/HEAD"}},
        "git": {"summary": "Any git URL (percent-encoded) and a ref",
                "value": {"spec": "git/https%3A%2F%2Fgithub.com%2Fbinder-examples%2Frequirements/HEAD"}},
        "force": {"summary": "Rebuild an existing image (operator)", "value": {"spec": "gh/org/repo/main", "force": True}},
    })],
    build_token: Annotated[str, Query(description="A build token, as BinderHub mints them for its pages.")] = "",
) -> Response:
    settings = services.settings.BinderHub
    prefix, spec = split_spec(body.spec)
    if body.force:
        await require_operator(request, services, "A forced rebuild (force: true)")
    if not settings.enable_api_only_mode:
        raise ProblemError(403, "Building without launching is not permitted: the operator has not enabled "
                           "BinderHub.enable_api_only_mode")
    headers: dict[str, str] = {}
    user, has_token = None, False
    if not operator_token_matches(request.headers.get("authorization"), settings.operator_tokens):
        user, has_token, headers = await check_policy(request, services, f"{prefix}/{spec}", build_token)
    store = require_store(services)
    repo = await BuildPipeline(services).resolve(build_request(
        request, services, prefix, spec, build_token=has_token,
        username=user.name if user is not None and user.kind == "user" else None))
    running = services.builds.running_build(repo.build_name)
    if running is not None:
        return answer(resource(running.record, settings.base_url), 200, headers)
    if not body.force and await services.images.image_exists(repo.image_name):
        record = await cached_record(store, repo, prefix, spec, services.settings.BuildStore.retention_days)
        return answer(resource(record, settings.base_url), 200, headers)
    draft = draft_record(repo, prefix, spec)
    job = await BuildPipeline(services).job(build_request(request, services, prefix, spec, build_token=has_token), repo)
    build = await services.builds.ensure(job, draft)  # the job takes the draft's id (Build)
    created = build.record.id == draft.id
    path = f"{settings.base_url}api/v1/builds/{build.record.id}"
    return answer(resource(build.record, settings.base_url), 201 if created else 200,
                  {**headers, "location": path} if created else headers)


def answer(model: BaseModel, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(model.model_dump_json(), status_code=status, media_type="application/json", headers=headers)


@router.get(
    "/builds", operation_id="listBuilds", tags=["builds"], response_model=BuildList,
    summary="The build history, newest first",
    description="Filters combine. Pagination: at most `limit` items; when there are more, `next` is the cursor "
    "to pass as `cursor` for the next (older) page. Builds of specs a ban refuses are left out.",
    responses={200: {"description": "A page of builds."}, **problem_responses(403, 422, 500, 503)},
    openapi_extra={"security": READ_SECURITY},
)
async def list_builds(
    request: Request, services: ServicesDep,
    state: Annotated[BuildState | None, Query(description="Only builds in this state.")] = None,
    spec: Annotated[str | None, Query(max_length=2048, description="Only builds of this spec, or of specs starting with it "
                                      "(`gh/org/` lists all of an owner's).", examples=["gh/binder-examples/"])] = None,
    image_name: Annotated[str | None, Query(max_length=1024, description="Only builds of this image.")] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_LIMIT, description="Items per page.")] = 50,
    cursor: Annotated[str | None, Query(max_length=64, pattern=r"^[0-9a-f]+$",
                                        description="`next` of the previous page.")] = None,
) -> Response:
    operator = await check_reader(request, services)
    store = require_store(services)
    records = await store.list(BuildFilter(state=state, spec_prefix=spec or None, image_name=image_name or None,
                                           before=cursor, limit=limit + 1))
    page, more = records[:limit], len(records) > limit
    base = services.settings.BinderHub.base_url
    items = []
    for record in page:
        if operator or not spec_banned(services, record.spec):
            live = None if record.state.finished else await services.builds.record(record.id)  # queue position...
            items.append(resource(live or record, base))
    return answer(BuildList(items=items, next=page[-1].id if more and page else None), 200)


@router.get(
    "/builds/{build_id}", operation_id="getBuild", tags=["builds"], response_model=BuildResource,
    summary="A build", responses={200: {"description": "The build, as it is now."}, **problem_responses(403, 404, 422, 500, 503)},
    openapi_extra={"security": READ_SECURITY},
)
async def get_build(request: Request, services: ServicesDep, build_id: Annotated[str, BUILD_ID_PATH]) -> Response:
    record = await readable(request, services, build_id)
    return answer(resource(record, services.settings.BinderHub.base_url), 200)


@router.get(
    "/builds/{build_id}/events", operation_id="streamBuildEvents", tags=["builds"], response_class=Response,
    summary="A build's events, as server-sent events",
    description="Each frame has an `id:` (1, 2, 3... within the build) and carries BinderHub's event JSON with "
    "`build_id`. With `Last-Event-ID` (header, as EventSource sends it on reconnect) or `?last_event_id=`, only "
    "later events come: replayed from the store, then live. The stream ends after the terminal event (`ready`, or "
    "`failed`; a cancelled build's `failed` has `cancelled: true`); for a finished build it replays and ends. "
    "`:keepalive` comments keep an idle stream open.",
    responses={200: {"description": "A `text/event-stream` of `id: <seq>` / `data: <json>` frames.",
                     "content": {"text/event-stream": {"schema": {
                         **EVENT_STREAM_SCHEMA, "properties": {**EVENT_STREAM_SCHEMA["properties"], "id": {
                             "type": "string", "pattern": "^[0-9]+$", "description": "The event's sequence number."}}},
                         "example": EVENTS_EXAMPLE}}},
               **problem_responses(403, 404, 422, 500, 503)},
    openapi_extra={"security": READ_SECURITY},
)
async def stream_build_events(
    request: Request, services: ServicesDep, build_id: Annotated[str, BUILD_ID_PATH],
    last_event_id_query: Annotated[int | None, Query(alias="last_event_id", ge=0, le=MAX_EVENT_ID,
                                                     description="Resume after this event id.")] = None,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID", max_length=128,
                                                       description="Resume after this event id (EventSource sends it "
                                                       "when it reconnects).")] = None,
) -> Response:
    await readable(request, services, build_id)
    after = last_event_id(last_event_id_header, last_event_id_query)
    stream = FrameStream(event_frames(services, build_id, after))
    headers = {"cache-control": "no-cache"}
    if await stream.finished_quickly():
        return Response(stream.body(), media_type="text/event-stream", headers=headers)
    return EventStreamResponse(stream, services.keepalives, headers)


async def event_frames(services: Services, build_id: str, after: int) -> AsyncIterator[bytes]:
    try:
        async for event in services.builds.follow_events(build_id, after):
            yield b"id: %d\ndata: %s\n\n" % (event.seq, event.data.encode())
    except StoreError as e:  # the client reconnects with Last-Event-ID and resumes where it was
        log.warning("The event stream of build %s ended: the build store failed: %s", build_id, e)


@router.get(
    "/builds/{build_id}/logs", operation_id="getBuildLogs", tags=["builds"], response_class=Response,
    summary="A build's builder output",
    description="The builder's whole output as text, during and after the build. Past `BuildStore.max_log_bytes`, "
    "the head and the tail are kept with a marker line between them. `follow=true` keeps the answer open and "
    "streams new output until the build ends.",
    responses={200: {"description": "The output.", "content": {"text/plain": {
        "schema": {"type": "string"}, "example": "Picked Git content provider.\nStep 1/9 : FROM buildpack-deps:jammy\n"}}},
        **problem_responses(403, 404, 422, 500, 503)},
    openapi_extra={"security": READ_SECURITY},
)
async def get_build_logs(
    request: Request, services: ServicesDep, build_id: Annotated[str, BUILD_ID_PATH],
    follow: Annotated[bool, Query(description="Stream new output until the build ends.")] = False,
) -> Response:
    record = await readable(request, services, build_id)
    if follow and not record.state.finished:
        return StreamingResponse(log_chunks(services, build_id), media_type="text/plain; charset=utf-8",
                                 headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
    stored = await services.builds.read_log(build_id)
    return Response(stored.text() if stored is not None else "", media_type="text/plain; charset=utf-8")


async def log_chunks(services: Services, build_id: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in services.builds.follow_log(build_id):
            yield chunk.encode()
    except StoreError as e:
        log.warning("Following the log of build %s ended: the build store failed: %s", build_id, e)


@router.delete(
    "/builds/{build_id}", operation_id="cancelBuild", tags=["builds"], response_model=BuildResource,
    summary="Cancel a queued or running build",
    description="Needs operator rights. The builder container or pod is removed, every stream watching the build "
    "(classic `/build` streams included) gets a `failed` event saying it was cancelled, and the state becomes "
    "`cancelled`. **409** if the build had already finished.",
    responses={200: {"description": "The build, cancelled."}, **problem_responses(403, 404, 409, 422, 500, 503)},
    openapi_extra={"security": OPERATOR_SECURITY},
)
async def cancel_build(request: Request, services: ServicesDep, build_id: Annotated[str, BUILD_ID_PATH]) -> Response:
    await require_operator(request, services, "Cancelling a build")
    require_store(services)
    from ..builds import BuildFinishedError

    try:
        record = await services.builds.cancel(build_id)
    except BuildFinishedError:
        current = await services.builds.record(build_id)
        state = current.state.value if current is not None else "finished"
        raise ProblemError(409, f"Build {build_id} already finished ({state}): there is nothing to cancel") from None
    if record is None:
        raise ProblemError(404, f"No build {build_id!r}: it never existed, or retention removed it")
    return answer(resource(record, services.settings.BinderHub.base_url), 200)




@router.get(
    "/images/{prefix}/{spec:path}", operation_id="getImageStatus", tags=["images"], response_model=ImageStatus,
    summary="Does a spec's image exist?",
    description="Resolves the ref and names the image; says whether it exists and which build is making it now. "
    "Nothing is ever built, and no rate limit is counted.",
    responses={200: {"description": "The image's status."}, **problem_responses(400, 403, 404, 422, 500, 502, 503)},
    openapi_extra={"security": READ_SECURITY, "parameters": [{
        "name": "spec", "in": "path", "required": True, "description": SPEC_DESCRIPTION,
        "schema": {"type": "string", "title": "Spec", "examples": ["binder-examples/requirements/HEAD"]}}]},
)
async def get_image_status(
    request: Request, services: ServicesDep,
    prefix: Annotated[str, Path(description="The provider, e.g. `gh`, `gl`, `git`, `zenodo`.", examples=["gh"])],
) -> Response:
    settings = services.settings.BinderHub
    spec = services.providers.path_spec(prefix, raw_spec(request, prefix, settings.base_url, "api/v1/images/")).rstrip("/")
    if not spec:
        raise ProblemError(400, "A spec is needed after the provider's prefix, as in a /build URL")
    await check_reader(request, services)  # the resolve below refuses a banned spec
    repo = await BuildPipeline(services).resolve(build_request(request, services, prefix, spec))
    running = await services.builds.running_build_id(repo.build_name, repo.image_name)
    exists = await services.images.image_exists(repo.image_name)
    return answer(ImageStatus(image_name=repo.image_name, resolved_ref=repo.ref, exists=exists,
                              build_id=running), 200)
