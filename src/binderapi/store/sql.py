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

from ..retry import wait_after
from .base import (
    BUILDS_CHANNEL,
    BuildFilter,
    BuildRecord,
    BuildState,
    BuildStore,
    Claim,
    Notification,
    StoredEvent,
    StoredLog,
    StoreError,
    WarmImageRow,
    WarmServerRow,
    new_build_id,
)

log = logging.getLogger(__name__)

#: The async driver of each supported database; a URL naming the database alone gets it.
DRIVERS = {"sqlite": "aiosqlite", "postgresql": "asyncpg"}
#: Alembic's version table, named so a database shared with JupyterHub (which has its own
#: ``alembic_version``) keeps both apart.
VERSION_TABLE = "binderapi_alembic_version"
#: The newest revision in ``migrations/versions`` (a test checks it against Alembic's head): a
#: database already there is opened without importing Alembic, which would stay in memory (7 MB).
SCHEMA_HEAD = "0004_warm_pool"
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

#: the rate limit's counters when replicas share the store (:meth:`SQLBuildStore.hit`): one row per
#: client bucket and current window, deleted by a periodic sweep once the window ended
rate_limits = sa.Table(
    "rate_limits", metadata,
    sa.Column("bucket", sa.Text, primary_key=True),  # ratelimit.client_bucket(): an IPv4 address, an IPv6 /64
    sa.Column("hits", sa.Integer, nullable=False),
    sa.Column("window_end", sa.Float, nullable=False),  # epoch seconds
    sa.Index("ix_rate_limits_window_end", "window_end"),
)

#: which replica builds which image (:meth:`SQLBuildStore.claim`): one row per build name, held
#: by one build and its owner's lease (epoch seconds of the database's clock, so replicas' clocks
#: never need to agree)
build_claims = sa.Table(
    "build_claims", metadata,
    sa.Column("build_name", sa.Text, primary_key=True),
    sa.Column("build_id", sa.String(32), nullable=False),
    sa.Column("owner", sa.Text, nullable=False),
    sa.Column("lease_expires", sa.Float, nullable=False),
    sa.Index("ix_build_claims_owner", "owner"),
    sa.Index("ix_build_claims_lease_expires", "lease_expires"),
)

#: how often a quiet LISTEN connection is checked with a round trip (a half-open connection sends
#: no error; a closed one is noticed at once)
LISTEN_CHECK_SECONDS = 10.0
#: the pause before reconnecting a lost LISTEN connection: from the first value, growing to the second
#: (retry.py's policy: doubling, jittered)
LISTEN_BACKOFF = (0.5, 10.0)

#: the warm pool's servers when replicas share the store (:mod:`binderapi.warmpool`): one row per
#: server a pool started, deleted when it is handed over or removed
warm_servers = sa.Table(
    "warm_servers", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("image", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # starting | ready
    sa.Column("owner", sa.Text, nullable=False),
    sa.Column("lease_expires", sa.Float, nullable=False),  # epoch seconds
    sa.Column("username", sa.Text, nullable=False),
    sa.Column("server_name", sa.Text, nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("token", sa.Text, nullable=False),
    sa.Column("ready_at", sa.Float, nullable=True),
    sa.Column("marked_at", sa.Float, nullable=True),
    sa.Index("ix_warm_servers_image_state", "image", "state"),
)

#: what every replica's pool knows of an image's launches (top_n, idle shrinking, what servers carry)
warm_images = sa.Table(
    "warm_images", metadata,
    sa.Column("image", sa.Text, primary_key=True),
    sa.Column("launches", sa.Integer, nullable=False),
    sa.Column("last_launch", sa.Float, nullable=False),
    sa.Column("template", sa.Text, nullable=False),
    sa.Column("repo_quota", sa.Integer, nullable=False),
)

#: launch quota slots held by launches (and warm starts) in progress, on every replica
launch_slots = sa.Table(
    "launch_slots", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("owner", sa.Text, nullable=False),
    sa.Column("repo", sa.Text, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Index("ix_launch_slots_repo", "repo"),
)

#: PostgreSQL advisory lock keys of the short transactions that count then insert
WARM_POOL_LOCK_KEY = 0x62696E77726D  # "binwrm"
LAUNCH_SLOT_LOCK_KEY = 0x62696E736C74  # "binslt"

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


def _raise_if_cancelling() -> None:
    """A driver that turned our task's cancellation into its own error (or a race that lost it)
    must not keep a loop alive at shutdown."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


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

    @property
    def shared(self) -> bool:  # type: ignore[override]
        """PostgreSQL is made for several processes; SQLite here is one process's file."""
        return self.dialect != "sqlite"

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
            await self._changed(connection, *{record.id for record in records})

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
            if events or log_head or log_tail is not None:
                await self._changed(connection, build_id)

    async def events_after(self, build_id: str, after: int = 0, limit: int = 1000) -> list[StoredEvent]:
        statement = (sa.select(build_events.c.seq, build_events.c.data)
                     .where(build_events.c.build_id == build_id, build_events.c.seq > after)
                     .order_by(build_events.c.seq).limit(max(0, limit)))
        async with self._begin(f"reading the events of build {build_id}") as connection:
            rows = (await connection.execute(statement)).all()
        return [StoredEvent(seq=row.seq, data=row.data) for row in rows]

    async def read_log(self, build_id: str) -> StoredLog | None:
        """The build's log; an empty one for a build without output yet, None for no such build."""
        return await self.read_log_from(build_id, 0)

    async def read_log_from(self, build_id: str, offset: int) -> StoredLog | None:
        """The head's new part is cut in the database: a follower reads only what is new (the
        tail, which only a log past its cap has, is read whole)."""
        statement = (sa.select(builds.c.id, sa.func.substr(build_logs.c.head, offset + 1).label("head"),
                               build_logs.c.tail, build_logs.c.dropped_bytes)
                     .select_from(builds.outerjoin(build_logs, build_logs.c.build_id == builds.c.id))
                     .where(builds.c.id == build_id))
        async with self._begin(f"reading the log of build {build_id}") as connection:
            row = (await connection.execute(statement)).first()
        if row is None:
            return None
        return StoredLog(head=row.head or "", tail=row.tail or "", dropped_bytes=row.dropped_bytes or 0)

    # -- the rate limit's counters --------------------------------------------------------------------
    async def hit(self, key: str, now: float, period_seconds: int) -> tuple[int, float]:
        """One atomic upsert: a new window (1 hit) if the bucket has none or its window ended,
        else one more hit. Both databases read the old row on the right of ``SET``."""
        insert = self._insert(rate_limits).values(bucket=key, hits=1, window_end=now + period_seconds)
        ended = rate_limits.c.window_end <= now
        statement = insert.on_conflict_do_update(
            index_elements=[rate_limits.c.bucket],
            set_={"hits": sa.case((ended, 1), else_=rate_limits.c.hits + 1),
                  "window_end": sa.case((ended, insert.excluded.window_end), else_=rate_limits.c.window_end)},
        ).returning(rate_limits.c.hits, rate_limits.c.window_end)
        async with self._begin("counting the rate limit") as connection:
            row = (await connection.execute(statement)).one()
        return row.hits, row.window_end

    async def delete_hits_before(self, now: float) -> int:
        async with self._begin("deleting ended rate-limit windows") as connection:
            result = await connection.execute(sa.delete(rate_limits).where(rate_limits.c.window_end <= now))
        return result.rowcount

    # -- replicas: claims, leases and notifications -------------------------------------------------
    def _db_now(self) -> Any:
        """The database's clock in epoch seconds (one clock for every replica)."""
        if self.dialect == "sqlite":
            return (sa.func.julianday("now") - 2440587.5) * 86400.0
        return sa.cast(sa.func.extract("epoch", sa.func.now()), sa.Float)

    async def _changed(self, connection: AsyncConnection, *build_ids: str) -> None:
        """NOTIFY in the writing transaction: sent when it commits, so a listener that reads on it
        sees what was written (and nothing is sent for a write that failed)."""
        if not self.shared:
            return
        for build_id in build_ids:
            await connection.execute(sa.select(sa.func.pg_notify(BUILDS_CHANNEL, build_id)))

    async def claim(self, record: BuildRecord, lease_seconds: float) -> str:
        """One upsert decides (the name's row is locked while it does): a new row or a free one
        (its build finished, or was deleted) becomes ours, with ``record`` saved beside it."""
        if not self.shared:
            return record.id
        now = self._db_now()
        insert = self._insert(build_claims).values(build_name=record.build_name, build_id=record.id,
                                                   owner=record.owner, lease_expires=now + lease_seconds)
        holder = build_claims.c.build_id
        # the subqueries read the statement's snapshot, which may predate a concurrent winner's
        # commit: "its record is missing" alone would let a second claimant in, so a holder without
        # a record (deleted) frees the name only once its lease ran out, which a fresh claim's has not
        free = sa.or_(
            holder == insert.excluded.build_id,
            sa.exists().where(builds.c.id == holder, builds.c.state.in_(FINISHED)),
            sa.and_(build_claims.c.lease_expires < now,
                    ~sa.exists().where(builds.c.id == holder, builds.c.state.in_(UNFINISHED))),
        )
        statement = insert.on_conflict_do_update(
            index_elements=[build_claims.c.build_name],
            set_={"build_id": insert.excluded.build_id, "owner": insert.excluded.owner,
                  "lease_expires": insert.excluded.lease_expires},
            where=free,
        ).returning(build_claims.c.build_id)
        async with self._begin(f"claiming build {record.build_name}") as connection:
            won = (await connection.execute(statement)).scalar()
            if won == record.id:
                row = {name: getattr(record, name) for name in RECORD_FIELDS}
                row["state"] = BuildState(row["state"]).value
                upsert = self._insert(builds).values(row)
                await connection.execute(upsert.on_conflict_do_update(
                    index_elements=[builds.c.id],
                    set_={name: upsert.excluded[name] for name in RECORD_FIELDS if name != "id"}))
                await self._changed(connection, record.id)
                return record.id
            taken = (await connection.execute(
                sa.select(holder).where(build_claims.c.build_name == record.build_name))).scalar()
        return taken or record.id

    async def renew(self, owner: str, lease_seconds: float) -> set[str]:
        if not self.shared:
            return set()
        async with self._begin("renewing the build leases") as connection:
            result = await connection.execute(
                sa.update(build_claims).where(build_claims.c.owner == owner)
                .values(lease_expires=self._db_now() + lease_seconds).returning(build_claims.c.build_id))
            return set(result.scalars().all())

    async def release(self, build_name: str, build_id: str) -> None:
        if not self.shared:
            return
        async with self._begin(f"releasing build {build_name}") as connection:
            await connection.execute(sa.delete(build_claims).where(
                build_claims.c.build_name == build_name, build_claims.c.build_id == build_id))

    async def expired_claims(self) -> list[Claim]:
        if not self.shared:
            return []
        statement = (sa.select(build_claims.c.build_name, build_claims.c.build_id, build_claims.c.owner)
                     .select_from(build_claims.join(builds, builds.c.id == build_claims.c.build_id))
                     .where(build_claims.c.lease_expires < self._db_now(), builds.c.state.in_(UNFINISHED))
                     .order_by(build_claims.c.build_id))
        async with self._begin("listing expired build leases") as connection:
            rows = (await connection.execute(statement)).all()
        return [Claim(row.build_name, row.build_id, row.owner) for row in rows]

    async def adopt(self, claim: Claim, owner: str, lease_seconds: float) -> bool:
        if not self.shared:
            return False
        now = self._db_now()
        async with self._begin(f"adopting build {claim.build_id}") as connection:
            result = await connection.execute(
                sa.update(build_claims)
                .where(build_claims.c.build_name == claim.build_name, build_claims.c.build_id == claim.build_id,
                       build_claims.c.owner == claim.owner, build_claims.c.lease_expires < now)
                .values(owner=owner, lease_expires=now + lease_seconds))
            if result.rowcount != 1:
                return False
            await connection.execute(sa.update(builds).where(builds.c.id == claim.build_id).values(owner=owner))
        return True

    async def notify(self, channel: str, payload: str) -> None:
        if not self.shared:
            return
        async with self._begin(f"notifying {channel}") as connection:
            await connection.execute(sa.select(sa.func.pg_notify(channel, payload)))

    async def listen(self, channels: list[str]) -> AsyncIterator[Notification]:  # type: ignore[override]
        """LISTEN on a connection of its own (asyncpg, outside the pool: it is held for good).
        Lost (a server restart, ``pg_terminate_backend``, a network cut, noticed by the driver or
        by a check every :data:`LISTEN_CHECK_SECONDS`), it is reconnected with a growing pause,
        and each (re)connect yields ``Notification("")`` so the caller catches up from the store."""
        if not self.shared:
            raise StoreError(f"build store {self.name}: one process's store has no notifications")
        import asyncpg

        dsn = self.url.set(drivername="postgresql").render_as_string(hide_password=False)
        first, longest = LISTEN_BACKOFF
        failures, failing = 0, False
        while True:
            queue: asyncio.Queue[Notification | None] = asyncio.Queue()
            put = queue.put_nowait
            try:
                connection = await asyncpg.connect(dsn, timeout=self.busy_timeout)
            except Exception as e:  # asyncpg's, OSError, TimeoutError: the server is away
                _raise_if_cancelling()
                if not failing:
                    log.warning("build store %s: listening for other replicas failed: %s; reconnecting",
                                self.name, _reason(e))
                failing, failures = True, failures + 1
                await asyncio.sleep(wait_after(failures, first, longest))
                continue
            try:
                connection.add_termination_listener(lambda _conn, put=put: put(None))
                for channel in channels:
                    await connection.add_listener(
                        channel, lambda _conn, _pid, channel, payload, put=put: put(Notification(channel, payload)))
                if failing:
                    log.info("build store %s: listening for other replicas again", self.name)
                failures, failing = 0, False
                yield Notification("")
                while True:
                    try:
                        async with asyncio.timeout(LISTEN_CHECK_SECONDS):  # not wait_for: it can swallow a cancel
                            item = await queue.get()
                    except TimeoutError:
                        await connection.fetchval("SELECT 1", timeout=self.busy_timeout)
                        continue
                    if item is None:
                        raise ConnectionError("the listening connection was closed")
                    yield item
            except (Exception, TimeoutError) as e:
                _raise_if_cancelling()
                if not failing:
                    log.warning("build store %s: the connection listening for other replicas was lost: %s; "
                                "reconnecting", self.name, _reason(e))
                failing = True
            finally:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2):
                        await connection.close()
                connection.terminate()
            failures += 1
            await asyncio.sleep(wait_after(failures, first, longest))

    # -- the warm pool --------------------------------------------------------------------------------
    async def _lock(self, connection: AsyncConnection, key: int) -> None:
        """Serialise a count-then-insert transaction across processes: PostgreSQL's advisory lock,
        released at commit; SQLite's write lock (``BEGIN IMMEDIATE``), the only one it has."""
        if self.dialect == "sqlite":
            await connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            await connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})

    @staticmethod
    def _warm_row(row: sa.Row[Any]) -> WarmServerRow:
        return WarmServerRow(**row._asdict())

    async def warm_claim_start(self, image: str, target: int, owner: str, now: float, lease: float) -> str | None:
        async with self._begin(f"claiming a warm start of {image}") as connection:
            await self._lock(connection, WARM_POOL_LOCK_KEY)
            count = (await connection.execute(
                sa.select(sa.func.count()).select_from(warm_servers).where(warm_servers.c.image == image))).scalar_one()
            if count >= target:
                return None
            row_id = new_build_id()
            await connection.execute(sa.insert(warm_servers).values(
                id=row_id, image=image, state="starting", owner=owner, lease_expires=now + lease,
                username="", server_name="", url="", token=""))
        return row_id

    async def warm_ready(self, row: WarmServerRow) -> bool:
        statement = (sa.update(warm_servers)
                     .where(warm_servers.c.id == row.id, warm_servers.c.state == "starting")
                     .values(state="ready", owner=row.owner, lease_expires=row.lease_expires, username=row.username,
                             server_name=row.server_name, url=row.url, token=row.token, ready_at=row.ready_at,
                             marked_at=row.marked_at))
        async with self._begin(f"recording the warm server {row.username}") as connection:
            result = await connection.execute(statement)
        return result.rowcount == 1

    async def warm_delete(self, row_id: str, *, state: str | None = None) -> WarmServerRow | None:
        statement = sa.delete(warm_servers).where(warm_servers.c.id == row_id).returning(*warm_servers.c)
        if state is not None:
            statement = statement.where(warm_servers.c.state == state)
        async with self._begin("deleting a warm server") as connection:
            row = (await connection.execute(statement)).first()
        return self._warm_row(row) if row else None

    async def warm_take(self, image: str, launch: WarmImageRow | None = None,
                        ready_before: float | None = None) -> WarmServerRow | None:
        """``DELETE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING``: on
        PostgreSQL concurrent takers lock different rows (a locked one is skipped, not waited
        for); SQLite runs one writer at a time (and drops the ``FOR UPDATE``)."""
        pick = (sa.select(warm_servers.c.id)
                .where(warm_servers.c.image == image, warm_servers.c.state == "ready")
                .order_by(warm_servers.c.ready_at, warm_servers.c.id).limit(1)
                .with_for_update(skip_locked=True))
        if ready_before is not None:
            pick = pick.where(warm_servers.c.ready_at < ready_before)
        statement = (sa.delete(warm_servers).where(warm_servers.c.id == pick.scalar_subquery())
                     .returning(*warm_servers.c))
        async with self._begin(f"taking a warm server of {image}") as connection:
            if launch is not None:
                insert = self._insert(warm_images).values(
                    image=image, launches=1, last_launch=launch.last_launch, template=launch.template,
                    repo_quota=launch.repo_quota)
                await connection.execute(insert.on_conflict_do_update(
                    index_elements=[warm_images.c.image],
                    set_={"launches": warm_images.c.launches + 1, "last_launch": insert.excluded.last_launch,
                          "template": insert.excluded.template, "repo_quota": insert.excluded.repo_quota}))
            row = (await connection.execute(statement)).first()
        return self._warm_row(row) if row else None

    async def warm_trim(self, image: str, keep: int) -> list[WarmServerRow]:
        async with self._begin(f"shrinking the warm pool of {image}") as connection:
            await self._lock(connection, WARM_POOL_LOCK_KEY)
            count = (await connection.execute(
                sa.select(sa.func.count()).select_from(warm_servers).where(warm_servers.c.image == image))).scalar_one()
            if count <= keep:
                return []
            excess = (sa.select(warm_servers.c.id)
                      .where(warm_servers.c.image == image, warm_servers.c.state == "ready")
                      .order_by(warm_servers.c.ready_at.desc(), warm_servers.c.id.desc()).limit(count - keep))
            rows = (await connection.execute(
                sa.delete(warm_servers).where(warm_servers.c.id.in_(excess.scalar_subquery()))
                .returning(*warm_servers.c))).all()
        return [self._warm_row(row) for row in rows]

    async def warm_servers(self) -> list[WarmServerRow]:
        statement = sa.select(warm_servers).order_by(warm_servers.c.ready_at, warm_servers.c.id)
        async with self._begin("listing warm servers") as connection:
            rows = (await connection.execute(statement)).all()
        return [self._warm_row(row) for row in rows]

    async def warm_images(self) -> list[WarmImageRow]:
        async with self._begin("listing warm pool images") as connection:
            rows = (await connection.execute(sa.select(warm_images))).all()
        return [WarmImageRow(**row._asdict()) for row in rows]

    async def warm_renew(self, owner: str, now: float, lease: float) -> list[WarmServerRow]:
        statement = (sa.update(warm_servers).where(warm_servers.c.owner == owner)
                     .values(lease_expires=now + lease).returning(*warm_servers.c))
        async with self._begin("renewing the warm pool's lease") as connection:
            rows = (await connection.execute(statement)).all()
        return [self._warm_row(row) for row in rows]

    async def warm_adopt(self, owner: str, now: float, lease: float) -> tuple[list[WarmServerRow], list[WarmServerRow]]:
        """Both statements re-check the lease on rows another survivor changed meanwhile
        (PostgreSQL's READ COMMITTED re-evaluates the ``WHERE``), so a row is adopted once."""
        expired = warm_servers.c.lease_expires < now
        adopt = (sa.update(warm_servers).where(expired, warm_servers.c.state == "ready")
                 .values(owner=owner, lease_expires=now + lease).returning(*warm_servers.c))
        drop = (sa.delete(warm_servers).where(expired, warm_servers.c.state == "starting")
                .returning(*warm_servers.c))
        async with self._begin("adopting warm servers of stopped replicas") as connection:
            adopted = (await connection.execute(adopt)).all()
            dropped = (await connection.execute(drop)).all()
        return [self._warm_row(row) for row in adopted], [self._warm_row(row) for row in dropped]

    # -- launch quota slots ------------------------------------------------------------------------------
    async def hold_launch_slot(self, slot_id: str, owner: str, repo: str, running_total: int, running_repo: int,
                               total_quota: int | None, repo_quota: int, now: float, expires_at: float) -> str | None:
        async with self._begin("holding a launch quota slot") as connection:
            await self._lock(connection, LAUNCH_SLOT_LOCK_KEY)
            await connection.execute(sa.delete(launch_slots).where(launch_slots.c.expires_at <= now))
            held = (await connection.execute(
                sa.select(sa.func.count(), sa.func.count().filter(launch_slots.c.repo == repo))
                .select_from(launch_slots))).one()
            if total_quota is not None and running_total + held[0] >= total_quota:
                return "total_quota"
            if repo_quota and running_repo + held[1] >= repo_quota:
                return "repo_quota"
            await connection.execute(sa.insert(launch_slots).values(
                id=slot_id, owner=owner, repo=repo, expires_at=expires_at))
        return None

    async def release_launch_slot(self, slot_id: str) -> None:
        async with self._begin("releasing a launch quota slot") as connection:
            await connection.execute(sa.delete(launch_slots).where(launch_slots.c.id == slot_id))

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
                    await connection.execute(sa.delete(build_claims).where(build_claims.c.build_id.in_(ids)))
                    await connection.execute(sa.delete(builds).where(builds.c.id.in_(ids)))
            deleted += len(ids)
            if len(ids) < batch:
                return deleted
