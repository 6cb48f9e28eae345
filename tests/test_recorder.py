"""The recorder: a build's events and log reach the (real, SQLite) store in a few batched writes,
the log is capped to its head and tail, and a failing store is reported, never raised. ``store``
is tests/fixtures/store.py's (a fresh database per test, per database the suite runs on)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from binderapi.recorder import Recorder
from binderapi.store import BuildRecord, BuildState, StoredEvent, new_build_id


def record() -> BuildRecord:
    return BuildRecord(id=new_build_id(), spec="gh/org/repo/HEAD", provider="GitHub", repo_url="https://example.org/r",
                       resolved_ref="0" * 40, image_name="registry.test/r:0", build_name="build-r-0")


async def test_events_and_log_are_written_in_batches(store):
    recorder = Recorder(store, max_log_bytes=1 << 20, flush_interval=0.05)
    build = record()
    recorder.save(build)
    for seq in range(1, 2001):  # a chatty build: 2,000 lines, each an event
        recorder.log(build, f"line {seq}\n")
        recorder.event(build.id, StoredEvent(seq, f'{{"phase":"building","message":"line {seq}\\n"}}'))
        if seq % 100 == 0:
            await asyncio.sleep(0)  # the build's output comes in bursts
    build.state = BuildState.built
    recorder.save(build)
    recorder.finished(build.id)
    await recorder.close()
    assert [e.seq for e in await store.events_after(build.id, 0, 5000)] == list(range(1, 2001))
    log = await store.read_log(build.id)
    assert log is not None and log.text() == "".join(f"line {seq}\n" for seq in range(1, 2001))
    saved = await store.get(build.id)
    assert saved is not None and saved.state is BuildState.built and saved.log_bytes == len(log.text().encode())
    assert recorder.writes <= 20, recorder.writes  # 2,000 events and lines, a handful of transactions
    assert recorder.log_snapshot(build.id) is None  # a finished build's log is the store's alone


async def test_the_log_keeps_its_head_and_tail_past_the_cap(store):
    recorder = Recorder(store, max_log_bytes=4096, flush_interval=0.01)
    build = record()
    recorder.save(build)
    lines = [f"{i:05d} {'x' * 93}\n" for i in range(200)]  # 100 bytes each, 20,000 in all
    for index, text in enumerate(lines):
        recorder.log(build, text)
        if index % 7 == 0:
            await asyncio.sleep(0.02)  # several flushes while the tail moves on
    while_running = recorder.log_snapshot(build.id)
    await recorder.flush()
    stored = await store.read_log(build.id)
    assert stored == while_running
    assert len(stored.head.encode()) == 2048 and len(stored.tail.encode()) == 2048
    assert stored.head == "".join(lines)[:2048] and stored.tail == "".join(lines)[-2048:]
    assert stored.dropped_bytes == 20_000 - 4096
    assert "[... 15904 bytes of build output omitted" in stored.text()
    await recorder.close()


async def test_a_failing_store_is_logged_once_and_shown_by_health(store, caplog):
    recorder = Recorder(store, flush_interval=0.01)
    build = record()
    recorder.save(build)
    await store.close()  # from now on every call fails
    caplog.set_level(logging.WARNING, "binderapi.recorder")
    for seq in range(1, 4):
        recorder.event(build.id, StoredEvent(seq, "{}"))
        assert await recorder.flush() is False
    assert len([r for r in caplog.records if "build store failed" in r.getMessage()]) == 1
    with pytest.raises(Exception, match="not open"):
        await recorder.health()
    await store.open()  # it answers again: what was kept is written
    assert await recorder.flush() is True
    assert [e.seq for e in await store.events_after(build.id)] == [1, 2, 3]
    assert await recorder.health() == {"ok": True}
    await recorder.close()
