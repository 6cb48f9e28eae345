"""Resolution through the real service: ``/build`` failures as ``failed`` events, the resolved names,
and the provider listings of ``/_config`` and ``/api/repoproviders``."""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import quote

import httpx
import pytest

from binderapi.pipeline import BuildPipeline, BuildRequest, ResolvedRepo
from fixtures.server import free_port, make_settings, read_events, serve

SHA = "1479e0252b2e648bb755ee913292b79495931717"

#: the service starts the Docker backend (build_class docker), which checks the engine at start-up
pytestmark = pytest.mark.docker


@pytest.fixture
async def client():
    async with httpx.AsyncClient(timeout=30) as c:
        yield c


def settings_for(fake_github, **github):
    return make_settings(
        {"RepoProvider": {"retry_delay": 0.001},
         "GitHubRepoProvider": {"api_base_path": fake_github.url, "banned_specs": ["banned/.*"], **github}},
        build_class="docker", enable_api_only_mode=True,
    )


async def failure(client, svc, path):
    events = await read_events(client, svc.url + path, params={"build_only": "true"})
    assert events[-1]["phase"] == "failed", events
    return events[-1]


@pytest.mark.parametrize("path, message", [
    ("build/nope/o/r/HEAD", "No provider found for prefix nope\n"),
    ("build/gh/binder-examples/octave",
     'Spec is not of the form "user/repo/ref", provided: "binder-examples/octave". Did you mean "binder-examples/octave/HEAD"?\n'),
    ("build/gh/banned/repo/HEAD", "Sorry, banned/repo/HEAD is not allowed to launch. Please contact admins for more info!\n"),
    ("build/gh/binder-examples/octave/nope",
     "Could not resolve ref for gh:binder-examples/octave/nope. Double check your URL and that your repo is public.\n"),
    ("build/git/" + quote("file:///etc", safe="") + "/HEAD", "Unsupported git url file:///etc, protocol file not in http, https, git, ssh\n"),
])
async def test_resolution_failures_are_failed_events(client, fake_github, path, message):
    fake_github.set_ref("binder-examples/octave", "HEAD", SHA)
    async with serve(settings_for(fake_github)) as svc:
        event = await failure(client, svc, path)
    assert event["message"] == message
    assert "status_code" not in event


async def test_rate_limit_failure_says_when(client, fake_github):
    fake_github.remaining = 0
    fake_github.reset_at = int(time.time()) + 600
    async with serve(settings_for(fake_github)) as svc:
        event = await failure(client, svc, "build/gh/binder-examples/octave/HEAD")
    assert event["message"] == "GitHub rate limit exceeded. Try again in 10 minutes.\n"


async def test_unreachable_upstream_failure(client, fake_github):
    settings = make_settings({"RepoProvider": {"retry_delay": 0.001, "retries": 2},
                              "GitHubRepoProvider": {"api_base_path": f"http://127.0.0.1:{free_port()}",
                                                     "access_token": "sekrit"}},
                             build_class="docker", enable_api_only_mode=True)
    async with serve(settings) as svc:
        event = await failure(client, svc, "build/gh/o/r/HEAD")
    assert event["message"].startswith("GitHub (127.0.0.1) is unreachable or failing (could not connect)")
    assert "sekrit" not in event["message"]


async def test_master_falls_back_to_head_with_a_notice(client, fake_github):
    fake_github.set_ref("o/r", "HEAD", SHA)
    async with serve(settings_for(fake_github)) as svc:
        events = await read_events(client, svc.url + "build/gh/o/r/master", params={"build_only": "true"})
        resolved = await BuildPipeline(svc.services).resolve(BuildRequest("gh", "o/r/master"))
    assert events[0]["phase"] == "waiting"
    assert "Trying again with HEAD instead of master. Please update your links." in events[0]["message"]
    assert isinstance(resolved, ResolvedRepo) and resolved.ref == SHA


async def test_resolved_names_through_the_service(client, fake_github):
    fake_github.set_ref("binder-examples/octave", "HEAD", SHA)
    async with serve(settings_for(fake_github)) as svc:
        repo = await BuildPipeline(svc.services).resolve(BuildRequest("gh", "binder-examples/octave/HEAD"))
    assert isinstance(repo, ResolvedRepo)
    assert repo.image_name == f"binder-2dexamples-2doctave-03025a:{SHA}"
    assert repo.build_name == "build-binder-2dexamples-2doctave-03025a-147-e2"
    assert repo.resolved_spec == f"binder-examples/octave/{SHA}"
    assert repo.ref_url == f"https://github.com/binder-examples/octave/tree/{SHA}"


async def test_git_spec_resolves_through_the_service(git_server):
    sha = git_server.create_repo("via-service", {"a": "1"})
    settings = make_settings(build_class="docker", enable_api_only_mode=True)
    spec = f"{quote(git_server.http_url('via-service'), safe='')}/main"
    async with serve(settings) as svc:
        repo = await BuildPipeline(svc.services).resolve(BuildRequest("git", spec))
    assert repo.ref == sha and repo.repo_url == git_server.http_url("via-service")


async def test_frontend_listings_show_enabled_providers(client):
    settings = make_settings(build_class="docker",
                             repo_providers={"gh": "GitHubRepoProvider", "swhid": "SwhidProvider", "zenodo": "ZenodoProvider"})
    async with serve(settings) as svc:
        listing = (await client.get(svc.url + "api/repoproviders")).json()
        config = (await client.get(svc.url + "_config")).json()
    assert [p["id"] for p in listing] == ["gh", "swhid", "zenodo"]
    assert [p["id"] for p in config["repo_providers"]] == ["gh", "swhid", "zenodo"]
    assert listing[0] == {
        "displayName": "GitHub", "id": "gh", "spec": {"validateRegex": "[^/]+/[^/]+/.+"},
        "detect": {"regex": "^(https?://github.com/)?(?<repo>.*[^/])/?"},
        "repo": {"label": "GitHub repository name or URL",
                 "placeholder": "example: binder-examples/requirements or https://github.com/binder-examples/requirements",
                 "urlEncode": False},
        "ref": {"enabled": True, "default": "HEAD"},
    }


async def raw_get_events(url: str, raw_path: str) -> list[dict]:
    """GET ``raw_path`` exactly as written (HTTP clients resolve ``../`` before sending; an attacker's
    ``curl --path-as-is`` does not), reading the event stream until the server closes it."""
    parts = httpx.URL(url)
    reader, writer = await asyncio.open_connection(parts.host, parts.port)
    writer.write(f"GET {raw_path} HTTP/1.1\r\nHost: {parts.host}\r\nAccept: text/event-stream\r\n"
                 "Connection: close\r\n\r\n".encode())
    await writer.drain()
    body = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    return [json.loads(line[5:]) for line in body.split(b"\n") if line.startswith(b"data:")]


@pytest.mark.parametrize("ref", [
    "../../../victim/private/commits/HEAD",
    "x/../../../../victim/private/commits/HEAD",
    "%2E%2E%2F%2E%2E%2Fvictim%2Fprivate%2Fcommits%2FHEAD",
    "..%5C..%5Cvictim%5Cprivate",
    "HEAD%3Fx%3D1",
])
async def test_ref_cannot_reach_another_repository_through_the_service(fake_github, ref):
    """Issue #10 item 7: with the operator's token, a ``../`` ref sent GitHub
    ``GET /repos/<victim>/<private>/...``, an oracle for private repositories."""
    fake_github.set_ref("victim/private", "HEAD", SHA)
    fake_github.private["victim/private"] = "t0ken"
    async with serve(settings_for(fake_github, access_token="t0ken")) as svc:
        events = await raw_get_events(svc.url, f"/build/gh/o/r/{ref}?build_only=true")
    assert [r.path for r in fake_github.requests] == []
    assert [e["phase"] for e in events] == ["failed"], events
    assert "is not a valid GitHub ref" in events[0]["message"]
