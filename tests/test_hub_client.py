"""The one JupyterHub client (``binderapi.hub``) and the quota slots the warm pool holds: pure
rules, no hub or engine needed (the client against a real hub: test_launcher, test_auth_oauth,
test_warmpool)."""

from __future__ import annotations

import httpx
import pytest

from binderapi.auth import HubAuth
from binderapi.errors import BinderError, QuotaExceededError
from binderapi.hub import HubAPI, hub_api_url, server_path, user_path
from binderapi.launcher import Launcher
from binderapi.quota import CountingQuota
from fixtures.server import free_port, make_settings


@pytest.mark.parametrize(("launcher", "binderhub", "expected"), [
    ({}, {"hub_url": "http://hub.test/"}, "http://hub.test/hub/api/"),
    ({}, {"hub_url": "http://hub.test/", "hub_url_local": "http://hub:8081/"}, "http://hub:8081/hub/api/"),
    ({"hub_api_url": "http://hub:8081/hub/api"}, {}, "http://hub:8081/hub/api/"),
    ({"hub_api_url": "http://hub:8081/hub/api/"}, {"hub_url": "http://hub.test/"}, "http://hub:8081/hub/api/"),
])
async def test_one_rule_for_the_hub_api_url(launcher, binderhub, expected):
    settings = make_settings({"Launcher": launcher}, **binderhub)
    async with httpx.AsyncClient() as http:
        hub = HubAPI.from_settings(settings, http)
        assert hub_api_url(settings) == hub.api_url == expected
        assert Launcher(settings, http).api_url == expected  # a launcher made without a client: the same rule
        assert HubAuth.from_settings(settings, hub).hub is hub


def test_paths_quote_names():
    assert user_path("a b/c") == "users/a%20b%2Fc"
    assert server_path("u", "") == "users/u/server"
    assert server_path("u", "s/1") == "users/u/servers/s%2F1"


async def test_the_token_check_fails_with_the_clients_wording_and_is_not_repeated():
    port = free_port()
    settings = make_settings({"Launcher": {"api_retries": 5, "api_retry_delay": 30}},
                             hub_url=f"http://127.0.0.1:{port}/")
    async with httpx.AsyncClient() as http:
        auth = HubAuth.from_settings(settings, HubAPI.from_settings(settings, http))
        with pytest.raises(BinderError) as caught:  # repeated, it would wait 30 s before the second try
            await auth.user_for_token("some-token")
    assert caught.value.status_code == 503
    assert caught.value.message.startswith(
        f"Could not check your JupyterHub token: JupyterHub API at http://127.0.0.1:{port}/hub/api/ is unreachable")


async def test_reserved_slots_count_until_released():
    quota = CountingQuota(make_settings({"LaunchQuota": {"total_quota": 2}}))
    image = "registry.test/binder-repo:abc"
    assert quota.reserve(image, repo_quota=1) is None
    assert (quota.total_servers(), quota.servers_of("registry.test/binder-repo")) == (1, 1)
    assert quota.reserve(image, repo_quota=1) == "repo_quota"  # refused: nothing more held
    with pytest.raises(QuotaExceededError):
        await quota.check(image, {"quota": 1}, "https://example.org/repo")
    assert quota.reserve("registry.test/binder-other:abc") is None
    assert quota.reserve("registry.test/binder-third:abc") == "total_quota"
    quota.release(image)
    quota.release("registry.test/binder-other:abc")
    assert quota.total_servers() == 0 and not quota.reserved
    await quota.check(image, {"quota": 1}, "https://example.org/repo")  # room again
