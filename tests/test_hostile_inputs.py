"""A catalogue of hostile inputs against one live binderapi (real uvicorn on 127.0.0.1, the Docker
backend on the real engine): SSRF forms, injection through specs and refs, forged tokens, header
floods, cookies, proxy headers and hostile upstreams.

Every case asserts two things: the client gets a clear refusal (one ``failed`` event, or an HTTP
status, with a message a user can act on), and nothing was contacted or started: no connection to
the tripwire listening where an SSRF would land, no request to the fake upstream that an injection
would reach, no build recorded by the service and no builder container created on the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
import pytest_asyncio
from jose import jwt
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from binderapi.logs import RedactingFilter
from binderapi.settings.models import DEFAULT_DENIED_NETWORKS
from binderapi.tokens import BuildTokens
from fixtures.fakes import FakeUpstream, running
from fixtures.server import serve
from fixtures.stack import DockerWatcher, docker_settings

pytestmark = pytest.mark.docker

SECRET = "cd" * 32
KEY = bytes.fromhex(SECRET)
SHA = "0123456789abcdef0123456789abcdef01234567"
METADATA = "169.254.0.0/16"
#: the data providers may reach the fakes on 127.0.0.1 but not the tripwire's second address
DATA_DENIED = [METADATA, "127.0.0.2/32"]


# -- what an attack would reach ------------------------------------------------------------------
class Tripwire:
    """A TCP listener on 127.0.0.1, 127.0.0.2 and ::1 (one port) that counts every connection: where
    an SSRF through a spec would land. It answers nothing. (Only loopback: the cases that would
    reach the metadata service or link-local addresses are checked against the default list
    instead, so that a regression sends nothing off this machine.)"""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0
        self._servers: list[asyncio.base_events.Server] = []

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()

    async def start(self) -> None:
        server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._servers.append(server)
        # another loopback address, which the data providers below deny: where a redirect lands
        self._servers.append(await asyncio.start_server(self._accept, "127.0.0.2", self.port))
        with contextlib.suppress(OSError):  # no IPv6 loopback on this machine: 127.0.0.1 alone
            self._servers.append(await asyncio.start_server(self._accept, "::1", self.port))

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()


class HostileUpstream(FakeUpstream):
    """A DOI resolver and Figshare API that misbehave on purpose; the DOI's suffix picks how."""

    tripwire_port = 0

    def routes(self) -> list[Any]:
        return [
            Route("/10.5281/{mode}", self.resolver),
            Route("/articles/x/{article}", self.landing),
            Route("/api/articles/{article}/versions", self.versions),
        ]

    async def resolver(self, request: Request) -> Response:
        mode = request.path_params["mode"].removeprefix("zenodo.")
        if mode == "huge":  # 100 MiB, in 1 MiB chunks
            async def body() -> AsyncIterator[bytes]:
                chunk = b"x" * (1 << 20)
                for _ in range(100):
                    yield chunk
            return StreamingResponse(body(), media_type="text/html")
        if mode == "drip":  # one byte every 2 s, for a minute
            async def drip() -> AsyncIterator[bytes]:
                for _ in range(30):
                    yield b"x"
                    await asyncio.sleep(2)
            return StreamingResponse(drip(), media_type="text/html")
        if mode == "loop":
            return RedirectResponse(str(request.url), status_code=302)
        if mode == "denied":
            return RedirectResponse(f"http://127.0.0.2:{self.tripwire_port}/latest/meta-data/", status_code=302)
        if mode == "fail":
            return Response("upstream down", status_code=503)
        return Response("no such DOI", status_code=404)

    async def landing(self, request: Request) -> Response:
        return Response("<html>article</html>", media_type="text/html")

    async def versions(self, request: Request) -> Response:
        return Response("<html>this is not JSON</html>", media_type="text/html")


# -- the service under attack --------------------------------------------------------------------
@dataclass
class Target:
    url: str
    port: int
    svc: Any
    tripwire: Tripwire
    github: Any
    gitlab: Any
    hostile: HostileUpstream
    watcher: DockerWatcher
    log: list[str] = field(default_factory=list)


@pytest_asyncio.fixture(scope="module")
async def target(_session_github, _session_gitlab) -> AsyncIterator[Target]:
    tripwire = Tripwire()
    await tripwire.start()
    github, gitlab = _session_github, _session_gitlab
    github.reset()
    gitlab.reset()
    github.set_ref("org/repo", "HEAD", SHA)
    github.set_ref("victim/private", "HEAD", SHA)
    github.private["victim/private"] = "operator-token"
    fakes_only = [METADATA]  # the fakes live on loopback, which the default list denies
    HostileUpstream.tripwire_port = tripwire.port
    async with running(HostileUpstream()) as hostile:
        settings = docker_settings(
            config={
                "GitHubRepoProvider": {"api_base_path": github.url, "access_token": "operator-token",
                                       "denied_networks": fakes_only},
                "GistRepoProvider": {"api_base_path": github.url, "denied_networks": fakes_only},
                "GitLabRepoProvider": {"api_base_url": gitlab.url + "/api/v4", "denied_networks": fakes_only},
                "ZenodoProvider": {"doi_resolver_url": hostile.url, "hosts": ["127.0.0.1"],
                                   "denied_networks": DATA_DENIED, "retries": 1, "request_timeout": 3},
                "FigshareProvider": {"doi_resolver_url": hostile.url + "/figshare", "hosts": ["127.0.0.1"],
                                     "api_base_url": hostile.url + "/api", "denied_networks": DATA_DENIED,
                                     "retries": 1},
                "RateLimiter": {"limit": 2, "period_seconds": 3600},
                # the shipped deny-list, not the suite's loopback opt-out: the tripwire is on loopback
                "RepoProvider": {"denied_networks": list(DEFAULT_DENIED_NETWORKS)},
            },
            ban_networks={"203.0.113.0/24": "TEST-NET-3", "2001:db8:bad::/48": "a banned IPv6 network"},
            trusted_proxies=["127.0.0.1/32", "::1/128"],
            build_token_secret=SECRET,
            auth_enabled=False,
        )
        async with DockerWatcher() as watcher, serve(settings) as svc:
            port = int(svc.url.split(":")[2].split("/")[0])
            yield Target(svc.url, port, svc, tripwire, github, gitlab, hostile, watcher)
    await tripwire.stop()


_addresses = iter(range(1, 250))


def fresh_client_ip() -> str:
    """A documentation address (TEST-NET-2) of its own per case, given through the trusted proxy
    header, so the anonymous rate limit of one case never refuses another."""
    return f"198.51.100.{next(_addresses)}"


async def stream(target: Target, path: str, *, headers: dict[str, str] | None = None,
                 params: dict[str, str] | None = None, accept: bool = True) -> tuple[httpx.Response, list[dict[str, Any]]]:
    """GET ``path`` (raw, already escaped) and parse the ``data:`` frames of the answer."""
    import json

    all_headers = {"x-forwarded-for": fresh_client_ip(), **(headers or {})}
    if accept:
        all_headers.setdefault("accept", "text/event-stream")
    async with httpx.AsyncClient(timeout=60) as client:
        # the raw path as given: httpx would otherwise normalise the dot segments an attacker sends
        raw = httpx.URL(target.url).raw_path + path.lstrip("/").encode()
        if params:
            raw += b"?" + urlencode(params).encode()
        response = await client.get(httpx.URL(target.url).copy_with(raw_path=raw), headers=all_headers)
    events = [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")]
    return response, events


def assert_untouched(target: Target, before: dict[str, int]) -> None:
    """Nothing contacted, nothing started."""
    assert target.tripwire.connections == before["tripwire"], "the tripwire was contacted"
    victim = [r.path for r in target.github.requests if "victim" in r.path]
    assert not victim, f"the fake GitHub was asked for {victim}"
    assert not target.svc.services.builds.builds, f"builds started: {list(target.svc.services.builds.builds)}"
    assert not target.watcher.actions("create"), f"builder containers created: {target.watcher.actions('create')}"


def snapshot(target: Target) -> dict[str, int]:
    return {"tripwire": target.tripwire.connections}


def one_failure(events: list[dict[str, Any]]) -> dict[str, Any]:
    failed = [e for e in events if e.get("phase") == "failed"]
    assert len(failed) == 1 and events[-1] is failed[0], events
    assert "Traceback" not in failed[0]["message"] and "incident" not in failed[0]["message"], failed[0]
    return failed[0]


def git(url: str, ref: str = "HEAD") -> str:
    return f"build/git/{quote(url, safe='')}/{ref}"


# -- SSRF: git URLs that land on this machine or its metadata service ------------------------------
DENIED = r"not allowed to reach|denied|not allowed"
SSRF_CASES = {
    "loopback": ("http://127.0.0.1:{port}/r.git", "HEAD"),
    "loopback, 40-hex ref": ("http://127.0.0.1:{port}/r.git", SHA),
    "unspecified IPv4": ("http://0.0.0.0:{port}/r.git", "HEAD"),
    "unspecified IPv4, 40-hex ref": ("http://0.0.0.0:{port}/r.git", SHA),
    "unspecified IPv6": ("http://[::]:{port}/r.git", "HEAD"),
    "IPv6 loopback": ("http://[::1]:{port}/r.git", "HEAD"),
    "IPv6 loopback, 40-hex ref": ("http://[::1]:{port}/r.git", SHA),
    "localhost by name": ("http://localhost:{port}/r.git", "HEAD"),
    "IPv4-mapped IPv6 loopback": ("http://[::ffff:127.0.0.1]:{port}/r.git", "HEAD"),
    "decimal loopback": ("http://2130706433:{port}/r.git", "HEAD"),
    "hexadecimal loopback": ("http://0x7f000001:{port}/r.git", "HEAD"),
    "short loopback": ("http://127.1:{port}/r.git", "HEAD"),
    "git protocol to loopback": ("git://127.0.0.1:{port}/r.git", "HEAD"),
    "https to loopback": ("https://127.0.0.1:{port}/r.git", "HEAD"),
    "ssh to loopback": ("ssh://git@127.0.0.1:{port}/r.git", "HEAD"),
    "scp-like to loopback": ("git@127.0.0.1:r.git", "HEAD"),
}


@pytest.mark.parametrize("address", ["127.0.0.1", "127.255.0.1", "::1", "0.0.0.0", "::", "::ffff:127.0.0.1",
                                     "169.254.169.254", "fe80::1", "100.100.100.200", "fd00:ec2::254"])
def test_the_default_deny_list_covers_this_host_and_metadata_services(address):
    """Cases no test may try for real (they would leave the machine): the shipped default refuses them."""
    from binderapi.providers._net import denied_networks
    from binderapi.settings.models import GitRepoProvider

    assert list(GitRepoProvider().denied_networks) == list(DEFAULT_DENIED_NETWORKS)
    assert denied_networks(GitRepoProvider().denied_networks).match(address) is not None, address


@pytest.mark.parametrize("case", list(SSRF_CASES))
async def test_ssrf_through_git_urls_is_refused_without_connecting(target, case):
    url, ref = SSRF_CASES[case]
    before = snapshot(target)
    response, events = await stream(target, git(url.format(port=target.tripwire.port), ref))
    assert response.status_code == 200
    assert re.search(DENIED, one_failure(events)["message"]), events
    assert_untouched(target, before)


async def test_ssrf_through_a_ckan_site_is_refused_without_connecting(target):
    before = snapshot(target)
    _, events = await stream(target, f"build/ckan/{quote(f'http://127.0.0.1:{target.tripwire.port}/dataset/x', safe='')}")
    assert re.search(DENIED, one_failure(events)["message"]), events
    assert_untouched(target, before)


# -- injection through the git URL and ref -------------------------------------------------------
INJECTION_CASES = {
    "file scheme": (git("file:///etc/passwd"), r"protocol file|not allowed|Unsupported"),
    "ext transport": (git("ext::sh -c touch% /tmp/pwned"), r"Unsupported|protocol"),
    "fd transport": (git("fd::3"), r"Unsupported|protocol"),
    "option as URL": (git("--upload-pack=touch /tmp/pwned"), r"starts with \"-\"|not a git repository URL"),
    "option as ref": (git("https://git.example/r.git", "--upload-pack=touch%20%2Ftmp%2Fpwned"), r"not a valid git ref"),
    "option as host": (git("http://-oProxyCommand=touch/r.git"), r"host|starting with|Unsupported"),
    "newline in ref": (git("https://git.example/r.git", "main%0Aevil"), r"not a valid git ref"),
    "NUL in URL": (git("https://127.0.0.1/r\x00.git"), r"control characters"),
    "credentials in URL": (git("https://user:hunter2@git.example/r.git"), r"Credentials do not belong"),
    "no ref": ("build/git/" + quote("https://git.example/r.git", safe=""), r"ref is required|not of the form"),
    "GitHub ref walking up the API path": ("build/gh/org/repo/..%2F..%2Fvictim%2Fprivate%2Fcommits%2FHEAD", r"not a valid"),
    "GitHub ref with dot segments only": ("build/gh/org/repo/..%2F..%2F..", r"not a valid"),
    "GitHub ref with encoded dots": ("build/gh/org/repo/%252e%252e%252fvictim", r"not a valid"),
    "GitHub ref with backslashes": ("build/gh/org/repo/..%5C..%5Cvictim%5Cprivate", r"not a valid"),
    "GitHub ref with a query": ("build/gh/org/repo/HEAD%3Fper_page%3D1", r"not a valid"),
    "GitHub ref with a fragment": ("build/gh/org/repo/HEAD%23x", r"not a valid"),
    "GitHub owner walking up": ("build/gh/..%2Fvictim/private/HEAD", r"not a valid|is not|Spec is not"),
    "GitHub repo with a slash": ("build/gh/victim/private%2F..%2F..%2Fx/HEAD", r"not a valid|is not|Spec is not"),
    "GitHub ref with a tilde": ("build/gh/org/repo/HEAD~1", r"not a valid"),
    "Gist id walking up": ("build/gist/user/..%2F..%2Frepos%2Fvictim%2Fprivate", r"not a valid|is not|Spec is not"),
    "GitLab path walking up": ("build/gl/group%2F..%2F..%2Fvictim/HEAD", r"not a valid|is not|Spec is not"),
    "unknown provider": ("build/nope/a/b", r"No provider found for prefix nope"),
    "DOI walking up the resolver": ("build/zenodo/10.5281/..%2F..%2Fadmin", r"not a DOI|not a valid|\.\."),
}


@pytest.mark.parametrize("case", list(INJECTION_CASES))
async def test_injection_through_the_spec_is_refused(target, case):
    path, message = INJECTION_CASES[case]
    before = snapshot(target)
    response, events = await stream(target, path)
    assert response.status_code == 200
    assert re.search(message, one_failure(events)["message"]), events
    assert_untouched(target, before)


async def test_credentials_in_a_refused_url_reach_no_log(target, caplog):
    caplog.set_level("DEBUG")
    _, events = await stream(target, git("https://user:hunter2@git.example/r.git"))
    one_failure(events)
    # what binderapi's logging configuration writes: its redacting filter runs on every record
    scrub = RedactingFilter()
    ours = [r.getMessage() for r in caplog.records
            if r.name.split(".")[0] in ("binderapi", "uvicorn") and scrub.filter(r)]
    assert ours, "nothing was logged: the check would prove nothing"
    assert not [m for m in ours if "hunter2" in m]
    assert all("hunter2" not in str(e) for e in events)


async def test_a_huge_spec_is_refused_and_makes_no_metric_series(target):
    before = snapshot(target)
    _, events = await stream(target, "build/gh/org/repo/" + "a" * 20_000)
    one_failure(events)
    assert_untouched(target, before)
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(target.url + "metrics")).text
    assert "a" * 200 not in metrics


# -- build tokens --------------------------------------------------------------------------------
def _token(claims: dict[str, Any], key: Any = KEY, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def token_case(name: str) -> str:
    now = int(time.time())
    aud = "gh/org/repo/HEAD"
    good = {"aud": aud, "origin": "127.0.0.1", "exp": now + 60}
    return {
        "alg none": "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJhdWQiOiJnaC9vcmcvcmVwby9IRUFEIiwib3JpZ2luIjoiMTI3LjAuMC4xIn0.",
        "wrong key": _token(good, b"another key"),
        "expired": _token({**good, "exp": now - 120}),
        "no expiry": _token({"aud": aud, "origin": "127.0.0.1"}),
        "audience as a list": _token({**good, "aud": [aud, "gh/other/repo/HEAD"]}),
        "another spec": _token({**good, "aud": "gh/other/repo/HEAD"}),
        "another origin": _token({**good, "origin": "evil.example"}),
        "HS512 with the right key": _token(good, algorithm="HS512"),
        "garbage": "not.a.token",
        "empty signature": BuildTokens(SECRET, 60, True).mint(aud, "127.0.0.1").rsplit(".", 1)[0] + ".",
    }[name]


TOKEN_CASES = ["alg none", "wrong key", "expired", "no expiry", "audience as a list", "another spec",
               "another origin", "HS512 with the right key", "garbage", "empty signature"]


@pytest.mark.parametrize("case", TOKEN_CASES)
async def test_forged_build_tokens_are_refused(target, case):
    before = snapshot(target)
    asked = target.github.count("/repos/org/repo")
    response, events = await stream(target, "build/gh/org/repo/HEAD", params={"build_token": token_case(case)})
    failed = one_failure(events)
    assert failed.get("status_code") == 403 and "Invalid build token" in failed["message"], failed
    assert response.status_code in (200, 403)
    assert target.github.count("/repos/org/repo") == asked, "a refused token still asked GitHub"
    assert_untouched(target, before)


# -- headers ------------------------------------------------------------------------------------
async def raw_exchange(port: int, request: bytes, *, wait: float = 30) -> bytes:
    """Send ``request`` on a raw socket and read until the server closes or answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        with contextlib.suppress(ConnectionError):
            return await asyncio.wait_for(reader.read(65536), wait)
        return b""
    finally:
        writer.close()


def status_of(answer: bytes) -> int:
    match = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
    return int(match.group(1)) if match else 0


@pytest.mark.parametrize("case", ["one 1 MB header", "one 8 MB header", "20,000 headers"])
async def test_header_floods_are_refused_with_431(target, case):
    head = b"GET /versions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if case == "20,000 headers":
        head += b"".join(b"X-H%d: v\r\n" % i for i in range(20_000))
    else:
        size = (1 if case == "one 1 MB header" else 8) << 20
        head += b"X-Big: " + b"a" * size + b"\r\n"
    answer = await raw_exchange(target.port, head + b"\r\n")
    assert status_of(answer) == 431 or answer == b"", answer[:200]
    assert status_of(answer) != 200


async def test_a_slow_loris_is_cut_off(target):
    """Headers dribbled one line every second: the server hangs up well before 60 s."""
    reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
    writer.write(b"GET /versions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    closed = False
    try:
        for i in range(60):
            try:
                writer.write(b"X-Slow-%d: v\r\n" % i)
                await writer.drain()
                data = await asyncio.wait_for(reader.read(1024), 1)
            except TimeoutError:
                continue
            except ConnectionError:
                closed = True
                break
            if data == b"" or status_of(data) in (400, 408, 431):
                closed = True
                break
    finally:
        writer.close()
    assert closed, "the server kept a connection whose headers never ended"


@pytest.mark.parametrize("host", ["evil.example PATH=/tmp/evil", "evil.example\tx=1", "a b", "evil.example/../x",
                                  "evil.example:99999", "[::1", "evil.example;rm -rf /"])
async def test_a_hostile_host_header_reaches_no_event_or_image(target, host):
    before = snapshot(target)
    request = (f"GET /build/gh/org/repo/HEAD HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n"
               f"X-Forwarded-For: {fresh_client_ip()}\r\nConnection: close\r\n\r\n").encode()
    answer = await raw_exchange(target.port, request)
    assert status_of(answer) in (400, 421), answer[:300]
    assert host.encode() not in answer.split(b"\r\n\r\n", 1)[-1]
    assert_untouched(target, before)


@pytest.mark.parametrize("accept", [None, "*/*", "text/html", "text/event-stream;q=0"])
async def test_a_request_not_asking_for_an_event_stream_starts_nothing(target, accept):
    before = snapshot(target)
    asked = target.github.count("/repos/org/repo")
    headers = {"accept": accept} if accept else {}
    _, events = await stream(target, "build/gh/org/repo/HEAD", headers=headers, accept=False)
    failed = one_failure(events)
    assert failed.get("status_code") == 400 and "Accept" in failed["message"]
    assert target.github.count("/repos/org/repo") == asked
    assert_untouched(target, before)


# -- proxies, bans and rate limits ---------------------------------------------------------------
@pytest.mark.parametrize("forwarded", [
    "203.0.113.9",
    "198.51.100.200, 203.0.113.9",
    "198.51.100.201, 203.0.113.9:5678",
    "198.51.100.202, [2001:db8:bad::1]:5678",
    "2001:db8:bad::7",
])
async def test_banned_clients_are_refused_with_403_whatever_they_put_in_front(target, forwarded):
    before = snapshot(target)
    response, events = await stream(target, "build/gh/org/repo/HEAD", headers={"x-forwarded-for": forwarded})
    assert response.status_code == 403
    failed = one_failure(events)
    assert failed.get("status_code") == 403 and "are not allowed" in failed["message"]
    assert_untouched(target, before)


@pytest.mark.parametrize("right_most", ["unknown", "not-an-address", "", "_hidden"])
async def test_an_unparsable_right_most_hop_does_not_hand_identity_to_the_left_most(target, right_most):
    """The proxy appended something we cannot read: the client-chosen left-most hop (here a
    banned address, to make the mistake visible) must not become the client."""
    before = snapshot(target)
    headers = {"x-forwarded-for": f"203.0.113.50, {right_most}".rstrip(", ")}
    if not right_most:
        headers = {"x-forwarded-for": "203.0.113.50,"}
    response, events = await stream(target, "build/nope/a/b", headers=headers)
    # identified as the hop we could not read (or refused): never as the forged banned hop
    assert response.status_code in (200, 429), response.text
    assert re.search("No provider found|Rate limit exceeded", one_failure(events)["message"])
    assert "TEST-NET-3" not in response.text
    assert_untouched(target, before)


async def test_rotating_the_left_most_hop_does_not_reset_the_rate_limit(target):
    real = fresh_client_ip()
    statuses = []
    for i in range(4):
        response, _ = await stream(target, "build/nope/a/b", headers={"x-forwarded-for": f"192.0.2.{i + 1}, {real}"})
        statuses.append(response.status_code)
    assert statuses[-1] == 429 and response.headers.get("retry-after"), statuses


async def test_rotating_addresses_in_one_ipv6_64_does_not_reset_the_rate_limit(target):
    statuses = []
    for i in range(4):
        response, events = await stream(target, "build/nope/a/b", headers={"x-forwarded-for": f"2001:db8:77:1::{i + 1:x}"})
        statuses.append(response.status_code)
    assert statuses[-1] == 429, statuses
    failed = one_failure(events)
    assert failed.get("status_code") == 429 and "Rate limit exceeded" in failed["message"]
    assert int(response.headers["retry-after"]) > 0


async def test_a_giant_forwarded_header_is_answered_without_error(target):
    hops = ", ".join(f"198.51.100.{i % 250}" for i in range(500))
    response, events = await stream(target, "build/nope/a/b", headers={"x-forwarded-for": hops})
    assert response.status_code in (200, 429, 431)
    if response.status_code == 200:
        assert "No provider found" in one_failure(events)["message"]


# -- hostile upstreams ---------------------------------------------------------------------------
UPSTREAM_CASES = {
    "a 100 MiB answer": ("build/zenodo/10.5281/zenodo.huge", r"DOI resolver.*(too large|larger|MiB|bytes)"),
    "an answer dripping one byte every 2 s": ("build/zenodo/10.5281/zenodo.drip", r"DOI resolver.*(seconds|time|deadline)"),
    "a redirect loop": ("build/zenodo/10.5281/zenodo.loop", r"redirected more than"),
    "a redirect to a denied address": ("build/zenodo/10.5281/zenodo.denied", DENIED),
    "an upstream failing with 503": ("build/zenodo/10.5281/zenodo.fail", r"DOI resolver.*unreachable or failing"),
}


@pytest.mark.parametrize("case", list(UPSTREAM_CASES))
async def test_hostile_upstreams_end_in_one_clear_failure(target, case):
    path, message = UPSTREAM_CASES[case]
    before = snapshot(target)
    _, events = await asyncio.wait_for(stream(target, path), 90)
    assert re.search(message, one_failure(events)["message"], re.IGNORECASE), events
    assert_untouched(target, before)


async def test_an_upstream_answering_a_forged_commit_id_is_refused(target):
    """GitHub (here its fake) answering a "sha" that is not one: it would become an image tag."""
    target.github.set_ref("org/forged", "HEAD", "../../x;touch /tmp/pwned")
    before = snapshot(target)
    _, events = await stream(target, "build/gh/org/forged/HEAD")
    assert re.search(r"GitHub", one_failure(events)["message"]), events
    assert_untouched(target, before)


# -- cookies and the login flow (auth mode) -------------------------------------------------------
@dataclass
class AuthTarget:
    url: str
    svc: Any
    hub: Tripwire  # where the hub would be: no cookie case may make binderapi ask it anything


@pytest_asyncio.fixture(scope="module")
async def auth_target(_session_github) -> AsyncIterator[AuthTarget]:
    hub = Tripwire()
    await hub.start()
    settings = docker_settings(
        config={"GitHubRepoProvider": {"api_base_path": _session_github.url, "denied_networks": [METADATA]},
                "HubOAuth": {"cookie_secret": "ef" * 32, "oauth_client_id": "service-binder"},
                "Launcher": {"hub_api_url": f"http://127.0.0.1:{hub.port}/hub/api/"}},
        auth_enabled=True, hub_url=f"http://127.0.0.1:{hub.port}/", builder_required=False,
    )
    async with serve(settings) as svc:
        yield AuthTarget(svc.url, svc, hub)
    await hub.stop()


def cookie_case(target: AuthTarget, name: str) -> tuple[dict[str, str], dict[str, str]]:
    """(cookies, headers) of one forged or misused login cookie."""
    from binderapi import signing
    from binderapi.auth import SESSION_AUDIENCE

    oauth = target.svc.services.hub_auth.oauth
    valid = oauth.session_cookie("a-hub-token", 3600)
    forged = signing.sign({"aud": SESSION_AUDIENCE, "token": "a-hub-token", "exp": int(time.time()) + 3600},
                          b"not the service's key")
    jar = {oauth.cookie_name: valid}
    return {
        "garbage cookie": ({oauth.cookie_name: "garbage"}, {"sec-fetch-site": "same-origin"}),
        "cookie signed with another key": ({oauth.cookie_name: forged}, {"sec-fetch-site": "same-origin"}),
        "state cookie passed as the session": ({oauth.cookie_name: oauth.start_login("/", "http://x/")[1]},
                                               {"sec-fetch-site": "same-origin"}),
        "valid cookie, no Origin nor Sec-Fetch-Site": (jar, {}),
        "valid cookie, cross-site": (jar, {"sec-fetch-site": "cross-site"}),
        "valid cookie, same-site page on another port": (jar, {"sec-fetch-site": "same-site"}),
        "valid cookie, foreign Origin": (jar, {"origin": "https://evil.example"}),
        "valid cookie, null Origin": (jar, {"origin": "null"}),
        "no credentials at all": ({}, {"sec-fetch-site": "same-origin"}),
    }[name]


COOKIE_CASES = ["garbage cookie", "cookie signed with another key", "state cookie passed as the session",
                "valid cookie, no Origin nor Sec-Fetch-Site", "valid cookie, cross-site",
                "valid cookie, same-site page on another port", "valid cookie, foreign Origin",
                "valid cookie, null Origin", "no credentials at all"]


@pytest.mark.parametrize("case", COOKIE_CASES)
async def test_forged_or_cross_site_cookies_are_refused_without_asking_the_hub(auth_target, case):
    import json

    cookies, headers = cookie_case(auth_target, case)
    before = auth_target.hub.connections
    async with httpx.AsyncClient(timeout=30, cookies=cookies) as client:
        response = await client.get(auth_target.url + "build/gh/org/repo/HEAD",
                                    headers={"accept": "text/event-stream", **headers})
    events = [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")]
    failed = one_failure(events)
    assert failed.get("status_code") == 403, failed
    assert re.search(r"log in|login cookie|Authentication required", failed["message"]), failed
    assert auth_target.hub.connections == before, "the hub was asked about a cookie that should never pass"
    assert not auth_target.svc.services.builds.builds


@pytest.mark.parametrize(("query", "status"), [
    ({"state": "ünïcode", "code": "x"}, 400),
    ({"state": "\u202e", "code": "x"}, 400),
    ({"state": "a" * 5000, "code": "x"}, 400),
    ({"state": "no-such-state", "code": "x"}, 400),
    ({"code": "x"}, 400),
])
async def test_hostile_oauth_callbacks_are_clear_4xx(auth_target, query, status):
    before = auth_target.hub.connections
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(auth_target.url + "oauth_callback", params=query)
    assert 400 <= response.status_code < 500 and response.status_code in (status, 403), response.text
    assert response.headers["content-type"].startswith("application/json") and response.json()["detail"]
    assert auth_target.hub.connections == before, "a callback without a valid state reached the hub"


@pytest.mark.parametrize("next_url", ["//evil.example/x", "https://evil.example/x", "/\\evil.example",
                                      "javascript:alert(1)", "http://127.0.0.1:1/x", "/%0d%0aSet-Cookie:x=y",
                                      "\t//evil.example"])
async def test_login_never_redirects_off_site(auth_target, next_url):
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(auth_target.url + "oauth_login", params={"next": next_url})
    if response.status_code == 302:  # accepted only as a path on this site, which the state carries
        assert response.headers["location"].startswith(f"http://127.0.0.1:{auth_target.hub.port}/")
        assert "set-cookie:x" not in response.headers.get("set-cookie", "").lower().replace(" ", "")
    else:
        assert response.status_code == 400 and "next" in response.json()["detail"]
