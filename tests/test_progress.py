"""Progress on its own channel (binderapi.progress): a step returns its result and reports its
events; Relay yields them as they happen and cleans up after a consumer that leaves early."""

from __future__ import annotations

import asyncio
from functools import partial

import pytest

from binderapi.progress import Relay, Report


async def step(gate: asyncio.Event, unwound: list[str], report: Report[str]) -> int:
    try:
        await report("started")
        await gate.wait()  # only the consumer, having seen "started", opens it
        await report("halfway")
        return 42
    finally:
        unwound.append("step")


async def test_events_arrive_as_they_happen_and_the_result_is_returned():
    gate, unwound = asyncio.Event(), []
    relay = Relay(partial(step, gate, unwound))
    seen = []
    async for event in relay:
        seen.append(event)
        gate.set()  # the step waits for this: "started" came before the step ended
    assert seen == ["started", "halfway"] and relay.result == 42 and unwound == ["step"]


async def test_the_steps_error_is_raised_after_its_events():
    async def failing(report: Report[str]) -> int:
        await report("trying")
        raise ValueError("no luck")

    seen = []
    with pytest.raises(ValueError, match="no luck"):
        async for event in Relay(failing):
            seen.append(event)
    assert seen == ["trying"]


async def test_a_consumer_leaving_early_cancels_the_step_and_waits_for_it_to_unwind():
    gate, unwound = asyncio.Event(), []
    events = aiter(Relay(partial(step, gate, unwound)))
    assert await anext(events) == "started"
    await events.aclose()  # the client went away
    assert unwound == ["step"]  # the step's clean-up ran before aclose returned
