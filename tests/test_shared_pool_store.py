"""The store's part of the warm pool and the launch quota shared by replicas (issue 13, item 6):
two stores on one database, as two replicas have, racing for the same rows. Each runs on SQLite
(the one-process default) and on the real PostgreSQL of ``scripts/infra.sh``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from binderapi.store.base import WarmImageRow, WarmServerRow
from binderapi.store.sql import SQLBuildStore

MakeDatabase = Callable[[], Awaitable[str]]
NOW = 1_000_000.0
IMAGE = "127.0.0.1:5000/binder-repo:abc"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> MakeDatabase:
    if request.param == "postgresql":
        return request.getfixturevalue("make_postgres_database")

    async def sqlite_file() -> str:
        return f"sqlite+aiosqlite:///{tmp_path / 'builds.sqlite3'}"

    return sqlite_file


@contextlib.asynccontextmanager
async def two_stores(database: MakeDatabase) -> AsyncIterator[tuple[SQLBuildStore, SQLBuildStore]]:
    url = await database()
    a, b = SQLBuildStore(url), SQLBuildStore(url)
    try:
        await a.open()
        await b.open()
        yield a, b
    finally:
        await a.close()
        await b.close()


async def ready_server(store: SQLBuildStore, owner: str, n: int, *, ready_at: float = NOW, lease: float = 60) -> WarmServerRow:
    row_id = await store.warm_claim_start(IMAGE, 1000, owner, NOW, lease)
    assert row_id
    row = WarmServerRow(id=row_id, image=IMAGE, state="ready", owner=owner, lease_expires=NOW + lease,
                        username=f"user-{n}", url=f"http://hub/user/user-{n}/", token=f"token-{n}", ready_at=ready_at)
    assert await store.warm_ready(row)
    return row


async def test_concurrent_takes_hand_each_server_out_once(database: MakeDatabase) -> None:
    async with two_stores(database) as (a, b):
        made = {(await ready_server(a if n % 2 else b, "A" if n % 2 else "B", n)).id for n in range(6)}
        launch = WarmImageRow(IMAGE, 1, NOW, "{}", 0)
        taken = await asyncio.gather(*(store.warm_take(IMAGE, launch) for _ in range(10) for store in (a, b)))
        got = [row for row in taken if row is not None]
        assert len(got) == 6 and {row.id for row in got} == made  # each once, none twice
        assert {row.token for row in got} == {f"token-{n}" for n in range(6)}
        assert await a.warm_servers() == []
        (image,) = await b.warm_images()
        assert image.launches == 20  # every launch counted, hit or miss


async def test_concurrent_claims_keep_the_pool_size(database: MakeDatabase) -> None:
    async with two_stores(database) as (a, b):
        claims = await asyncio.gather(*(store.warm_claim_start(IMAGE, 3, name, NOW, 60)
                                        for _ in range(8) for store, name in ((a, "A"), (b, "B"))))
        assert len([c for c in claims if c]) == 3
        assert len(await a.warm_servers()) == 3
        assert await b.warm_claim_start(IMAGE, 3, "B", NOW, 60) is None
        assert await b.warm_claim_start("other:tag", 3, "B", NOW, 60)  # counted per image


async def test_a_dead_owners_rows_are_adopted_or_dropped(database: MakeDatabase) -> None:
    async with two_stores(database) as (a, b):
        ready = await ready_server(a, "A", 1, lease=10)
        starting = await a.warm_claim_start(IMAGE, 10, "A", NOW, 10)
        alive = await ready_server(b, "B", 2, lease=100)
        # A stops renewing; after its lease, B (and a third survivor racing it) take over
        results = await asyncio.gather(b.warm_adopt("B", NOW + 20, 60), a.warm_adopt("C", NOW + 20, 60))
        adopted = [row for got, _ in results for row in got]
        dropped = [row for _, got in results for row in got]
        assert [row.id for row in adopted] == [ready.id]  # once, by one of them
        assert [row.id for row in dropped] == [starting]
        assert {row.id for row in await a.warm_servers()} == {ready.id, alive.id}
        # the starting row is gone: a late "ready" from its dead owner is refused
        late = WarmServerRow(id=starting, image=IMAGE, state="ready", owner="A", lease_expires=NOW + 60,
                             username="late", url="u", token="t", ready_at=NOW)
        assert not await a.warm_ready(late)
        renewed = await b.warm_renew("B", NOW + 30, 60)
        assert {row.lease_expires for row in renewed} == {NOW + 90}


async def test_taking_only_old_servers_and_deleting_once(database: MakeDatabase) -> None:
    async with two_stores(database) as (a, b):
        old = await ready_server(a, "A", 1, ready_at=NOW - 100)
        new = await ready_server(a, "A", 2, ready_at=NOW)
        assert (await b.warm_take(IMAGE, ready_before=NOW - 50)).id == old.id
        assert await b.warm_take(IMAGE, ready_before=NOW - 50) is None
        assert await a.warm_delete(new.id, state="starting") is None  # it is ready: kept
        deletes = await asyncio.gather(a.warm_delete(new.id), b.warm_delete(new.id))
        assert [row.id for row in deletes if row] == [new.id]


async def test_launch_slots_never_exceed_the_quota(database: MakeDatabase) -> None:
    async with two_stores(database) as (a, b):
        # 1 server running, total quota 4: 3 slots, whoever asks and however concurrently
        answers = await asyncio.gather(*(store.hold_launch_slot(f"{name}{i}", name, "repo", 1, 0, 4, 0, NOW, NOW + 60)
                                         for i in range(6) for store, name in ((a, "A"), (b, "B"))))
        assert sorted(answers, key=str) == [None] * 3 + ["total_quota"] * 9
        # the per-repository quota counts slots of that repository only
        assert await a.hold_launch_slot("r1", "A", "other", 0, 0, None, 1, NOW, NOW + 60) is None
        assert await b.hold_launch_slot("r2", "B", "other", 0, 0, None, 1, NOW, NOW + 60) == "repo_quota"
        assert await b.hold_launch_slot("r3", "B", "third", 0, 0, None, 1, NOW, NOW + 60) is None
        await a.release_launch_slot("r1")
        assert await b.hold_launch_slot("r2", "B", "other", 0, 0, None, 1, NOW, NOW + 60) is None
        # slots of a replica that died expire
        assert await a.hold_launch_slot("late", "A", "repo", 1, 0, 4, 0, NOW + 61, NOW + 120) is None


async def test_concurrent_trims_remove_the_excess_once(database: MakeDatabase) -> None:
    async with two_stores(database) as (a, b):
        for n in range(5):
            await ready_server(a, "A", n, ready_at=NOW + n)
        trimmed = await asyncio.gather(a.warm_trim(IMAGE, 2), b.warm_trim(IMAGE, 2), a.warm_trim(IMAGE, 2))
        removed = [row.username for rows in trimmed for row in rows]
        assert sorted(removed) == ["user-2", "user-3", "user-4"]  # the newest, once each
        assert [row.username for row in await b.warm_servers()] == ["user-0", "user-1"]


async def test_two_quotas_on_one_store_hold_the_last_slot_once(database: MakeDatabase, caplog) -> None:
    """Two replicas' quotas, each counting the same running server, asked at once for the last
    two slots of ``total_quota: 3``: two are held, whichever replica asked; a slot given back is
    room again; with the store gone a replica falls back to its own count (said once)."""
    from binderapi.errors import QuotaExceededError
    from binderapi.quota import CountingQuota
    from fixtures.server import make_settings

    settings = make_settings({"LaunchQuota": {"total_quota": 3}})
    async with two_stores(database) as stores:
        quotas = [CountingQuota(settings) for _ in stores]
        for quota, store in zip(quotas, stores, strict=True):
            quota.store = store
            quota.added("running", IMAGE)
        answers = await asyncio.gather(*(quota.admit(IMAGE, {}, "repo") for _ in range(3) for quota in quotas),
                                       return_exceptions=True)
        slots = [a for a in answers if not isinstance(a, BaseException)]
        assert len(slots) == 2 and all(isinstance(a, QuotaExceededError) for a in answers if a not in slots)
        with pytest.raises(QuotaExceededError, match="Too many users"):
            await quotas[0].admit(IMAGE, {}, "repo")
        quotas[0].release_slot(slots[0])
        quotas[0].release_slot(slots[0])  # once only
        await quotas[0].settle()
        assert await quotas[1].admit(IMAGE, {}, "repo")
        await stores[0].close()
        fallback = await quotas[0].admit(IMAGE, {}, "repo")  # its own count: 1 running
        assert fallback is not None and not fallback.store_id and quotas[0].reserved
        assert "counting this replica's launches only" in caplog.text
        quotas[0].release_slot(fallback)
        assert not quotas[0].reserved


async def test_a_pass_frees_its_own_dead_starts_only(database: MakeDatabase) -> None:
    """A ``starting`` row of this replica whose launch no longer runs (it ended by an unexpected
    error) would count against the pool's size for ever: the next pass deletes it. Another live
    replica's start, and a row that turned ready, are left alone."""
    from binderapi.warmpool import WarmPool
    from fixtures.server import make_settings

    async with two_stores(database) as (a, b):
        pool = WarmPool(make_settings({"WarmPool": {"enabled": True}}), None, None, None, None, store=a)  # type: ignore[arg-type]
        now = time.time()
        dead = await a.warm_claim_start(IMAGE, 10, pool.owner, now, 600)
        other = await b.warm_claim_start(IMAGE, 10, "other:1:1", now, 600)
        await pool.maintain()
        assert {row.id for row in await b.warm_servers()} == {other}
        assert dead not in {row.id for row in await b.warm_servers()}
