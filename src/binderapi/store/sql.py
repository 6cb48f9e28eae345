"""The build store in SQL: SQLAlchemy 2 (async Core) on SQLite (aiosqlite, the embedded default) or
PostgreSQL (asyncpg), with its schema kept by the Alembic migrations in ``migrations/``.

The statements are dialect-neutral except the upserts, which use the ``INSERT ... ON CONFLICT``
both dialects share. Nothing assumes one process: rows are keyed by build id (and event ``seq``),
a repeated event is ignored, the log's head grows by ``head || new`` in the database itself, and
two processes may write the same file or database at once. Every driver or SQLAlchemy error
becomes a :class:`~binderapi.store.base.StoreError` naming the store (password hidden) and what
failed, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .base import (
    BuildFilter,
    BuildRecord,
    BuildState,
    BuildStore,
    StoredEvent,
    StoredLog,
    StoreError,
)

log = logging.getLogger(__name__)

#: The async driver of each supported database; a URL naming the database alone gets it.
DRIVERS = {"sqlite": "aiosqlite", "postgresql": "asyncpg"}
#: Alembic's version table, named so a database shared with JupyterHub (which has its own
#: ``alembic_version``) keeps both apart.
VERSION_TABLE = "binderapi_alembic_version"
#: The newest revision in ``migrations/versions`` (a test checks it against Alembic's head): a
#: database already there is opened without importing Alembic, which would stay in memory (7 MB).
SCHEMA_HEAD = "0001"
FINISHED = [state.value for state in BuildState if state.finished]
UNFINISHED = [state.value for state in BuildState if not state.finished]


#: One schema upgrade at a time per event loop: Alembic keeps its running migration in module
#: globals (``alembic.context``), so two stores of one process migrating at once (on different
#: databases, where no database lock orders them) would trample each other's.
_UPGRADE_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every database: SQLite keeps no offset, so values are
    stored in UTC and read back with ``tzinfo=UTC`` (naive values are refused, not guessed)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"a naive datetime cannot be stored: {value!r} (use an aware one)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = sa.MetaData()

builds = sa.Table(
    "builds", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("provider", sa.Text, nullable=False),
    sa.Column("repo_url", sa.Text, nullable=False),
    sa.Column("resolved_ref", sa.Text, nullable=False),
    sa.Column("image_name", sa.Text, nullable=False),
    sa.Column("build_name", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("cached", sa.Boolean, nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("queue_position", sa.Integer, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=True),
    sa.Column("finished_at", UTCDateTime, nullable=True),
    sa.Column("log_bytes", sa.BigInteger, nullable=False),
    sa.Column("owner", sa.Text, nullable=False),
    # the list filters, each with the id so "newest first" reads the index in order
    sa.Index("ix_builds_state_id", "state", "id"),
    sa.Index("ix_builds_image_name_id", "image_name", "id"),
    sa.Index("ix_builds_spec_id", "spec", "id"),
)

build_events = sa.Table(
    "build_events", metadata,
    sa.Column("build_id", sa.String(32), sa.ForeignKey("builds.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("data", sa.Text, nullable=False),
)

build_logs = sa.Table(
    "build_logs", metadata,
    sa.Column("build_id", sa.String(32), sa.ForeignKey("builds.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("head", sa.Text, nullable=False),
    sa.Column("tail", sa.Text, nullable=False),
    sa.Column("dropped_bytes", sa.BigInteger, nullable=False),
)

RECORD_FIELDS = [column.name for column in builds.columns]


def normalize_url(url: str | URL) -> URL:
    """The URL with its async driver (``sqlite://`` -> ``sqlite+aiosqlite://``); anything but
    SQLite or PostgreSQL, or another driver, is a StoreError."""
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise StoreError(f"build store: {url!r} is not a database URL ({e})") from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend not in DRIVERS:
        raise StoreError(f"build store: {parsed.render_as_string(hide_password=True)}: unsupported database "
                         f"{backend!r}; use {' or '.join(f'{b}+{d}://' for b, d in DRIVERS.items())}")
    if driver and driver != DRIVERS[backend]:
        raise StoreError(f"build store: {parsed.render_as_string(hide_password=True)}: driver {driver!r} is not "
                         f"async; use {backend}+{DRIVERS[backend]}://")
    if backend == "sqlite" and (parsed.database or ":memory:") == ":memory:":
        raise StoreError(f"build store {parsed.render_as_string(hide_password=True)}: an in-memory SQLite "
                         "database is private to one connection; name a file (sqlite+aiosqlite:///<path>)")
    return parsed.set(drivername=f"{backend}+{DRIVERS[backend]}")


def _reason(error: BaseException) -> str:
    """The driver's own words, without SQLAlchemy's statement dump and help link."""
    if isinstance(error, DBAPIError) and error.orig is not None:
        error = error.orig
    text = str(error).split("\n[SQL:", 1)[0].split("\n(Background", 1)[0].strip()
    return text or type(error).__name__


#: PostgreSQL advisory lock key held while migrating (any constant bigint: ASCII "binder").
#: Advisory locks are per database, so stores on different databases never wait for each other.
MIGRATION_LOCK_KEY = 0x62696E646572


@contextlib.contextmanager
def migration_lock(connection: Connection) -> Iterator[None]:
    """Held around the schema upgrade, in the upgrade's transaction, so processes or replicas that
    start together migrate one at a time (the later ones then find the schema current).

    SQLite: ``BEGIN IMMEDIATE`` takes the database's write lock (waiting up to the busy timeout)
    and makes the DDL transactional, which Python's sqlite3 otherwise commits statement by
    statement. PostgreSQL: its DDL is transactional already; ``pg_advisory_xact_lock`` makes the
    others wait (bounded by the driver's command timeout) until this transaction commits or rolls
    back, which releases it, even if the process dies.
    """
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    elif connection.dialect.name == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    yield


def schema_is_current(connection: Connection) -> bool:
    """Whether the schema is at :data:`SCHEMA_HEAD`, by a plain read of the version table (no
    lock, no Alembic). Alembic writes the version in the transaction of the migration, so a head
    seen here is a complete schema; anything else goes through :func:`upgrade_schema`, under the
    migration lock."""
    if not sa.inspect(connection).has_table(VERSION_TABLE):
        return False
    heads = connection.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    return heads == [SCHEMA_HEAD]


def create_schema(connection: Connection) -> None:
    """A database without our tables gets the model's schema and the version table at head in one
    go, Alembic's own recipe for a new database (``create_all``, then stamp), without importing
    Alembic (7 MB that would stay loaded). test_store checks that the migrations make this schema."""
    metadata.create_all(connection)
    version = sa.Table(VERSION_TABLE, sa.MetaData(),  # as Alembic makes its version table
                       sa.Column("version_num", sa.String(32), nullable=False),
                       sa.PrimaryKeyConstraint("version_num", name=f"{VERSION_TABLE}_pkc"))
    version.create(connection)
    connection.execute(version.insert().values(version_num=SCHEMA_HEAD))


def upgrade_schema(connection: Connection, revision: str = "head", *, store_name: str = "",
                   create: bool = True) -> None:
    """Bring the schema to ``revision`` with Alembic, on this (sync-facing) connection: call it
    through ``AsyncConnection.run_sync``, in a transaction the caller commits. Under the lock, a
    schema found at head is left alone and a new database is made by :func:`create_schema` (unless
    ``create`` is false); Alembic is imported only for a schema to migrate.

    A database whose schema is at a revision these migrations do not know was migrated by a newer
    binderapi: it is refused with a :class:`StoreError` rather than used (or "downgraded") blindly.
    """
    with migration_lock(connection):
        if revision == "head":
            if schema_is_current(connection):
                return  # another process migrated it while this one waited for the lock
            if create and not set(sa.inspect(connection).get_table_names()) & {*metadata.tables, VERSION_TABLE}:
                create_schema(connection)
                return

        from alembic import command
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        config = Config()
        config.set_main_option("script_location", "binderapi.store:migrations")
        config.attributes["connection"] = connection
        script = ScriptDirectory.from_config(config)
        known = {rev.revision for rev in script.walk_revisions()}
        current = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_heads()
        if unknown := [rev for rev in current if rev not in known]:
            raise StoreError(
                f"build store {store_name or connection.engine.url.render_as_string(hide_password=True)}: "
                f"its schema is at revision {', '.join(unknown)}, newer than this binderapi knows "
                f"(its newest is {script.get_current_head()}); run the binderapi version that migrated "
                f"it (or a later one), or set BuildStore.url to another database")
        command.upgrade(config, revision)


class SQLBuildStore(BuildStore):
    """:class:`BuildStore` on an SQLAlchemy async engine.

    ``busy_timeout`` bounds how long a write waits for another writer (SQLite's lock, a pool
    connection or PostgreSQL's connect); ``pool_size`` bounds the connections (and, for SQLite,
    the driver threads) one process keeps.
    """

    def __init__(self, url: str | URL, *, pool_size: int = 5, busy_timeout: float = 10.0) -> None:
        self.url = normalize_url(url)
        self.pool_size = pool_size
        self.busy_timeout = busy_timeout
        self.engine: AsyncEngine | None = None

    def __repr__(self) -> str:
        return f"SQLBuildStore({self.name!r})"

    @property
    def name(self) -> str:
        """The URL as logs and messages may show it (password hidden)."""
        return self.url.render_as_string(hide_password=True)

    @property
    def dialect(self) -> str:
        return self.url.get_backend_name()

    # -- connections and errors --------------------------------------------------------------------
    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except StoreError:
            raise
        except (SQLAlchemyError, OSError, TimeoutError, ValueError) as e:
            raise StoreError(f"build store {self.name}: {action} failed: {_reason(e)}") from e
        except Exception as e:  # a driver's own error class that SQLAlchemy did not wrap (asyncpg)
            if type(e).__module__.split(".")[0] in ("asyncpg", "aiosqlite", "sqlite3"):
                raise StoreError(f"build store {self.name}: {action} failed: {_reason(e)}") from e
            raise

    @contextlib.asynccontextmanager
    async def _begin(self, action: str) -> AsyncIterator[AsyncConnection]:
        """A connection in a transaction, committed on success; any error is a StoreError."""
        if self.engine is None:
            raise StoreError(f"build store {self.name}: {action} failed: the store is not open")
        with self._errors(action):
            async with self.engine.begin() as connection:
                yield connection

    def _make_engine(self) -> AsyncEngine:
        options: dict[str, Any] = {"pool_size": self.pool_size, "max_overflow": 0,
                                   "pool_timeout": self.busy_timeout, "pool_pre_ping": False}
        if self.dialect == "sqlite":
            options["connect_args"] = {"timeout": self.busy_timeout}
        else:
            options["connect_args"] = {"timeout": self.busy_timeout, "command_timeout": 60}
            # a server restart or failover, or a proxy's idle cut, closes pooled connections: check
            # each on checkout (one round trip) so the next write reconnects instead of failing once
            options["pool_pre_ping"] = True
        with self._errors("connecting"):
            engine = create_async_engine(self.url, **options)
        if self.dialect == "sqlite":
            busy_ms = int(self.busy_timeout * 1000)

            @sa.event.listens_for(engine.sync_engine, "connect")
            def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
                """WAL (readers never wait for the writer), a busy wait instead of an instant
                "database is locked", and foreign keys (off by default in SQLite)."""
                cursor = dbapi_connection.cursor()
                for pragma in (f"busy_timeout = {busy_ms}", "foreign_keys = ON", "journal_mode = WAL",
                               "synchronous = NORMAL"):
                    cursor.execute(f"PRAGMA {pragma}")
                cursor.close()

        return engine

    # -- lifecycle -----------------------------------------------------------------------------------
    async def open(self) -> None:
        if self.engine is not None:
            return
        if self.dialect == "sqlite":
            await asyncio.to_thread(self._make_directory, self.url.database)
        self.engine = self._make_engine()
        try:
            async with self._begin("reading the schema version") as connection:
                current = await connection.run_sync(schema_is_current)
            if not current:
                async with _UPGRADE_LOCKS.setdefault(asyncio.get_running_loop(), asyncio.Lock()):
                    async with self._begin("migrating the schema") as connection:
                        await connection.run_sync(upgrade_schema, store_name=self.name)
        except BaseException:
            await self.close()
            raise
        log.debug("build store %s open, schema current", self.name)

    def _make_directory(self, database: str) -> None:
        """The database file's directory, made private (0700) if it is new: build logs may hold
        whatever a repository's build printed."""
        directory = Path(database).expanduser().parent
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"build store {self.name}: cannot create its directory {directory}: "
                             f"{e.strerror or e}") from e

    async def close(self) -> None:
        engine, self.engine = self.engine, None
        if engine is not None:
            with contextlib.suppress(Exception):
                await engine.dispose()

    async def ping(self) -> None:
        async with self._begin("ping") as connection:
            await connection.execute(sa.text("SELECT 1"))

    # -- builds --------------------------------------------------------------------------------------
    def _insert(self, table: sa.Table) -> Any:
        """``INSERT`` with ``ON CONFLICT`` support, as both dialects spell it."""
        if self.dialect == "sqlite":
            return sqlite.insert(table)
        # only for PostgreSQL: 3 MB an SQLite store never needs
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table)

    async def save(self, records: list[BuildRecord]) -> None:
        if not records:
            return
        rows = [{name: getattr(record, name) for name in RECORD_FIELDS} for record in records]
        for row in rows:
            row["state"] = BuildState(row["state"]).value
        insert = self._insert(builds)
        statement = insert.on_conflict_do_update(
            index_elements=[builds.c.id],
            set_={name: insert.excluded[name] for name in RECORD_FIELDS if name != "id"},
        )
        async with self._begin(f"saving {len(records)} build(s)") as connection:
            await connection.execute(statement, rows)

    @staticmethod
    def _record(row: sa.Row[Any]) -> BuildRecord:
        values = row._asdict()
        values["state"] = BuildState(values["state"])
        return BuildRecord(**values)

    async def get(self, build_id: str) -> BuildRecord | None:
        async with self._begin(f"reading build {build_id}") as connection:
            row = (await connection.execute(sa.select(builds).where(builds.c.id == build_id))).first()
        return self._record(row) if row else None

    async def list(self, query: BuildFilter) -> list[BuildRecord]:
        statement = sa.select(builds).order_by(builds.c.id.desc()).limit(max(0, query.limit))
        if query.state is not None:
            statement = statement.where(builds.c.state == BuildState(query.state).value)
        if query.image_name is not None:
            statement = statement.where(builds.c.image_name == query.image_name)
        if query.spec_prefix:
            statement = statement.where(builds.c.spec.startswith(query.spec_prefix, autoescape=True))
        if query.before is not None:
            statement = statement.where(builds.c.id < query.before)
        async with self._begin("listing builds") as connection:
            rows = (await connection.execute(statement)).all()
        return [self._record(row) for row in rows]

    async def latest_for_image(self, image_name: str, *, cached: bool | None = None) -> BuildRecord | None:
        statement = sa.select(builds).where(builds.c.image_name == image_name)
        if cached is not None:
            statement = statement.where(builds.c.cached == cached)
        statement = statement.order_by(builds.c.id.desc()).limit(1)
        async with self._begin(f"finding the latest build of {image_name}") as connection:
            row = (await connection.execute(statement)).first()
        return self._record(row) if row else None

    async def unfinished(self) -> list[BuildRecord]:
        statement = sa.select(builds).where(builds.c.state.in_(UNFINISHED)).order_by(builds.c.id)
        async with self._begin("listing unfinished builds") as connection:
            rows = (await connection.execute(statement)).all()
        return [self._record(row) for row in rows]

    # -- events and logs -----------------------------------------------------------------------------
    async def append(self, build_id: str, events: list[StoredEvent], log_head: str = "",
                     log_tail: str | None = None, dropped_bytes: int = 0) -> None:
        """See :meth:`BuildStore.append`. The build must have been saved first (a foreign key)."""
        async with self._begin(f"appending to build {build_id}") as connection:
            if events:
                statement = self._insert(build_events).on_conflict_do_nothing(
                    index_elements=[build_events.c.build_id, build_events.c.seq])
                await connection.execute(
                    statement, [{"build_id": build_id, "seq": e.seq, "data": e.data} for e in events])
            if log_head or log_tail is not None:
                insert = self._insert(build_logs).values(
                    build_id=build_id, head=log_head, tail=log_tail or "", dropped_bytes=dropped_bytes)
                changes: dict[str, Any] = {"head": build_logs.c.head + insert.excluded.head}
                if log_tail is not None:
                    changes |= {"tail": insert.excluded.tail, "dropped_bytes": insert.excluded.dropped_bytes}
                await connection.execute(
                    insert.on_conflict_do_update(index_elements=[build_logs.c.build_id], set_=changes))

    async def events_after(self, build_id: str, after: int = 0, limit: int = 1000) -> list[StoredEvent]:
        statement = (sa.select(build_events.c.seq, build_events.c.data)
                     .where(build_events.c.build_id == build_id, build_events.c.seq > after)
                     .order_by(build_events.c.seq).limit(max(0, limit)))
        async with self._begin(f"reading the events of build {build_id}") as connection:
            rows = (await connection.execute(statement)).all()
        return [StoredEvent(seq=row.seq, data=row.data) for row in rows]

    async def read_log(self, build_id: str) -> StoredLog | None:
        """The build's log; an empty one for a build without output yet, None for no such build."""
        statement = (sa.select(builds.c.id, build_logs.c.head, build_logs.c.tail, build_logs.c.dropped_bytes)
                     .select_from(builds.outerjoin(build_logs, build_logs.c.build_id == builds.c.id))
                     .where(builds.c.id == build_id))
        async with self._begin(f"reading the log of build {build_id}") as connection:
            row = (await connection.execute(statement)).first()
        if row is None:
            return None
        return StoredLog(head=row.head or "", tail=row.tail or "", dropped_bytes=row.dropped_bytes or 0)

    # -- retention -----------------------------------------------------------------------------------
    async def delete_finished_before(self, cutoff: datetime, *, batch: int = 500) -> int:
        """Deletes in batches of ``batch`` builds (events and logs go with them by the foreign
        keys' cascade), each its own short transaction, so live writers are never held up long."""
        deleted = 0
        while True:
            async with self._begin("deleting old builds") as connection:
                ids = (await connection.execute(
                    sa.select(builds.c.id)
                    .where(builds.c.state.in_(FINISHED), builds.c.created_at < cutoff)
                    .order_by(builds.c.id).limit(batch))).scalars().all()
                if ids:
                    await connection.execute(sa.delete(builds).where(builds.c.id.in_(ids)))
            deleted += len(ids)
            if len(ids) < batch:
                return deleted
