"""The SQL build store against a real database (tests/fixtures/store.py: an SQLite file by default):
every method's round trip, the list's filters and pages, events and logs, retention, migrations,
two stores on one database, and a clear StoreError for every way the database can be unusable."""

from __future__ import annotations

import asyncio
import stat
import subprocess
import sys
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from binderapi.store import (
    BuildFilter,
    BuildRecord,
    BuildState,
    StoredEvent,
    StoredLog,
    StoreError,
    open_store,
    store_url,
    sweep,
)
from binderapi.store.sql import SCHEMA_HEAD, VERSION_TABLE, SQLBuildStore, metadata, normalize_url
from fixtures.server import make_settings

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def record(n: int = 0, **changes) -> BuildRecord:
    """A build with every field set; ids follow ``n`` (a larger ``n`` is newer)."""
    values = dict(
        id=f"{n:012x}{'ab' * 5}", spec=f"gh/org/repo{n % 3}/HEAD", provider="GitHub",
        repo_url=f"https://github.com/org/repo{n % 3}", resolved_ref=f"{n:040x}",
        image_name=f"127.0.0.1:5000/binder-repo{n % 3}:{n}", build_name=f"build-repo{n % 3}-{n}",
        state=BuildState.built, cached=False, message="", queue_position=None,
        created_at=NOW + timedelta(seconds=n), started_at=NOW + timedelta(seconds=n + 1),
        finished_at=NOW + timedelta(seconds=n + 2), log_bytes=123 * n, owner="host:1:2",
    )
    values.update(changes)
    return BuildRecord(**values)


def event(seq: int, phase: str = "building") -> StoredEvent:
    return StoredEvent(seq, f'{{"phase":"{phase}","message":"line {seq}\\n","build_id":"b"}}')


# -- builds -------------------------------------------------------------------------------------------
async def test_save_and_get_round_trip_every_field(store):
    build = record(1, state=BuildState.building, queue_position=3, finished_at=None, message="why ü",
                   created_at=datetime(2026, 11, 30, 13, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1))))
    await store.save([build])
    got = await store.get(build.id)
    assert got == build
    assert got.created_at.tzinfo is UTC and got.created_at == datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=UTC)
    assert isinstance(got.state, BuildState)
    assert await store.get("no-such-build") is None


async def test_save_updates_whole_records_by_id_in_one_call(store):
    first, second = record(1, state=BuildState.queued, finished_at=None), record(2)
    await store.save([first, second])
    done = replace(first, state=BuildState.failed, message="it broke", finished_at=NOW, log_bytes=9)
    await store.save([done, second])
    assert await store.get(first.id) == done
    assert len(await store.list(BuildFilter())) == 2
    await store.save([])  # nothing to do, no error


async def test_a_naive_datetime_is_refused_not_guessed(store):
    with pytest.raises(StoreError, match="naive datetime"):
        await store.save([record(1, created_at=datetime(2026, 1, 1))])


async def test_list_newest_first_with_filters_and_cursor_pages(store):
    records = [record(n, state=BuildState.failed if n % 2 else BuildState.built) for n in range(1, 11)]
    await store.save(records[::-1])
    newest_first = [r.id for r in sorted(records, key=lambda r: r.id, reverse=True)]
    assert [r.id for r in await store.list(BuildFilter())] == newest_first

    pages, before = [], None
    while page := await store.list(BuildFilter(limit=4, before=before)):
        pages.append([r.id for r in page])
        before = page[-1].id
    assert [len(p) for p in pages] == [4, 4, 2] and sum(pages, []) == newest_first

    failed = await store.list(BuildFilter(state=BuildState.failed))
    assert [r.id for r in failed] == [r.id for r in records[::-1] if r.state == BuildState.failed]
    assert [r.id for r in await store.list(BuildFilter(image_name=records[4].image_name))] == [records[4].id]
    by_spec = await store.list(BuildFilter(spec_prefix="gh/org/repo1/HEAD"))
    assert {r.spec for r in by_spec} == {"gh/org/repo1/HEAD"} and len(by_spec) == 4
    assert len(await store.list(BuildFilter(spec_prefix="gh/org/"))) == 10
    combined = await store.list(BuildFilter(spec_prefix="gh/org/repo1", state=BuildState.failed, limit=1))
    assert [r.id for r in combined] == [records[6].id]  # n = 7: repo1, failed, the newest of them
    assert await store.list(BuildFilter(limit=0)) == []


async def test_spec_prefix_is_literal_not_a_pattern(store):
    await store.save([record(1, spec="gh/a_b/c%d/HEAD"), record(2, spec="gh/aXb/cYd/HEAD")])
    assert [r.spec for r in await store.list(BuildFilter(spec_prefix="gh/a_b/c%"))] == ["gh/a_b/c%d/HEAD"]


async def test_latest_for_image_and_unfinished(store):
    image = "127.0.0.1:5000/binder-x:1"
    await store.save([
        record(1, image_name=image, cached=False),
        record(2, image_name=image, cached=True),
        record(3, image_name=image, cached=False, state=BuildState.building, finished_at=None),
        record(4, state=BuildState.queued, started_at=None, finished_at=None),
    ])
    assert (await store.latest_for_image(image)).id == record(3).id
    assert (await store.latest_for_image(image, cached=True)).id == record(2).id
    assert (await store.latest_for_image(image, cached=False)).id == record(3).id
    assert await store.latest_for_image("127.0.0.1:5000/binder-none:1") is None
    assert [r.id for r in await store.unfinished()] == [record(3).id, record(4).id]


# -- events and logs --------------------------------------------------------------------------------
async def test_events_in_order_after_a_seq_and_a_repeated_seq_is_ignored(store):
    build = record(1)
    await store.save([build])
    await store.append(build.id, [event(n) for n in range(1, 201)])  # one batch of 200
    await store.append(build.id, [StoredEvent(5, "a different event 5"), event(201, "ready")])
    events = await store.events_after(build.id)
    assert [e.seq for e in events] == list(range(1, 202))
    assert events[4] == event(5)  # the first write of seq 5 stands
    assert [e.seq for e in await store.events_after(build.id, after=198)] == [199, 200, 201]
    assert [e.seq for e in await store.events_after(build.id, after=10, limit=3)] == [11, 12, 13]
    assert await store.events_after(build.id, after=201) == []
    assert await store.events_after("no-such-build") == []


async def test_log_head_appends_tail_replaces_and_text_marks_the_gap(store):
    build = record(1)
    await store.save([build])
    assert await store.read_log(build.id) == StoredLog("")  # a build without output yet
    assert await store.read_log("no-such-build") is None

    await store.append(build.id, [], log_head="Step 1\n")
    await store.append(build.id, [event(1)], log_head="Step 2\n")
    assert await store.read_log(build.id) == StoredLog("Step 1\nStep 2\n")
    assert (await store.read_log(build.id)).text() == "Step 1\nStep 2\n"

    await store.append(build.id, [], log_tail="line 9\n", dropped_bytes=100)
    await store.append(build.id, [], log_tail="line 10\n", dropped_bytes=107)
    kept = await store.read_log(build.id)
    assert kept == StoredLog("Step 1\nStep 2\n", "line 10\n", 107)
    assert kept.text() == ("Step 1\nStep 2\n\n[... 107 bytes of build output omitted "
                           "(BuildStore.max_log_bytes) ...]\nline 10\n")

    other = record(2)  # a tail first, the head never written: the row is made by the tail
    await store.save([other])
    await store.append(other.id, [], log_tail="only a tail\n", dropped_bytes=0)
    assert (await store.read_log(other.id)).text() == "only a tail\n"


async def test_appending_to_an_unsaved_build_is_a_store_error(store):
    with pytest.raises(StoreError, match="appending to build nope"):
        await store.append("nope", [event(1)])


# -- retention ------------------------------------------------------------------------------------------
async def test_sweep_deletes_old_finished_builds_with_their_events_and_logs(store):
    now = datetime.now(UTC)
    old = [record(n, state=state, created_at=now - timedelta(days=40))
           for n, state in enumerate([BuildState.built, BuildState.failed, BuildState.cancelled], 1)]
    old_running = record(4, state=BuildState.building, finished_at=None, created_at=now - timedelta(days=40))
    old_queued = record(5, state=BuildState.queued, finished_at=None, created_at=now - timedelta(days=40))
    recent = record(6, created_at=now - timedelta(days=29))
    await store.save([*old, old_running, old_queued, recent])
    for build in [*old, old_running, recent]:
        await store.append(build.id, [event(1), event(2)], log_head="output\n")

    assert await sweep(store, 0) == 0  # 0 keeps forever
    assert len(await store.list(BuildFilter())) == 6
    assert await sweep(store, 30) == 3
    assert {r.id for r in await store.list(BuildFilter())} == {old_running.id, old_queued.id, recent.id}
    for build in old:
        assert await store.get(build.id) is None
        assert await store.events_after(build.id) == [] and await store.read_log(build.id) is None
    assert len(await store.events_after(old_running.id)) == 2
    assert (await store.read_log(recent.id)).text() == "output\n"
    # no orphan rows left behind in the child tables
    async with store.engine.connect() as connection:
        counts = {table: await connection.scalar(sa.text(f"SELECT count(*) FROM {table}"))
                  for table in ("build_events", "build_logs")}
    assert counts == {"build_events": 4, "build_logs": 2}  # old_running's and recent's


async def test_delete_finished_before_works_in_batches(store):
    old = datetime.now(UTC) - timedelta(days=1)
    await store.save([record(n, created_at=old) for n in range(1, 8)])
    assert await store.delete_finished_before(datetime.now(UTC), batch=3) == 7
    assert await store.list(BuildFilter()) == []


# -- migrations and several stores ----------------------------------------------------------------
async def test_migrations_are_applied_on_open_and_a_second_open_is_a_no_op(store, store_url):
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()

    def check(connection):
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        assert context.get_current_revision() == head
        assert compare_metadata(context, metadata) == []  # the migrations make exactly the model's schema

    async with store.engine.connect() as connection:
        await connection.run_sync(check)
    await store.save([record(1)])

    again = SQLBuildStore(store_url)
    await again.open()
    try:
        assert (await again.get(record(1).id)) == record(1)
        async with again.engine.connect() as connection:
            await connection.run_sync(check)
    finally:
        await again.close()


#: A restart: opens the store on an existing database, says which heavy modules it imported.
OPEN_AND_LIST_MODULES = """
import asyncio, sys
from binderapi.store.sql import SQLBuildStore

async def main():
    store = SQLBuildStore(sys.argv[1])
    await store.open()
    await store.close()

asyncio.run(main())
print(" ".join(sorted(m for m in ("alembic", "sqlalchemy.dialects.postgresql") if m in sys.modules)))
"""


def test_schema_head_is_alembics_head():
    assert SCHEMA_HEAD == ScriptDirectory.from_config(_alembic_config()).get_current_head()


async def test_a_new_or_current_schema_is_opened_without_alembic(store_url):
    """Alembic stays in memory once imported (7 MB), the PostgreSQL dialect too (3 MB): neither
    the first start on a new database nor a restart on a current schema needs Alembic, and an
    SQLite store never needs the PostgreSQL dialect."""
    expected = "sqlalchemy.dialects.postgresql" if normalize_url(store_url).get_backend_name() == "postgresql" else ""
    for _start in ("new database", "restart"):
        opened = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", OPEN_AND_LIST_MODULES, store_url],
            capture_output=True, text=True, timeout=60, check=True)
        assert opened.stdout.strip() == expected, _start


async def test_the_migrations_make_the_schema_a_new_database_gets(store_url):
    """The two ways to a schema at head agree: Alembic's migrations from nothing (``create``
    off) and :func:`create_schema` (``test_migrations_are_applied_on_open...`` checks that one)."""
    from binderapi.store.sql import upgrade_schema

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    migrated = SQLBuildStore(store_url)
    if migrated.dialect == "sqlite":
        migrated._make_directory(migrated.url.database)
    migrated.engine = migrated._make_engine()
    try:
        async with migrated.engine.begin() as connection:
            await connection.run_sync(upgrade_schema, create=False)

        def check(connection):
            context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
            assert context.get_current_revision() == head
            assert compare_metadata(context, metadata) == []
            columns = sa.inspect(connection).get_columns(VERSION_TABLE)
            assert [(c["name"], c["nullable"]) for c in columns] == [("version_num", False)]

        async with migrated.engine.connect() as connection:
            await connection.run_sync(check)
    finally:
        await migrated.close()


def _alembic_config():
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "binderapi.store:migrations")
    return config


async def test_two_stores_on_one_database_see_each_others_writes(store, store_url):
    other = SQLBuildStore(store_url)  # another process (worker or replica) on the same database
    await other.open()
    try:
        build = record(1, state=BuildState.building, finished_at=None)
        await store.save([build])
        assert await other.get(build.id) == build
        await asyncio.gather(other.append(build.id, [event(1), event(2)], log_head="a\n"),
                             store.append(build.id, [event(2), event(3)], log_head="b\n"))
        assert [e.seq for e in await store.events_after(build.id)] == [1, 2, 3]
        assert sorted((await other.read_log(build.id)).head.splitlines()) == ["a", "b"]
        await other.save([replace(build, state=BuildState.built, finished_at=NOW)])
        assert (await store.get(build.id)).state == BuildState.built
        assert await store.unfinished() == []
    finally:
        await other.close()


async def test_stores_opening_a_new_database_at_once_migrate_one_at_a_time(store_url):
    """Workers starting together on a fresh database: one migrates, the others find it current."""
    stores = [SQLBuildStore(store_url) for _ in range(4)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        await stores[0].save([record(1)])
        assert all([await s.get(record(1).id) == record(1) for s in stores])
    finally:
        for s in stores:
            await s.close()


async def test_stores_of_one_process_migrate_different_databases_at_once(tmp_path):
    """Alembic keeps the running migration in module globals: one process opening stores on
    several databases at once (no database lock orders them) must not mix them up."""
    stores = [SQLBuildStore(f"sqlite+aiosqlite:///{tmp_path / f'builds{n}.sqlite3'}") for n in range(4)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        for s in stores:
            await s.save([record(1)])
    finally:
        for s in stores:
            await s.close()


async def test_many_concurrent_writers_do_not_fail(store, store_url):
    """Concurrent transactions wait for each other (busy timeout, bounded pool) instead of failing."""
    other = SQLBuildStore(store_url, pool_size=2)
    await other.open()
    try:
        builds = [record(n, state=BuildState.building, finished_at=None) for n in range(1, 21)]
        await store.save(builds)
        await asyncio.gather(*(s.append(b.id, [event(1)], log_head="x") for b in builds for s in (store, other)))
        assert all([len(await store.events_after(b.id)) == 1 for b in builds])
        assert all([(await store.read_log(b.id)).head == "xx" for b in builds])
    finally:
        await other.close()


# -- open_store and the settings ------------------------------------------------------------------
async def test_open_store_uses_the_state_dir_and_makes_it(tmp_path):
    state_dir = tmp_path / "deep" / "state"
    settings = make_settings({"BuildStore": {"state_dir": str(state_dir)}})
    assert store_url(settings.BuildStore) == f"sqlite+aiosqlite:///{state_dir / 'builds.sqlite3'}"
    store = await open_store(settings)
    try:
        await store.ping()
        assert (state_dir / "builds.sqlite3").is_file()
        assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700  # build logs are not for every local user
        async with store.engine.connect() as connection:
            assert await connection.scalar(sa.text("PRAGMA journal_mode")) == "wal"
            assert await connection.scalar(sa.text("PRAGMA foreign_keys")) == 1
            assert await connection.scalar(sa.text("PRAGMA busy_timeout")) == 10_000
    finally:
        await store.close()


def test_the_default_state_dir_follows_xdg(monkeypatch, tmp_path):
    section = make_settings({"BuildStore": {"state_dir": ""}}).BuildStore  # (tests get a tmp dir otherwise)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert store_url(section) == f"sqlite+aiosqlite:///{tmp_path / 'binderapi' / 'builds.sqlite3'}"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert store_url(section) == f"sqlite+aiosqlite:///{tmp_path / 'home/.local/state/binderapi/builds.sqlite3'}"
    url = "postgresql+asyncpg://binder:pw@db.example/binder"
    assert store_url(make_settings({"BuildStore": {"url": url}}).BuildStore) == url


def test_settings_defaults_and_the_url_is_secret():
    from binderapi.settings import dump_settings

    section = make_settings().BuildStore
    assert (section.enabled, section.url, section.retention_days, section.max_log_bytes,
            section.flush_interval) == (True, "", 30, 1024**2, 0.25)
    settings = make_settings({"BuildStore": {"url": "postgresql://binder:hunter2@db/binder", "max_log_bytes": "2M"}})
    assert settings.BuildStore.max_log_bytes == 2 * 1024**2
    assert "hunter2" not in str(dump_settings(settings))


def test_sync_driver_names_get_their_async_driver():
    assert normalize_url("sqlite:////x/y.db").drivername == "sqlite+aiosqlite"
    assert normalize_url("postgresql://u:p@h/d").drivername == "postgresql+asyncpg"
    assert normalize_url("postgresql+asyncpg://u:p@h/d").drivername == "postgresql+asyncpg"


# -- an unusable database: a clear StoreError, nothing left open --------------------------------------
def _threads() -> set[threading.Thread]:
    return set(threading.enumerate())


async def _open_fails(url: str, match: str) -> str:
    before = _threads()
    store = SQLBuildStore(url)
    with pytest.raises(StoreError, match=match) as failure:
        await store.open()
    await store.close()  # after a failed open: no error
    await store.close()
    with pytest.raises(StoreError, match="not open"):
        await store.get("x")
    for _ in range(100):  # the driver's connection threads end
        if not (_threads() - before):
            break
        await asyncio.sleep(0.01)
    assert not (_threads() - before), "a failed open left connections behind"
    message = str(failure.value)
    assert "Traceback" not in message and "[SQL:" not in message
    return message


async def test_a_corrupt_file_is_a_store_error(tmp_path):
    path = tmp_path / "builds.sqlite3"
    path.write_bytes(b"this is not an SQLite database, just some bytes " * 200)
    message = await _open_fails(f"sqlite+aiosqlite:///{path}", "file is not a database")
    assert str(path) in message


async def test_an_unwritable_directory_is_a_store_error(tmp_path):
    (tmp_path / "a-file").write_text("")  # a directory cannot be made inside a file, even as root
    await _open_fails(f"sqlite+aiosqlite:///{tmp_path / 'a-file' / 'state' / 'builds.sqlite3'}",
                      "cannot create its directory")


@pytest.mark.parametrize("url, match", [
    ("not a url", "is not a database URL"),
    ("mysql+aiomysql://u:hunter2@127.0.0.1/db", "unsupported database 'mysql'"),
    ("sqlite+pysqlite:////tmp/x.db", "driver 'pysqlite' is not async"),
    ("sqlite+aiosqlite://", "in-memory SQLite database is private to one connection"),
    ("sqlite:///:memory:", "in-memory SQLite database is private to one connection"),
])
def test_a_bad_url_is_a_store_error(url, match):
    with pytest.raises(StoreError, match=match) as failure:
        SQLBuildStore(url)
    assert "hunter2" not in str(failure.value)


async def test_an_unreachable_database_is_a_store_error_without_its_password():
    from fixtures.server import free_port

    message = await _open_fails(f"postgresql+asyncpg://binder:hunter2@127.0.0.1:{free_port()}/binder",
                                "build store postgresql\\+asyncpg://binder:\\*\\*\\*@127.0.0.1:.*failed")
    assert "hunter2" not in message


async def test_a_closed_store_is_a_store_error_and_holds_no_connections(store_url):
    store = SQLBuildStore(store_url)
    with pytest.raises(StoreError, match="not open"):
        await store.ping()
    before = _threads()
    await store.open()
    await asyncio.gather(*(store.ping() for _ in range(10)))  # several pooled connections
    await store.close()
    with pytest.raises(StoreError, match="not open"):
        await store.save([record(1)])
    for _ in range(100):  # SQLite's driver runs a thread per connection: all have ended
        if not (_threads() - before):
            break
        await asyncio.sleep(0.01)
    assert not (_threads() - before)


async def test_a_file_broken_after_open_is_a_store_error(tmp_path):
    """The database going bad under a running store (a table dropped here): a StoreError naming
    the operation and the database's reason."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'builds.sqlite3'}"
    store = SQLBuildStore(url)
    await store.open()
    try:
        async with store.engine.begin() as connection:
            await connection.execute(sa.text("DROP TABLE build_logs"))
        await store.save([record(1)])
        with pytest.raises(StoreError, match=r"appending to build .*no such table: build_logs"):
            await store.append(record(1).id, [], log_head="x")
    finally:
        await store.close()
