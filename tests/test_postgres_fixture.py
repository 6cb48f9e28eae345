"""The PostgreSQL fixtures (tests/fixtures/postgres.py) against the server ``scripts/infra.sh``
starts: fresh, empty databases per module, per test and per call, each dropped after, and those a
killed session left dropped by a later one; and, without any server, a missing PostgreSQL is a skip
with its reason outside CI but a failure in CI."""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from fixtures.postgres import PREFIX, STALE_AFTER, _drop_stale, _raw
from fixtures.server import free_port

pytest_plugins = ["pytester"]

TESTS = Path(__file__).resolve().parent
ARGS = ("-p", "no:cacheprovider", "-p", "asyncio", "-o", "asyncio_mode=auto",
        "-o", "asyncio_default_fixture_loop_scope=session", "-o", "asyncio_default_test_loop_scope=session")


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A small suite of its own, in a subprocess, with tests/fixtures importable (and no plugin
    but pytest-asyncio: loading them all takes seconds)."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
    pytester.makeconftest('pytest_plugins = ["fixtures.postgres"]')
    return pytester


@pytest.mark.postgres
async def test_fresh_databases_are_empty_and_distinct(
        postgres_dsn: str, postgres_url: str, postgres_database: str,
        make_postgres_database: Callable[[], Awaitable[str]]) -> None:
    assert make_url(postgres_url).drivername == "postgresql+asyncpg"
    one, two = await make_postgres_database(), await make_postgres_database()
    names = {make_url(u).database for u in (postgres_url, postgres_database, one, two)}
    assert len(names) == 4 and make_url(postgres_dsn).database not in names
    conn = await asyncpg.connect(_raw(one))
    try:
        await conn.execute("CREATE TABLE t (x int)")
        assert await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 1
    finally:
        await conn.close()
    conn = await asyncpg.connect(_raw(two))
    try:  # nothing leaks from one database into another
        assert await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0
    finally:
        await conn.close()


@pytest.mark.postgres
async def test_databases_are_dropped_after_their_test_or_module(
        suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, postgres_dsn: str) -> None:
    monkeypatch.setenv("BINDERAPI_TEST_POSTGRES_URL", postgres_dsn)  # pytester moves HOME
    suite.makepyfile(test_db="""
        from sqlalchemy.engine import make_url

        async def test_db(postgres_url, postgres_database, make_postgres_database):
            urls = [postgres_url, postgres_database, await make_postgres_database()]
            print("DATABASES=" + ",".join(make_url(url).database for url in urls))
    """)
    result = suite.runpytest_subprocess("-s", *ARGS)
    result.assert_outcomes(passed=1)
    found = re.search(r"DATABASES=([\w,]+)", result.stdout.str())
    assert found, result.stdout.str()
    names = found.group(1).split(",")
    conn = await asyncpg.connect(_raw(postgres_dsn))
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_database WHERE datname = any($1)", names) == 0
    finally:
        await conn.close()


@pytest.mark.parametrize(("ci", "outcome"), [("", "skipped"), ("true", "errors")])
def test_without_a_server_a_test_skips_outside_ci_and_fails_in_ci(
        suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str, outcome: str) -> None:
    monkeypatch.setenv("BINDERAPI_TEST_POSTGRES_URL", f"postgresql+asyncpg://u:p@127.0.0.1:{free_port()}/db")
    monkeypatch.setenv("CI", ci)
    suite.makepyfile(test_db="""
        async def test_db(postgres_url):
            pass
    """)
    result = suite.runpytest_subprocess("-rs", *ARGS)
    result.assert_outcomes(**{outcome: 1})
    result.stdout.fnmatch_lines(["*PostgreSQL is not available: cannot connect to*run scripts/infra.sh up*"])


@pytest.mark.postgres
async def test_databases_a_killed_session_left_are_dropped_once_stale(postgres_dsn: str) -> None:
    stale = f"{PREFIX}{int(time.time()) - STALE_AFTER - 60:x}_{secrets.token_hex(4)}"
    young = f"{PREFIX}{int(time.time()) - 60:x}_{secrets.token_hex(4)}"  # maybe another session's
    conn = await asyncpg.connect(_raw(postgres_dsn))
    try:
        for name in (stale, young):
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        await _drop_stale(conn)
        left = {row[0] for row in await conn.fetch("SELECT datname FROM pg_database")}
        assert stale not in left and young in left
    finally:
        for name in (stale, young):
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()
