"""Builds as resources, from the build manager's side, on the real engine and registry with the
SQLite store: ids on builds, their containers and their events; the record, events and log in
the store, written in batches; cancel; restart (re-attach or fail); a store that is down; and a
classic /build stream that resumes with Last-Event-ID."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import aiodocker
import httpx
import pytest

from binderapi.builds import VANISHED_MESSAGE, BuildFinishedError
from binderapi.store import BuildState
from binderapi.store.sql import SQLBuildStore
from fixtures.server import EVENT_STREAM, read_events, serve
from fixtures.stack import (
    BASE_IMAGE,
    SINGLEUSER_IMAGE,
    DockerWatcher,
    docker_settings,
    git_spec,
    namespace_containers,
    unique,
)

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("no_leaked_build_containers")]

BUILD_ONLY = {"build_only": "true"}


def slow_dockerfile(seconds: int, base: str = BASE_IMAGE) -> str:
    nonce = uuid.uuid4().hex[:8]
    return f"FROM {base}\nRUN echo {nonce} && for i in $(seq {seconds}); do echo tick $i; sleep 1; done\n"


def parse_frames(raw: bytes) -> list[tuple[str | None, dict]]:
    """(id, event) of each data frame, as an EventSource reads them."""
    frames = []
    for block in raw.split(b"\n\n"):
        fields = dict(line.split(b": ", 1) for line in block.split(b"\n") if b": " in line and not line.startswith(b":"))
        if b"data" in fields:
            frames.append((fields[b"id"].decode() if b"id" in fields else None, json.loads(fields[b"data"])))
    return frames


async def stream(client: httpx.AsyncClient, url: str, *, stop: bytes | None = None, headers: dict | None = None,
                 params: dict | None = BUILD_ONLY) -> tuple[httpx.Headers, bytes]:
    """A classic /build stream's headers and bytes, to its end or (then disconnecting) to ``stop``."""
    raw = b""
    async with client.stream("GET", url, params=params, headers={**EVENT_STREAM, **(headers or {})}) as r:
        assert r.status_code == 200
        async for chunk in r.aiter_bytes():
            raw += chunk
            if stop is not None and stop in raw and raw.endswith(b"\n\n"):
                break
    return r.headers, raw


async def until(condition, seconds: float = 120.0):
    for _ in range(int(seconds * 10)):
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


def log_text(manager, build) -> str:
    """A running build's log so far."""
    held = manager.recorder.log_snapshot(build.id)
    return held.text() if held is not None else ""


class CountingStore:
    """Counts every call made to the store it wraps (its class is the real one, left unchanged)."""

    def __init__(self, store) -> None:
        self.calls: list[str] = []
        for name in ("save", "get", "list", "latest_for_image", "unfinished", "append", "events_after", "read_log",
                     "ping", "delete_finished_before"):
            setattr(store, name, self._counted(name, getattr(store, name)))

    def _counted(self, name, method):
        async def call(*args, **kwargs):
            self.calls.append(name)
            return await method(*args, **kwargs)
        return call


async def test_a_build_has_an_id_on_its_container_events_and_record(client, git_server):
    repo = unique("ids")
    git_server.create_repo(repo, {"Dockerfile": slow_dockerfile(3)})
    settings = docker_settings({"BuildStore": {"flush_interval": 1.0}})
    async with serve(settings) as svc, DockerWatcher() as engine:
        url = svc.url + "build/" + git_spec(git_server.daemon_url(repo), "main")
        headers, raw = await stream(client, url)
        build_id = headers["x-build-id"]
        frames = parse_frames(raw)
        # every event names the build; the build's frames are numbered, what follows is `.done`
        assert all(event["build_id"] == build_id for _, event in frames)
        ids = [frame_id for frame_id, _ in frames]
        assert ids[-1] == f"{build_id}.done" and frames[-1][1]["phase"] == "ready"
        seqs = [int(i.split(".")[1]) for i in ids[:-1]]
        assert all(i.startswith(build_id + ".") for i in ids[:-1]) and seqs == sorted(set(seqs))
        # the container carried the id
        created = [e for e in engine.events if e.get("Action") == "create"]
        assert [e["Actor"]["Attributes"].get("binderapi.build_id") for e in created] == [build_id]
        # the store has the record, every event (the terminal `ready` last) and the log
        store, recorder = svc.services.store, svc.services.recorder
        record = await until(lambda: store.get(build_id))
        await until(lambda: recorder.log_snapshot(build_id) is None)  # written to the end
        record = await store.get(build_id)
        assert record.state is BuildState.built and record.spec.startswith("git/") and record.started_at and record.finished_at
        events = await store.events_after(build_id, 0, 10_000)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        stored = {e.seq: json.loads(e.data) for e in events}
        assert all(stored[seq] == event for seq, (_, event) in zip(seqs[1:], frames[1:-1], strict=True))
        assert json.loads(events[-1].data) == {"phase": "ready", "message": "Done! Image built\n",
                                               "imageName": frames[-1][1]["imageName"], "build_id": build_id}
        assert recorder.writes * 3 <= len(events), (recorder.writes, len(events))  # batched, not one write per event
        log = await store.read_log(build_id)
        assert all(f"tick {i}" in log.text() for i in (1, 2, 3)) and record.log_bytes == len(log.text().encode())
        # a cached answer touches no store, names no build and carries no ids
        counting = CountingStore(store)
        headers, raw = await stream(client, url, headers={"Last-Event-ID": "garbage.7"})
        assert "x-build-id" not in headers and b"id:" not in raw
        assert parse_frames(raw) == [(None, {"phase": "ready", "message": "Done! Found built image\n",
                                             "imageName": frames[-1][1]["imageName"]})]
        await asyncio.sleep(1.5)  # more than a flush interval
        assert counting.calls == []


async def test_cancel_a_queued_and_a_running_build(client, git_server):
    running, queued = unique("cancel-running"), unique("cancel-queued")
    for repo in (running, queued):
        git_server.create_repo(repo, {"Dockerfile": slow_dockerfile(120)})
    async with serve(docker_settings(concurrent_build_limit=1)) as svc, DockerWatcher() as engine:
        manager = svc.services.builds
        url = {repo: svc.url + "build/" + git_spec(git_server.daemon_url(repo), "main") for repo in (running, queued)}
        first = asyncio.create_task(read_events(client, url[running], params=BUILD_ONLY))
        build_a = await until(lambda: next((b for b in manager.builds.values()
                                            if b.record.state is BuildState.building), None))
        await until(lambda: "tick 1" in log_text(manager, build_a))
        second = asyncio.create_task(read_events(client, url[queued], params=BUILD_ONLY))
        build_b = await until(lambda: manager.queue[0] if manager.queue else None)

        record = await manager.cancel(build_b.id)  # queued: it leaves the queue
        assert record.state is BuildState.cancelled and "cancelled" in record.message
        events = await asyncio.wait_for(second, 30)
        assert events[-1]["phase"] == "failed" and "cancelled" in events[-1]["message"]
        assert events[-1]["build_id"] == build_b.id and not manager.queue

        record = await manager.cancel(build_a.id)  # running: its builder is removed
        assert record.state is BuildState.cancelled and record.finished_at is not None
        events = await asyncio.wait_for(first, 30)
        assert events[-1]["phase"] == "failed" and "cancelled" in events[-1]["message"]
        assert await namespace_containers() == []
        with pytest.raises(BuildFinishedError):
            await manager.cancel(build_a.id)
        assert await manager.cancel("0" * 22) is None
        # the resource's stream ends with the cancellation, from memory and from the store
        replay = [json.loads(e.data) async for e in manager.follow_events(build_a.id)]
        assert replay[-1] == {"phase": "failed", "message": record.message + "\n", "cancelled": True,
                              "build_id": build_a.id}
        stored = await until(lambda: svc.services.store.get(build_b.id))
        await until(lambda: manager.recorder.log_snapshot(build_a.id) is None)
        assert (await svc.services.store.get(build_a.id)).state is BuildState.cancelled
        assert stored.state is BuildState.cancelled
    assert engine.actions("create") == [build_a.job.name]  # the queued build never started a builder


async def test_restart_reattaches_a_running_build_and_fails_a_vanished_one(client, git_server):
    alive, gone = unique("restart-alive"), unique("restart-gone")
    git_server.create_repo(alive, {"Dockerfile": slow_dockerfile(8)})
    git_server.create_repo(gone, {"Dockerfile": slow_dockerfile(120)})
    settings = docker_settings()  # both lives share its store
    async with serve(settings) as svc:
        manager = svc.services.builds
        url = {repo: svc.url + "build/" + git_spec(git_server.daemon_url(repo), "main") for repo in (alive, gone)}
        watchers = [asyncio.create_task(read_events(client, url[repo], params=BUILD_ONLY)) for repo in (alive, gone)]
        builds = await until(lambda: len(manager.builds) == 2 and all(
            "tick 1" in log_text(manager, b) for b in manager.builds.values())
            and list(manager.builds.values()))
        by_repo = {repo: next(b for b in builds if repo in b.job.repo_url) for repo in (alive, gone)}
    await asyncio.gather(*watchers, return_exceptions=True)  # their streams ended with the server
    # a shutdown leaves the builds running and their records unfinished
    store = SQLBuildStore(f"sqlite+aiosqlite:///{Path(settings.BuildStore.state_dir) / 'builds.sqlite3'}")
    await store.open()
    try:
        assert {r.id for r in await store.unfinished()} == {b.id for b in builds}
    finally:
        await store.close()
    async with aiodocker.Docker() as docker:  # one builder vanishes while binderapi is down
        await (await docker.containers.get(by_repo[gone].job.name)).delete(force=True)

    async with serve(settings) as svc:
        manager = svc.services.builds
        build_id = by_repo[alive].id
        assert manager.live(build_id) is not None  # re-attached under its id
        events = [e async for e in manager.follow_events(build_id)]
        assert [e.seq for e in events] == list(range(1, len(events) + 1))  # nothing lost, nothing twice
        assert json.loads(events[-1].data)["phase"] == "ready"
        await until(lambda: manager.recorder.log_snapshot(build_id) is None)
        log = (await svc.services.store.read_log(build_id)).text()
        assert [log.count(f"tick {i}\n") for i in range(1, 9)] == [1] * 8, log  # the log is whole, nothing twice
        await svc.services.recorder.flush()
        failed = await svc.services.store.get(by_repo[gone].id)
        assert failed.state is BuildState.failed and failed.message == VANISHED_MESSAGE
        replay = [json.loads(e.data) async for e in manager.follow_events(failed.id)]  # its stream ends, saying why
        assert replay[-1] == {"phase": "failed", "message": VANISHED_MESSAGE + "\n", "build_id": failed.id}
        assert [e["phase"] for e in replay[:-1]] and "failed" not in [e["phase"] for e in replay[:-1]]
        assert (await manager.record(build_id)).state is BuildState.built


@pytest.mark.parametrize("damage", ["unwritable", "corrupt"])
async def test_a_store_that_is_down_leaves_classic_build_working(client, git_server, tmp_path, damage):
    repo = unique("nostore")
    git_server.create_repo(repo, {"Dockerfile": f"FROM {BASE_IMAGE}\nRUN echo {uuid.uuid4().hex} > /x\n"})
    if damage == "unwritable":
        (tmp_path / "a-file").write_text("")
        state_dir = tmp_path / "a-file" / "state"  # a directory cannot be made under a file
    else:
        state_dir = tmp_path / "state"
        state_dir.mkdir()
        (state_dir / "builds.sqlite3").write_bytes(b"this is not a database" * 100)
    async with serve(docker_settings({"BuildStore": {"state_dir": str(state_dir)}})) as svc:
        events = await read_events(client, svc.url + "build/" + git_spec(git_server.daemon_url(repo), "main"),
                                   params=BUILD_ONLY)
        assert events[-1]["phase"] == "ready" and events[-1]["build_id"]
        health = await client.get(svc.url + "health")
        assert health.status_code == 200 and health.json()["ok"] is True
        (check,) = [c for c in health.json()["checks"] if c["service"] == "Build store"]
        assert check["ok"] is False and check["_ignore_failure"] is True and "build store" in check["error"]
        # the store is tried again (every STORE_REOPEN_INTERVAL): once it can be opened, it is used
        if damage == "unwritable":
            (tmp_path / "a-file").unlink()
        await svc.services._reopen_store()
        await asyncio.sleep(1.1)  # a failed check is cached a second
        (check,) = [c for c in (await client.get(svc.url + "health")).json()["checks"] if c["service"] == "Build store"]
        assert (svc.services.store is not None) is (damage == "unwritable") is check["ok"]


@pytest.mark.hub
async def test_a_reconnect_with_last_event_id_resumes_without_repeats_or_a_second_launch(client, git_server, jupyterhub):
    from test_launch_e2e import SECRET

    repo = unique("resume")
    git_server.create_repo(repo, {"Dockerfile": slow_dockerfile(6, SINGLEUSER_IMAGE)})
    settings = docker_settings({"DockerLaunchQuota": {"container_filter": jupyterhub.container_prefix}},
                               hub_url=jupyterhub.url, hub_api_token=jupyterhub.api_token, launch_quota_class="docker",
                               build_token_secret=SECRET, ready_hold_seconds=0.5)
    users = {u["name"] for u in (await jupyterhub.api("GET", "users")).json()}
    try:
        async with serve(settings) as svc, DockerWatcher() as engine:
            url = svc.url + "build/" + git_spec(git_server.daemon_url(repo), "main")
            _, raw = await stream(client, url, stop=b"tick 2", params=None)  # an EventSource losing its connection
            first = parse_frames(raw)
            last_id = first[-1][0]
            build_id, seen = last_id.split(".")
            headers, raw = await stream(client, url, headers={"Last-Event-ID": last_id}, params=None)
            second = parse_frames(raw)
            assert headers["x-build-id"] == build_id
            messages = [event.get("message", "") for _, event in second]
            assert "Waiting for build to start...\n" not in messages and not any("tick 1" in m for m in messages)
            resumed = [int(i.split(".")[1]) for i, _ in second if i and not i.endswith(".done")]
            assert resumed and min(resumed) == int(seen) + 1
            assert second[-1][1]["phase"] == "ready" and second[-1][0] == f"{build_id}.done" and "url" in second[-1][1]
            # after the launch ran, its id refuses a second one
            _, raw = await stream(client, url, headers={"Last-Event-ID": f"{build_id}.done"}, params=None)
            ((_, refused),) = parse_frames(raw)
            assert refused["phase"] == "failed" and refused["status_code"] == 409
        assert len(engine.actions("create")) == 1  # one build
        launched = {u["name"] for u in (await jupyterhub.api("GET", "users")).json()} - users
        assert len(launched) == 1, launched  # one launch
    finally:
        await jupyterhub.stop_all_servers()
