"""Alembic's environment for the build store's schema.

binderapi runs it itself at start-up (:func:`binderapi.store.sql.upgrade_schema`), passing the
connection (already in a transaction, under :func:`~binderapi.store.sql.migration_lock`) as
``config.attributes["connection"]``; no ``alembic.ini`` is involved. Without a connection (a
developer writing a revision), it connects with the async engine of ``sqlalchemy.url``::

    from alembic import command
    from alembic.config import Config
    config = Config()
    config.set_main_option("script_location", "src/binderapi/store/migrations")
    config.set_main_option("sqlalchemy.url", "sqlite+aiosqlite:////tmp/builds.sqlite3")
    command.upgrade(config, "head")
    command.revision(config, "what changed", autogenerate=True)
"""

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from binderapi.store.sql import VERSION_TABLE, metadata


def run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE,
                      render_as_batch=connection.dialect.name == "sqlite")  # SQLite alters by copying
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    engine = create_async_engine(context.config.get_main_option("sqlalchemy.url"))
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run_migrations)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=context.config.get_main_option("sqlalchemy.url"), target_metadata=metadata,
                      version_table=VERSION_TABLE, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif (given := context.config.attributes.get("connection")) is not None:
    run_migrations(given)
else:
    asyncio.run(run_async_migrations())
