
from __future__ import annotations

import asyncio
import inspect
import json

import httpx
import pytest

from binderapi.pipeline import BuildRequest, ResolvedRepo, format_appendix
from fixtures.server import EVENT_STREAM, serve
from fixtures.server import make_settings as _make_settings

#: the service starts the Docker backend (build_class docker), which checks the engine at start-up;
#: the same routes without any infrastructure: tests/test_inprocess.py
pytestmark = pytest.mark.docker


def make_settings(**binderhub):
    """The service with the Docker backend and no registry (Docker Hub is unreachable here)."""
    return _make_settings(**{"use_registry": False, **binderhub})


@pytest.fixture
async def client():
    async with httpx.AsyncClient(timeout=10) as c:
        yield c


async def test_our_middlewares_keep_no_frame_for_a_streams_life():
    """A ``/build`` stream may last an hour, and an ASGI layer that awaits the next one keeps its
    suspended frame all that time (about 300 bytes a layer, a stream): binderapi's own middlewares
    return the next layer's awaitable instead of awaiting it."""
    async with serve(make_settings(build_class="docker")) as svc:
        layer, ours = svc.app.middleware_stack, set()
        for _ in range(50):  # down the chain to the router
            if type(layer).__module__ == "binderapi.middleware":
                ours.add(type(layer))
            layer = getattr(layer, "app", None)
    assert {cls.__name__ for cls in ours} == {"CORSMiddleware", "HostHeaderMiddleware", "ClientAddressMiddleware"}
    assert not [cls for cls in ours if inspect.iscoroutinefunction(cls.__call__)]


async def test_versions_shape(client):
    async with serve(make_settings(build_class="docker")) as svc:
        r = await client.get(svc.url + "versions")
    assert r.status_code == 200
    body = r.json()
    assert isinstance(body["binderhub"], str) and isinstance(body["builder_info"], dict)
    assert r.headers["access-control-allow-origin"] == "*"  # BinderHub's default for /versions


async def test_health_shape_get_and_head(client):
    async with serve(make_settings(build_class="docker")) as svc:
        svc.services.health.add("Always fine", _fine)
        r = await client.get(svc.url + "health")
        head = await client.head(svc.url + "health")
        svc.services.health.add("Broken", _broken)
        bad = await client.get(svc.url + "health")
    assert r.status_code == head.status_code == 200
    assert {"service": "Always fine", "ok": True} in r.json()["checks"]
    assert {c["service"] for c in r.json()["checks"]} >= {"Builder", "Pod quota", "Always fine"}
    assert head.content == b""
    assert bad.status_code == 503
    broken = [c for c in bad.json()["checks"] if c["service"] == "Broken"][0]
    assert broken["ok"] is False and "unreachable" in broken["error"]


async def _fine():
    return True


async def _broken():
    raise ConnectionError("dependency unreachable")


async def test_soft_health_checks_do_not_fail_the_service(client):
    async with serve(make_settings(build_class="docker")) as svc:
        svc.services.health.add("Pod quota", _broken, soft=True)
        r = await client.get(svc.url + "health")
    assert r.status_code == 200
    (quota,) = [c for c in r.json()["checks"] if c["service"] == "Pod quota" and "error" in c]
    assert quota["_ignore_failure"] is True and quota["ok"] is False


async def test_metrics_has_binderhub_families(client):
    async with serve(make_settings(build_class="docker")) as svc:
        await client.get(svc.url + "versions")
        r = await client.get(svc.url + "metrics")
    assert r.status_code == 200
    for family in ("binderhub_build_time_seconds", "binderhub_launch_time_seconds", "binderhub_build_count",
                   "binderhub_launch_count", "binderhub_inprogress_builds", "binderhub_inprogress_launches",
                   "binderhub_github_rate_limit_remaining", "http_requests_total"):
        assert f"# TYPE {family}" in r.text, family
    assert 'binderhub_launch_time_seconds_bucket{le="2.0"' in r.text or "binderhub_launch_time_seconds" in r.text


async def test_frontend_config_and_repoproviders(client):
    settings = make_settings(build_class="docker", banner_message="<b>hi</b>", about_message="about",
                             badge_base_url="https://mybinder.example/", base_url="/binder/")
    async with serve(settings) as svc:
        config = (await client.get(svc.url + "_config")).json()
        providers = (await client.get(svc.url + "api/repoproviders")).json()
    assert config["base_url"] == "/binder/"
    assert (config["banner_message"], config["about_message"], config["badge_base_url"]) == ("<b>hi</b>", "about", "https://mybinder.example/")
    ids = [p["id"] for p in providers]
    assert ids == ["gh", "gist", "git", "gl", "zenodo", "figshare", "hydroshare", "dataverse", "ckan", "swhid"]
    assert [p["id"] for p in config["repo_providers"]] == ids
    github = providers[0]
    assert github["displayName"] == "GitHub" and github["ref"]["default"] == "HEAD"


async def test_only_enabled_providers_are_listed(client):
    async with serve(make_settings(build_class="docker", repo_providers={"gh": "GitHubRepoProvider", "custom-git": "GitRepoProvider"})) as svc:
        providers = (await client.get(svc.url + "api/repoproviders")).json()
    assert [p["id"] for p in providers] == ["gh", "custom-git"]


async def test_routes_live_under_base_url_and_unknown_paths_are_json_404(client):
    async with serve(make_settings(build_class="docker", base_url="/services/binder/")) as svc:
        ok = await client.get(svc.url + "versions")
        outside = await client.get(svc.url.replace("/services/binder/", "/") + "versions")
        unknown = await client.get(svc.url + "v2/gh/a/b/HEAD")
        wrong_method = await client.post(svc.url + "versions")
        openapi = await client.get(svc.url + "openapi.json")
        docs = await client.get(svc.url + "docs")
    assert ok.status_code == 200
    for r in (outside, unknown):
        assert r.status_code == 404 and r.headers["content-type"] == "application/json" and r.json()["detail"]
    assert wrong_method.status_code == 405 and wrong_method.json()["detail"]
    paths = openapi.json()["paths"]  # relative to the document's one server, the base URL
    assert openapi.json()["servers"] == [{"url": "/services/binder"}]
    for path in ("build/{prefix}/{spec}", "health", "versions", "_config", "api/repoproviders", "metrics"):
        assert "/" + path in paths, path
    assert docs.status_code == 200


async def test_openapi_documents_every_event_type(client):
    async with serve(make_settings(build_class="docker")) as svc:
        spec = (await client.get(svc.url + "openapi.json")).json()
    schemas = spec["components"]["schemas"]
    for name in ("WaitingEvent", "FetchingEvent", "BuildingEvent", "PushingEvent", "BuiltEvent", "LaunchingEvent",
                 "BuildReadyEvent", "LaunchReadyEvent", "FailedEvent", "UnknownEvent", "LogEvent"):
        assert name in schemas, name
    stream = spec["paths"]["/build/{prefix}/{spec}"]["get"]["responses"]["200"]["content"]["text/event-stream"]
    assert stream["schema"]


async def test_cors_on_every_response_and_preflight(client):
    async with serve(make_settings(build_class="docker", cors_allow_origin="https://frontend.example")) as svc:
        versions = await client.get(svc.url + "versions")
        missing = await client.get(svc.url + "nowhere")
        build = await client.get(svc.url + "build/nope/x/y", headers={"Accept": "text/event-stream"})
        preflight = await client.options(svc.url + "build/gh/a/b/HEAD", headers={
            "Origin": "https://frontend.example", "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "cache-control"})
    for r in (versions, missing, build, preflight):
        assert r.headers["access-control-allow-origin"] == "https://frontend.example"
        assert "cache-control" in r.headers["access-control-allow-headers"]
        assert "last-event-id" in r.headers["access-control-allow-headers"]
        assert r.headers["access-control-expose-headers"] == "x-build-id"
    assert preflight.status_code == 200 and "GET" in preflight.headers["access-control-allow-methods"]


async def test_no_cors_header_unless_configured(client):
    async with serve(make_settings(build_class="docker")) as svc:
        r = await client.get(svc.url + "_config")
    assert "access-control-allow-origin" not in r.headers


async def test_ban_networks(client):
    settings = make_settings(build_class="docker", enable_api_only_mode=True,
                             ban_networks={"127.0.0.0/8": "the loopback network"})
    async with serve(settings) as svc:
        config = await client.get(svc.url + "_config")
        metrics = await client.get(svc.url + "metrics")
        health = await client.get(svc.url + "health")
        versions = await client.get(svc.url + "versions")
        build = await client.get(svc.url + "build/gh/binder-examples/requirements/HEAD", headers=EVENT_STREAM)
    assert config.status_code == metrics.status_code == 403
    assert config.json()["detail"] == "Requests from the loopback network are not allowed"
    assert health.status_code == versions.status_code == 200
    # HTTP 403 as from BinderHub, with the failed event stream clients read
    assert build.status_code == 403 and build.headers["content-type"].startswith("text/event-stream")
    assert json.loads(build.text.removeprefix("data: ")) == {
        "phase": "failed", "status_code": 403, "message": "Requests from the loopback network are not allowed\n"}


async def test_forwarded_for_is_only_believed_from_trusted_proxies(client):
    # A banned client cannot walk around the ban by claiming another address...
    settings = make_settings(build_class="docker", ban_networks={"127.0.0.0/8": "loopback"})
    async with serve(settings) as svc:
        spoofed = await client.get(svc.url + "_config", headers={"X-Forwarded-For": "203.0.113.9"})
    assert spoofed.status_code == 403
    # ...but behind a trusted proxy the forwarded address is the client's.
    settings = make_settings(build_class="docker", ban_networks={"198.51.100.0/24": "test-net-2"},
                             trusted_proxies=["127.0.0.0/8"])
    async with serve(settings) as svc:
        banned = await client.get(svc.url + "_config", headers={"X-Forwarded-For": "198.51.100.7"})
        allowed = await client.get(svc.url + "_config", headers={"X-Forwarded-For": "203.0.113.9"})
        # the right-most untrusted hop counts, not what the client put first
        chained = await client.get(svc.url + "_config", headers={"X-Forwarded-For": "203.0.113.9, 198.51.100.7"})
    assert banned.status_code == 403 and allowed.status_code == 200 and chained.status_code == 403


@pytest.mark.parametrize("forwarded", [
    "203.0.113.9, 198.51.100.7:4711",  # the proxy appended a port
    "203.0.113.9, [2001:db8::7]:4711",  # the same, IPv6
    "203.0.113.9,198.51.100.7",
])
async def test_forwarded_for_never_falls_back_to_the_client_written_hop(client, forwarded):
    """A right-most hop the hand-written parser could not read sent it to the left-most one, which the
    client writes: a banned client got in. The trusted proxy's hop is what counts."""
    settings = make_settings(build_class="docker", trusted_proxies=["127.0.0.0/8"],
                             ban_networks={"198.51.100.0/24": "test-net-2", "2001:db8::/32": "doc-net"})
    async with serve(settings) as svc:
        r = await client.get(svc.url + "_config", headers={"X-Forwarded-For": forwarded})
    assert r.status_code == 403, r.text


async def rate_limited(client, svc, forwarded: list[str]) -> list[httpx.Response]:
    """One /build request per X-Forwarded-For value, each refused before any upstream is asked."""
    return [await client.get(svc.url + "build/gh/o", headers={**EVENT_STREAM, "X-Forwarded-For": hop})
            for hop in forwarded]


async def test_rotating_the_client_written_hop_does_not_reset_the_rate_limit(client):
    settings = _make_settings({"RateLimiter": {"limit": 1, "period_seconds": 600}}, build_class="docker",
                              use_registry=False, trusted_proxies=["127.0.0.0/8"])
    async with serve(settings) as svc:
        unknown = await rate_limited(client, svc, [f"203.0.113.{i}, unknown" for i in range(3)])
        ported = await rate_limited(client, svc, [f"203.0.113.{i}, 198.51.100.7:{4000 + i}" for i in range(3)])
    assert [r.status_code for r in unknown] == [200, 429, 429]
    assert [r.status_code for r in ported] == [200, 429, 429]


async def test_rate_limit_is_per_ipv6_64_and_answers_429_with_retry_after(client):
    settings = _make_settings({"RateLimiter": {"limit": 1, "period_seconds": 600}}, build_class="docker",
                              use_registry=False, trusted_proxies=["127.0.0.0/8"])
    async with serve(settings) as svc:
        same_64 = await rate_limited(client, svc, ["2001:db8:1:2::1", "2001:db8:1:2:ffff::9"])
        other_64 = await rate_limited(client, svc, ["2001:db8:1:3::1"])
    first, second = same_64
    assert first.status_code == 200 and "Spec is not of the form" in first.text
    assert second.status_code == 429
    assert 1 <= int(second.headers["retry-after"]) <= 600
    assert second.headers["x-ratelimit-remaining"] == "0"
    assert second.headers["content-type"].startswith("text/event-stream")
    event = json.loads(second.text.removeprefix("data: "))
    assert event["phase"] == "failed" and event["status_code"] == 429
    assert event["message"] == f"Rate limit exceeded. Try again in {second.headers['retry-after']} seconds.\n"
    assert other_64[0].status_code == 200


@pytest.mark.parametrize("host", [
    "evil.example PATH=/tmp/evil",  # ENV BINDER_URL={binder_url} would set PATH in a shared image
    'evil.example"', "evil.example;id", "evil.example:99999", "[not-ipv6]", "a..b",
])
async def test_a_hostile_host_header_is_refused_before_any_work(client, host):
    async with serve(make_settings(build_class="docker", enable_api_only_mode=True)) as svc:
        build = await client.get(svc.url + "build/gh/o/r/HEAD", headers={**EVENT_STREAM, "Host": host})
        config = await client.get(svc.url + "_config", headers={"Host": host})
        fine = await client.get(svc.url + "build/gh/o", headers={**EVENT_STREAM, "Host": "binder.example:8443"})
    assert build.status_code == 400 and build.headers["content-type"].startswith("text/event-stream")
    assert json.loads(build.text.removeprefix("data: ")) == {
        "phase": "failed", "status_code": 400, "message": "Invalid Host header: expected one host[:port]\n"}
    assert config.status_code == 400 and config.json() == {"detail": "Invalid Host header: expected one host[:port]"}
    assert fine.status_code == 200 and "Spec is not of the form" in fine.text


async def test_two_host_headers_are_refused():
    async with serve(make_settings(build_class="docker")) as svc:
        port = svc.server.config.port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /_config HTTP/1.1\r\nHost: binder.example\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 400 ")


async def test_allowed_hosts(client):
    async with serve(make_settings(build_class="docker", allowed_hosts=["Binder.Example", "127.0.0.1"])) as svc:
        listed = await client.get(svc.url + "_config", headers={"Host": "binder.example:8443"})
        own = await client.get(svc.url + "_config")
        other = await client.get(svc.url + "_config", headers={"Host": "evil.example"})
        probe = await client.get(svc.url + "health", headers={"Host": "10.1.2.3:8585"})  # a kubelet probe
    assert listed.status_code == own.status_code == 200
    assert other.status_code == 400 and other.json() == {"detail": "Unknown host evil.example: not one of this service's names"}
    assert probe.status_code in (200, 503)


def test_appendix_values_cannot_add_variables_or_commands():
    """Whatever a URL holds, each placeholder fills one shell/Dockerfile word: no whitespace, quote,
    ``$``, ``;``, ``&`` or newline reaches the appendix baked into a shared image."""
    appendix = "ENV BINDER_URL={binder_url} REPO_URL={repo_url}\nRUN echo {ref_url} {persistent_binder_url} ${{HOME}}"
    request = BuildRequest("git", "https%3A%2F%2Fgit.example%2Fr/HEAD", launch_host="http://evil.example PATH=/tmp/evil/")
    repo = ResolvedRepo(provider=None, ref="0" * 40, resolved_spec="https%3A%2F%2Fgit.example%2Fr/" + "0" * 40,
                        repo_url='https://git.example/r "$(id)";id&', ref_url="https://git.example/r\nRUN id #?",
                        image_name="", build_name="")
    rendered = format_appendix(appendix, request, repo)
    first, second = rendered.split("\n")
    env = first.removeprefix("ENV ").split(" ")
    assert [pair.split("=", 1)[0] for pair in env] == ["BINDER_URL", "REPO_URL"]
    assert env[0] == "BINDER_URL=http://evil.example%20PATH=/tmp/evil/v2/git/https%3A%2F%2Fgit.example%2Fr/HEAD"
    assert env[1] == "REPO_URL=https://git.example/r%20%22%24%28id%29%22%3Bid%26"
    assert second.split(" ")[:3] == ["RUN", "echo", "https://git.example/r%0ARUN%20id%20%23%3F"]
    assert second.endswith(" ${HOME}")  # the appendix's own shell variables stay
    assert format_appendix(appendix.replace("{binder_url}", "https://binder.example/v2/gh/o/r/HEAD"), request, repo).startswith(
        "ENV BINDER_URL=https://binder.example/v2/gh/o/r/HEAD ")
