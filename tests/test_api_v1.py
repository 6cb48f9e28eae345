"""``/api/v1``: builds as resources, operator rights and RFC 9457 problems.

Two tiers. The in-process cases (fake backend, fake provider, a real SQLite store in a temporary
directory; see tests/test_inprocess.py) check every answer's shape: problem bodies, validation,
operator rights, 403/404/409/503. The ``docker`` cases run real builds on the engine and registry:
create -> built -> history -> log -> image status, a forced rebuild, replaying events with
``Last-Event-ID``, and cancelling a slow build with no builder container left.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import sqlalchemy as sa

from binderapi.store import sweep
from fixtures.fake_backend import PUSHED, fake_settings
from fixtures.hub import start_hub
from fixtures.server import serve
from fixtures.stack import BASE_IMAGE, docker_settings, git_spec, namespace_containers, unique
from test_inprocess import backend_of, events_of, inprocess, until

PROBLEM = "application/problem+json"
OPERATOR = "op-" + "s3cret" * 4
AS_OPERATOR = {"Authorization": f"Bearer {OPERATOR}"}


def settings_for(tmp_path: Path, **binderhub: Any) -> Any:
    return fake_settings({"BuildStore": {"state_dir": str(tmp_path / "state")}},
                         operator_tokens=[OPERATOR], **binderhub)


def assert_problem(response: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM, response.headers
    body = response.json()
    assert body["status"] == status and body["title"] and body["type"], body
    assert body["instance"] == response.request.url.path, body
    for word in words:
        assert word in body["detail"], (word, body)
    return body


def sse(text: str) -> list[tuple[int, dict[str, Any]]]:
    """The ``(id, event)`` frames of an event stream."""
    frames = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if line and not line.startswith(":"))
        if "data" in fields:
            frames.append((int(fields["id"]), json.loads(fields["data"])))
    return frames


# -- problems and validation ------------------------------------------------------------------------


async def test_validation_errors_are_problems_under_api_v1_only(tmp_path):
    async with inprocess(settings_for(tmp_path)) as (http, _):
        unknown_field = await http.post("api/v1/builds", json={"spek": "fake/a/main"})
        not_json = await http.post("api/v1/builds", content=b"{", headers={"content-type": "application/json"})
        bad_limit = await http.get("api/v1/builds", params={"limit": 0})
        bad_state = await http.get("api/v1/builds", params={"state": "exploded"})
        unknown_path = await http.get("api/v1/nothing-here")
        wrong_method = await http.put("api/v1/builds")
        classic_unknown = await http.get("nothing-here")
    body = assert_problem(unknown_field, 422, "spec")
    assert {tuple(e["loc"]) for e in body["errors"]} >= {("body", "spec"), ("body", "spek")}
    assert_problem(not_json, 422)
    assert assert_problem(bad_limit, 422, "limit")["errors"][0]["loc"] == ["query", "limit"]
    assert_problem(bad_state, 422, "state")
    assert_problem(unknown_path, 404)
    assert_problem(wrong_method, 405)
    # the routes outside /api/v1 keep their answers
    assert classic_unknown.status_code == 404 and classic_unknown.headers["content-type"] == "application/json"
    assert classic_unknown.json() == {"detail": "Not Found"}


async def test_a_malformed_spec_and_an_unknown_provider_are_problems(tmp_path):
    async with inprocess(settings_for(tmp_path)) as (http, services):
        no_slash = await http.post("api/v1/builds", json={"spec": "fakeonly"})
        unknown = await http.post("api/v1/builds", json={"spec": "nope/a/main"})
        missing = await http.post("api/v1/builds", json={"spec": "fake/a/missing"})
        image_unknown = await http.get("api/v1/images/nope/a/main")
    assert_problem(no_slash, 422)
    assert_problem(unknown, 400, "No provider found for prefix nope")
    assert_problem(missing, 404, "Could not resolve ref")
    assert_problem(image_unknown, 400, "No provider")
    assert backend_of(services).started() == []


async def test_unknown_builds_are_404_problems(tmp_path):
    async with inprocess(settings_for(tmp_path)) as (http, _):
        answers = [await http.get("api/v1/builds/0123456789abcdef012345"),
                   await http.get("api/v1/builds/0123456789abcdef012345/events"),
                   await http.get("api/v1/builds/0123456789abcdef012345/logs"),
                   await http.delete("api/v1/builds/0123456789abcdef012345", headers=AS_OPERATOR)]
    for response in answers:
        assert_problem(response, 404, "No build")


async def test_a_disabled_or_failing_store_is_503_and_the_classic_build_still_works(tmp_path):
    settings = fake_settings({"BuildStore": {"enabled": False}}, operator_tokens=[OPERATOR])
    async with inprocess(settings) as (http, _):
        create = await http.post("api/v1/builds", json={"spec": "fake/nostore/main"})
        listing = await http.get("api/v1/builds")
        classic = await http.get("build/fake/nostore/main", headers={"Accept": "text/event-stream"},
                                 params={"build_only": "true"})
    for response in (create, listing):
        body = assert_problem(response, 503, "build store is unavailable")
        assert body["type"].endswith("store-unavailable") and response.headers["retry-after"]
    assert '"phase":"ready"' in classic.text


# -- operator rights --------------------------------------------------------------------------------


async def test_cancel_and_force_need_operator_rights(tmp_path):
    async with inprocess(settings_for(tmp_path)) as (http, services):
        backend_of(services).hold = asyncio.Event()
        created = await http.post("api/v1/builds", json={"spec": "fake/held/main"})
        build_id = created.json()["id"]
        anonymous = await http.delete(f"api/v1/builds/{build_id}")
        wrong = await http.delete(f"api/v1/builds/{build_id}", headers={"Authorization": "Bearer op-wrong"})
        force = await http.post("api/v1/builds", json={"spec": "fake/held/main", "force": True})
        still = await http.get(f"api/v1/builds/{build_id}")
        cancelled = await http.delete(f"api/v1/builds/{build_id}", headers=AS_OPERATOR)
        again = await http.delete(f"api/v1/builds/{build_id}", headers=AS_OPERATOR)
        await until(lambda: backend_of(services).builds == {})
    assert created.status_code == 201
    for response in (anonymous, wrong, force):
        assert_problem(response, 403, "operator rights", "BinderHub.operator_tokens")
    assert still.json()["state"] in ("queued", "building")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert_problem(again, 409, "already finished")


async def test_a_forced_rebuild_by_an_operator_builds_again(tmp_path):
    async with inprocess(settings_for(tmp_path)) as (http, services):
        first = await http.post("api/v1/builds", json={"spec": "fake/forced/main"})
        await until_state(http, first.json()["id"], "built")
        cached = await http.post("api/v1/builds", json={"spec": "fake/forced/main"})
        cached_again = await http.post("api/v1/builds", json={"spec": "fake/forced/main"})
        forced = await http.post("api/v1/builds", json={"spec": "fake/forced/main", "force": True}, headers=AS_OPERATOR)
        await until_state(http, forced.json()["id"], "built")
        started = backend_of(services).started()
    assert first.status_code == 201 and first.headers["location"] == first.json()["links"]["self"]
    assert cached.status_code == 200 and cached.json()["cached"] is True and cached.json()["state"] == "built"
    assert cached_again.json()["id"] == cached.json()["id"]  # one cached record per image, not one per request
    assert forced.status_code == 201 and forced.json()["id"] not in (first.json()["id"], cached.json()["id"])
    assert len(started) == 2 and len(set(started)) == 1  # the same image built twice


async def test_a_cached_post_after_the_first_asks_the_store_nothing(tmp_path):
    """The cached record is remembered per image (routers/api_v1.py::CachedRecords): the first
    cached POST reads (and saves) it, the next ones answer without a store round trip."""
    asked: list[str] = []
    async with inprocess(settings_for(tmp_path)) as (http, services):
        first = await http.post("api/v1/builds", json={"spec": "fake/memo/main"})
        await until_state(http, first.json()["id"], "built")

        def count(_conn, _cursor, statement, *_args):
            if "WHERE builds.image_name = " in statement:  # latest_for_image: the cached answer's read
                asked.append(statement)

        sa.event.listen(services.store.engine.sync_engine, "before_cursor_execute", count)
        cached = [await http.post("api/v1/builds", json={"spec": "fake/memo/main"}) for _ in range(5)]
        read = await http.get(f"api/v1/builds/{cached[0].json()['id']}")
    assert [response.status_code for response in cached] == [200] * 5
    assert len({response.json()["id"] for response in cached}) == 1 and cached[0].json()["cached"] is True
    assert read.status_code == 200 and read.json()["cached"] is True  # saved in the store, not only remembered
    assert len(asked) == 1, asked


async def test_a_remembered_cached_record_the_sweep_deleted_is_made_again(tmp_path):
    """The store stays the source of truth: past ``retention_days`` the sweep may have deleted the
    remembered record, so it is looked up again (and made again), never handed out stale."""
    settings = fake_settings({"BuildStore": {"state_dir": str(tmp_path / "state"), "retention_days": 1 / 86400}},
                             operator_tokens=[OPERATOR])
    async with inprocess(settings) as (http, services):
        first = await http.post("api/v1/builds", json={"spec": "fake/swept/main"})
        await until_state(http, first.json()["id"], "built")
        before = (await http.post("api/v1/builds", json={"spec": "fake/swept/main"})).json()
        await asyncio.sleep(1.1)  # older than the retention of one second
        swept = await sweep(services.store, services.settings.BuildStore.retention_days)
        after = (await http.post("api/v1/builds", json={"spec": "fake/swept/main"})).json()
        gone = await http.get(f"api/v1/builds/{before['id']}")
        read = await http.get(f"api/v1/builds/{after['id']}")
    assert swept >= 1 and gone.status_code == 404
    assert after["cached"] is True and after["id"] != before["id"] and read.status_code == 200


async def until_state(http: httpx.AsyncClient, build_id: str, state: str) -> dict[str, Any]:
    async with asyncio.timeout(60):
        while True:
            body = (await http.get(f"api/v1/builds/{build_id}")).json()
            if body["state"] == state:
                return body
            assert body["state"] in ("queued", "building"), body
            await asyncio.sleep(0.02)


# -- the resource, its history, events and log (fake backend) ----------------------------------------


async def test_create_read_list_follow_and_image_status(tmp_path):
    async with inprocess(settings_for(tmp_path)) as (http, services):
        backend_of(services).hold = asyncio.Event()
        created = await http.post("api/v1/builds", json={"spec": "fake/life/main"})
        build_id = created.json()["id"]
        joined = await http.post("api/v1/builds", json={"spec": "fake/life/main"})
        status_running = await http.get("api/v1/images/fake/life/main")
        backend_of(services).hold.set()
        built = await until_state(http, build_id, "built")
        other = await http.post("api/v1/builds", json={"spec": "fake/fail/main"})
        failed = await until_state(http, other.json()["id"], "failed")
        events = await http.get(f"api/v1/builds/{build_id}/events")
        resumed = await http.get(f"api/v1/builds/{build_id}/events", headers={"Last-Event-ID": "2"})
        resumed_query = await http.get(f"api/v1/builds/{build_id}/events", params={"last_event_id": 2})
        logs = await http.get(f"api/v1/builds/{build_id}/logs")
        follow_finished = await http.get(f"api/v1/builds/{build_id}/logs", params={"follow": "true"})
        everything = (await http.get("api/v1/builds")).json()
        page1 = (await http.get("api/v1/builds", params={"limit": 1})).json()
        page2 = (await http.get("api/v1/builds", params={"limit": 1, "cursor": page1["next"]})).json()
        by_state = (await http.get("api/v1/builds", params={"state": "failed"})).json()
        by_prefix = (await http.get("api/v1/builds", params={"spec": "fake/li"})).json()
        by_image = (await http.get("api/v1/builds", params={"image_name": built["image_name"]})).json()
        status_built = await http.get("api/v1/images/fake/life/main")
        status_encoded = await http.get("api/v1/images/fake/" + quote("life/main", safe=""))
        status_new = await http.get("api/v1/images/fake/never/main")
    assert created.status_code == 201 and created.headers["location"].endswith(f"/api/v1/builds/{build_id}")
    assert joined.status_code == 200 and joined.json()["id"] == build_id
    assert status_running.json()["build_id"] == build_id and status_running.json()["exists"] is False
    assert built["spec"] == "fake/life/main" and built["provider"] == "Fake" and built["cached"] is False
    assert built["started_at"] and built["finished_at"] and built["log_bytes"] > 0
    assert built["links"] == {"self": f"/api/v1/builds/{build_id}", "events": f"/api/v1/builds/{build_id}/events",
                              "logs": f"/api/v1/builds/{build_id}/logs"}
    assert failed["message"] and "non-zero code" in failed["message"]
    frames = sse(events.text)
    assert events.headers["content-type"].startswith("text/event-stream")
    assert [seq for seq, _ in frames] == list(range(1, len(frames) + 1))
    assert all(event["build_id"] == build_id for _, event in frames)
    assert frames[-1][1]["phase"] == "ready" and frames[-1][1]["imageName"] == built["image_name"]
    assert sse(resumed.text) == frames[2:] == sse(resumed_query.text)
    assert "Step 1/3" in logs.text and logs.headers["content-type"].startswith("text/plain")
    assert follow_finished.text == logs.text
    assert [b["id"] for b in everything["items"]] == [other.json()["id"], build_id] and everything["next"] is None
    assert [b["id"] for b in page1["items"] + page2["items"]] == [b["id"] for b in everything["items"]]
    assert page1["next"] and page2["next"] is None
    assert [b["id"] for b in by_state["items"]] == [other.json()["id"]]
    assert [b["id"] for b in by_prefix["items"]] == [build_id]
    assert [b["id"] for b in by_image["items"]] == [build_id]
    for status in (status_built, status_encoded):
        assert status.json() == {"image_name": built["image_name"], "resolved_ref": built["resolved_ref"],
                                 "exists": True, "build_id": None}
    assert status_new.json()["exists"] is False and status_new.json()["build_id"] is None
    assert backend_of(services).started().count(backend_of(services).started()[0]) == 1  # image status built nothing


async def test_policy_applies_to_creating_and_reading(tmp_path):
    settings = fake_settings({"BuildStore": {"state_dir": str(tmp_path / "state")},
                              "RepoProvider": {"banned_specs": ["^banned/"]},
                              "RateLimiter": {"limit": 2, "period_seconds": 3600}}, operator_tokens=[OPERATOR])
    async with inprocess(settings) as (http, services):
        banned = await http.post("api/v1/builds", json={"spec": "fake/banned/main"})
        banned_status = await http.get("api/v1/images/fake/banned/main")
        ok = await http.post("api/v1/builds", json={"spec": "fake/limited/main"})
        limited = await http.post("api/v1/builds", json={"spec": "fake/limited/main"})
        as_operator = await http.post("api/v1/builds", json={"spec": "fake/limited/main"}, headers=AS_OPERATOR)
        reads = await http.get("api/v1/builds")  # reading counts no rate limit
    assert_problem(banned, 403, "not allowed")
    assert_problem(banned_status, 403, "not allowed")
    assert ok.status_code == 201
    assert_problem(limited, 429, "Rate limit exceeded")
    assert int(limited.headers["retry-after"]) > 0
    assert as_operator.status_code == 200 and reads.status_code == 200
    assert backend_of(services).started() and len(set(backend_of(services).started())) == 1


async def test_building_without_a_launch_must_be_enabled(tmp_path):
    settings = fake_settings({"BuildStore": {"state_dir": str(tmp_path / "state")}}, enable_api_only_mode=False)
    async with inprocess(settings) as (http, services):
        refused = await http.post("api/v1/builds", json={"spec": "fake/apionly/main"})
    assert_problem(refused, 403, "enable_api_only_mode")
    assert backend_of(services).started() == []


async def test_auth_mode_reads_need_a_login_or_an_operator_token(tmp_path):
    settings = fake_settings({"BuildStore": {"state_dir": str(tmp_path / "state")}}, operator_tokens=[OPERATOR],
                             auth_enabled=True, hub_url="http://127.0.0.1:9/", hub_api_token="x")
    async with inprocess(settings) as (http, _):
        anonymous = [await http.get("api/v1/builds"), await http.post("api/v1/builds", json={"spec": "fake/a/main"}),
                     await http.get("api/v1/images/fake/a/main"), await http.delete("api/v1/builds/0123456789abcdef012345")]
        operator = await http.get("api/v1/builds", headers=AS_OPERATOR)
    for response in anonymous[:3]:
        assert_problem(response, 403, "Authentication required")
    assert_problem(anonymous[3], 403, "operator rights", "JupyterHub admin")
    assert operator.status_code == 200 and operator.json() == {"items": [], "next": None}


# -- end to end on the real engine and registry -------------------------------------------------------

DOCKERFILE_OK = f"FROM {BASE_IMAGE}\nRUN echo built-by-the-v1-api > /built.txt\n"


def slow_dockerfile(seconds: int) -> str:
    return f"FROM {BASE_IMAGE}\nRUN echo {unique('nonce')} && for i in $(seq {seconds}); do echo tick $i; sleep 1; done\n"


def e2e_settings(tmp_path: Path, **binderhub: Any) -> Any:
    return docker_settings({"BuildStore": {"state_dir": str(tmp_path / "state")}}, operator_tokens=[OPERATOR], **binderhub)


async def poll(client: httpx.AsyncClient, url: str, *states: str, limit: float = 300) -> dict[str, Any]:
    """The build at ``url`` once it is in one of ``states`` (bounded, never timed)."""
    async with asyncio.timeout(limit):
        while True:
            body = (await client.get(url)).json()
            if body["state"] in states:
                return body
            assert body["state"] in ("queued", "building"), body
            await asyncio.sleep(0.25)


@pytest.mark.docker
@pytest.mark.usefixtures("no_leaked_build_containers")
async def test_e2e_build_history_log_image_status_replay_and_forced_rebuild(git_server, tmp_path):
    repo = unique("v1")
    git_server.create_repo(repo, {"Dockerfile": DOCKERFILE_OK})
    spec = git_spec(git_server.daemon_url(repo), "main")
    prefix, _, rest = spec.partition("/")
    async with serve(e2e_settings(tmp_path)) as svc, httpx.AsyncClient(base_url=svc.url, timeout=60) as client:
        created = await client.post("api/v1/builds", json={"spec": spec})
        assert created.status_code == 201, created.text
        url = created.headers["location"].removeprefix("/")
        built = await poll(client, url, "built", "failed")
        assert built["state"] == "built", built
        history = (await client.get("api/v1/builds", params={"spec": spec})).json()
        log = await client.get(f"{url}/logs")
        status = await client.get(f"api/v1/images/{prefix}/{rest}")
        status_encoded = await client.get(f"api/v1/images/{prefix}/{quote(rest, safe='')}")
        events = sse((await client.get(f"{url}/events")).text)
        last_two = sse((await client.get(f"{url}/events", headers={"Last-Event-ID": str(events[-3][0])})).text)
        cached = await client.post("api/v1/builds", json={"spec": spec})
        refused = await client.post("api/v1/builds", json={"spec": spec, "force": True})
        forced = await client.post("api/v1/builds", json={"spec": spec, "force": True}, headers=AS_OPERATOR)
        assert forced.status_code == 201, forced.text
        rebuilt = await poll(client, forced.headers["location"].removeprefix("/"), "built", "failed")
    assert [b["id"] for b in history["items"]] == [built["id"]]
    assert "Step 1/" in log.text and "built-by-the-v1-api" in log.text
    assert status.json() == status_encoded.json() == {"image_name": built["image_name"], "resolved_ref": built["resolved_ref"],
                                                      "exists": True, "build_id": None}
    assert events[-1][1]["phase"] == "ready" and events[-1][1]["build_id"] == built["id"]
    assert [seq for seq, _ in events] == list(range(1, len(events) + 1))
    assert last_two == events[-2:]
    assert cached.status_code == 200 and cached.json()["cached"] is True and cached.json()["image_name"] == built["image_name"]
    assert_problem(refused, 403, "operator rights")
    assert rebuilt["state"] == "built" and rebuilt["id"] != built["id"] and rebuilt["cached"] is False


@pytest.mark.docker
@pytest.mark.usefixtures("no_leaked_build_containers")
async def test_e2e_cancelling_a_slow_build_removes_its_builder(git_server, tmp_path):
    repo = unique("v1slow")
    git_server.create_repo(repo, {"Dockerfile": slow_dockerfile(120)})
    spec = git_spec(git_server.daemon_url(repo), "main")
    async with serve(e2e_settings(tmp_path)) as svc, httpx.AsyncClient(base_url=svc.url, timeout=60) as client:
        created = await client.post("api/v1/builds", json={"spec": spec})
        url = created.headers["location"].removeprefix("/")
        async with asyncio.timeout(120):  # until the builder prints: the container runs
            while True:
                if "tick 1" in (await client.get(f"{url}/logs")).text:
                    break
                await asyncio.sleep(0.25)
        assert await namespace_containers()
        async with client.stream("GET", f"{url}/events", headers={"Last-Event-ID": "1"}) as stream:
            anonymous = await client.delete(url)
            cancelled = await client.delete(url, headers=AS_OPERATOR)
            text = (await stream.aread()).decode()
        after = (await client.get(url)).json()
        again = await client.delete(url, headers=AS_OPERATOR)
    assert_problem(anonymous, 403, "operator rights")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert after["state"] == "cancelled" and after["finished_at"]
    last = sse(text)[-1][1]
    assert last["phase"] == "failed" and last.get("cancelled") is True and "cancelled" in last["message"]
    assert_problem(again, 409, "already finished")
    assert await namespace_containers() == []


async def test_a_body_that_is_not_utf8_is_a_400_problem_not_a_500(tmp_path):
    async with inprocess(settings_for(tmp_path)) as (http, _):
        response = await http.post("api/v1/builds", content=b"\xff\xfe$\xcd\x89", headers={"content-type": "application/json"})
    assert_problem(response, 400, "parsing the body")


async def test_a_token_no_hub_could_have_issued_is_refused_without_asking_the_hub(tmp_path):
    settings = fake_settings({"BuildStore": {"state_dir": str(tmp_path / "state")}}, operator_tokens=[OPERATOR],
                             auth_enabled=True, hub_url="http://127.0.0.1:9/", hub_api_token="x")
    async with inprocess(settings) as (http, _):
        query = await http.delete("api/v1/builds/0123456789abcdef012345", params={"token": "t\u00c0ken"})
        listing = await http.get("api/v1/builds", params={"token": "t\u00c0ken"})
    assert_problem(query, 403, "operator rights")
    assert_problem(listing, 403, "Invalid JupyterHub token")


async def test_a_failing_store_is_a_503_problem_and_the_classic_build_still_works(tmp_path):
    async with inprocess(settings_for(tmp_path)) as (http, services):
        assert (await http.get("api/v1/builds")).status_code == 200
        await services.store.close()  # every call raises StoreError from now on, as for a lost database
        listing = await http.get("api/v1/builds")
        one = await http.get("api/v1/builds/0123456789abcdef012345")
        classic = await http.get("build/fake/corrupt/main", headers={"Accept": "text/event-stream"},
                                 params={"build_only": "true"})
    for response in (listing, one):
        assert_problem(response, 503, "build store is unavailable")
    assert '"phase":"ready"' in classic.text


async def test_a_frontend_on_another_origin_may_create_and_cancel(tmp_path):
    settings = fake_settings({"BuildStore": {"state_dir": str(tmp_path / "state")}}, cors_allow_origin="https://ui.example")
    async with inprocess(settings) as (http, _):
        preflight = await http.options("api/v1/builds", headers={
            "Origin": "https://ui.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"})
        created = await http.post("api/v1/builds", json={"spec": "fake/cors/main"}, headers={"Origin": "https://ui.example"})
        classic = await http.options("build/fake/a/main", headers={"Origin": "https://ui.example",
                                                                    "Access-Control-Request-Method": "GET"})
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == "https://ui.example"
    assert {"POST", "DELETE"} <= set(preflight.headers["access-control-allow-methods"].replace(" ", "").split(","))
    assert "content-type" in preflight.headers["access-control-allow-headers"]
    assert created.status_code == 201 and "location" in created.headers["access-control-expose-headers"]
    assert classic.headers["access-control-allow-methods"] == "GET, HEAD, OPTIONS"  # the classic routes keep theirs


@pytest.mark.docker
@pytest.mark.hub
async def test_e2e_a_jupyterhub_admin_has_operator_rights_and_a_user_has_not(tmp_path):
    """Auth mode against a real hub: the hub's own `admin` flag (in its `GET /user` answer) decides."""
    admin, user = unique("v1admin"), unique("v1user")
    extra = f"c.Authenticator.admin_users = {{{admin!r}}}"
    async with start_hub(extra_config=extra, container_prefix=f"binderapi-v1-{unique('hub')}") as hub:
        admin_token, user_token = await hub.user_token(admin), await hub.user_token(user)
        settings = e2e_settings(tmp_path, hub_url=hub.url, hub_api_token=hub.api_token, auth_enabled=True)
        async with serve(settings) as svc, httpx.AsyncClient(base_url=svc.url, timeout=60) as client:
            missing = "api/v1/builds/0123456789abcdef012345"
            as_user = await client.delete(missing, headers={"Authorization": f"Bearer {user_token}"})
            as_admin = await client.delete(missing, headers={"Authorization": f"Bearer {admin_token}"})
            user_reads = await client.get("api/v1/builds", headers={"Authorization": f"token {user_token}"})
            anonymous_reads = await client.get("api/v1/builds")
    assert_problem(as_user, 403, "operator rights", "JupyterHub admin")
    assert_problem(as_admin, 404, "No build")  # allowed: there is just no such build
    assert user_reads.status_code == 200
    assert_problem(anonymous_reads, 403, "Authentication required")


async def test_following_a_running_builds_events_and_log_until_it_ends(tmp_path):
    async with inprocess(settings_for(tmp_path)) as (http, services):
        backend = backend_of(services)
        backend.hold = asyncio.Event()
        created = (await http.post("api/v1/builds", json={"spec": "fake/follow/main"})).json()
        await until(lambda: any(len(b.lines) == 4 for b in backend.builds.values()))  # its output is written
        events = asyncio.ensure_future(http.get(f"api/v1/builds/{created['id']}/events", headers={"Last-Event-ID": "1"}))
        log = asyncio.ensure_future(http.get(f"api/v1/builds/{created['id']}/logs", params={"follow": "true"}))
        await asyncio.sleep(0.2)  # both are waiting on the running build
        assert not events.done() and not log.done()
        backend.hold.set()
        events_text, log_text = (await events).text, (await log).text
        whole = await http.get(f"api/v1/builds/{created['id']}/events")
    frames = sse(events_text)
    assert frames == sse(whole.text)[1:] and frames[-1][1]["phase"] == "ready"
    assert "Step 1/3" in log_text and "Successfully tagged" in log_text


# -- specs a generated client percent-encodes ------------------------------------------------------

SHA = "1479e0252b2e648bb755ee913292b79495931717"


async def test_specs_as_a_build_url_writes_them_and_as_a_generated_client_sends_them(
        tmp_path, git_server, fake_github, fake_gitlab, fake_ckan):
    """One rule on ``/build`` and ``/api/v1/images``: the spec as sent, else (refused by its
    provider, no literal ``/``) decoded once. A generated client percent-encodes the whole path
    parameter: ``gh/org%2Frepo%2Fref``, and a ``gl``/``git``/``ckan`` spec doubly encoded. Both
    forms name the same image; a CKAN URL (one percent-encoded segment) is never decoded twice."""
    fake_github.set_ref("org/repo", "HEAD", SHA)
    fake_gitlab.set_ref("group/project", "HEAD", SHA)
    fake_ckan.packages["sample-dataset-1"] = "2021-06-30T13:20:02.654396"
    git_server.create_repo("encoded", {"README.md": "hi\n"})
    settings = settings_for(tmp_path, repo_providers={
        "gh": "GitHubRepoProvider", "gl": "GitLabRepoProvider", "git": "GitRepoProvider", "ckan": "CKANProvider"})
    settings = settings.model_copy(update={
        "GitHubRepoProvider": settings.GitHubRepoProvider.model_copy(update={"api_base_path": fake_github.url}),
        "GitLabRepoProvider": settings.GitLabRepoProvider.model_copy(update={"api_base_url": fake_gitlab.url + "/api/v4"}),
    })
    specs = {  # as a /build URL writes them
        "gh": "org/repo/HEAD",
        "gl": "group%2Fproject/HEAD",
        "git": git_spec(git_server.daemon_url("encoded"), "main").partition("/")[2],
        "ckan": quote(f"{fake_ckan.url}/dataset/sample-dataset-1", safe=""),
    }
    async with inprocess(settings) as (http, _services):
        for prefix, spec in specs.items():
            sent = quote(spec, safe="")  # what a generated client sends for the path parameter
            statuses = [await http.get(f"api/v1/images/{prefix}/{form}") for form in (spec, sent)]
            for status in statuses:
                assert status.status_code == 200, (prefix, status.text)
            assert statuses[0].json() == statuses[1].json(), prefix
            PUSHED.add(statuses[0].json()["image_name"])  # built: /build answers from the registry
            streams = [await http.get(f"build/{prefix}/{form}", params={"build_only": "true"},
                                      headers={"Accept": "text/event-stream"}) for form in (spec, sent)]
            last = [events_of(stream)[-1] for stream in streams]
            assert [event["phase"] for event in last] == ["ready", "ready"], (prefix, last)
            assert last[0]["imageName"] == last[1]["imageName"] == statuses[0].json()["image_name"], prefix
        # a spec refused in both forms keeps the error of the form it was sent in
        refused = await http.get("build/gh/" + quote("org/repo", safe=""), params={"build_only": "true"},
                                 headers={"Accept": "text/event-stream"})
        assert events_of(refused)[-1]["phase"] == "failed"
        assert 'provided: "org%2Frepo"' in events_of(refused)[-1]["message"]
