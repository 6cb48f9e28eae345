"""The warm pool and the launch quota with several replicas (issue 13, item 6): two binderapi
instances (two :class:`~binderapi.services.Services`, each with its own pool, quota, engine client
and store connections) on one real JupyterHub + DockerSpawner, one Docker engine and one real
PostgreSQL database (``scripts/infra.sh``) share one pool, hand each server out once, keep the
pool's size over both, adopt a stopped replica's servers, and never launch past the quota."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa

import test_warmpool
from binderapi.store.sql import SQLBuildStore, warm_servers
from fixtures.server import read_events, serve
from test_warmpool import HANDOVER_MESSAGE, eventually, gone, launching, pool_settings

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.postgres]

# the warm pool tests' fixtures: an image that needs no build, the session's hub emptied after each test
warm_image = test_warmpool.warm_image
hub = test_warmpool.hub

TOO_MANY = {"phase": "failed", "message": "Too many users on this BinderHub! Try again soon.\n"}


def shared(hub, warm_image, database: str, pool: dict, config: dict | None = None, **binderhub):
    return pool_settings(hub, warm_image, pool, {"BuildStore": {"url": database}, **(config or {})}, **binderhub)


async def rows(database: str) -> list:
    store = SQLBuildStore(database)
    await store.open()
    try:
        return await store.warm_servers()
    finally:
        await store.close()


def username(ready: dict, hub) -> str:
    return ready["url"].removeprefix(hub.url + "user/").rstrip("/")


async def test_two_replicas_share_one_pool(client, hub, warm_image, postgres_database):
    settings = shared(hub, warm_image, postgres_database, {"images": {warm_image.image: 2}, "refill_concurrency": 2})
    async with serve(settings) as a, serve(settings) as b:
        pools = a.services.warm_pool, b.services.warm_pool
        assert all(pool.store is not None for pool in pools)

        async def ready_rows() -> list:
            return [row for row in await rows(postgres_database) if row.state == "ready"]

        await eventually(lambda: _count(ready_rows, 2), "two warm servers in the shared pool")
        # the pool's size is the pool's: two servers in all, not two per replica
        for pool in pools:
            await pool.maintain()
        assert len(await rows(postgres_database)) == 2
        warm_users = {row.username for row in await ready_rows()}
        assert len(warm_users) == 2 and {row.owner for row in await ready_rows()} <= {p.owner for p in pools}
        # four concurrent launches, two through each replica: each warm server handed out once
        results = await asyncio.gather(*(read_events(client, svc.url + "build/" + warm_image.spec)
                                         for svc in (a, b, a, b)))
        readies = [events[-1] for events in results]
        assert [r["phase"] for r in readies] == ["ready"] * 4, results
        users = [username(r, hub) for r in readies]
        assert len(set(users)) == 4
        handed = [events for events in results if launching(events) == [HANDOVER_MESSAGE]]
        assert len(handed) == 2 and {username(e[-1], hub) for e in handed} == warm_users
        for ready in readies:
            status = await client.get(ready["url"] + "api/status", params={"token": ready["token"]})
            assert status.status_code == 200, status.text
        # refilled back to two in all, with new users; the handed-over ones are no longer the pool's
        await eventually(lambda: _count(ready_rows, 2), "the refill")
        refill = {row.username for row in await ready_rows()}
        assert not refill & set(users)
        health = (await client.get(b.url + "health")).json()
        (check,) = [c for c in health["checks"] if c["service"] == "Warm pool"]
        assert check["images"][warm_image.image]["target"] == 2
    # both replicas stopped: the pool's servers are gone, the clients' still run
    for user in refill:
        assert await gone(hub, user)
    for user in users:
        assert (await hub.user(user))["servers"][""]["ready"]
    assert await rows(postgres_database) == []


async def _count(ready_rows, n: int) -> bool:
    return len(await ready_rows()) == n


async def test_a_stopped_replicas_servers_are_adopted(client, hub, warm_image, postgres_database):
    settings = shared(hub, warm_image, postgres_database, {})
    async with serve(settings) as a:
        await eventually(lambda: _count(lambda: _ready(postgres_database), 1), "a warm server")
        (row,) = await _ready(postgres_database)
        # the replica dies without its shutdown: its row stays, its lease runs out
        a.services.warm_pool.store = None  # (its shutdown no longer reaches the store)
        a.services.warm_pool.pools.clear()
    store = SQLBuildStore(postgres_database)
    await store.open()
    try:
        async with store.engine.begin() as connection:
            await connection.execute(sa.update(warm_servers).values(lease_expires=0))
    finally:
        await store.close()
    assert (await hub.user(row.username))["servers"][""]["ready"]
    async with serve(shared(hub, warm_image, postgres_database, {})) as b:
        pool = b.services.warm_pool
        await eventually(lambda: pool.adopted == 1, "the adoption")
        (adopted,) = await _ready(postgres_database)
        assert (adopted.id, adopted.owner) == (row.id, pool.owner)
        events = await read_events(client, b.url + "build/" + warm_image.spec)
        assert launching(events) == [HANDOVER_MESSAGE] and username(events[-1], hub) == row.username
        status = await client.get(events[-1]["url"] + "api/status", params={"token": events[-1]["token"]})
        assert status.status_code == 200, status.text


async def _ready(database: str) -> list:
    return [row for row in await rows(database) if row.state == "ready"]


async def test_two_replicas_launching_at_once_never_exceed_the_quota(client, hub, warm_image, postgres_database):
    """Each replica sees room for one more server; only one of them may start it."""
    settings = shared(hub, warm_image, postgres_database, {"enabled": False}, {"LaunchQuota": {"total_quota": 1}})
    async with serve(settings) as a, serve(settings) as b:
        results = await asyncio.gather(*(read_events(client, svc.url + "build/" + warm_image.spec) for svc in (a, b)))
        finals = sorted((events[-1] for events in results), key=lambda e: e["phase"])
        assert finals[0] == TOO_MANY and finals[1]["phase"] == "ready", results
        await eventually(lambda: a.services.quota.total_servers() == b.services.quota.total_servers() == 1,
                         "the server counted by both replicas")
        assert await _slots(postgres_database) == 0  # every slot given back


async def test_concurrent_launches_on_one_process_never_exceed_the_quota(client, hub, warm_image):
    settings = pool_settings(hub, warm_image, {"enabled": False}, {"LaunchQuota": {"total_quota": 1}})
    async with serve(settings) as svc:
        results = await asyncio.gather(*(read_events(client, svc.url + "build/" + warm_image.spec) for _ in range(2)))
        finals = sorted((events[-1] for events in results), key=lambda e: e["phase"])
        assert finals[0] == TOO_MANY and finals[1]["phase"] == "ready", results
        assert not svc.services.quota.reserved  # the slot was given back


async def _slots(database: str) -> int:
    from binderapi.store.sql import launch_slots

    store = SQLBuildStore(database)
    await store.open()
    try:
        async with store.engine.begin() as connection:
            return (await connection.execute(sa.select(sa.func.count()).select_from(launch_slots))).scalar_one()
    finally:
        await store.close()
