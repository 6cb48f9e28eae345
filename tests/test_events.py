"""The wire format: BinderHub's recorded stream parses with our models, and no builder output can
break the SSE framing or forge an event."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import TypeAdapter

from binderapi.events import (
    BuildStreamEvent,
    FailedEvent,
    LaunchReadyEvent,
    WaitingEvent,
    builder_line_to_event,
    encode,
)

FIXTURE = Path(__file__).parent / "data" / "binderhub-fullbuild.eventsource"
ADAPTER = TypeAdapter(BuildStreamEvent)


def recorded_events() -> list[dict]:
    return [json.loads(line[len("data:"):]) for line in FIXTURE.read_text().splitlines() if line.startswith("data:")]


def as_sent(event: dict) -> dict:
    """What binderapi sends for a recorded BinderHub event: the same, except that repo2docker's
    phase-less lines carry ``phase: "log"`` (docs/events.md says why clients read that unchanged)."""
    return event if "phase" in event else {**event, "phase": "log"}


def parse_frames(stream: bytes) -> list[dict]:
    """Parse like an EventSource: frames split on a blank line, `data:` fields joined."""
    events = []
    for frame in stream.split(b"\n\n"):
        data = [line[5:].lstrip(b" ") for line in frame.split(b"\n") if line.startswith(b"data:")]
        if data:
            events.append(json.loads(b"\n".join(data)))
    return events


def test_every_recorded_binderhub_event_is_a_known_event_type():
    events = recorded_events()
    assert len(events) == 736
    for event in events:
        model = ADAPTER.validate_python(event)
        assert model.model_dump(exclude_none=True) == as_sent(event)  # nothing lost, only `log` added
    assert sum("phase" not in event for event in events) == 3  # the lines that gain `phase: "log"`


def test_recorded_ready_event_has_our_launch_fields():
    ready = recorded_events()[-1]
    assert ready["phase"] == "ready"
    ours = set(LaunchReadyEvent.model_fields) - {"phase", "message"}
    # BinderHub added binder_client_ip after this recording
    assert set(ready) - {"phase", "message"} == ours - {"binder_client_ip"}


def test_reencoded_recording_is_parsed_back_identically():
    events = recorded_events()
    stream = b"".join(encode(ADAPTER.validate_python(e)) for e in events)
    assert parse_frames(stream) == [as_sent(e) for e in events]
    assert parse_frames(b"".join(encode(e) for e in events)) == [as_sent(e) for e in events]  # dicts too


@pytest.mark.parametrize("raw", [
    b'{"phase": "building", "message": "line one\\ndata: {\\"phase\\": \\"ready\\"}\\n\\n"}',
    b"plain text with\r\ncarriage return and data: {\"phase\":\"ready\"}",
    b"invalid utf-8 \xff\xfe here",
    b'{"phase": "building", "message": "\\u2028 separator \\u0000 nul"}',
    b'["a", "json", "list"]',
    b'{"phase": 5, "message": "wrong types"}',
])
def test_builder_output_cannot_break_framing_or_forge_events(raw):
    frame = encode(builder_line_to_event(raw))
    assert frame.startswith(b"data: ") and frame.endswith(b"\n\n")
    assert frame.count(b"\n") == 2  # exactly one data line and the blank line
    events = parse_frames(frame)
    assert len(events) == 1
    assert events[0].get("phase") in ("building", "unknown")


def test_non_json_lines_become_unknown_with_newline():
    assert builder_line_to_event("Step 1/3 : FROM x") == {"phase": "unknown", "message": "Step 1/3 : FROM x\n"}


def test_repo2docker_json_passes_through_verbatim():
    line = '{"message": "Pushing image\\n", "progress": {"abc": {"current": 1, "total": 2}}, "layers": {}, "phase": "pushing"}'
    assert builder_line_to_event(line) == json.loads(line)


def test_encoding_drops_unset_fields():
    assert encode(FailedEvent(message="x\n")) == b'data: {"phase":"failed","message":"x\\n"}\n\n'
    assert json.loads(encode(WaitingEvent(message="w\n", queue_position=2, queue_length=3))[6:]) == {
        "phase": "waiting", "message": "w\n", "queue_position": 2, "queue_length": 3}
