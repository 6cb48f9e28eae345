"""GitHub and Gist providers against a fake GitHub API speaking the real protocol."""

from __future__ import annotations

import asyncio
import base64
import time

import pytest

from binderapi import naming
from binderapi.errors import SpecError, UpstreamError, UpstreamRateLimitError
from binderapi.metrics import GITHUB_RATE_LIMIT
from binderapi.providers._net import DeniedNetworkError

SHA = "1479e0252b2e648bb755ee913292b79495931717"
SHA2 = "2" * 40


@pytest.fixture
def github(fake_github, make_registry):
    fake_github.set_ref("binder-examples/octave", "HEAD", SHA)
    fake_github.set_ref("binder-examples/octave", "master", SHA)
    fake_github.set_ref("binder-examples/octave", "feature/x", SHA2)

    def registry(**options):
        config = {"GitHubRepoProvider": {"api_base_path": fake_github.url, **options}}
        return make_registry(config)

    return registry


async def test_resolves_and_names_like_binderhub(github, fake_github):
    provider = github().create("gh", "binder-examples/octave/HEAD")
    assert await provider.get_resolved_ref() == SHA
    assert await provider.get_resolved_spec() == f"binder-examples/octave/{SHA}"
    assert provider.get_repo_url() == "https://github.com/binder-examples/octave"
    assert await provider.get_resolved_ref_url() == f"https://github.com/binder-examples/octave/tree/{SHA}"
    slug = provider.get_build_slug()
    assert slug == "binder-examples-octave"
    assert naming.image_name("", slug, SHA) == f"binder-2dexamples-2doctave-03025a:{SHA}"
    assert naming.build_name(slug, SHA) == "build-binder-2dexamples-2doctave-03025a-147-e2"
    assert fake_github.requests[0].path == "/repos/binder-examples/octave/commits/HEAD"


async def test_ref_with_slash_and_dot_git_suffix(github):
    provider = github().create("gh", "binder-examples/octave.git/feature/x")
    assert await provider.get_resolved_ref() == SHA2
    assert provider.get_repo_url() == "https://github.com/binder-examples/octave"


async def test_enterprise_host_and_api(fake_github, make_registry):
    fake_github.set_ref("org/repo", "main", SHA)
    registry = make_registry({"GitHubRepoProvider": {"hostname": "ghe.example.org",
                                                      "api_base_path": fake_github.url + "/api/v3"}})
    provider = registry.create("gh", "org/repo/main")
    assert await provider.get_resolved_ref() == SHA
    assert fake_github.requests[0].path == "/api/v3/repos/org/repo/commits/main"
    assert await provider.get_resolved_ref_url() == f"https://ghe.example.org/org/repo/tree/{SHA}"


async def test_unknown_ref_and_repo_are_none_and_cached_briefly(github, fake_github):
    registry = github(cache_404_ttl=300)
    assert await registry.create("gh", "binder-examples/octave/nope").get_resolved_ref() is None  # 422
    assert await registry.create("gh", "nobody/nothing/HEAD").get_resolved_ref() is None  # 404
    assert await registry.create("gh", "binder-examples/octave/nope").get_resolved_ref() is None
    assert fake_github.count() == 2


async def test_etag_revalidation_costs_no_rate_limit(github, fake_github):
    registry = github(cache_ttl=0.05)
    assert await registry.create("gh", "binder-examples/octave/HEAD").get_resolved_ref() == SHA
    remaining = fake_github.remaining
    await asyncio.sleep(0.1)  # let the answer go stale
    assert await registry.create("gh", "binder-examples/octave/HEAD").get_resolved_ref() == SHA
    assert fake_github.count() == 2
    assert fake_github.requests[1].headers["if-none-match"].startswith('W/"')
    assert fake_github.remaining == remaining  # the 304 was free
    assert GITHUB_RATE_LIMIT._value.get() == remaining

    fake_github.set_ref("binder-examples/octave", "HEAD", SHA2)  # the branch moved
    await asyncio.sleep(0.1)
    assert await registry.create("gh", "binder-examples/octave/HEAD").get_resolved_ref() == SHA2


async def test_sha_requested_is_cached_for_good(github, fake_github):
    registry = github(cache_ttl=0)
    for _ in range(3):
        assert await registry.create("gh", f"binder-examples/octave/{SHA}").get_resolved_ref() == SHA
    assert fake_github.count() == 1


async def test_rate_limit_exhausted_says_when_to_retry(github, fake_github):
    fake_github.remaining = 0
    fake_github.reset_at = int(time.time()) + 125
    with pytest.raises(UpstreamRateLimitError, match=r"^GitHub rate limit exceeded. Try again in 3 minutes.$"):
        await github().create("gh", "binder-examples/octave/HEAD").get_resolved_ref()
    assert GITHUB_RATE_LIMIT._value.get() == 0
    assert fake_github.count() == 1  # a 403 is never retried


async def test_token_and_client_credentials_are_sent_not_shown(github, fake_github):
    fake_github.private["secret/repo"] = "t0ken"
    fake_github.set_ref("secret/repo", "HEAD", SHA)
    anonymous = github()
    assert await anonymous.create("gh", "secret/repo/HEAD").get_resolved_ref() is None
    registry = github(access_token="t0ken", client_id="cid", client_secret="csecret")
    provider = registry.create("gh", "secret/repo/HEAD")
    assert await provider.get_resolved_ref() == SHA
    sent = fake_github.requests[-1].headers
    assert sent["authorization"] == "token t0ken"
    assert provider.git_credentials == r"username=cid\npassword=t0ken"
    assert github(access_token="t0ken").create("gh", "a/b/c").git_credentials == r"username=t0ken\npassword=x-oauth-basic"
    assert github().create("gh", "a/b/c").git_credentials == ""
    await github(client_id="cid", client_secret="csecret").create("gh", "binder-examples/octave/HEAD").get_resolved_ref()
    assert fake_github.requests[-1].headers["authorization"] == "Basic " + base64.b64encode(b"cid:csecret").decode()

    fake_github.faults = [503] * 3
    with pytest.raises(UpstreamError) as info:
        await github(access_token="t0ken").create("gh", "secret/repo/main").get_resolved_ref()
    assert "t0ken" not in str(info.value) and "unreachable or failing (HTTP 503)" in str(info.value)


async def test_5xx_is_retried_then_succeeds(github, fake_github):
    fake_github.faults = [502, 503]
    assert await github().create("gh", "binder-examples/octave/HEAD").get_resolved_ref() == SHA
    assert fake_github.count() == 3


async def test_4xx_is_not_retried(github, fake_github):
    fake_github.faults = [401]
    with pytest.raises(UpstreamError, match="HTTP 401"):
        await github().create("gh", "binder-examples/octave/HEAD").get_resolved_ref()
    assert fake_github.count() == 1


async def test_unreachable_api(make_registry):
    from fixtures.server import free_port

    registry = make_registry({"GitHubRepoProvider": {"api_base_path": f"http://127.0.0.1:{free_port()}", "retries": 2}})
    with pytest.raises(UpstreamError, match=r"^GitHub \(127.0.0.1\) is unreachable or failing \(could not connect\)"):
        await registry.create("gh", "a/b/HEAD").get_resolved_ref()


async def test_timeouts_are_retried(github, fake_github):
    fake_github.gate = asyncio.Event()  # never opened: every request hangs
    registry = github(request_timeout=0.05, retries=2)
    with pytest.raises(UpstreamError, match="no answer within 0.05 seconds"):
        await registry.create("gh", "binder-examples/octave/HEAD").get_resolved_ref()
    assert fake_github.count() == 2


async def test_concurrent_requests_make_one_upstream_call(github, fake_github):
    registry = github()
    fake_github.gate = asyncio.Event()
    tasks = [asyncio.create_task(registry.create("gh", "binder-examples/octave/HEAD").get_resolved_ref())
             for _ in range(25)]
    cache = None
    for _ in range(500):
        cache = registry.context.caches.get("github")
        if cache is not None and cache.stats.joins == 24 and fake_github.count() == 1:
            break
        await asyncio.sleep(0.01)
    fake_github.gate.set()
    assert await asyncio.gather(*tasks) == [SHA] * 25
    assert fake_github.count() == 1
    assert cache is not None and (cache.stats.misses, cache.stats.joins) == (1, 24)


async def test_denied_network_checked_before_any_request(github, fake_github):
    registry = github(denied_networks=["127.0.0.0/8"])
    with pytest.raises(DeniedNetworkError):
        await registry.create("gh", "binder-examples/octave/HEAD").get_resolved_ref()
    assert fake_github.count() == 0


@pytest.mark.parametrize("spec, message", [
    ("binder-examples/octave", 'Spec is not of the form "user/repo/ref", provided: "binder-examples/octave". Did you mean "binder-examples/octave/HEAD"?'),
    ("binder-examples/main", 'Spec is not of the form "user/repo/ref", provided: "binder-examples/main".'),
    ("octave", 'Spec is not of the form "user/repo/ref", provided: "octave".'),
    ("../etc/HEAD", 'not a valid GitHub user name'),
])
def test_malformed_specs(github, spec, message):
    with pytest.raises(SpecError) as info:
        github().create("gh", spec)
    assert info.value.message == message or message in info.value.message


def test_master_and_main_fall_back_to_head(github):
    registry = github()
    fallback = registry.create("gh", "o/r/master").default_branch_fallback()
    assert fallback is not None and fallback.spec == "o/r/HEAD" and fallback.unresolved_ref == "HEAD"
    assert registry.create("gh", "o/r/dev").default_branch_fallback() is None


# -- gists ------------------------------------------------------------------------------------


@pytest.fixture
def gists(fake_github, make_registry):
    fake_github.add_gist("8f7c2f0341ef4180b0dc53ed7", "someone", [SHA2, SHA])
    fake_github.add_gist("secret0", "someone", [SHA], public=False)

    def registry(**options):
        return make_registry({"GistRepoProvider": {"api_base_path": fake_github.url, **options}})

    return registry


@pytest.mark.parametrize("ref, expected", [("", SHA2), ("/HEAD", SHA2), ("/master", SHA2), (f"/{SHA}", SHA), ("/" + "9" * 40, None)])
async def test_gist_versions(gists, ref, expected):
    provider = gists().create("gist", f"someone/8f7c2f0341ef4180b0dc53ed7{ref}")
    assert await provider.get_resolved_ref() == expected
    if expected:
        assert provider.get_repo_url() == "https://gist.github.com/someone/8f7c2f0341ef4180b0dc53ed7.git"
        assert await provider.get_resolved_spec() == f"someone/8f7c2f0341ef4180b0dc53ed7/{expected}"
        assert await provider.get_resolved_ref_url() == f"https://gist.github.com/someone/8f7c2f0341ef4180b0dc53ed7/{expected}"
        assert provider.get_build_slug() == "8f7c2f0341ef4180b0dc53ed7"


async def test_gist_history_is_fetched_once_for_all_refs(gists, fake_github):
    registry = gists()
    await registry.create("gist", "someone/8f7c2f0341ef4180b0dc53ed7").get_resolved_ref()
    await registry.create("gist", f"someone/8f7c2f0341ef4180b0dc53ed7/{SHA}").get_resolved_ref()
    assert fake_github.count() == 1


async def test_secret_gists_need_permission(gists):
    with pytest.raises(SpecError, match="allow_secret_gist"):
        await gists().create("gist", "someone/secret0").get_resolved_ref()
    assert await gists(allow_secret_gist=True).create("gist", "someone/secret0").get_resolved_ref() == SHA


async def test_unknown_gist(gists):
    assert await gists().create("gist", "someone/nope").get_resolved_ref() is None


# -- confined API paths (issue #10 item 7) ----------------------------------------------------

TRAVERSALS = [
    "../../../victim/private/commits/HEAD",  # "../" resolved by the client: /repos/victim/private/...
    "x/../../../../victim/private/commits/HEAD",
    "..",
    "%2e%2e/%2e%2e/victim/private/commits/HEAD",  # a second encoding, decoded by a lenient server
    "..%2F..%2Fvictim%2Fprivate",
    "..\\..\\victim\\private",
    "HEAD?ref=main",
    "HEAD#x",
    "feature//x",
    "a\nb",
]


@pytest.mark.parametrize("ref", TRAVERSALS)
async def test_ref_cannot_leave_the_repository_api_path(github, fake_github, ref):
    fake_github.set_ref("victim/private", "HEAD", SHA)
    with pytest.raises(SpecError, match="is not a valid GitHub ref"):
        await github(access_token="t0ken").create("gh", f"binder-examples/octave/{ref}").get_resolved_ref()
    assert fake_github.count() == 0


async def test_api_path_quotes_every_part_even_past_the_parser(github, fake_github):
    """The second layer: a ref the parser let through still cannot change the path."""
    provider = github().create("gh", "binder-examples/octave/HEAD")
    provider.unresolved_ref = "%2e%2e/x?y#z"
    assert provider._api_url().endswith("/repos/binder-examples/octave/commits/%252e%252e/x%3Fy%23z")
    provider.unresolved_ref = "../../victim/private"
    with pytest.raises(SpecError, match="cannot be part of an upstream API path"):
        provider._api_url()


async def test_sha_on_an_unknown_repository_asks_github(github, fake_github):
    """A 40-hex ref is not taken on trust (a cheap queue flood): GitHub is asked, and its answer
    is cached either way."""
    registry = github()
    for _ in range(2):
        assert await registry.create("gh", f"nobody/nothing/{SHA}").get_resolved_ref() is None
        assert await registry.create("gh", f"binder-examples/octave/{SHA2[:-1]}3").get_resolved_ref() is None
    assert [r.path for r in fake_github.requests] == [
        f"/repos/nobody/nothing/commits/{SHA}", f"/repos/binder-examples/octave/commits/{SHA2[:-1]}3"]


@pytest.mark.parametrize("ref", ["..", "%2e%2e", "a\\b", "x?y"])
async def test_gist_ref_is_checked(gists, fake_github, ref):
    with pytest.raises(SpecError, match="is not a valid Gist ref"):
        await gists().create("gist", f"someone/8f7c2f0341ef4180b0dc53ed7/{ref}").get_resolved_ref()
    assert fake_github.count() == 0


async def test_gist_sha_on_an_unknown_gist_asks_github(gists, fake_github):
    registry = gists()
    for _ in range(2):
        assert await registry.create("gist", f"someone/0123456789abcdef/{SHA}").get_resolved_ref() is None
    assert [r.path for r in fake_github.requests] == ["/gists/0123456789abcdef"]
