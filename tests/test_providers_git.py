"""The ``git`` provider against real git servers (``git daemon`` and smart HTTP) on 127.0.0.1."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

import pytest

from binderapi import naming
from binderapi.errors import SpecError, UpstreamError
from binderapi.providers._net import DeniedNetworkError
from binderapi.providers.git import pick_ref

TRANSPORTS = ["daemon_url", "http_url"]


@pytest.fixture(scope="module")
def repo(git_server):
    """A repository with branches (one with "/"), a lightweight and an annotated tag."""
    main = git_server.create_repo("demo", {"requirements.txt": "numpy\n"})
    feature = git_server.commit("demo", {"feature.txt": "x"}, branch="feature/x")
    other_x = git_server.commit("demo", {"x.txt": "x"}, branch="x")
    git_server.tag("demo", "v1", ref="main")
    annotated = git_server.tag("demo", "v2", ref="feature/x", message="release 2")
    return {"main": main, "feature/x": feature, "x": other_x, "v1": main, "v2": annotated}


def spec(url: str, ref: str) -> str:
    return f"{quote(url, safe='')}/{ref}"


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("ref", ["HEAD", "main", "feature/x", "x", "v1", "v2", "refs/heads/main"])
async def test_resolves_refs(make_registry, git_server, repo, transport, ref):
    url = getattr(git_server, transport)("demo")
    provider = make_registry().create("git", spec(url, ref))
    expected = repo.get(ref, repo["main"])
    assert await provider.get_resolved_ref() == expected
    assert await provider.get_resolved_spec() == f"{quote(url, safe='')}/{expected}"
    assert provider.get_repo_url() == url
    assert await provider.get_resolved_ref_url() == url
    assert provider.get_build_slug() == url


async def test_annotated_tag_resolves_to_its_commit(make_registry, git_server, repo):
    provider = make_registry().create("git", spec(git_server.http_url("demo"), "v2"))
    assert await provider.get_resolved_ref() == repo["feature/x"]
    assert repo["feature/x"] != git_server.git("demo", "rev-parse", "refs/tags/v2")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_missing_ref_and_repo_are_not_found(make_registry, git_server, repo, transport):
    registry = make_registry()
    url = getattr(git_server, transport)("demo")
    assert await registry.create("git", spec(url, "no-such-branch")).get_resolved_ref() is None
    missing = getattr(git_server, transport)("no-such-repo")
    assert await registry.create("git", spec(missing, "main")).get_resolved_ref() is None


async def test_full_sha_asks_the_server_once_whether_the_repository_exists(make_registry, git_server):
    """A 40-hex ref needs no resolution, but a build is not queued for a repository nobody has:
    one cached ``ls-remote`` of HEAD proves it exists (a flood of random SHAs costs one call)."""
    git_server.create_repo("by-sha", {"a": "1"})
    registry = make_registry()
    url = git_server.http_url("by-sha")
    assert await registry.create("git", spec(url, "a" * 40)).get_resolved_ref() == "a" * 40
    assert await registry.create("git", spec(url, "b" * 40)).get_resolved_ref() == "b" * 40
    assert sum("info/refs" in line for line in git_server.http_requests("by-sha")) == 1
    assert await registry.create("git", spec(git_server.http_url("gone"), "a" * 40)).get_resolved_ref() is None


async def test_deleted_branch_is_not_found_after_ttl(make_registry, git_server):
    git_server.create_repo("deleting", {"a": "1"})
    git_server.commit("deleting", {"b": "2"}, branch="temp")
    registry = make_registry({"GitRepoProvider": {"cache_ttl": 0, "cache_404_ttl": 0}})
    url = git_server.daemon_url("deleting")
    assert await registry.create("git", spec(url, "temp")).get_resolved_ref() is not None
    git_server.delete_branch("deleting", "temp")
    assert await registry.create("git", spec(url, "temp")).get_resolved_ref() is None


async def test_moving_ref_is_cached_for_ttl(make_registry, git_server):
    first = git_server.create_repo("moving", {"a": "1"})
    registry = make_registry({"GitRepoProvider": {"cache_ttl": 3600}})
    url = git_server.http_url("moving")
    assert await registry.create("git", spec(url, "main")).get_resolved_ref() == first
    git_server.commit("moving", {"a": "2"})
    calls = len(git_server.http_requests("moving"))
    assert await registry.create("git", spec(url, "main")).get_resolved_ref() == first  # from cache
    assert len(git_server.http_requests("moving")) == calls

    fresh = make_registry({"GitRepoProvider": {"cache_ttl": 0}})
    assert await fresh.create("git", spec(url, "main")).get_resolved_ref() == git_server.rev("moving", "main")


async def test_concurrent_lookups_run_ls_remote_once(make_registry, git_server):
    sha = git_server.create_repo("burst", {"a": "1"})
    registry = make_registry()
    url = git_server.http_url("burst")
    results = await asyncio.gather(*(registry.create("git", spec(url, "main")).get_resolved_ref() for _ in range(20)))
    assert results == [sha] * 20
    # one ls-remote = one ref advertisement request
    assert sum("info/refs" in line for line in git_server.http_requests("burst")) == 1
    stats = registry.context.caches["git"].stats
    assert stats.misses == 1 and stats.joins + stats.hits == 19


async def test_unreachable_server_is_an_upstream_error(make_registry):
    from fixtures.server import free_port

    port = free_port()  # nothing listens here
    registry = make_registry()
    with pytest.raises(UpstreamError, match="127.0.0.1 is unreachable"):
        await registry.create("git", spec(f"http://127.0.0.1:{port}/repo", "main")).get_resolved_ref()


async def test_denied_network_refused_before_connecting(make_registry, git_server):
    git_server.create_repo("denied", {"a": "1"})
    registry = make_registry({"RepoProvider": {"denied_networks": ["127.0.0.0/8"]}})
    before = len(git_server.http_requests())
    with pytest.raises(DeniedNetworkError, match="not allowed to reach"):
        await registry.create("git", spec(git_server.http_url("denied"), "main")).get_resolved_ref()
    assert len(git_server.http_requests()) == before


@pytest.mark.parametrize("ref", ["main", "a" * 40])
async def test_metadata_address_denied_by_default(make_registry, ref):
    registry = make_registry()
    with pytest.raises(DeniedNetworkError):
        await registry.create("git", spec("http://169.254.169.254/latest", ref)).get_resolved_ref()


async def test_full_sha_on_a_denied_host_is_refused_before_connecting(make_registry, git_server):
    """A 40-hex ref used to skip the check and go straight to the build."""
    git_server.create_repo("denied-sha", {"a": "1"})
    registry = make_registry({"RepoProvider": {"denied_networks": ["127.0.0.0/8"]}})
    before = len(git_server.http_requests())
    for url in (git_server.http_url("denied-sha"), git_server.daemon_url("denied-sha")):
        with pytest.raises(DeniedNetworkError, match="not allowed to reach"):
            await registry.create("git", spec(url, "a" * 40)).get_resolved_ref()
    assert len(git_server.http_requests()) == before


@pytest.mark.parametrize("url, message", [
    ("file:///etc/passwd", "protocol file"),
    ("ext::sh -c touch% /tmp/pwned", "protocol ext"),
    ("fd::17", "protocol fd"),
    ("ftp://example.org/repo", "protocol ftp"),
    ("-uhttp://example.org/repo", 'starts with "-"'),
    ("--upload-pack=touch /tmp/pwned", 'starts with "-"'),
    ("ssh://-oProxyCommand=x/repo", 'starting with "-"'),
    ("https://example.org/repo\nx", "control characters"),
    ("https://example.org/re\x00po", "control characters"),
    ("/local/path", "protocol"),
])
def test_unsafe_urls_are_refused(make_registry, url, message):
    with pytest.raises(SpecError, match=message):
        make_registry().create("git", spec(url, "main"))


@pytest.mark.parametrize("ref", ["--upload-pack=touch /tmp/pwned", "-h", "main\nfoo", "ma\x1bin"])
def test_unsafe_refs_are_refused(make_registry, ref):
    with pytest.raises(SpecError, match="not a valid git ref"):
        make_registry().create("git", spec("https://example.org/repo", quote(ref, safe="")))


def test_file_protocol_cannot_be_allowed():
    from binderapi.settings.loader import ConfigError
    from fixtures.server import make_settings

    with pytest.raises(ConfigError, match="cannot be allowed"):
        make_settings({"GitRepoProvider": {"allowed_protocols": ["https", "file"]}})


def test_ssh_shorthand_is_normalised(make_registry):
    provider = make_registry().create("git", spec("git@github.com:binder-examples/conda.git", "main"))
    assert provider.get_repo_url() == "ssh://git@github.com/binder-examples/conda.git"


def test_missing_ref_is_a_spec_error(make_registry):
    with pytest.raises(SpecError, match="a ref is required"):
        make_registry().create("git", quote("https://example.org/repo", safe=""))


@pytest.mark.parametrize("url", ["ftp://user:s3cret@example.org/repo", "https://user:s3cret@example.org/repo"])
def test_credentials_in_urls_are_refused_without_echoing_them(make_registry, url):
    with pytest.raises(SpecError) as info:
        make_registry().create("git", spec(url, "main"))
    assert "s3cret" not in str(info.value)


def test_git_build_slug_matches_binderhub_naming(make_registry):
    provider = make_registry().create("git", spec("https://github.com/binder-examples/conda", "main"))
    sha = "034931911e853252322f2309f1246a4f1076fd7d"
    image = naming.image_name("", provider.get_build_slug(), sha)
    assert image.endswith(f":{sha}") and image.startswith("https-3a-2f-2fgithub-2ecom-2fbinder-2dexamples-2fconda-")


def test_pick_ref_prefers_exact_branch_over_tail_match():
    listing = "\n".join([
        f"{'1' * 40}\trefs/heads/feature/x",
        f"{'2' * 40}\trefs/heads/x",
        f"{'3' * 40}\trefs/tags/v2",
        f"{'4' * 40}\trefs/tags/v2^{{}}",
        f"{'5' * 40}\trefs/pull/7/head",
    ])
    assert pick_ref(listing, "x") == "2" * 40
    assert pick_ref(listing, "v2") == "4" * 40
    assert pick_ref(listing, "pull/7/head") == "5" * 40
    assert pick_ref(listing, "nope") is None


async def test_a_killed_git_with_unread_output_is_reaped():
    """Past the output cap git is killed with output still unread. asyncio's ``wait()`` returns only
    once the pipes are closed too, and a paused pipe never closes on its own: the reaper drains
    them (without it this wait never ends, as a /build stream hanging until its client gave up)."""
    import os
    import signal
    import sys

    from binderapi.providers.git import _reap

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import sys; sys.stdout.buffer.write(b'x' * (8 << 20)); sys.stdout.flush()",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True)
    assert process.stdout is not None
    await process.stdout.read(65536)  # a reader that stopped at its cap
    for _ in range(50):  # until the transport has filled the reader's buffer and paused the pipe
        if len(process.stdout._buffer) >= 2 * process.stdout._limit:
            break
        await asyncio.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    await asyncio.wait_for(_reap(process), 20)
    assert process.returncode is not None
