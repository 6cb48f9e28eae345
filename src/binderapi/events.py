"""The ``/build`` event stream: one pydantic model per event, and the one encoder of the wire format.

BinderHub's clients read ``data: <json>\\n\\n`` frames and switch on ``phase``. These models are the
single definition of those frames: the SSE encoder, the OpenAPI schema, the tests and
``docs/events.md`` all use them. Lines from repo2docker's ``--json-logs`` are passed through only for
the progress phases repo2docker writes (see :func:`builder_line_to_event`).

What the ``/build`` stream carries: these models, and the lines of a build's log as frames already
encoded (bytes). A build's log is encoded once, in ``builds.py``, and the same bytes are written to
every client watching that build (10,000 streams of one popular repository pay for one
``json.dumps`` per line, not 10,000), so those frames never go back to models. A builder's line is
a dict only between :func:`builder_line_to_event` and that encoding: it is repo2docker's own JSON,
passed through with its keys checked, not one of binderapi's events.

Every event binderapi sends has a ``phase``, and the union is discriminated on it: repo2docker's
informational lines, which carry none, are sent with ``phase: "log"`` (see ``docs/events.md`` for
why BinderHub's clients read that unchanged).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, TypeAdapter


def _phase_required(schema: dict[str, Any]) -> None:
    """In the JSON schema every event has its ``phase``: the encoder always writes it, even where
    the model fills in the default (a phase-less ``LogEvent``)."""
    schema["required"] = ["phase", *(name for name in schema.get("required", []) if name != "phase")]


class Event(BaseModel):
    """Base of all events. ``message`` ends with a newline, as BinderHub's clients expect."""

    model_config = ConfigDict(extra="allow", json_schema_extra=_phase_required)

    phase: str
    message: str | None = None


class WaitingEvent(Event):
    """The build is queued or about to start. While queued, ``queue_position`` (1 = next) and
    ``queue_length`` are set and the event is re-sent whenever the position changes."""

    phase: Literal["waiting"] = "waiting"
    message: str
    queue_position: int | None = Field(None, description="1-based position of this build in the queue (binderapi extension).")
    queue_length: int | None = Field(None, description="Builds waiting in the queue (binderapi extension).")


class FetchingEvent(Event):
    """repo2docker is fetching the repository."""

    phase: Literal["fetching"] = "fetching"
    message: str


class BuildingEvent(Event):
    """A line of repo2docker's build output."""

    phase: Literal["building"] = "building"
    message: str


class PushingEvent(Event):
    """repo2docker is pushing the image; ``progress`` maps layer ids to progress."""

    phase: Literal["pushing"] = "pushing"
    message: str
    progress: dict[str, Any] | str | None = None
    layers: dict[str, Any] | None = None


class LogEvent(Event):
    """An informational line of repo2docker's (e.g. ``Picked Git content provider.``). repo2docker
    and BinderHub write these without a phase; binderapi sends them as ``log``."""

    phase: Literal["log"] = "log"
    message: str


class UnknownEvent(Event):
    """A builder output line that was not repo2docker JSON."""

    phase: Literal["unknown"] = "unknown"
    message: str | None = None


class BuiltEvent(Event):
    """The image exists (found or just built); a launch follows."""

    phase: Literal["built"] = "built"
    message: str
    imageName: str


class LaunchingEvent(Event):
    """Progress of the JupyterHub launch (each hub progress message is re-sent as one)."""

    phase: Literal["launching"] = "launching"
    message: str


def _without_url(schema: dict[str, Any]) -> None:
    """A ``ready`` event is a launch's exactly when it has a ``url``; the schema says so, so that
    the two ``ready`` models never both match."""
    _phase_required(schema)
    schema["not"] = {"required": ["url"]}


class BuildReadyEvent(Event):
    """``build_only=true``: the image is ready in the registry. Final event."""

    model_config = ConfigDict(json_schema_extra=_without_url)

    phase: Literal["ready"] = "ready"
    message: str
    imageName: str


class LaunchReadyEvent(Event):
    """The server is running: open ``url`` with ``token``. Final event."""

    phase: Literal["ready"] = "ready"
    message: str
    url: str
    token: str
    image: str
    repo_url: str
    binder_ref_url: str
    binder_launch_host: str
    binder_request: str
    binder_persistent_request: str
    binder_client_ip: str | None = Field(None, description="The client's address (always sent by binderapi; absent from older BinderHub streams).")


class FailedEvent(Event):
    """The request failed; the stream ends. ``status_code`` is set for HTTP-style refusals
    (400, 403, 409, 429, 500); logical failures carry only the message."""

    phase: Literal["failed"] = "failed"
    message: str | None = None
    status_code: int | None = None


def _ready_kind(value: Any) -> str:
    """Which ``ready`` an event is: a launch's carries the server's ``url``."""
    data = value if isinstance(value, dict) else value.__dict__
    return "launch" if "url" in data else "build"


def _log_by_default(value: Any) -> Any:
    """repo2docker's and BinderHub's phase-less lines are ``log`` events (an empty phase too, which
    BinderHub's JS client reads as none)."""
    if isinstance(value, dict) and not value.get("phase"):
        return {**value, "phase": "log"}
    return value


ReadyEvent = Annotated[
    Annotated[LaunchReadyEvent, Tag("launch")] | Annotated[BuildReadyEvent, Tag("build")],
    Discriminator(_ready_kind),
]

BuildStreamEvent = Annotated[
    WaitingEvent | FetchingEvent | BuildingEvent | PushingEvent | LogEvent | UnknownEvent | BuiltEvent
    | LaunchingEvent | ReadyEvent | FailedEvent,
    Field(discriminator="phase"),
    BeforeValidator(_log_by_default),
]
"""One ``data:`` frame of the ``/build`` stream: exactly one model per ``phase``, except ``ready``,
which is a launch's (``url``) or a build's (``build_only``). No branch accepts every event."""


def stream_event_schemas(ref_template: str) -> dict[str, Any]:
    """The JSON schemas of :data:`BuildStreamEvent` and its models, keyed by component name, for the
    OpenAPI document: a ``oneOf`` with a ``discriminator`` on ``phase``, whose ``ready`` entry is
    the named ``ReadyEvent`` (OpenAPI maps a discriminator value to a named schema only)."""
    schema = TypeAdapter(BuildStreamEvent).json_schema(ref_template=ref_template)
    schemas: dict[str, Any] = schema.pop("$defs")
    ready = schema["discriminator"]["mapping"]["ready"]
    ready_ref = ref_template.format(model="ReadyEvent")
    schemas["ReadyEvent"] = {**ready, "title": "ReadyEvent",
                             "description": "The final event of a launch (`url`) or of a `build_only` build."}
    schema["discriminator"]["mapping"]["ready"] = ready_ref
    schema["oneOf"] = [{"$ref": ready_ref} if branch == ready else branch for branch in schema["oneOf"]]
    schemas["BuildStreamEvent"] = {"title": "BuildStreamEvent",
                                   "description": "One `data:` frame of the `/build` event stream, told apart by `phase`.",
                                   **schema}
    return schemas

KEEPALIVE = b":keepalive\n\n"


def line(text: str) -> str:
    """Messages end with exactly one newline."""
    return text if text.endswith("\n") else text + "\n"


def encode(event: Event | dict[str, Any], event_id: str | None = None) -> bytes:
    """One SSE frame. JSON escapes every control character, so no message (newlines, ``data:``,
    invalid UTF-8 already replaced) can break the framing or forge another event. A dictionary
    without a ``phase`` (repo2docker's informational lines) is sent as a ``log`` event.
    ``event_id`` becomes the frame's ``id:`` line (what an EventSource sends back as ``Last-Event-ID``)."""
    return frame(event_json(event), event_id)


def event_json(event: Event | dict[str, Any]) -> str:
    """An event's JSON as a frame's ``data:`` carries it (and the build store keeps it)."""
    payload = event.model_dump(exclude_none=True) if isinstance(event, BaseModel) else _log_by_default(event)
    return json.dumps(payload, separators=(",", ":"))


def frame(data: str, event_id: str | None = None) -> bytes:
    """The SSE frame of an event's JSON; ``event_id`` is made of ids and digits only, never of input."""
    if event_id is None:
        return b"data: " + data.encode() + b"\n\n"
    return b"id: " + event_id.encode() + b"\ndata: " + data.encode() + b"\n\n"


#: The phases the builder may report, as repo2docker's ``--json-logs`` writes them (``None``: a
#: plain log line). ``failed`` (``failure`` in older repo2docker releases) becomes the reason in
#: the final ``failed`` event, which binderapi sends itself; ``running`` is only written with
#: ``--run``, which builds never use. Every other phase (``built``, ``ready``, ``launching``,
#: ``waiting``, anything new) is binderapi's alone: the builder runs code from the repository and
#: is never trusted to speak for binderapi.
BUILDER_PHASES = frozenset({"fetching", "building", "pushing", "unknown", "failed", "failure"})
#: fields kept besides ``phase`` and ``message``; anything else the builder adds is dropped
BUILDER_FIELDS: dict[str, dict[str, tuple[type, ...]]] = {"pushing": {"progress": (dict, str), "layers": (dict,)}}


def builder_line_to_event(raw: bytes | str) -> dict[str, Any]:
    """Turn one line of builder output into an event dict. repo2docker's JSON lines of the
    phases it writes keep their message (and a push's progress); a line of any other phase is an
    ``unknown`` line carrying only its message; anything else is an ``unknown`` line of the text.
    Invalid UTF-8 is replaced, never fatal."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    text = text.rstrip("\r\n")
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("message"), str):
        return {"phase": "unknown", "message": line(text)}
    phase, message = data.get("phase"), data["message"]
    if phase is not None and (not isinstance(phase, str) or phase not in BUILDER_PHASES):
        return {"phase": "unknown", "message": line(message)}
    event: dict[str, Any] = {"message": message} if phase is None else {"phase": phase, "message": message}
    for name, types in BUILDER_FIELDS.get(phase, {}).items():
        if isinstance(data.get(name), types):
            event[name] = data[name]
    return event
