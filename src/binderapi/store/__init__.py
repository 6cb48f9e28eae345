"""What binderapi keeps about builds beyond a process's life: the interface (:mod:`.base`), its SQL
implementation (:mod:`.sql`), and the two entry points the service uses, :func:`open_store` and
:func:`sweep`."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from .base import (
    BUILDS_CHANNEL,
    CANCEL_CHANNEL,
    BuildFilter,
    BuildRecord,
    BuildState,
    BuildStore,
    Claim,
    Notification,
    StoredEvent,
    StoredLog,
    StoreError,
    new_build_id,
    process_owner,
)

if TYPE_CHECKING:
    from ..settings import Settings
    from ..settings.models import BuildStore as BuildStoreSettings

__all__ = [
    "BUILDS_CHANNEL", "CANCEL_CHANNEL", "Claim", "Notification",
    "BuildFilter", "BuildRecord", "BuildState", "BuildStore", "StoreError", "StoredEvent", "StoredLog",
    "default_state_dir", "new_build_id", "open_store", "process_owner", "shared_store", "store_url", "sweep",
]

DATABASE_FILE = "builds.sqlite3"


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/binderapi``, else ``~/.local/state/binderapi`` (the XDG base directory spec)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "binderapi"


def store_url(section: BuildStoreSettings) -> str:
    """``BuildStore.url``, or the embedded SQLite file in ``BuildStore.state_dir``."""
    if section.url:
        return section.url
    state_dir = Path(section.state_dir).expanduser() if section.state_dir else default_state_dir()
    return f"sqlite+aiosqlite:///{state_dir.absolute() / DATABASE_FILE}"


def shared_store(section: BuildStoreSettings) -> bool:
    """Whether the configured store is one several processes share (PostgreSQL) rather than one
    process's SQLite file: then the rate limit counts in it, its ``/health`` check is hard and a
    process does not start without it (:attr:`BuildStore.shared` says the same of an open store)."""
    return not store_url(section).startswith("sqlite")


async def open_store(settings: Settings) -> BuildStore:
    """The configured store, open and migrated; :class:`StoreError` if it cannot be (the message
    says which store and why; nothing is left open)."""
    from .sql import SQLBuildStore

    store = SQLBuildStore(store_url(settings.BuildStore))
    await store.open()
    return store


async def sweep(store: BuildStore, retention_days: float) -> int:
    """Delete the finished builds older than ``retention_days`` (with their events and logs); how
    many. ``retention_days`` 0 keeps everything. Raises :class:`StoreError`."""
    if retention_days <= 0:
        return 0
    return await store.delete_finished_before(datetime.now(UTC) - timedelta(days=retention_days))
