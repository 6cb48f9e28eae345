"""Faults said plainly: ``/health`` follows a dependency down and back up promptly (a burst of
probes asks it once); the launch quota's engine watch reports an outage once, not every 2 s; an
engine that goes away mid-build, or a builder stopped from outside, is named as such; and a failed
event for a dependency that is down (registry, engine) carries ``status_code`` 503.

The engine is taken away through :mod:`fixtures.engineproxy` (a relay the test cuts), never by
stopping the shared engine; the registry taken away is one the test started itself."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from pathlib import Path

import aiodocker
import httpx
import pytest

from binderapi import health, supervisor
from binderapi.backends.docker import quota
from binderapi.supervisor import Supervisor
from fixtures.registries import RegistryProcess
from fixtures.server import EVENT_STREAM, make_settings, read_events, serve
from fixtures.stack import (
    BASE_IMAGE,
    docker_settings,
    git_spec,
    namespace_containers,
    remove_containers,
    unique,
)


def registry_check(body: dict) -> dict:
    (check,) = [c for c in body["checks"] if c["service"] == "Docker registry"]
    return check


@pytest.mark.docker
async def test_health_follows_a_registry_going_down_and_coming_back(tmp_path: Path):
    registry = RegistryProcess(tmp_path / "registry").start()  # ours: stopping it disturbs nobody
    registry.stop()  # down before the first probe (a success stays cached 15 s, as BinderHub's)
    settings = make_settings({"DockerRegistry": {"url": registry.url, "retries": 1}}, build_class="docker",
                             use_registry=True, image_prefix=f"{registry.host}/binder-")
    try:
        async with serve(settings) as svc, httpx.AsyncClient(timeout=30) as client:
            down = await client.get(svc.url + "health")
            assert down.status_code == 503
            check = registry_check(down.json())
            assert check["ok"] is False and f"container registry at {registry.host} cannot be reached" in check["error"]

            # still down: the failure is asked again (not served from a 15 s cache) and still fails
            await asyncio.sleep(health.FAILURE_CACHE_SECONDS)
            assert registry_check((await client.get(svc.url + "health")).json())["ok"] is False

            registry.start()  # the same port
            await asyncio.sleep(health.FAILURE_CACHE_SECONDS)
            back = await client.get(svc.url + "health")  # the next request after recovery is ok
            assert registry_check(back.json())["ok"] is True
    finally:
        registry.stop()


@pytest.mark.parametrize("outcome", ["ok", "failing"])
async def test_a_burst_of_probes_runs_each_check_once(outcome: str):
    calls = 0
    release = asyncio.Event()

    async def dependency():
        nonlocal calls
        calls += 1
        await release.wait()
        if outcome == "failing":
            raise ConnectionError("dependency unreachable")
        return True

    checks = health.HealthChecks()
    checks.add("Dependency", dependency)
    burst = [asyncio.ensure_future(checks.run()) for _ in range(50)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*burst)
    assert calls == 1
    assert {ok for ok, _ in results} == {outcome == "ok"}
    if outcome == "ok":  # and once answered, a success is served from the cache
        assert (await checks.run())[0] is True
        assert calls == 1


# -- the launch quota's watch of the Docker engine -------------------------------------------------


async def wait_for(condition, what: str, bound: float = 60.0) -> None:
    """Poll ``condition`` (a generous bound: a hang fails, a slow machine does not)."""
    for _ in range(int(bound / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def ours(caplog, level: int) -> list[logging.LogRecord]:
    """binderapi's records at ``level`` or above (not, say, asyncio's about an earlier test's leftovers)."""
    return [r for r in caplog.records if r.name.startswith("binderapi") and r.levelno >= level]


@pytest.mark.docker
async def test_engine_outage_is_one_warning_and_one_recovery_line(engine_proxy, caplog, monkeypatch):
    monkeypatch.setattr(quota, "EVENTS_RETRY_MIN", 0.05, raising=False)  # many retries within the test
    monkeypatch.setattr(quota, "EVENTS_RETRY_MAX", 0.2, raising=False)
    settings = make_settings({"DockerBuildExecutor": {"docker_host": engine_proxy.docker_host}},
                             build_class="docker", launch_quota_class="docker", use_registry=False)
    supervisor = Supervisor()
    watch = quota.DockerLaunchQuota(settings, supervisor)
    caplog.set_level(logging.INFO, logger="binderapi")
    try:
        await watch.start()
        assert watch.resyncs == 1

        engine_proxy.cut()
        await wait_for(lambda: engine_proxy.refused >= 5, "the watch retried while the engine was away")
        during = ours(caplog, logging.WARNING)
        assert len(during) == 1, [r.getMessage() for r in during]
        (warning,) = during
        assert warning.levelno == logging.WARNING and warning.exc_info is None
        assert "the Docker engine cannot be reached" in warning.getMessage()

        engine_proxy.restore()
        await wait_for(lambda: watch.resyncs == 2, "the watch resynced after the engine came back")
        back = [r for r in caplog.records if "Docker engine is back" in r.getMessage()]
        assert len(back) == 1 and back[0].levelno == logging.INFO
        assert ours(caplog, logging.WARNING) == [warning]
    finally:
        await supervisor.close()
        await watch.close()


# -- background tasks that keep failing --------------------------------------------------------------


@pytest.fixture
def quick_restarts(monkeypatch):
    monkeypatch.setattr(supervisor, "RESTART_BACKOFF", (0.01, 0.05), raising=False)


def supervised(caplog, level: int = logging.INFO, text: str = "") -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.name == "binderapi.supervisor" and r.levelno >= level and text in r.getMessage()]


async def test_a_task_failing_again_and_again_is_one_warning_and_one_recovery_line(quick_restarts, caplog):
    caplog.set_level(logging.DEBUG, logger="binderapi.supervisor")
    calls = 0

    async def flaky():
        nonlocal calls
        calls += 1
        if calls <= 6:
            raise ConnectionError(f"backend unreachable (try {calls})")

    tasks = Supervisor()
    tasks.run_forever("flaky job", flaky, restart_delay=0.01)
    try:
        await wait_for(lambda: calls >= 9, "the job ran again after it failed")
    finally:
        await tasks.close()
    (warning,) = [r for r in supervised(caplog) if r.levelno >= logging.WARNING]
    assert warning.levelno == logging.WARNING and warning.exc_info is None
    assert "flaky job failed (ConnectionError: backend unreachable (try 1))" in warning.getMessage()
    (back,) = [r for r in supervised(caplog) if r.levelno == logging.INFO]
    assert back.getMessage() == "Background task flaky job is running again (after 6 failed tries)"
    # every traceback is at DEBUG, one per failure
    assert [r.levelno for r in caplog.records if r.exc_info] == [logging.DEBUG] * 6


async def test_a_task_that_keeps_running_has_recovered(quick_restarts, monkeypatch, caplog):
    """A task that never returns (a watch) counts as running again once it has run a while; a later
    crash is a new outage, said again."""
    monkeypatch.setattr(supervisor, "HEALTHY_AFTER", 0.2, raising=False)
    caplog.set_level(logging.INFO, logger="binderapi.supervisor")
    calls = 0
    crash = asyncio.Event()

    async def watch():
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise OSError("engine away")
        if calls == 4:
            await crash.wait()
            raise OSError("engine away again")
        await asyncio.Event().wait()

    tasks = Supervisor()
    tasks.run_forever("watch", watch)
    try:
        await wait_for(lambda: supervised(caplog, text="running again"), "the watch counted as running again")
        assert len(supervised(caplog, logging.WARNING)) == 1
        crash.set()
        await wait_for(lambda: calls >= 5, "the watch restarted after its second crash")
    finally:
        await tasks.close()
    warnings = supervised(caplog, logging.WARNING)
    assert ["engine away again" in r.getMessage() for r in warnings] == [False, True]
    assert len(supervised(caplog, text="running again")) == 1  # the second outage has not ended yet


@pytest.mark.docker
async def test_build_cleaner_with_the_engine_away_is_one_line_per_outage(engine_proxy, quick_restarts, caplog):
    """The real case: binderapi started without its engine (``builder_required: false``) runs the
    build cleaner every second; the engine away for several rounds is one line, and one when it is back."""
    settings = docker_settings({"DockerBuildExecutor": {"docker_host": engine_proxy.docker_host}},
                               builder_required=False, build_cleanup_interval=1, use_registry=False,
                               build_token_secret="ab" * 32)
    caplog.set_level(logging.INFO, logger="binderapi")
    caplog.set_level(logging.DEBUG, logger="binderapi.supervisor")  # to count the failed rounds
    failed_rounds = lambda: len(supervised(caplog, logging.DEBUG, "build cleaner failed"))  # noqa: E731
    engine_proxy.cut()
    async with serve(settings):
        await wait_for(lambda: failed_rounds() >= 5, "the cleaner failed several rounds")
        during = ours(caplog, logging.WARNING)
        assert [r.exc_info for r in during] == [None, None], [r.getMessage() for r in during]
        assert "The build backend is unreachable" in during[0].getMessage()  # at start-up
        assert "Background task build cleaner failed" in during[1].getMessage()

        engine_proxy.restore()
        await wait_for(lambda: supervised(caplog, text="running again"), "the cleaner ran again")
        rounds = failed_rounds()
        engine_proxy.cut()  # a second outage is said again, once
        await wait_for(lambda: failed_rounds() >= rounds + 3, "the cleaner failed again")
        assert len(supervised(caplog, logging.WARNING)) == 2
    (back,) = supervised(caplog, text="running again")
    assert back.levelno == logging.INFO and "build cleaner" in back.getMessage()
    assert not [r for r in ours(caplog, logging.INFO) if r.exc_info]


# -- the engine going away mid-build ----------------------------------------------------------------


def slow_dockerfile(seconds: int) -> str:
    nonce = uuid.uuid4().hex[:8]  # defeats the engine's layer cache
    return f"FROM {BASE_IMAGE}\nRUN echo {nonce} && for i in $(seq {seconds}); do echo tick $i; sleep 1; done\n"


async def read_until_ticking(client: httpx.AsyncClient, url: str, on_tick) -> list[dict]:
    """Read a build stream to its end, calling ``on_tick`` once when the build is under way."""
    events: list[dict] = []
    async with client.stream("GET", url, params={"build_only": "true"}, headers=EVENT_STREAM) as response:
        async for text in response.aiter_lines():
            if not text.startswith("data:"):
                continue
            event = json.loads(text[5:])
            events.append(event)
            if "tick 1" in event.get("message", "") and on_tick is not None:
                await on_tick()
                on_tick = None
            if event.get("phase") in ("ready", "failed"):
                break
    return events


@pytest.mark.docker
@pytest.mark.usefixtures("no_leaked_build_containers")
async def test_engine_going_away_mid_build_is_said_plainly(client, git_server, engine_proxy):
    repo = unique("enginegone")
    git_server.create_repo(repo, {"Dockerfile": slow_dockerfile(120)})
    settings = docker_settings({"DockerBuildExecutor": {"docker_host": engine_proxy.docker_host}})
    try:
        async with serve(settings) as svc:
            url = svc.url + "build/" + git_spec(git_server.daemon_url(repo), "main")

            async def cut():
                engine_proxy.cut()

            events = await read_until_ticking(client, url, cut)
    finally:
        engine_proxy.restore()
        await remove_containers(await namespace_containers())  # still on the real engine
    failed = events[-1]
    assert failed["phase"] == "failed"
    assert "The Docker engine went away during the build" in failed["message"]
    assert failed["status_code"] == 503


@pytest.mark.docker
@pytest.mark.usefixtures("no_leaked_build_containers")
async def test_builder_stopped_from_outside_says_so(client, git_server):
    """The engine stays up, the builder gets SIGTERM (what an engine restart or `docker stop` sends):
    not "repo2docker exited with code 143"."""
    repo = unique("stopped")
    git_server.create_repo(repo, {"Dockerfile": slow_dockerfile(120)})

    async def stop_builder():
        (builder,) = await namespace_containers()
        async with aiodocker.Docker() as docker:
            await (await docker.containers.get(builder["Id"])).kill(signal="SIGTERM")

    async with serve(docker_settings()) as svc:
        events = await read_until_ticking(client, svc.url + "build/" + git_spec(git_server.daemon_url(repo), "main"),
                                          stop_builder)
    failed = events[-1]
    assert failed["phase"] == "failed"
    assert "The build was stopped from outside (the build was stopped with SIGTERM, exit code 143)" in failed["message"]
    assert "restart of the Docker engine" in failed["message"]


@pytest.mark.docker
async def test_engine_down_before_a_build_is_a_503(client, git_server, engine_proxy):
    repo = unique("noengine")
    git_server.create_repo(repo, {"Dockerfile": slow_dockerfile(1)})
    async with serve(docker_settings({"DockerBuildExecutor": {"docker_host": engine_proxy.docker_host}})) as svc:
        engine_proxy.cut()  # after the start-up check: the engine went down while binderapi runs
        events = await read_events(client, svc.url + "build/" + git_spec(git_server.daemon_url(repo), "main"),
                                   params={"build_only": "true"})
    failed = events[-1]
    assert failed["phase"] == "failed" and failed["status_code"] == 503
    assert f"The Docker engine at {engine_proxy.docker_host} cannot be reached" in failed["message"]


@pytest.mark.docker
async def test_registry_down_failed_event_is_a_503(client, git_server, stopped_registry):
    repo = unique("noregistry")
    git_server.create_repo(repo, {"Dockerfile": slow_dockerfile(1)})
    host = stopped_registry.removeprefix("http://")
    settings = docker_settings({"DockerRegistry": {"url": stopped_registry, "retries": 1}}, prefix=f"{host}/down")
    async with serve(settings) as svc:
        events = await read_events(client, svc.url + "build/" + git_spec(git_server.daemon_url(repo), "main"),
                                   params={"build_only": "true"})
    assert [e["phase"] for e in events] == ["failed"]
    assert events[0]["status_code"] == 503
    assert events[0]["message"].startswith(f"the container registry at {host} cannot be reached")
