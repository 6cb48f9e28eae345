"""Where providers may connect, pinned to what was checked, and how much they read.

Against real servers on 127.0.0.1: the git servers (one repository advertising 400,000 refs) and
:class:`~fixtures.fakes.hostile.FakeHostile` (huge, lying, compressed and dripping answers).

DNS rebinding cannot be staged without a resolver we control, so the tests replace the one seam
where binderapi resolves names (``_net.resolve_host``) with a resolver that knows a name the system
does not (``rebound.binderapi.invalid``) and answers an allowed address only the first time. A
request that then succeeds can only have connected to the address the check saw: the system
resolver cannot resolve that name at all, so nothing re-resolved it at connect time.
"""

from __future__ import annotations

import asyncio
import resource
from urllib.parse import quote

import pytest

from binderapi.errors import UpstreamError
from binderapi.executors.base import BuildJob
from binderapi.executors.repo2docker import builder_environment
from binderapi.providers import ProviderContext, ProviderRegistry, _net
from binderapi.providers._http import fetch, make_client
from binderapi.providers._net import DeniedNetworkError
from binderapi.settings import load_settings
from binderapi.settings.models import DEFAULT_DENIED_NETWORKS
from fixtures.server import make_settings, read_events, serve

REBOUND = "rebound.binderapi.invalid"
MiB = 1024**2


def git_spec(url: str, ref: str) -> str:
    return f"{quote(url, safe='')}/{ref}"


@pytest.fixture
def rebinding_resolver(monkeypatch):
    """``REBOUND`` resolves to 127.0.0.1 once, then to the metadata address; other names as usual.
    Returns the list of names asked for."""
    asked: list[str] = []
    system = _net.resolve_host

    async def resolve(host: str) -> list[str]:
        if host != REBOUND:
            return await system(host)
        asked.append(host)
        return ["127.0.0.1"] if len(asked) == 1 else ["169.254.169.254"]

    monkeypatch.setattr(_net, "resolve_host", resolve)
    return asked


async def test_defaults_deny_this_host_link_local_and_metadata(git_server):
    """The shipped default, not the tests' opt-out: loopback is refused, also by name and by SHA."""
    git_server.create_repo("default-denied", {"a": "1"})
    settings = load_settings(cli={}, environ={}, dotenv_path=None)
    assert set(DEFAULT_DENIED_NETWORKS) <= set(settings.GitRepoProvider.denied_networks)
    async with make_client() as http:
        registry = ProviderRegistry(settings, ProviderContext(http=http))
        before = len(git_server.http_requests())
        port = git_server.http_port
        for url, ref in [(git_server.http_url("default-denied"), "main"),
                         (f"http://localhost:{port}/default-denied", "a" * 40),
                         (f"http://[::1]:{port}/default-denied", "main"),
                         ("http://169.254.169.254/latest", "main"),
                         ("http://100.100.100.200/latest", "main")]:
            with pytest.raises(DeniedNetworkError, match="not allowed to reach"):
                await registry.create("git", git_spec(url, ref)).get_resolved_ref()
    assert len(git_server.http_requests()) == before


UNSPECIFIED = ["0.0.0.0", "[::]", "0", "[::ffff:0.0.0.0]"]


@pytest.mark.parametrize("host, denied", [
    *((host, ["127.0.0.0/8", "::1/128"]) for host in [*UNSPECIFIED, "[::ffff:127.0.0.1]"]),
    *((host, None) for host in UNSPECIFIED),
])
async def test_unspecified_and_mapped_addresses_count_as_loopback(make_registry, git_server, host, denied):
    """``0.0.0.0`` and ``::`` reach this host: refused wherever loopback is, and by the default's own
    entries even where loopback is allowed (the tests' list)."""
    config = {"RepoProvider": {"denied_networks": denied}} if denied else {}
    registry = make_registry(config)
    before = len(git_server.http_requests())
    url = f"http://{host}:{git_server.http_port}/unspecified"
    with pytest.raises(DeniedNetworkError):
        await registry.create("git", git_spec(url, "main")).get_resolved_ref()
    assert len(git_server.http_requests()) == before


async def test_ipv4_mapped_deny_entries_match_ipv4_addresses(make_registry, git_server):
    registry = make_registry({"RepoProvider": {"denied_networks": ["::ffff:127.0.0.0/104"]}})
    with pytest.raises(DeniedNetworkError):
        await registry.create("git", git_spec(git_server.http_url("anything"), "main")).get_resolved_ref()


# -- pinning ------------------------------------------------------------------------------------
async def test_http_connects_to_the_checked_address_keeping_the_host(fake_hostile, rebinding_resolver):
    port = fake_hostile.url.rsplit(":", 1)[1]
    config = make_settings().RepoProvider
    async with make_client() as http:
        response = await fetch(ProviderContext(http=http), config, "Hostile", f"http://{REBOUND}:{port}/who")
    assert response.status_code == 200
    assert response.json() == {"host": f"{REBOUND}:{port}", "path": "/who"}
    assert str(response.url) == f"http://{REBOUND}:{port}/who"
    assert rebinding_resolver == [REBOUND]  # checked once; the connection did not ask again


@pytest.fixture
async def tls_echo(tmp_path):
    """The echo upstream over HTTPS on 127.0.0.1, its certificate for ``REBOUND`` only (trustme CA)."""
    import ssl

    import trustme
    import uvicorn

    from fixtures.fakes.hostile import FakeHostile
    from fixtures.server import free_port

    ca = trustme.CA()
    cert = ca.issue_cert(REBOUND)
    cert.private_key_and_cert_chain_pem.write_to_path(tmp_path / "server.pem")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(FakeHostile().app(), host="127.0.0.1", port=port, log_config=None,
                                           lifespan="off", ssl_certfile=str(tmp_path / "server.pem")))
    task = asyncio.create_task(server.serve())
    for _ in range(1000):  # uvicorn offers no start-up event to wait on
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    yield port, context
    server.should_exit = True
    await asyncio.wait_for(task, 10)


async def test_https_keeps_the_server_name_and_checks_the_certificate(tls_echo, rebinding_resolver):
    """Connected to the pinned address, TLS still names (SNI) and verifies the host: the certificate
    is for the name, not for 127.0.0.1, so a pin that lost the name could not pass verification.
    And the connection made for the name is not reused for another name at the same address."""
    import httpx

    from binderapi.providers._http import PinningTransport

    port, trust = tls_echo
    config = make_settings().RepoProvider
    transport = PinningTransport(verify=trust)
    async with httpx.AsyncClient(transport=transport) as http:
        response = await fetch(ProviderContext(http=http), config, "Hostile", f"https://{REBOUND}:{port}/tls")
        assert response.json() == {"host": f"{REBOUND}:{port}", "path": "/tls"}
        with pytest.raises(UpstreamError):  # the same server by address: its certificate does not match
            await fetch(ProviderContext(http=http), config.model_copy(update={"retries": 1}), "Hostile",
                        f"https://127.0.0.1:{port}/tls")


@pytest.mark.parametrize("transport", ["http", "git"])
async def test_ls_remote_connects_to_the_checked_address(make_registry, git_server, rebinding_resolver, transport):
    sha = git_server.create_repo(f"pinned-{transport}", {"a": "1"})
    url = git_server.http_url(f"pinned-{transport}") if transport == "http" else git_server.daemon_url(f"pinned-{transport}")
    url = url.replace("127.0.0.1", REBOUND)
    assert await make_registry().create("git", git_spec(url, "main")).get_resolved_ref() == sha
    assert rebinding_resolver == [REBOUND]


async def test_build_rechecks_and_pins_the_clone(make_registry, git_server, rebinding_resolver):
    """The build's clone is checked again (a cached resolution says nothing about the name now) and
    given git configuration that pins it and forbids redirects, in the builder's environment."""
    git_server.create_repo("pinned-build", {"a": "1"})
    url = git_server.http_url("pinned-build").replace("127.0.0.1", REBOUND)
    provider = make_registry().create("git", git_spec(url, "a" * 40))
    assert await provider.get_resolved_ref() == "a" * 40  # resolver answered 127.0.0.1
    with pytest.raises(DeniedNetworkError):  # now 169.254.169.254: no build
        await provider.build_git_config()

    rebinding_resolver.clear()
    config = await provider.build_git_config()
    assert config == [("http.followRedirects", "false"),
                      ("http.curloptResolve", f"{REBOUND}:{git_server.http_port}:127.0.0.1")]
    job = BuildJob(name="b", image_name="i", repo_url=url, ref="a" * 40, git_config=tuple(config))
    env = builder_environment(job, {}, {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "core.x",
                                        "GIT_CONFIG_VALUE_0": "1"})
    assert env["GIT_CONFIG_COUNT"] == "3" and env["GIT_CONFIG_KEY_0"] == "core.x"
    assert (env["GIT_CONFIG_KEY_1"], env["GIT_CONFIG_VALUE_1"]) == ("http.followRedirects", "false")
    assert env["GIT_CONFIG_KEY_2"] == "http.curloptResolve"


# -- size and time --------------------------------------------------------------------------------
def hostile_config(**options):
    return make_settings({"RepoProvider": {"retry_delay": 0, **options}}).RepoProvider


@pytest.mark.parametrize("mode", ["huge", "declared", "bomb"])
async def test_answers_past_the_size_cap_are_cut_off(fake_hostile, mode):
    fake_hostile.mode = mode
    config = hostile_config(max_response_size="1M")
    async with make_client() as http:
        with pytest.raises(UpstreamError, match=r"Hostile \(127.0.0.1\) sent an answer larger than 1 MiB"):
            await fetch(ProviderContext(http=http), config, "Hostile", fake_hostile.url + "/data")
    assert fake_hostile.sent < 50 * MiB  # abandoned, not downloaded and thrown away


async def test_a_dripping_upstream_is_cut_at_the_attempt_deadline(fake_hostile):
    """One byte every 0.5 s never trips a per-read timeout of 1 s; the attempt's total one does."""
    fake_hostile.mode = "drip"
    config = hostile_config(request_timeout=1, retries=1)
    async with make_client() as http:
        with pytest.raises(UpstreamError, match="no answer within 1 seconds"):
            await fetch(ProviderContext(http=http), config, "Hostile", fake_hostile.url + "/drip")


async def test_the_whole_call_is_bounded_retries_included(fake_hostile):
    fake_hostile.mode = "drip"
    config = hostile_config(request_timeout=0.6, retries=20, request_deadline=1.5)
    async with make_client() as http:
        with pytest.raises(UpstreamError, match=r"Hostile \(127.0.0.1\) did not answer within 1.5 seconds"):
            await fetch(ProviderContext(http=http), config, "Hostile", fake_hostile.url + "/drip")


# -- git ref listings -----------------------------------------------------------------------------
@pytest.mark.parametrize("transport", ["http_url", "daemon_url"])
async def test_a_flood_of_matching_refs_is_cut_off(make_registry, git_server, many_refs_repo, transport):
    url = getattr(git_server, transport)(many_refs_repo)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(UpstreamError, match=r"git server 127.0.0.1 sent more than 1024 KiB of refs"):
        await make_registry().create("git", git_spec(url, "main")).get_resolved_ref()
    # the listing was not read into this process (it is ~30 MB of text, ~250 MB as Python lines)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 64 * 1024  # KiB


@pytest.mark.parametrize("transport", ["http_url", "daemon_url"])
async def test_git_memory_is_bounded(make_registry, git_server, many_refs_repo, transport):
    """git itself holds every advertised ref (about 150 MB for these): its address space is capped."""
    registry = make_registry({"GitRepoProvider": {"ls_remote_memory_limit": "48M"}})
    url = getattr(git_server, transport)(many_refs_repo)
    with pytest.raises(UpstreamError, match="git server 127.0.0.1 sent a list of refs larger than"):
        await registry.create("git", git_spec(url, "HEAD")).get_resolved_ref()


# -- what a /build client sees ----------------------------------------------------------------------
@pytest.mark.docker  # the service starts the Docker backend and looks up images in the engine
async def test_build_clients_get_one_failed_event_naming_the_upstream(client, fake_hostile, git_server, many_refs_repo):
    fake_hostile.mode = "huge"
    settings = make_settings({"RepoProvider": {"max_response_size": "1M"}, "RateLimiter": {"limit": 0}},
                             build_class="docker", use_registry=False)
    async with serve(settings) as svc:
        ckan = await read_events(client, svc.url + "build/ckan/" + quote(fake_hostile.url + "/dataset/x", safe=""))
        git = await read_events(client, svc.url + "build/git/" + git_spec(git_server.http_url(many_refs_repo), "main"))
        unspecified = await read_events(
            client, svc.url + "build/git/" + git_spec(f"http://0.0.0.0:{git_server.http_port}/x", "a" * 40))
    for events, words in [(ckan, "CKAN site (127.0.0.1) sent an answer larger than 1 MiB"),
                          (git, "The git server 127.0.0.1 sent more than 1024 KiB of refs"),
                          (unspecified, "not allowed to reach")]:
        assert [e["phase"] for e in events] == ["failed"], events
        assert words in events[0]["message"]


async def test_concurrent_hostile_calls_do_not_pile_up(fake_hostile):
    """Bounded answers are bounded for each of many concurrent calls too."""
    fake_hostile.mode = "huge"
    config = hostile_config(max_response_size="1M", retries=1)
    async with make_client() as http:
        context = ProviderContext(http=http)
        results = await asyncio.gather(*(fetch(context, config, "Hostile", fake_hostile.url + f"/{n}")
                                         for n in range(8)), return_exceptions=True)
    assert all(isinstance(r, UpstreamError) for r in results)


# -- on the Docker engine ---------------------------------------------------------------------------
@pytest.mark.docker
@pytest.mark.usefixtures("no_leaked_build_containers")
async def test_a_full_sha_on_a_denied_host_starts_no_builder(client, git_server):
    """A 40-hex ref went straight to repo2docker, whose builder (host network) cloned from
    ``0.0.0.0``, i.e. this host. Now: one ``failed`` event, no container, no request to the server."""
    from fixtures.stack import DockerWatcher, docker_settings, unique

    repo = unique("denied-sha")
    sha = git_server.create_repo(repo, {"Dockerfile": "FROM scratch\n"})
    before = len(git_server.http_requests())
    async with DockerWatcher() as watcher, serve(docker_settings()) as svc:
        for host in ("0.0.0.0", "[::]"):
            url = f"http://{host}:{git_server.http_port}/{repo}"
            events = await read_events(client, svc.url + "build/git/" + git_spec(url, sha),
                                       params={"build_only": "true"})
            assert [e["phase"] for e in events] == ["failed"], events
            assert "not allowed to reach" in events[0]["message"]
    assert watcher.actions("create") == []
    assert len(git_server.http_requests()) == before


@pytest.mark.docker
@pytest.mark.usefixtures("no_leaked_build_containers")
async def test_the_builders_clone_uses_the_pinned_address(client, git_server, rebinding_resolver):
    """A build from a name only binderapi's resolver knows: the builder's git cannot resolve it, so
    the image can only have been built by cloning from the address binderapi checked and pinned
    (``http.curloptResolve`` through ``GIT_CONFIG_*`` in the builder's environment)."""
    from fixtures.stack import BASE_IMAGE, docker_settings, manifest_exists, unique

    repo = unique("pinned-clone")
    git_server.create_repo(repo, {"Dockerfile": f"FROM {BASE_IMAGE}\nRUN echo pinned > /pinned.txt\n"})
    url = git_server.http_url(repo).replace("127.0.0.1", REBOUND)

    async def always_loopback(host: str) -> list[str]:
        return ["127.0.0.1"]

    _net.resolve_host = always_loopback  # restored by the rebinding_resolver fixture's monkeypatch
    async with serve(docker_settings()) as svc:
        events = await read_events(client, svc.url + "build/git/" + git_spec(url, "main"),
                                   params={"build_only": "true"})
    assert events[-1]["phase"] == "ready", events[-3:]
    assert await manifest_exists(events[-1]["imageName"])
