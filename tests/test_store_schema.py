"""The build store's schema at start-up, on every database of tests/fixtures/store.py (SQLite and
PostgreSQL): a database migrated by a newer binderapi is refused with a clear StoreError, and on
PostgreSQL replicas starting together migrate under an advisory lock, one at a time."""

from __future__ import annotations

import asyncio
import sys

import asyncpg
import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from binderapi.store import StoreError
from binderapi.store.sql import MIGRATION_LOCK_KEY, VERSION_TABLE, SQLBuildStore
from fixtures.postgres import _raw


def _head() -> str:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "binderapi.store:migrations")
    return ScriptDirectory.from_config(config).get_current_head()


async def test_a_schema_newer_than_the_code_is_refused(store_url: str) -> None:
    store = SQLBuildStore(store_url)
    await store.open()
    async with store.engine.begin() as connection:  # as a later binderapi's migration leaves it
        await connection.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = '9999_from_the_future'"))
    await store.close()

    newer = SQLBuildStore(store_url)
    with pytest.raises(StoreError) as caught:
        await newer.open()
    message = str(caught.value)
    assert "schema is at revision 9999_from_the_future, newer than this binderapi knows" in message
    assert f"its newest is {_head()}" in message and "BuildStore.url" in message
    assert newer.name in message and newer.engine is None  # which store; nothing left open
    if newer.url.password:
        assert newer.url.password not in message


#: A replica: imports everything, says "ready", waits for "go" on stdin, then opens the store.
REPLICA = """
import asyncio, sys
from binderapi.store.sql import SQLBuildStore

async def main():
    store = SQLBuildStore(sys.argv[1])
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await store.open()
    await store.close()
    print("opened", flush=True)

asyncio.run(main())
"""


@pytest.mark.postgres
async def test_replicas_starting_together_on_a_fresh_database_migrate_once(postgres_database: str) -> None:
    """Two processes (replicas) released at the same moment onto a fresh database both open it;
    the schema is migrated once, to head."""
    replicas = [await asyncio.create_subprocess_exec(
        sys.executable, "-c", REPLICA, postgres_database, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE) for _ in range(2)]
    try:
        for replica in replicas:
            assert await asyncio.wait_for(replica.stdout.readline(), 60) == b"ready\n"
        for replica in replicas:
            replica.stdin.write(b"go\n")
        results = await asyncio.wait_for(asyncio.gather(*(r.communicate() for r in replicas)), 60)
    finally:
        for replica in replicas:
            if replica.returncode is None:
                replica.kill()
                await replica.wait()
    assert [(r.returncode, out) for r, (out, _) in zip(replicas, results, strict=True)] == [(0, b"opened\n")] * 2, \
        [err.decode()[-2000:] for _, err in results]
    conn = await asyncpg.connect(_raw(postgres_database))
    try:
        assert await conn.fetch(f"SELECT version_num FROM {VERSION_TABLE}") == [(_head(),)]
    finally:
        await conn.close()


@pytest.mark.postgres
async def test_migrating_waits_for_the_advisory_lock(postgres_database: str) -> None:
    """A store opening while another process holds the migration lock waits for it (seen as a
    waiter in pg_locks, not by timing), then opens once the lock is released."""
    holder = await asyncpg.connect(_raw(postgres_database))
    store = SQLBuildStore(postgres_database)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        opening = asyncio.create_task(store.open())
        waiting = ("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                   "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
        for _ in range(200):
            if await holder.fetchval(waiting) == 1 or opening.done():
                break
            await asyncio.sleep(0.05)
        assert not opening.done() and await holder.fetchval(waiting) == 1
        assert await holder.fetchval("SELECT to_regclass($1)", VERSION_TABLE) is None  # nothing migrated yet
        await holder.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
        await asyncio.wait_for(opening, 30)
        assert await holder.fetchval(f"SELECT version_num FROM {VERSION_TABLE}") == _head()
    finally:
        await holder.close()
        await store.close()


@pytest.mark.postgres
async def test_connections_the_server_closed_are_replaced_not_failed(postgres_database: str) -> None:
    """A PostgreSQL restart (here: the server ending the store's sessions) costs no failed call."""
    store = SQLBuildStore(postgres_database)
    await store.open()
    admin = await asyncpg.connect(_raw(postgres_database))
    try:
        await asyncio.gather(*(store.ping() for _ in range(3)))  # several pooled connections
        ended = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        assert ended >= 1
        await asyncio.gather(*(store.ping() for _ in range(3)))
    finally:
        await admin.close()
        await store.close()


@pytest.mark.postgres
async def test_open_store_on_postgresql_from_the_settings(postgres_database: str) -> None:
    """``BuildStore.url`` as an operator writes it (``postgresql://``, the sync name) gets asyncpg."""
    from binderapi.store import open_store
    from fixtures.server import make_settings

    plain = make_url(postgres_database).set(drivername="postgresql").render_as_string(hide_password=False)
    store = await open_store(make_settings({"BuildStore": {"url": plain}}))
    try:
        assert store.url.drivername == "postgresql+asyncpg"
        await store.ping()
    finally:
        await store.close()
