"""The warm pool against the real JupyterHub + DockerSpawner: a launch hands over a server started
ahead of time, the pool refills, never hands a server out twice, counts against quotas, recycles
old servers, and leaves nothing behind (nor anything a crashed process left)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from prometheus_client import REGISTRY

from binderapi.pipeline import BuildPipeline, BuildRequest
from binderapi.warmpool import carries_mark, marked_time, unmarked_time
from fixtures.hub import containers, run
from fixtures.server import read_events, serve
from fixtures.stack import SINGLEUSER_IMAGE, docker_settings, git_spec

pytestmark = [pytest.mark.docker, pytest.mark.hub]

WAIT = 180.0  # generous: spawns share two cores with other test runs
HANDOVER_MESSAGE = "Handed over a warm server (already running, no spawn needed)\n"


@dataclass
class WarmImage:
    spec: str
    repo_url: str
    image: str
    prefix: str


@pytest.fixture(scope="module")
async def warm_image(git_server):
    """A repository whose image is already "built": the single-user image tagged with the name
    binderapi gives it, in the local engine (use_registry off), so no test waits for a build."""
    name = f"warm-{uuid.uuid4().hex[:6]}"
    git_server.create_repo(name, {"README.md": "A repository the warm pool tests launch.\n"})
    repo_url = git_server.daemon_url(name)
    spec = git_spec(repo_url, "main")
    prefix = f"binderapi-warm-{uuid.uuid4().hex[:6]}-"
    async with serve(docker_settings(image_prefix=prefix, use_registry=False)) as svc:
        repo = await BuildPipeline(svc.services).resolve(BuildRequest(prefix="git", spec=spec.removeprefix("git/")))
    image = repo.image_name
    await run("docker", "tag", SINGLEUSER_IMAGE, image)
    yield WarmImage(spec, repo_url, image, prefix)
    await run("docker", "rmi", image, check=False)


@pytest.fixture
async def hub(jupyterhub):
    """The session's hub, emptied of users (and their servers) after each test."""
    yield jupyterhub
    for user in (await jupyterhub.api("GET", "users")).json():
        await jupyterhub.delete_user(user["name"])


def pool_settings(hub, warm_image, pool, config=None, **binderhub):
    sections = {
        "DockerLaunchQuota": {"container_filter": hub.container_prefix},
        "Launcher": {"retry_delay": 0.5},
        "WarmPool": {"enabled": True, "images": {warm_image.image: 1}, **pool},
        **(config or {}),
    }
    return docker_settings(sections, hub_url=hub.url, hub_api_token=hub.api_token, launch_quota_class="docker",
                           image_prefix=warm_image.prefix, use_registry=False, **binderhub)


async def eventually(condition: Callable[[], object], what: str) -> None:
    """Wait for a condition (sync or async), failing with ``what`` after a generous timeout."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + WAIT
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > give_up:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.2)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def user_names(hub) -> set[str]:
    return {u["name"] for u in (await hub.api("GET", "users")).json()}


async def gone(hub, username: str) -> bool:
    return await hub.user(username) is None and not await containers(hub.container_name(username))


def launching(events: list[dict]) -> list[str]:
    return [e["message"] for e in events if e.get("phase") == "launching"]


def test_marks_are_recognised_and_cleared():
    now = datetime(2025, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    marked = marked_time("repo-abcdefgh", now)
    assert marked > now and carries_mark("repo-abcdefgh", marked.isoformat())
    assert not carries_mark("repo-other123", marked.isoformat())  # the mark belongs to the name
    cleared = unmarked_time("repo-abcdefgh", marked, now)
    assert cleared > marked and not carries_mark("repo-abcdefgh", cleared.isoformat())
    assert not carries_mark("x", None) and not carries_mark("x", "not a time")


async def test_handover_refill_shutdown_and_restart(client, hub, warm_image):
    hits = sample("binderapi_warm_pool_handovers_total", result="hit")
    async with serve(pool_settings(hub, warm_image, {})) as svc:
        pool = svc.services.warm_pool
        await eventually(lambda: pool.ready_users(warm_image.image), "a warm server")
        (warm_user,) = pool.ready_users(warm_image.image)
        started_before = (await hub.user(warm_user))["servers"][""]["started"]
        events = await read_events(client, svc.url + "build/" + warm_image.spec)
        ready = events[-1]
        # handed over: that server, no spawn for this request, the usual ready fields
        assert ready["phase"] == "ready", events
        assert ready["url"] == f"{hub.url}user/{warm_user}/"
        assert launching(events) == [HANDOVER_MESSAGE]
        assert set(ready) == {"phase", "message", "url", "token", "image", "repo_url", "binder_ref_url",
                              "binder_launch_host", "binder_request", "binder_persistent_request",
                              "binder_client_ip"}
        assert (ready["image"], ready["repo_url"]) == (warm_image.image, warm_image.repo_url)
        assert ready["binder_request"] == "v2/" + warm_image.spec and ready["binder_client_ip"] == "127.0.0.1"
        assert (await hub.user(warm_user))["servers"][""]["started"] == started_before
        status = await client.get(ready["url"] + "api/status", params={"token": ready["token"]})
        assert status.status_code == 200, status.text
        assert sample("binderapi_warm_pool_handovers_total", result="hit") == hits + 1
        # refilled to its size in the background, with a new user
        await eventually(lambda: pool.ready_users(warm_image.image), "the refill")
        (refill_user,) = pool.ready_users(warm_image.image)
        assert refill_user != warm_user
        health = (await client.get(svc.url + "health")).json()
        (check,) = [c for c in health["checks"] if c["service"] == "Warm pool"]
        assert check["images"][warm_image.image]["target"] == 1
        assert "binderapi_warm_pool_servers" in (await client.get(svc.url + "metrics")).text
        # the handed-over server's mark is cleared: it is the client's now
        async def unmarked():
            return not carries_mark(warm_user, (await hub.user(warm_user))["servers"][""]["last_activity"])

        await eventually(unmarked, "the handed-over server's mark cleared")
    # shutdown removed the warm server and its user, and left the client's server running
    assert await gone(hub, refill_user)
    assert (await hub.user(warm_user))["servers"][""]["ready"]
    # a new process does not take the client's server for a leftover
    async with serve(pool_settings(hub, warm_image, {"images": {}})) as svc:
        await eventually(lambda: svc.services.warm_pool.swept, "the start-up sweep")
        assert svc.services.warm_pool.leftovers_removed == 0
    assert (await hub.user(warm_user))["servers"][""]["ready"]


async def test_leftovers_of_a_crashed_process_are_removed_at_start_up(hub, warm_image):
    async with serve(pool_settings(hub, warm_image, {})) as svc:
        pool = svc.services.warm_pool
        await eventually(lambda: pool.ready_users(warm_image.image), "a warm server")
        (leftover,) = pool.ready_users(warm_image.image)
        await eventually(lambda: pool.pools[warm_image.image].ready[0].marked, "the mark")
        pool.pools[warm_image.image].ready.clear()  # forgotten, as by a process that died
        pool.config.images.clear()
    assert (await hub.user(leftover))["servers"][""]["ready"]
    async with serve(pool_settings(hub, warm_image, {"images": {}})) as svc:
        await eventually(lambda: gone(hub, leftover), "the leftover's removal")
        assert svc.services.warm_pool.leftovers_removed == 1


async def test_concurrent_launches_never_share_a_server(client, hub, warm_image):
    settings = pool_settings(hub, warm_image, {"images": {warm_image.image: 2}, "refill_concurrency": 2})
    async with serve(settings) as svc:
        pool = svc.services.warm_pool
        await eventually(lambda: len(pool.ready_users(warm_image.image)) == 2, "two warm servers")
        warm_users = set(pool.ready_users(warm_image.image))
        results = await asyncio.gather(*(read_events(client, svc.url + "build/" + warm_image.spec) for _ in range(4)))
        readies = [events[-1] for events in results]
        assert [r["phase"] for r in readies] == ["ready"] * 4, results
        urls = [r["url"] for r in readies]
        assert len(set(urls)) == 4  # no server handed out twice
        handed = [u for u in urls if u.removeprefix(hub.url + "user/").rstrip("/") in warm_users]
        assert len(handed) == 2
        spawned = [events for events in results if launching(events) != [HANDOVER_MESSAGE]]
        assert len(spawned) == 2  # the others took the normal path, with the hub's progress
        assert all(len(launching(events)) > 1 for events in spawned)
        for ready in readies:
            status = await client.get(ready["url"] + "api/status", params={"token": ready["token"]})
            assert status.status_code == 200, status.text


async def test_warm_servers_count_against_quotas(client, hub, warm_image):
    skipped = sample("binderapi_warm_pool_refills_skipped_total", reason="total_quota")
    settings = pool_settings(hub, warm_image, {}, {"LaunchQuota": {"total_quota": 1}}, per_repo_quota=1)
    async with serve(settings) as svc:
        pool, quota = svc.services.warm_pool, svc.services.quota
        await eventually(lambda: pool.ready_users(warm_image.image), "a warm server")
        await eventually(lambda: quota.total_servers() == 1, "the warm server counted by the quota")
        # both quotas are full with the pool's own server; the handover is not refused
        events = await read_events(client, svc.url + "build/" + warm_image.spec)
        assert events[-1]["phase"] == "ready" and launching(events) == [HANDOVER_MESSAGE]
        # ...but the refill is: it would make a second server
        await eventually(lambda: sample("binderapi_warm_pool_refills_skipped_total", reason="total_quota") > skipped,
                         "a skipped refill")
        assert pool.ready_users(warm_image.image) == [] and pool.pools[warm_image.image].starting == 0
        again = await read_events(client, svc.url + "build/" + warm_image.spec)
        assert again[-1] == {"phase": "failed", "message": "Too many users on this BinderHub! Try again soon.\n"}


async def test_old_servers_are_recycled(hub, warm_image):
    retired = sample("binderapi_warm_pool_retired_total", reason="age")
    async with serve(pool_settings(hub, warm_image, {"max_server_age": 2})) as svc:
        pool = svc.services.warm_pool
        await eventually(lambda: pool.ready_users(warm_image.image), "a warm server")
        (first,) = pool.ready_users(warm_image.image)
        await eventually(lambda: gone(hub, first), "the old server's removal")
        await eventually(lambda: set(pool.ready_users(warm_image.image)) - {first}, "its replacement")
        assert sample("binderapi_warm_pool_retired_total", reason="age") > retired
        names = await user_names(hub)
    assert not names & await user_names(hub)  # shutdown removed whatever the pool held then
