"""Policy shared across replicas (issue 13, item 4): the rate limit counted once in the build store
they share, bans and build tokens giving the same answer on each, and ``/health`` gating a replica
on that store.

Two app instances (two :class:`~binderapi.services.Services`, each with its own limiter, token
keys and engine pool) run in this process on one real PostgreSQL database from ``scripts/infra.sh``
(tests/fixtures/postgres.py); the build backend is the in-process fake, since policy is decided
before anything is built. SQLite, the one-process default, keeps the in-memory limiter.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml

from binderapi import ratelimit
from binderapi.errors import StartupError
from binderapi.ratelimit import RateLimiter
from binderapi.services import Services
from binderapi.store.sql import SQLBuildStore, rate_limits
from binderapi.tokens import BuildTokens
from fixtures.fake_backend import fake_settings
from fixtures.server import EVENT_STREAM, free_port
from fixtures.store import stores
from test_inprocess import events_of, inprocess

SECRET = "ab" * 32
BUILD = "build/fake/hello/main"


# -- the store's counter -------------------------------------------------------------------------


MakeDatabase = Callable[[], Awaitable[str]]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> MakeDatabase:
    """``await database()``: the URL of a fresh database, SQLite or PostgreSQL."""
    if request.param == "postgresql":
        return request.getfixturevalue("make_postgres_database")

    async def sqlite_file() -> str:
        return f"sqlite+aiosqlite:///{tmp_path / 'builds.sqlite3'}"

    return sqlite_file


async def test_concurrent_hits_from_two_stores_are_each_counted_once(database: MakeDatabase) -> None:
    url = await database()
    async with stores(url, 2) as (a, b):
        now = 1_000_000.0
        answers = await asyncio.gather(*(store.hit("198.51.100.7", now + i / 100, 60)
                                         for i in range(20) for store in (a, b)))
        assert sorted(hits for hits, _ in answers) == list(range(1, 41))
        assert {end for _, end in answers} == {now + 60}  # the window of the first hit, for every hit
        assert await b.hit("203.0.113.1", now, 60) == (1, now + 60)  # per bucket

        # the window ended: a new one starts at the next hit
        assert await a.hit("198.51.100.7", now + 60, 60) == (1, now + 120)
        assert await b.delete_hits_before(now + 60) == 1  # 203.0.113.1's window; the new one stays
        assert await a.hit("198.51.100.7", now + 61, 60) == (2, now + 120)
    assert a.shared == url.startswith("postgresql")  # SQLite is one process's file


# -- the limiter over the store --------------------------------------------------------------------


async def test_the_limiter_counts_in_a_shared_store_with_the_same_answers(database: MakeDatabase) -> None:
    async with stores(await database(), 2) as (a, b):
        shared = [RateLimiter(3, 600, 60, store=store) for store in (a, b)]
        in_memory = RateLimiter(3, 600, 60)
        now = 2_000_000.0
        answers = [await shared[i % 2].hit("2001:db8:1:2::7", now + i) for i in range(5)]
        expected = [in_memory.increment("2001:db8:1:2::7", now + i) for i in range(5)]
    assert answers == expected  # the same remaining, reset and headers as one process counting
    assert [state.remaining for state in answers] == [2, 1, 0, -1, -2]
    assert answers[3].headers() == {"x-ratelimit-limit": "3", "x-ratelimit-remaining": "0",
                                    "x-ratelimit-reset": str(int(now + 600))}
    assert len(shared[0]) == len(shared[1]) == 0  # nothing counted in either process


async def test_a_failing_store_never_fails_a_request(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The store closed (as good as unreachable: every call is a StoreError): requests count in the
    process, one warning for the outage; once it answers again it counts, with one info line."""
    monkeypatch.setattr(ratelimit, "STORE_RETRY_SECONDS", 0.0)  # try the store again at the next request
    store = SQLBuildStore(f"sqlite+aiosqlite:///{tmp_path / 'builds.sqlite3'}")
    limiter = RateLimiter(2, 600, 60, store=store)
    caplog.set_level(logging.INFO, logger="binderapi.ratelimit")
    states = [await limiter.hit("192.0.2.1", 1000.0 + i) for i in range(3)]
    assert [s.remaining for s in states] == [1, 0, -1] and len(limiter) == 1  # counted in the process
    down = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(down) == 1 and "cannot count the rate limit" in down[0].getMessage()

    await store.open()
    try:
        assert (await limiter.hit("192.0.2.1", 1003.0)).remaining == 1  # the store's own count starts
    finally:
        await store.close()
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO] == [
        "The build store counts the rate limit again"]


async def test_a_store_that_does_not_answer_is_given_up_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """A database that accepts connections and never answers (a black hole) costs a request at
    most STORE_TIMEOUT, and the next ones nothing while it stays down."""
    silent: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    monkeypatch.setattr(ratelimit, "STORE_TIMEOUT", 0.2)
    store = SQLBuildStore(f"postgresql+asyncpg://binderapi:x@127.0.0.1:{port}/binderapi")
    store.engine = store._make_engine()  # opened without the schema check, which would hang too
    limiter = RateLimiter(1, 600, 60, store=store)
    try:
        first = await limiter.hit("192.0.2.9")
        connections = len(silent)
        second = await limiter.hit("192.0.2.9")
    finally:
        await store.close()
        server.close()
        for writer in silent:
            writer.close()
    assert (first.remaining, second.remaining) == (0, -1)  # counted in the process
    assert connections >= 1 and len(silent) == connections  # the second request did not try the store


# -- two replicas, one PostgreSQL ------------------------------------------------------------------


def replica_settings(url: str, **binderhub: Any) -> Any:
    return fake_settings({"RateLimiter": {"limit": 3, "period_seconds": 600}, "BuildStore": {"url": url}},
                         ban_networks={"198.51.100.0/24": "test-net-2"}, **binderhub)


@contextlib.asynccontextmanager
async def replicas(settings: list[Any], client: tuple[str, int]) -> AsyncIterator[list[tuple[httpx.AsyncClient, Services]]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(inprocess(s, client)) for s in settings]


class Counts:
    """The rate-limit statements a store's engine sends, from SQLAlchemy's own event hook."""

    def __init__(self, store: Any) -> None:
        self.sent: list[str] = []
        sa.event.listen(store.engine.sync_engine, "before_cursor_execute", self._record)

    def _record(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if rate_limits.name in statement:
            self.sent.append(statement)


@pytest.mark.postgres
async def test_two_replicas_on_one_postgresql_give_the_same_answers(make_postgres_database: Callable[[], Awaitable[str]]) -> None:
    url = await make_postgres_database()
    settings = [replica_settings(url, build_token_secret=SECRET) for _ in range(2)]
    async with replicas(settings, ("203.0.113.5", 40000)) as [(a, svc_a), (b, svc_b)]:
        assert svc_a.store.shared and svc_a.rate_limiter.store is svc_a.store
        statements = [Counts(svc.store) for svc in (svc_a, svc_b)]

        # the rate limit: 3 per window for the client, whichever replica answers
        answers = [await http.get(BUILD, headers=EVENT_STREAM, params={"build_only": "true"}) for http in (a, b, a, b)]
        assert [r.status_code for r in answers] == [200, 200, 200, 429]
        assert [r.headers["x-ratelimit-remaining"] for r in answers] == ["2", "1", "0", "0"]
        assert events_of(answers[0])[-1]["phase"] == "ready"
        assert answers[3].headers["retry-after"] and events_of(answers[3])[0]["status_code"] == 429
        assert len(svc_a.rate_limiter) == len(svc_b.rate_limiter) == 0  # counted in the store only
        counted = [len(s.sent) for s in statements]
        assert counted == [2, 2]  # one round trip per counted request, on the replica that answered it

        # build tokens: one minted with the shared secret (here by replica A's own minter) passes
        # either replica, exempt from the exhausted limit, and costs no store round trip
        token = svc_a.build_tokens.mint("fake/hello/main", "binder.test")
        for http in (a, b):
            r = await http.get(BUILD, headers=EVENT_STREAM, params={"build_only": "true", "build_token": token})
            assert r.status_code == 200 and "x-ratelimit-remaining" not in r.headers
            assert events_of(r)[-1]["phase"] == "ready"
        forged = BuildTokens("cd" * 32, 600, True).mint("fake/hello/main", "binder.test")
        for http in (a, b):
            r = await http.get(BUILD, headers=EVENT_STREAM, params={"build_only": "true", "build_token": forged})
            assert events_of(r) == [{"phase": "failed", "message": "Invalid build token\n", "status_code": 403}]
        for http in (a, b):  # nor does /versions
            assert (await http.get("versions")).status_code == 200
        assert [len(s.sent) for s in statements] == counted

    # bans: the same network refused by both, before any count
    async with replicas(settings, ("198.51.100.7", 40000)) as [(a, _), (b, _)]:
        for http in (a, b):
            r = await http.get(BUILD, headers=EVENT_STREAM, params={"build_only": "true"})
            assert r.status_code == 403
            assert events_of(r)[0]["message"] == "Requests from test-net-2 are not allowed\n"


@contextlib.asynccontextmanager
async def process(config: Path) -> AsyncIterator[str]:
    """``python -m binderapi --config-file <config>`` on a free loopback port: its base URL once it
    answers; stopped with SIGINT (as an operator's Ctrl-C) and reaped on exit."""
    port = free_port()
    tests = str(Path(__file__).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BINDERAPI_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [tests, env.get("PYTHONPATH", "")]))  # the fakes by import path
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "binderapi", "--config-file", str(config), "--ip", "127.0.0.1", "--port", str(port),
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/"
    try:
        async with httpx.AsyncClient(timeout=5) as http, asyncio.timeout(60):
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(url + "versions")).status_code == 200:
                        break
                if proc.returncode is not None:
                    raise AssertionError(f"binderapi stopped: {(await proc.stderr.read()).decode()[-2000:]}")
                await asyncio.sleep(0.1)
        yield url
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        try:
            async with asyncio.timeout(30):
                await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()


@pytest.mark.postgres
async def test_two_processes_on_one_postgresql_give_the_same_answers(
    make_postgres_database: Callable[[], Awaitable[str]], tmp_path: Path,
) -> None:
    """The same as two app instances, with two real ``binderapi`` processes behind a trusted proxy
    (the client address comes from ``X-Forwarded-For``): nothing is shared but the database and the
    configuration."""
    fakes = "fixtures.fake_backend"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "BinderHub": {
            "build_class": f"{fakes}:FAKE_KIND", "registry_class": f"{fakes}:FakeImageStore",
            "repo_providers": {"fake": f"{fakes}:FakeProvider"}, "launch_quota_class": "none",
            "build_cleaner_class": "none", "enable_api_only_mode": True, "image_prefix": "fake.registry.test/two-",
            "build_token_secret": SECRET, "trusted_proxies": ["127.0.0.0/8"],
            "ban_networks": {"198.51.100.0/24": "test-net-2"},
        },
        "RateLimiter": {"limit": 3, "period_seconds": 600},
        "BuildStore": {"url": await make_postgres_database()},
    }))
    client = {**EVENT_STREAM, "X-Forwarded-For": "203.0.113.77"}
    build_only = {"build_only": "true"}
    async with process(config) as a, process(config) as b, httpx.AsyncClient(timeout=30) as http:
        answers = [await http.get(url + BUILD, headers=client, params=build_only) for url in (a, b, a, b, a)]
        token = BuildTokens(SECRET, 600, True).mint("fake/hello/main", "binder.test")
        with_token = [await http.get(url + BUILD, params={**build_only, "build_token": token},
                                     headers={**client, "Origin": "http://binder.test"}) for url in (a, b)]
        other_client = await http.get(b + BUILD, headers={**EVENT_STREAM, "X-Forwarded-For": "203.0.113.78"},
                                      params=build_only)
        banned = [await http.get(url + BUILD, headers={**EVENT_STREAM, "X-Forwarded-For": "198.51.100.9"},
                                 params=build_only) for url in (a, b)]
        store = [(await http.get(url + "health", params={"service": "Build store"})).json() for url in (a, b)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429, 429]
    assert [r.headers["x-ratelimit-remaining"] for r in answers] == ["2", "1", "0", "0", "0"]
    resets = {int(r.headers["x-ratelimit-reset"]) for r in answers}
    assert len(resets) == 1  # one window, whichever process answered
    assert events_of(answers[0])[-1]["phase"] == "ready" and events_of(answers[3])[0]["status_code"] == 429
    assert [events_of(r)[-1]["phase"] for r in with_token] == ["ready", "ready"]  # exempt, on both
    assert other_client.status_code == 200 and other_client.headers["x-ratelimit-remaining"] == "2"
    assert [r.status_code for r in banned] == [403, 403]
    assert all(json.loads(r.text.removeprefix("data: "))["message"] == "Requests from test-net-2 are not allowed\n"
               for r in banned)
    assert [body["ok"] for body in store] == [True, True]


@pytest.mark.postgres
async def test_replicas_without_a_shared_token_secret_refuse_each_others_tokens(
    make_postgres_database: Callable[[], Awaitable[str]],
) -> None:
    """Why docs/scaling.md says every replica needs ``BinderHub.build_token_secret``: unset, each
    process signs with a random key of its own."""
    url = await make_postgres_database()
    async with replicas([replica_settings(url), replica_settings(url)], ("203.0.113.6", 40000)) as [(a, svc_a), (b, _)]:
        token = svc_a.build_tokens.mint("fake/hello/main", "binder.test")
        own = await a.get(BUILD, headers=EVENT_STREAM, params={"build_only": "true", "build_token": token})
        other = await b.get(BUILD, headers=EVENT_STREAM, params={"build_only": "true", "build_token": token})
    assert events_of(own)[-1]["phase"] == "ready"
    assert events_of(other) == [{"phase": "failed", "message": "Invalid build token\n", "status_code": 403}]


# -- /health: the store gates a replica that shares it ------------------------------------------------


async def test_health_can_run_only_the_named_checks() -> None:
    async def fine() -> None:
        return None

    async def broken() -> None:
        raise RuntimeError("the hub is down")

    async with inprocess(fake_settings()) as (http, services):
        services.health.add("Shared thing", fine)
        services.health.add("Hub", broken)
        everything = await http.get("health")
        only = await http.get("health", params={"service": "Shared thing"})
        head = await http.head("health", params={"service": "Shared thing"})
        typo = await http.get("health", params={"service": "Shared thnig"})
    assert everything.status_code == 503
    assert only.status_code == 200 and [c["service"] for c in only.json()["checks"]] == ["Shared thing"]
    assert head.status_code == 200
    assert typo.status_code == 503
    assert typo.json()["checks"][0]["error"].startswith("no such health check (known: ")


async def test_the_store_check_is_hard_only_when_the_store_is_shared(database: MakeDatabase) -> None:
    """A replica that loses PostgreSQL must leave the Service (its readiness probe is
    ``/health?service=Build store``); one process on its SQLite file keeps serving the classic
    /build, the store being optional there."""
    url = await database()
    shared = url.startswith("postgresql")
    async with inprocess(fake_settings({"BuildStore": {"url": url}})) as (http, services):
        assert services.store is not None and services.store.shared == shared
        assert (services.rate_limiter.store is not None) == services.store.shared
        await services.store.close()  # every call is a StoreError from now on
        down = await http.get("health", params={"service": "Build store"})
    [check] = down.json()["checks"]
    assert check["ok"] is False and "not open" in check["error"]
    assert down.status_code == (503 if shared else 200)


async def test_a_replica_does_not_start_without_its_shared_store() -> None:
    """One process serves the classic /build without its SQLite store; a replica without the
    PostgreSQL its peers share would count its own rate limit and see none of their builds."""
    url = f"postgresql+asyncpg://binderapi:x@127.0.0.1:{free_port()}/binderapi"  # nothing listens
    with pytest.raises(StartupError, match=r"^BuildStore.url: build store .*Replicas sharing a PostgreSQL store do not start without it$"):
        await Services.start(fake_settings({"BuildStore": {"url": url}}))
