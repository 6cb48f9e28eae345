"""RFC 9457 problem details: how every ``/api/v1`` error is answered.

An error is ``application/problem+json`` with ``type``, ``title``, ``status`` and ``detail`` (and
``instance``, the request's path; ``errors`` for a request that failed validation). ``type`` is
``about:blank`` (the ``title`` is then the HTTP status phrase, as RFC 9457 asks) unless a more
specific type is named below. The classic routes keep their own answers: ``/build`` refuses with a
``failed`` event, the others with FastAPI's ``{"detail": ...}``.

:class:`ProblemError` is what the ``/api/v1`` code raises; :class:`ProblemRoute` turns it, and every
other error raised while answering (a :class:`~binderapi.errors.BinderError`, a store error, a
validation error, a bug), into a problem response, so no ``/api/v1`` operation can answer otherwise.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .errors import (
    BannedSpecError,
    BinderError,
    BuildError,
    ForbiddenError,
    RefNotFoundError,
    RegistryError,
    SpecError,
    UpstreamError,
    UpstreamRateLimitError,
)
from .store.base import StoreError

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"
#: the type of a problem that has no more specific one (RFC 9457 section 4.2.1)
BLANK = "about:blank"
#: the build store is down, full or corrupt: ``/api/v1`` cannot answer, ``/build`` still works
STORE_UNAVAILABLE = "tag:binderapi,2026:problem:store-unavailable"
#: the request failed validation: ``errors`` says where and why
VALIDATION = "tag:binderapi,2026:problem:validation"


class ValidationIssue(BaseModel):
    """One reason a request failed validation, as pydantic reports it."""

    loc: list[str | int] = Field(description="Where: `body`, `query`, `path` or `header`, then the field.")
    msg: str
    type: str


class Problem(BaseModel):
    """An error, as RFC 9457 problem details (`application/problem+json`)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "type": "about:blank", "title": "Not Found", "status": 404,
        "detail": "No build 0193f2a1c0de1a2b3c4d5e", "instance": "/api/v1/builds/0193f2a1c0de1a2b3c4d5e"}]})

    type: str = Field(BLANK, description="A URI naming the kind of problem; `about:blank` when the HTTP status says it all.")
    title: str = Field(description="A short summary of the kind of problem (the HTTP status phrase for `about:blank`).")
    status: int = Field(ge=400, le=599, description="The HTTP status code of this answer.")
    detail: str = Field("", description="What went wrong this time, in words a person can act on.")
    instance: str | None = Field(None, description="The path of the request that failed.")
    errors: list[ValidationIssue] | None = Field(None, description="For a request that failed validation: each reason.")


class ProblemError(Exception):
    """Raised by ``/api/v1`` code: answered as a problem with ``status`` and ``detail``."""

    def __init__(self, status: int, detail: str, *, type: str = BLANK, title: str | None = None,
                 headers: Mapping[str, str] | None = None, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.type = type
        self.title = title or HTTPStatus(status).phrase
        self.headers = dict(headers or {})
        self.errors = errors


def problem_response(problem: ProblemError, instance: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"type": problem.type, "title": problem.title, "status": problem.status,
                            "detail": problem.detail}
    if instance:
        body["instance"] = instance
    if problem.errors is not None:
        body["errors"] = problem.errors
    return JSONResponse(body, status_code=problem.status, headers=problem.headers, media_type=MEDIA_TYPE)


#: the status of a BinderError that carries none, by its class (the most specific first)
_STATUS_OF: list[tuple[type[BinderError], int]] = [
    (BannedSpecError, 403),
    (ForbiddenError, 403),
    (RefNotFoundError, 404),
    (SpecError, 400),
    (UpstreamRateLimitError, 503),
    (UpstreamError, 502),
    (RegistryError, 503),
    (BuildError, 502),
]


def from_binder_error(error: BinderError) -> ProblemError:
    """A user-facing error as a problem, keeping its message and any headers (the rate limit's
    ``Retry-After``)."""
    status = error.status_code
    if status is None or not 400 <= status <= 599:
        status = next((code for cls, code in _STATUS_OF if isinstance(error, cls)), 400)
    return ProblemError(status, error.message, headers=getattr(error, "headers", None))


def store_unavailable(error: Exception | None = None) -> ProblemError:
    detail = "The build store is unavailable, so builds cannot be created, listed or read right now; " \
             "the classic /build still works. Try again later."
    if error is not None:
        log.warning("/api/v1: the build store failed: %s", error)
    return ProblemError(503, detail, type=STORE_UNAVAILABLE, headers={"retry-after": "30"})


def validation_problem(error: RequestValidationError) -> ProblemError:
    issues = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
              for e in error.errors()]
    where = "; ".join(f"{'.'.join(map(str, i['loc']))}: {i['msg']}" for i in issues[:5])
    return ProblemError(422, f"The request is not valid: {where}" if where else "The request is not valid",
                        type=VALIDATION, errors=issues)


def as_problem(error: Exception) -> ProblemError:
    """Any error raised while answering an ``/api/v1`` request, as the problem to answer with."""
    if isinstance(error, ProblemError):
        return error
    if isinstance(error, RequestValidationError):
        return validation_problem(error)
    if isinstance(error, StoreError):
        return store_unavailable(error)
    if isinstance(error, BinderError):
        return from_binder_error(error)
    if isinstance(error, HTTPException):  # FastAPI's own, e.g. 400 for a body it cannot read
        return ProblemError(error.status_code, str(error.detail), headers=error.headers)
    incident = uuid.uuid4().hex[:12]
    log.error("Unexpected error in /api/v1 (incident %s)", incident, exc_info=error)
    return ProblemError(500, f"Internal Server Error (incident {incident}); the operator's log has the details.")


class ProblemRoute(APIRoute):
    """An ``/api/v1`` route: whatever its handler or FastAPI's validation raises is a problem."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as error:  # HTTPException included: FastAPI raises none on these routes
                return problem_response(as_problem(error), request.url.path)

        return answer


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` documenting ``statuses`` as problems."""
    content = {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    described = {
        400: "The spec is not understood.",
        403: "Not allowed: a banned network or spec, a missing or invalid login in auth mode, or operator rights "
             "needed (`force`, cancel).",
        404: "No such build, or the ref does not exist.",
        409: "The build already finished.",
        422: "The request failed validation; `errors` lists why.",
        429: "The rate limit: try again after `Retry-After` seconds.",
        500: "A bug: the detail names an incident in the operator's log.",
        502: "An upstream (the repository's host) or the builder failed.",
        503: "The build store, the hub or the registry is unavailable.",
    }
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        headers = {}
        if status in (429, 503):
            headers["Retry-After"] = {"description": "Seconds to wait before trying again.",
                                      "schema": {"type": "integer"}}
        out[status] = {"description": described.get(status, HTTPStatus(status).phrase), "content": content,
                       **({"headers": headers} if headers else {})}
    return out


def problem_schemas() -> dict[str, Any]:
    """The ``Problem`` component and what it references, for the app's OpenAPI document."""
    schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
    defs = schema.pop("$defs", {})
    return {"Problem": schema, **defs}
