"""The build store's part in replicas (issue 13) on a real PostgreSQL: claims decide who builds an
image (one winner however many ask at once), leases that run out are adopted by one survivor, and
NOTIFY reaches listeners, who are told to catch up after their connection is cut."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from binderapi.store import (
    BUILDS_CHANNEL,
    CANCEL_CHANNEL,
    BuildRecord,
    BuildState,
    Notification,
    new_build_id,
)
from fixtures.postgres import _raw
from fixtures.store import stores

pytestmark = pytest.mark.postgres


def draft(name: str, owner: str) -> BuildRecord:
    return BuildRecord(id=new_build_id(), spec="gh/o/r/main", provider="GitHub", repo_url="https://x/o/r",
                       resolved_ref="abc", image_name=f"reg/{name}:abc", build_name=name, owner=owner)


async def test_one_claim_wins_and_its_record_is_saved_with_it(make_postgres_database: Callable[[], Awaitable[str]]) -> None:
    async with stores(await make_postgres_database(), 2) as (a, b):
        drafts = [draft("build-x", f"owner-{i}") for i in range(10)]
        winners = await asyncio.gather(*((a if i % 2 else b).claim(d, 15) for i, d in enumerate(drafts)))
        assert len(set(winners)) == 1 and winners[0] in {d.id for d in drafts}
        saved = [await a.get(d.id) for d in drafts]
        assert [r.id for r in saved if r is not None] == [winners[0]]  # only the winner's record
        # the claim holds while its build runs; finished, the name is free again
        again = draft("build-x", "owner-late")
        assert await b.claim(again, 15) == winners[0]
        record = await a.get(winners[0])
        record.state = BuildState.built
        await a.save([record])
        assert await b.claim(again, 15) == again.id
        await b.release("build-x", again.id)
        newest = draft("build-x", "owner-newest")
        assert await a.claim(newest, 15) == newest.id


async def test_an_expired_lease_is_adopted_by_one_survivor(make_postgres_database: Callable[[], Awaitable[str]]) -> None:
    async with stores(await make_postgres_database(), 3) as (a, b, c):
        alive, dead = draft("alive", "A"), draft("dead", "D")
        assert await a.claim(alive, 0.5) == alive.id and await a.claim(dead, 0.5) == dead.id
        dead.owner = "D"
        await a.save([dead])
        await a.renew("A", 60)  # A's heartbeat; the claim made as D below is nobody's
        async with a._begin("test") as connection:  # dead's claim belongs to a process that stopped
            from binderapi.store.sql import build_claims
            await connection.execute(build_claims.update().where(build_claims.c.build_name == "dead").values(owner="D"))
        await asyncio.sleep(1)
        expired = await b.expired_claims()
        assert [(x.build_name, x.build_id, x.owner) for x in expired] == [("dead", dead.id, "D")]
        won = await asyncio.gather(b.adopt(expired[0], "B", 15), c.adopt(expired[0], "C", 15))
        assert sorted(won) == [False, True]
        assert await b.expired_claims() == []
        assert (await a.get(dead.id)).owner == ("B" if won[0] else "C")
        # an expired claim of an unfinished build is not taken by a new request: it is adopted
        assert await c.claim(draft("alive", "C"), 15) == alive.id


async def test_listeners_get_notifications_and_a_catch_up_after_a_cut(make_postgres_database: Callable[[], Awaitable[str]]) -> None:
    url = await make_postgres_database()
    async with stores(url, 2) as (a, b):
        received: list[Notification] = []
        arrived = asyncio.Event()

        async def listen() -> None:
            async for item in b.listen([BUILDS_CHANNEL, CANCEL_CHANNEL]):
                received.append(item)
                arrived.set()

        async def next_item() -> Notification:
            while not received:
                arrived.clear()
                await asyncio.wait_for(arrived.wait(), 60)
            return received.pop(0)

        task = asyncio.create_task(listen())
        try:
            assert await next_item() == Notification("")
            record = draft("n", "A")
            await a.claim(record, 15)  # a write notifies, once committed
            assert await next_item() == Notification(BUILDS_CHANNEL, record.id)
            await a.notify(CANCEL_CHANNEL, record.id)
            assert await next_item() == Notification(CANCEL_CHANNEL, record.id)
            # the listening connection is cut: it comes back and says so, and goes on
            admin = await asyncpg.connect(_raw(url))
            try:
                cut = await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND query LIKE 'LISTEN%'")
            finally:
                await admin.close()
            assert cut == 1
            assert await next_item() == Notification("")
            await a.append(record.id, [])
            await a.save([record])
            assert await next_item() == Notification(BUILDS_CHANNEL, record.id)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_a_replica_that_lost_its_claim_lets_the_build_go(make_postgres_database: Callable[[], Awaitable[str]]) -> None:
    """Split brain: a replica that could not renew its lease for a while finds, at its next
    heartbeat, that another adopted its build. It stops following it (its watchers are told where
    to go) and leaves the builder, which is the adopter's now, running."""
    from binderapi.builds import TAKEN_OVER_MESSAGE
    from binderapi.store.sql import build_claims
    from fixtures.fake_backend import fake_settings
    from fixtures.server import EVENT_STREAM
    from test_inprocess import events_of, inprocess

    settings = fake_settings({"BuildStore": {"url": await make_postgres_database()}})
    async with inprocess(settings) as (http, services):
        services.backend.hold = asyncio.Event()
        watcher = asyncio.create_task(http.get("build/fake/split/main", headers=EVENT_STREAM, params={"build_only": "true"}))
        manager = services.builds
        for _ in range(1000):
            if manager.builds and next(iter(manager.builds.values())).record.state is BuildState.building:
                break
            await asyncio.sleep(0.01)
        (build,) = manager.builds.values()
        assert build.claimed
        store = services.store
        async with store._begin("test") as connection:  # the lease ran out while this replica was cut off
            await connection.execute(build_claims.update().values(lease_expires=0))
        (claim,) = await store.expired_claims()
        assert await store.adopt(claim, "another-replica", 60)
        await manager.replicas.heartbeat()
        events = events_of(await asyncio.wait_for(watcher, 30))
        assert events[-1]["phase"] == "failed" and events[-1]["message"] == TAKEN_OVER_MESSAGE + "\n"
        assert build.job.name in services.backend.builds  # the builder was left running
        assert ("stop", build.job.name) not in services.backend.calls
        assert manager.live(build.id) is None
        record = await store.get(build.id)
        assert record.owner == "another-replica" and not record.state.finished
        services.backend.hold.set()


async def test_a_build_of_another_replica_is_followed_from_the_store(make_postgres_database: Callable[[], Awaitable[str]]) -> None:
    """The follower's side alone: another process (here, a bare store) writes a build's events;
    this replica streams them as they are notified, to the terminal event. A second build whose
    owner stopped between writing its final record and its terminal event ends from the record."""
    import json

    from binderapi.store import StoredEvent
    from fixtures.fake_backend import fake_settings
    from test_inprocess import inprocess

    url = await make_postgres_database()
    settings = fake_settings({"BuildStore": {"url": url, "lease_seconds": 1}})
    async with inprocess(settings) as (_, services), stores(url, 1) as (other,):
        manager = services.builds
        record = draft("remote-build", "another-replica")
        assert await other.claim(record, 60) == record.id
        events = [StoredEvent(seq, json.dumps({"phase": "building", "message": f"step {seq}\n", "build_id": record.id}))
                  for seq in (1, 2, 3)]
        await other.append(record.id, events[:1], "step 1\n")
        seen: list[int] = []

        async def follow() -> list[dict]:
            found = []
            async for event in manager.follow_events(record.id):
                seen.append(event.seq)
                found.append(json.loads(event.data))
            return found

        task = asyncio.create_task(follow())
        for expected in (1, 2, 3):  # each event reaches the stream once written (and notified)
            for _ in range(1000):
                if seen and seen[-1] == expected:
                    break
                await asyncio.sleep(0.01)
            assert seen[-1] == expected
            if expected < 3:
                await other.append(record.id, events[expected:expected + 1], f"step {expected + 1}\n")
        assert manager.live(record.id).remote
        record.state, record.message = BuildState.failed, "it broke"
        await other.save([record])
        terminal = {"phase": "failed", "message": "it broke\n", "build_id": record.id}
        await other.append(record.id, [StoredEvent(4, json.dumps(terminal))])
        found = await asyncio.wait_for(task, 30)
        assert seen == [1, 2, 3, 4] and found[-1] == terminal
        assert (await manager.read_log(record.id)).text() == "step 1\nstep 2\nstep 3\n"

        # the owner wrote its final record, then stopped before the terminal event
        lost = draft("remote-lost", "another-replica")
        await other.claim(lost, 60)
        first = {"phase": "building", "message": "step 1\n", "build_id": lost.id}
        await other.append(lost.id, [StoredEvent(1, json.dumps(first))])
        task = asyncio.create_task(follow_all(manager, lost.id))
        for _ in range(1000):
            if manager.live(lost.id) is not None:  # followed from the store now
                break
            await asyncio.sleep(0.01)
        lost.state, lost.message = BuildState.cancelled, "The build was cancelled"
        await other.save([lost])
        found = await asyncio.wait_for(task, 30)
        assert found[0] == first
        assert found[-1] == {"phase": "failed", "message": "The build was cancelled\n", "cancelled": True,
                             "build_id": lost.id}


async def follow_all(manager, build_id: str) -> list[dict]:
    import json

    return [json.loads(e.data) async for e in manager.follow_events(build_id)]
