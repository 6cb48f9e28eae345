"""Two real binderapi processes (``python -m binderapi``, Docker backend, the real registry) on one
PostgreSQL database, end to end (issue 13, items 2 and 3): one build for two concurrent creates;
its events, logs and a classic /build stream through the other replica; a cancel through the
other replica; a replica killed mid-build; PostgreSQL restarted mid-build; the listening
connection cut. Nothing here asserts a duration: every wait is bounded only to turn a hang into a
failure.

The restart test runs a PostgreSQL cluster of its own (initdb in a temporary directory, as the
``postgres`` OS user, on a free loopback port), never the shared one ``scripts/infra.sh`` runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiodocker
import asyncpg
import httpx
import pytest
import yaml

from binderapi.replicas import ORPHANED_MESSAGE
from fixtures.postgres import _raw
from fixtures.server import EVENT_STREAM, TEST_DENIED_NETWORKS, free_port
from fixtures.stack import (
    BASE_IMAGE,
    BUILDER_IMAGE,
    NAMESPACE,
    REGISTRY,
    RUN_ID,
    DockerWatcher,
    git_spec,
    namespace_containers,
    unique,
)

pytestmark = [pytest.mark.docker, pytest.mark.postgres, pytest.mark.usefixtures("no_leaked_build_containers")]

OPERATOR = "op-" + "replicas" * 4
AS_OPERATOR = {"Authorization": f"Bearer {OPERATOR}"}
#: short leases, so a stopped replica is noticed soon (the setting's default is 15 s)
LEASE_SECONDS = 3
BOUND = 240  # seconds: a hang fails, a slow machine does not


def slow_dockerfile(seconds: int) -> str:
    return f"FROM {BASE_IMAGE}\nRUN echo {unique('nonce')} && for i in $(seq {seconds}); do echo tick $i; sleep 1; done\n"


def config_file(tmp_path: Path, store_url: str) -> Path:
    """Both replicas' configuration: the same file, as a Deployment's ConfigMap would be."""
    path = tmp_path / f"config-{len(list(tmp_path.glob('config-*')))}.yaml"
    path.write_text(yaml.safe_dump({
        "BinderHub": {
            "build_class": "docker", "enable_api_only_mode": True, "launch_quota_class": "none",
            "image_prefix": f"{REGISTRY}/test-{RUN_ID}-replicas-", "operator_tokens": [OPERATOR],
        },
        "DockerBuildExecutor": {"build_image": BUILDER_IMAGE, "namespace": NAMESPACE},
        "DockerRegistry": {"url": f"http://{REGISTRY}"},
        "RateLimiter": {"limit": 0},
        "RepoProvider": {"denied_networks": TEST_DENIED_NETWORKS},
        "BuildStore": {"url": store_url, "lease_seconds": LEASE_SECONDS},
    }))
    return path


class Replica:
    """``python -m binderapi`` on a free loopback port, its log in a file (a pipe nobody reads
    would block a chatty process)."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log = config, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BINDERAPI_")}
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "binderapi", "--config-file", str(self.config), "--ip", "127.0.0.1",
                "--port", str(self.port), env=env, stdout=log, stderr=log)
        async with httpx.AsyncClient(timeout=5) as http, asyncio.timeout(60):
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(self.url + "versions")).status_code == 200:
                        return
                assert self.proc.returncode is None, f"binderapi stopped: {self.log.read_text()[-3000:]}"
                await asyncio.sleep(0.1)

    async def kill(self) -> None:
        """SIGKILL: no shutdown at all, as a crashed node or an OOM kill."""
        assert self.proc is not None
        self.proc.kill()
        await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            async with asyncio.timeout(30):
                await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


@contextlib.asynccontextmanager
async def replicas(tmp_path: Path, store_url: str, count: int = 2) -> AsyncIterator[list[Replica]]:
    config = config_file(tmp_path, store_url)
    started = [Replica(config, tmp_path / f"replica-{i}.log") for i in range(count)]
    try:
        for replica in started:
            await replica.start()
        yield started
    finally:
        for replica in started:
            await replica.stop()


def frames(text: str) -> list[tuple[str | None, dict[str, Any]]]:
    """(id, event) of each data frame of an event stream."""
    found = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line and not line.startswith(":"))
        if "data" in fields:
            found.append((fields.get("id"), json.loads(fields["data"])))
    return found


async def events(http: httpx.AsyncClient, url: str, *, after: int | None = None, stop: str | None = None) -> list[tuple[int, dict[str, Any]]]:
    """A build's ``/api/v1`` event stream: (seq, event) to its end, or until an event's message
    contains ``stop`` (then it disconnects, as a client losing its connection)."""
    headers = {"Last-Event-ID": str(after)} if after is not None else {}
    text = ""
    async with http.stream("GET", url + "/events", headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        async for chunk in response.aiter_text():
            text += chunk
            if stop is not None and text.endswith("\n\n") and any(stop in e.get("message", "") for _, e in frames(text)):
                break
    return [(int(seq), event) for seq, event in frames(text) if seq is not None]


async def until(condition: Callable[[], Awaitable[Any]], bound: float = BOUND) -> Any:
    for _ in range(int(bound * 5)):
        if value := await condition():
            return value
        await asyncio.sleep(0.2)
    raise AssertionError("condition not met in time")


async def create(http: httpx.AsyncClient, replica: Replica, spec: str) -> httpx.Response:
    response = await http.post(replica.url + "api/v1/builds", json={"spec": spec})
    assert response.status_code in (200, 201), response.text
    return response


async def log_has(http: httpx.AsyncClient, url: str, text: str) -> bool:
    return text in (await http.get(url + "/logs")).text


async def log_longer(http: httpx.AsyncClient, url: str, length: int) -> bool:
    return len((await http.get(url + "/logs")).text) > length


def seqs(stream: list[tuple[int, dict[str, Any]]]) -> list[int]:
    return [seq for seq, _ in stream]


# -- one build, seen through every replica --------------------------------------------------------------


async def test_two_replicas_share_one_build_its_events_logs_and_cancel(
    git_server: Any, tmp_path: Path, make_postgres_database: Callable[[], Awaitable[str]],
) -> None:
    repo, doomed = unique("replicas-one"), unique("replicas-cancel")
    git_server.create_repo(repo, {"Dockerfile": slow_dockerfile(6)})
    git_server.create_repo(doomed, {"Dockerfile": slow_dockerfile(120)})
    spec = git_spec(git_server.daemon_url(repo), "main")
    async with (replicas(tmp_path, await make_postgres_database()) as (a, b), DockerWatcher() as engine,
                httpx.AsyncClient(timeout=httpx.Timeout(BOUND, connect=10)) as http):
        # two creates at once, one on each replica: one build, one id
        first, second = await asyncio.gather(create(http, a, spec), create(http, b, spec))
        assert sorted([first.status_code, second.status_code]) == [200, 201]
        build_id = first.json()["id"]
        assert second.json()["id"] == build_id
        owner, other = (a, b) if first.status_code == 201 else (b, a)
        on_owner, on_other = owner.url + f"api/v1/builds/{build_id}", other.url + f"api/v1/builds/{build_id}"
        assert (await http.get(on_other)).json()["state"] in ("queued", "building")

        # through the replica that does not run it: a classic /build joins it under its id, its
        # events live (and resumed with Last-Event-ID), its log followed
        classic = asyncio.create_task(http.get(other.url + "build/" + spec, params={"build_only": "true"},
                                               headers=EVENT_STREAM))
        follow = asyncio.create_task(http.get(on_other + "/logs", params={"follow": "true"}))
        head = await events(http, on_other, stop="tick 2")
        rest = await events(http, on_other, after=head[-1][0])
        from_owner = await events(http, on_owner)
        classic_frames = frames((await classic).text)
        followed = (await follow).text
        record = (await http.get(on_other)).json()
        history = (await http.get(other.url + "api/v1/builds", params={"spec": spec})).json()["items"]
        stored_log = (await http.get(on_other + "/logs")).text

        # a cancel through the other replica stops the build on its owner; streams on both end
        created = await create(http, a, git_spec(git_server.daemon_url(doomed), "main"))
        doomed_id = created.json()["id"]
        on_a, on_b = a.url + f"api/v1/builds/{doomed_id}", b.url + f"api/v1/builds/{doomed_id}"
        await until(lambda: log_has(http, on_b, "tick 1"))
        prefix, _, doomed_spec = git_spec(git_server.daemon_url(doomed), "main").partition("/")
        status_on_b = (await http.get(b.url + f"api/v1/images/{prefix}/{doomed_spec}")).json()
        # an EventSource whose connection to A (the owner) dropped reconnects through B, which follows
        # nothing yet, with Last-Event-ID
        text = ""
        async with http.stream("GET", a.url + "build/" + git_spec(git_server.daemon_url(doomed), "main"),
                               params={"build_only": "true"}, headers=EVENT_STREAM) as response:
            async for chunk in response.aiter_text():
                text += chunk
                if len(frames(text)) >= 3 and text.endswith("\n\n"):
                    break
        dropped_at = frames(text)[-1][0]
        joined = asyncio.Event()

        async def resume() -> tuple[httpx.Headers, str]:
            async with http.stream("GET", b.url + "build/" + git_spec(git_server.daemon_url(doomed), "main"),
                                   params={"build_only": "true"},
                                   headers={**EVENT_STREAM, "Last-Event-ID": dropped_at}) as response:
                joined.set()  # the answer starts once B joined the build
                return response.headers, (await response.aread()).decode()

        resumed = asyncio.create_task(resume())
        await asyncio.wait_for(joined.wait(), BOUND)
        resumed_at = len((await http.get(on_b + "/logs")).text)
        await until(lambda: log_longer(http, on_b, resumed_at + 20))  # more output came meanwhile
        watching = [asyncio.create_task(events(http, url)) for url in (on_a, on_b)]
        classic_doomed = asyncio.create_task(http.get(a.url + "build/" + git_spec(git_server.daemon_url(doomed), "main"),
                                                      params={"build_only": "true"}, headers=EVENT_STREAM))
        await asyncio.sleep(0.5)
        cancelled = await http.delete(on_b, headers=AS_OPERATOR)
        doomed_streams = await asyncio.gather(*watching)
        classic_doomed_frames = frames((await classic_doomed).text)
        resumed_headers, resumed_text = await resumed
        again = await http.delete(on_a, headers=AS_OPERATOR)

    # one builder for the shared build, one for the cancelled one
    assert sorted(engine.actions("create")) == sorted({name for name in engine.actions("create")})
    assert len(engine.actions("create")) == 2, engine.actions("create")
    # the live stream through the other replica is the owner's, event for event, nothing lost or repeated
    through_other = head + rest
    assert seqs(through_other) == list(range(1, len(through_other) + 1))
    assert through_other == from_owner
    assert through_other[-1][1] == {"phase": "ready", "message": "Done! Image built\n",
                                    "imageName": record["image_name"], "build_id": build_id}
    # the classic stream joined the same build: its events carry its id, and it ended built
    assert {e.get("build_id") for _, e in classic_frames} == {build_id}
    assert classic_frames[-1][1]["phase"] == "ready"
    assert [f[0] for f in classic_frames[1:-1]] == [f"{build_id}.{seq}" for seq in range(int(classic_frames[1][0].split(".")[1]),
                                                                                      int(classic_frames[-2][0].split(".")[1]) + 1)]
    assert all(f"tick {i}\n" in followed for i in range(1, 7)), followed
    assert followed == stored_log
    assert record["state"] == "built" and [item["id"] for item in history] == [build_id]
    # the cancel
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"
    for stream in doomed_streams:
        assert stream[-1][1]["phase"] == "failed" and stream[-1][1].get("cancelled") is True
    assert doomed_streams[0] == doomed_streams[1]
    assert classic_doomed_frames[-1][1]["phase"] == "failed" and "cancelled" in classic_doomed_frames[-1][1]["message"]
    assert again.status_code == 409
    resumed_frames = frames(resumed_text)
    assert resumed_headers["x-build-id"] == doomed_id
    seq_dropped = int(dropped_at.split(".")[1])
    resumed_ids = [frame_id for frame_id, _ in resumed_frames if frame_id]
    assert resumed_ids, resumed_frames  # build events came through B after the one the client had
    assert resumed_ids == [f"{doomed_id}.{seq}" for seq in range(seq_dropped + 1, seq_dropped + 1 + len(resumed_ids))]
    assert all("Waiting for build to start" not in e.get("message", "") for _, e in resumed_frames)
    assert resumed_frames[-1][1]["phase"] == "failed" and "cancelled" in resumed_frames[-1][1]["message"]
    assert status_on_b["build_id"] == doomed_id and status_on_b["exists"] is False  # B itself follows nothing yet
    assert await namespace_containers() == []


# -- a replica that dies mid-build -------------------------------------------------------------------------


async def test_a_replica_killed_mid_build_is_taken_over_and_every_stream_told(
    git_server: Any, tmp_path: Path, make_postgres_database: Callable[[], Awaitable[str]],
) -> None:
    """Replica A runs two builds and is SIGKILLed. B notices (A's lease runs out): one builder
    still runs, so B follows it to the end (built); the other was removed, so B fails it with a
    message. B's streams on both, opened before the kill, get those outcomes."""
    alive, gone = unique("replicas-alive"), unique("replicas-gone")
    for repo in (alive, gone):
        git_server.create_repo(repo, {"Dockerfile": slow_dockerfile(12)})
    async with (replicas(tmp_path, await make_postgres_database()) as (a, b),
                httpx.AsyncClient(timeout=httpx.Timeout(BOUND, connect=10)) as http):
        ids = {}
        for repo in (alive, gone):
            created = await create(http, a, git_spec(git_server.daemon_url(repo), "main"))
            assert created.status_code == 201
            ids[repo] = created.json()["id"]
        urls = {repo: b.url + f"api/v1/builds/{build_id}" for repo, build_id in ids.items()}
        for url in urls.values():
            await until(lambda url=url: log_has(http, url, "tick 2"))
        streams = {repo: asyncio.create_task(events(http, url)) for repo, url in urls.items()}
        classic = asyncio.create_task(http.get(b.url + "build/" + git_spec(git_server.daemon_url(alive), "main"),
                                               params={"build_only": "true"}, headers=EVENT_STREAM))
        await asyncio.sleep(0.5)
        await a.kill()
        async with aiodocker.Docker() as docker:  # the second builder goes with the node
            await (await docker.containers.get(await builder_of(ids[gone]))).delete(force=True)
        outcome = {repo: await task for repo, task in streams.items()}
        classic_frames = frames((await classic).text)
        final = {repo: (await http.get(url)).json() for repo, url in urls.items()}
        log = (await http.get(urls[alive] + "/logs")).text

    assert final[alive]["state"] == "built", final[alive]
    assert outcome[alive][-1][1]["phase"] == "ready"
    assert seqs(outcome[alive]) == list(range(1, len(outcome[alive]) + 1))
    assert classic_frames[-1][1]["phase"] == "ready" and classic_frames[-2][1]["build_id"] == ids[alive]
    assert all(f"tick {i}\n" in log for i in range(1, 13)), log
    assert final[gone]["state"] == "failed" and "replica running this build stopped" in final[gone]["message"]
    assert final[gone]["message"].startswith(ORPHANED_MESSAGE.split("(")[0])
    assert outcome[gone][-1][1]["phase"] == "failed" and "start the build again" in outcome[gone][-1][1]["message"]


async def builder_of(build_id: str) -> str:
    """The name of the builder container labelled with ``build_id``."""
    async with aiodocker.Docker() as docker:
        found = await docker.containers.list(all=True, filters={"label": [f"binderapi.build_id={build_id}"]})
    assert len(found) == 1, found
    return found[0]["Names"][0].lstrip("/")


# -- the database goes away --------------------------------------------------------------------------------


class Cluster:
    """A PostgreSQL cluster of the test's own (the shared one is never restarted): initdb in a
    temporary directory, run as the ``postgres`` OS user on a free loopback port, trust auth
    (loopback only, for the test's life), removed after."""

    def __init__(self) -> None:
        bindirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
        if not bindirs or shutil.which("setpriv") is None:
            pytest.skip("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin) or setpriv")
        self.bin = bindirs[-1]
        self.dir = Path(tempfile.mkdtemp(prefix="binderapi-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    async def _as_postgres(self, *args: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            "setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *args, cwd="/",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        output, _ = await proc.communicate()
        assert proc.returncode == 0, output.decode()[-2000:]

    async def init(self) -> None:
        shutil.chown(self.dir, "postgres", "postgres")
        await self._as_postgres(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-E", "UTF8",
                                "--locale=C.UTF-8", "--auth=trust")
        await self.start()

    async def start(self) -> None:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir} "
                   "-c fsync=off -c synchronous_commit=off")
        await self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"),
                                "-o", options, "-w", "start")

    async def stop(self) -> None:
        await self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    async def remove(self) -> None:
        with contextlib.suppress(AssertionError):
            await self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    own = Cluster()
    try:
        await own.init()
        yield own
    finally:
        await own.remove()


async def test_postgresql_restarted_mid_build(git_server: Any, tmp_path: Path, cluster: Cluster) -> None:
    """The database restarts while replica A builds: the classic stream on A goes on from memory,
    B's stream goes on from the store once it is back (its listener reconnects and catches up),
    and the store gets everything A could not write meanwhile."""
    repo = unique("replicas-pgrestart")
    git_server.create_repo(repo, {"Dockerfile": slow_dockerfile(15)})
    spec = git_spec(git_server.daemon_url(repo), "main")
    async with (replicas(tmp_path, cluster.url) as (a, b),
                httpx.AsyncClient(timeout=httpx.Timeout(BOUND, connect=10)) as http):
        created = await create(http, a, spec)
        build_id = created.json()["id"]
        on_b = b.url + f"api/v1/builds/{build_id}"
        await until(lambda: log_has(http, on_b, "tick 2"))
        through_b = asyncio.create_task(events(http, on_b))
        classic = asyncio.create_task(http.get(a.url + "build/" + spec, params={"build_only": "true"},
                                               headers=EVENT_STREAM))
        await asyncio.sleep(0.5)
        await cluster.stop()
        await asyncio.sleep(2)
        await cluster.start()
        streamed = await through_b
        classic_frames = frames((await classic).text)
        record = (await http.get(on_b)).json()
        replayed = await events(http, a.url + f"api/v1/builds/{build_id}")
        log = (await http.get(on_b + "/logs")).text

    assert streamed[-1][1]["phase"] == "ready" and record["state"] == "built"
    assert seqs(streamed) == list(range(1, len(streamed) + 1))
    assert streamed == replayed  # what B streamed is what the store kept
    assert classic_frames[-1][1]["phase"] == "ready"
    assert all(f"tick {i}\n" in log for i in range(1, 16)), log


async def test_a_cut_listening_connection_loses_no_event(
    git_server: Any, tmp_path: Path, make_postgres_database: Callable[[], Awaitable[str]],
) -> None:
    """Every replica's LISTEN connection is terminated, again and again, while B streams a build A
    runs: B reconnects, catches up from the store, and its stream has every event once."""
    repo = unique("replicas-cut")
    git_server.create_repo(repo, {"Dockerfile": slow_dockerfile(10)})
    url = await make_postgres_database()
    async with (replicas(tmp_path, url) as (a, b),
                httpx.AsyncClient(timeout=httpx.Timeout(BOUND, connect=10)) as http):
        created = await create(http, a, git_spec(git_server.daemon_url(repo), "main"))
        on_b = b.url + f"api/v1/builds/{created.json()['id']}"
        through_b = asyncio.create_task(events(http, on_b))
        admin = await asyncpg.connect(_raw(url))
        cuts = 0
        try:
            while not through_b.done():
                cuts += await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()")
                await asyncio.sleep(1)
        finally:
            await admin.close()
        streamed = await through_b
        replayed = await events(http, a.url + f"api/v1/builds/{created.json()['id']}")
    assert cuts >= 2
    assert streamed[-1][1]["phase"] == "ready"
    assert seqs(streamed) == list(range(1, len(streamed) + 1))
    assert streamed == replayed
