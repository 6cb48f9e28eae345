"""The in-process tier: routes and the build pipeline through ``httpx.ASGITransport``, with no
socket, engine, registry or hub. The build backend, image store and provider are the fakes of
``tests/fixtures/fake_backend.py``, selected by import path like real ones, so everything else is the
service's own code, started and stopped by its own lifespan (``asgi-lifespan`` runs it, as uvicorn
would). Nothing here is marked: these tests run anywhere, in seconds.

What needs a real socket (proxy headers, request head limits, the Host header as written) stays in
test_routes.py and test_http_limits.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from binderapi.app import create_app
from binderapi.services import Services
from fixtures.fake_backend import FakeBuildBackend, FakeImageStore, fake_settings
from fixtures.server import EVENT_STREAM

CLIENT = ("127.0.0.1", 50000)


@contextlib.asynccontextmanager
async def inprocess(settings: Any, client: tuple[str, int] = CLIENT) -> AsyncIterator[tuple[httpx.AsyncClient, Services]]:
    """The app with its lifespan run (Services started, then closed), and a client calling it in
    process; requests come from ``client``."""
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app, client=client)
        base = "http://binder.test" + settings.BinderHub.base_url
        async with httpx.AsyncClient(transport=transport, base_url=base, timeout=30) as http:
            yield http, app.state.services


def events_of(response: httpx.Response) -> list[dict[str, Any]]:
    """The ``data:`` frames of a finished event stream."""
    assert response.headers["content-type"].startswith("text/event-stream"), response.headers
    return [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")]


async def build(http: httpx.AsyncClient, spec: str, **params: str) -> list[dict[str, Any]]:
    response = await http.get(f"build/fake/{spec}", headers=EVENT_STREAM, params=params)
    assert response.status_code == 200, response.text
    return events_of(response)


async def until(predicate: Callable[[], Any], limit: float = 10) -> None:
    """Wait for a condition other tasks make true (bounded, never timed)."""
    async with asyncio.timeout(limit):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.01)


def backend_of(services: Services) -> FakeBuildBackend:
    assert isinstance(services.backend, FakeBuildBackend)
    return services.backend


# -- service routes ---------------------------------------------------------------------------------


async def test_versions_health_and_config():
    settings = fake_settings(banner_message="<b>hi</b>", badge_base_url="https://mybinder.example/", base_url="/binder/")
    async with inprocess(settings) as (http, services):
        versions = await http.get("versions")
        health = await http.get("health")
        head = await http.head("health")
        config = await http.get("_config")
        providers = await http.get("api/repoproviders")
    assert versions.status_code == 200
    assert versions.json()["builder_info"] == {"build_image": "fake-repo2docker"}
    assert versions.headers["access-control-allow-origin"] == "*"
    assert health.status_code == head.status_code == 200 and head.content == b""
    checks = {c["service"]: c for c in health.json()["checks"]}
    assert checks["Builder"]["ok"] is True and checks["Builder"]["backend"] == "fake"
    assert checks["Docker registry"]["ok"] is True
    assert isinstance(services.images, FakeImageStore) or isinstance(services.images.store, FakeImageStore)
    assert config.json()["base_url"] == "/binder/" and config.json()["banner_message"] == "<b>hi</b>"
    (fake,) = providers.json()
    assert (fake["id"], fake["displayName"], fake["label"]) == ("fake", "Fake", "Name/ref")
    assert [p["id"] for p in config.json()["repo_providers"]] == ["fake"]


async def test_a_failing_health_check_is_503():
    async def broken() -> bool:
        raise ConnectionError("dependency unreachable")

    async with inprocess(fake_settings()) as (http, services):
        services.health.add("Broken", broken)
        r = await http.get("health")
    assert r.status_code == 503
    (bad,) = [c for c in r.json()["checks"] if c["service"] == "Broken"]
    assert bad["ok"] is False and "unreachable" in bad["error"]


async def test_metrics_count_fake_builds():
    async with inprocess(fake_settings()) as (http, _):
        await build(http, "metrics-repo/main", build_only="true")
        r = await http.get("metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    for family in ("binderhub_build_time_seconds", "binderhub_build_count", "binderhub_inprogress_builds",
                   "http_requests_total"):
        assert f"# TYPE {family}" in r.text, family


async def test_unknown_paths_and_methods_are_json_errors():
    async with inprocess(fake_settings(base_url="/services/binder/")) as (http, _):
        unknown = await http.get("v2/fake/a/b")
        outside = await http.get("http://binder.test/versions")  # not under base_url
        wrong_method = await http.post("versions")
    for r in (unknown, outside):
        assert r.status_code == 404 and r.headers["content-type"] == "application/json" and r.json()["detail"]
    assert wrong_method.status_code == 405 and wrong_method.json()["detail"]


async def test_cors_on_every_response_and_preflight():
    async with inprocess(fake_settings(cors_allow_origin="https://frontend.example")) as (http, _):
        versions = await http.get("versions")
        missing = await http.get("nowhere")
        refused = await http.get("build/nope/x/y", headers=EVENT_STREAM)
        preflight = await http.options("build/fake/a/main", headers={
            "Origin": "https://frontend.example", "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "cache-control"})
    for r in (versions, missing, refused, preflight):
        assert r.headers["access-control-allow-origin"] == "https://frontend.example"
    assert preflight.status_code == 200 and "GET" in preflight.headers["access-control-allow-methods"]


# -- /build through the fake backend ----------------------------------------------------------------


async def test_build_only_streams_the_build_to_ready():
    async with inprocess(fake_settings()) as (http, services):
        events = await build(http, "hello/main", build_only="true")
        again = await build(http, "hello/main", build_only="true")
        backend = backend_of(services)
    image = events[-1]["imageName"]
    assert [(e["phase"], e["message"]) for e in events] == [
        ("waiting", "Waiting for build to start...\n"),
        ("fetching", "Picked Git content provider for fake://hello\n"),
        ("building", "Using PythonBuildPack builder\n"),
        ("building", "Step 1/3 : FROM buildpack-deps:jammy\n"),
        ("building", f"Successfully tagged {image}\n"),
        ("ready", "Done! Image built\n"),
    ]
    assert image.startswith(services.settings.BinderHub.image_prefix + "hello-")
    assert [(e["phase"], e["imageName"]) for e in again] == [("ready", image)]  # found, not rebuilt
    assert len(backend.started()) == 1
    assert ("stop", backend.started()[0]) in backend.calls  # the owner removed its build
    assert backend.builds == {}


async def test_two_clients_of_one_build_share_one_backend_build():
    async with inprocess(fake_settings()) as (http, services):
        backend = backend_of(services)
        backend.hold = asyncio.Event()
        first = asyncio.create_task(build(http, "shared/main", build_only="true"))
        await until(lambda: services.builds.builds)
        (running,) = services.builds.builds.values()
        second = asyncio.create_task(build(http, "shared/main", build_only="true"))
        await until(lambda: running.watchers == 2)  # both streams follow the build, which holds
        backend.hold.set()
        one, two = await asyncio.gather(first, second)
    assert one[-1]["phase"] == two[-1]["phase"] == "ready"
    assert one[-1]["imageName"] == two[-1]["imageName"]
    assert backend.started() == [running.job.name]  # one start for both
    assert any("Step 1/3" in e["message"] for e in two)  # the joiner saw the log so far


async def test_a_failed_build_ends_with_one_failed_event():
    async with inprocess(fake_settings()) as (http, services):
        events = await build(http, "fail/main", build_only="true")
        retry = await build(http, "fail/main", build_only="true")
        backend = backend_of(services)
    assert [e["phase"] for e in events].count("failed") == 1 and events[-1]["phase"] == "failed"
    assert events[-1]["message"] == "Build failed: The command '/bin/sh -c pip install nope' returned a non-zero code: 1\n"
    assert retry[-1]["phase"] == "failed"
    assert len(backend.started()) == 2  # a failed build is not remembered: a retry builds again


@pytest.mark.parametrize("spec, message", [
    ("hello/missing", "Could not resolve ref for fake:hello/missing"),
    ("no-ref", "Fake specs are <name>/<ref>"),
])
async def test_resolution_failures_start_no_build(spec, message):
    async with inprocess(fake_settings()) as (http, services):
        events = await build(http, spec, build_only="true")
        backend = backend_of(services)
    assert [e["phase"] for e in events] == ["failed"] and message in events[0]["message"], events
    assert backend.started() == []


async def test_build_only_needs_api_only_mode():
    async with inprocess(fake_settings(enable_api_only_mode=False)) as (http, services):
        r = await http.get("build/fake/hello/main", headers=EVENT_STREAM, params={"build_only": "true"})
        backend = backend_of(services)
    (event,) = events_of(r)
    assert event["phase"] == "failed" and event["status_code"] == 400 and "enable_api_only_mode" in event["message"]
    assert backend.started() == []


# -- bans and rate limits ---------------------------------------------------------------------------


async def test_banned_networks_get_403_and_one_failed_event():
    settings = fake_settings(ban_networks={"127.0.0.0/8": "the loopback network"})
    async with inprocess(settings) as (http, services):
        config = await http.get("_config")
        versions = await http.get("versions")
        refused = await http.get("build/fake/hello/main", headers=EVENT_STREAM)
        backend = backend_of(services)
    assert config.status_code == 403 and config.json()["detail"] == "Requests from the loopback network are not allowed"
    assert versions.status_code == 200
    assert refused.status_code == 403
    assert events_of(refused) == [{"phase": "failed", "status_code": 403,
                                   "message": "Requests from the loopback network are not allowed\n"}]
    assert backend.calls == []


async def test_banned_specs_are_refused():
    settings = fake_settings({"RepoProvider": {"banned_specs": ["^evil/.*"]}})
    async with inprocess(settings) as (http, services):
        events = await build(http, "evil/main", build_only="true")
        backend = backend_of(services)
    assert events == [{"phase": "failed",
                       "message": "Sorry, evil/main is not allowed to launch. Please contact admins for more info!\n"}]
    assert backend.started() == []


async def test_rate_limit_answers_429_per_client():
    settings = fake_settings({"RateLimiter": {"limit": 1, "period_seconds": 600}})
    async with inprocess(settings) as (http, _):
        first = await http.get("build/fake/hello/main", headers=EVENT_STREAM, params={"build_only": "true"})
        second = await http.get("build/fake/hello/main", headers=EVENT_STREAM, params={"build_only": "true"})
    assert first.status_code == 200 and events_of(first)[-1]["phase"] == "ready"
    assert second.status_code == 429
    assert 1 <= int(second.headers["retry-after"]) <= 600
    (event,) = events_of(second)
    assert event["phase"] == "failed" and event["status_code"] == 429


async def test_a_build_cancelled_before_its_task_ran_ends_cancelled():
    """``ensure`` then ``cancel`` at once (a POST and a DELETE back to back): the task is cancelled
    before its first step, and the cancel still returns a cancelled build rather than waiting for ever."""
    from binderapi.builds import draft_record
    from binderapi.executors.base import BuildJob
    from binderapi.store import BuildState

    async with inprocess(fake_settings()) as (_, services):
        job = BuildJob(name="build-cancelled-at-once", image_name="fake.registry.test/x:1", repo_url="fake://x", ref="r")
        build = await services.builds.ensure(job, draft_record(job, "fake/x/r"))
        record = await asyncio.wait_for(services.builds.cancel(build.id), 10)
        assert record.state is BuildState.cancelled and "cancelled" in record.message
        assert build.log.terminal is not None and json.loads(build.log.terminal.data)["cancelled"] is True
        assert services.builds.running_build(job.name) is None and not services.builds.queue and not services.builds.running
