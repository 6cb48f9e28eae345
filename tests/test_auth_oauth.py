"""Auth mode with browser logins: binderapi as an OAuth client of the real JupyterHub fixture.

A "browser" here is an httpx client with a cookie jar that follows nothing by itself: each test
walks the redirects a browser would (binderapi /oauth_login -> hub authorize -> binderapi
/oauth_callback) and checks every hop, then uses the login cookie on /build.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from jose import jwt

from binderapi.auth import default_access_scopes, has_scope, safe_next
from fixtures.server import RunningService, free_port, read_events, serve
from fixtures.stack import SINGLEUSER_IMAGE, docker_settings, git_spec

pytestmark = [pytest.mark.docker, pytest.mark.hub]

SECRET = "ef" * 32
NOTEBOOK_REPO = {
    "Dockerfile": f"FROM {SINGLEUSER_IMAGE}\nRUN echo launched-after-a-browser-login > /home/jovyan/hello.txt\n",
}


@pytest.fixture
async def hub(jupyterhub):
    yield jupyterhub
    await jupyterhub.stop_all_servers()


@pytest.fixture
async def browser() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(follow_redirects=False, timeout=httpx.Timeout(300, connect=10)) as client:
        yield client


@contextlib.asynccontextmanager
async def binderapi(hub, *, port: int | None = None, **binderhub) -> AsyncIterator[RunningService]:
    """binderapi in auth mode on the port the hub's OAuth client calls back to."""
    options = {"hub_url": hub.url, "hub_api_token": hub.api_token, "auth_enabled": True,
               "launch_quota_class": "docker", "build_token_secret": SECRET,
               "image_prefix": f"127.0.0.1:5000/oauth-{uuid.uuid4().hex[:6]}-", **binderhub}
    settings = docker_settings({"DockerLaunchQuota": {"container_filter": hub.container_prefix}}, **options)
    async with serve(settings, port=port or hub.binder_port) as svc:
        yield svc


async def start_login(browser: httpx.AsyncClient, svc: RunningService, next_url: str = "") -> dict[str, list[str]]:
    """binderapi's redirect to the hub's authorize page; returns that page's query."""
    response = await browser.get(svc.url + "oauth_login", params={"next": next_url} if next_url else None)
    assert response.status_code == 302, response.text
    return parse_qs(urlsplit(response.headers["location"]).query)


async def login(browser: httpx.AsyncClient, svc: RunningService, hub, next_url: str = "") -> httpx.Response:
    """The whole browser login; returns binderapi's answer to the hub's callback redirect."""
    response = await browser.get(svc.url + "oauth_login", params={"next": next_url} if next_url else None)
    assert response.status_code == 302, response.text
    authorize = response.headers["location"]
    assert authorize.startswith(hub.url + "hub/api/oauth2/authorize?")
    query = parse_qs(urlsplit(authorize).query)
    assert query["client_id"] == [hub.oauth_client_id] and query["response_type"] == ["code"]
    assert query["redirect_uri"] == [svc.url + "oauth_callback"] and len(query["state"][0]) >= 20
    at_hub = await browser.get(authorize)  # logged in at the hub, no approval page for this service
    assert at_hub.status_code == 302, f"{at_hub.status_code} {at_hub.text[:300]}\n{hub.log_tail()}"
    callback = at_hub.headers["location"]
    assert callback.startswith(svc.url + "oauth_callback?") and "code=" in callback
    return await browser.get(callback)


def set_cookie_headers(response: httpx.Response, name: str) -> str:
    (header,) = [h for h in response.headers.get_list("set-cookie") if h.startswith(name + "=")]
    return header


@pytest.mark.usefixtures("no_leaked_build_containers")
async def test_browser_login_then_build_reaches_the_users_own_server(browser, hub, git_server):
    user = f"olivia{uuid.uuid4().hex[:4]}"
    name = f"oauth-notebook-{uuid.uuid4().hex[:6]}"
    git_server.create_repo(name, NOTEBOOK_REPO)
    spec = git_spec(git_server.daemon_url(name), "main")
    await hub.browser_login(browser, user)
    async with binderapi(hub) as svc:
        done = await login(browser, svc, hub, next_url="/v2/some/page?x=1")
        assert done.status_code == 302, done.text
        assert done.headers["location"] == "/v2/some/page?x=1"
        cookie = set_cookie_headers(done, "binderapi-session").lower()
        assert "httponly" in cookie and "samesite=lax" in cookie and "path=/" in cookie
        assert "binderapi-session-oauth-state=" in done.headers.get("set-cookie", "")  # state cleared
        # what a browser's EventSource sends along on this page's own origin
        events = await read_events(browser, svc.url + "build/" + spec, headers={"Sec-Fetch-Site": "same-origin"})
    ready = events[-1]
    assert ready["phase"] == "ready", events[-3:]
    assert ready["url"] == f"{hub.url}user/{user}/"
    assert "" in (await hub.user(user))["servers"]  # the user's own server, no temporary user
    status = await browser.get(ready["url"] + "api/status", params={"token": ready["token"]})
    assert status.status_code == 200


async def test_no_credentials_get_a_403_naming_the_login_url(browser, hub):
    async with binderapi(hub) as svc:
        events = await read_events(browser, svc.url + "build/" + git_spec("https://example.org/r.git", "main"))
    assert len(events) == 1 and events[0]["phase"] == "failed" and events[0]["status_code"] == 403
    assert "log in at /oauth_login" in events[0]["message"]


@pytest.mark.parametrize("case", ["other key", "not a jwt", "state cookie as session", "no token claim"])
async def test_forged_login_cookies_are_refused(browser, hub, case):
    other = jwt.encode({"aud": "binderapi-session", "token": "abc"}, b"not-the-key", algorithm="HS256")
    async with binderapi(hub) as svc:
        key = svc.services.hub_auth.oauth.key
        value = {
            "other key": other,
            "not a jwt": "garbage",
            "state cookie as session": jwt.encode({"aud": "binderapi-oauth-state", "token": "abc"}, key, algorithm="HS256"),
            "no token claim": jwt.encode({"aud": "binderapi-session"}, key, algorithm="HS256"),
        }[case]
        events = await read_events(browser, svc.url + "build/" + git_spec("https://example.org/r.git", "main"),
                                   headers={"Cookie": f"binderapi-session={value}", "Sec-Fetch-Site": "same-origin"})
    assert events[-1]["phase"] == "failed" and events[-1]["status_code"] == 403
    assert "log in again at /oauth_login" in events[-1]["message"]


async def test_a_valid_cookie_from_another_site_is_refused(browser, hub):
    token = await hub.user_token(f"mallory{uuid.uuid4().hex[:4]}")
    async with binderapi(hub) as svc:
        cookie = svc.services.hub_auth.oauth.session_cookie(token, None)
        url = svc.url + "build/" + git_spec("https://example.org/r.git", "main")
        cross = await read_events(browser, url, headers={"Cookie": f"binderapi-session={cookie}",
                                                         "Origin": "http://evil.example"})
        same_site = await read_events(browser, url, headers={"Cookie": f"binderapi-session={cookie}",
                                                             "Sec-Fetch-Site": "same-site"})
        # a form or a link on another site, in a browser that says nothing: it could be forged
        says_nothing = await read_events(browser, url, headers={"Cookie": f"binderapi-session={cookie}"})
    for events in (cross, same_site, says_nothing):
        assert len(events) == 1 and events[0]["phase"] == "failed", events
        assert events[0]["status_code"] == 403 and "only accepted from pages of this site" in events[0]["message"]
    assert "Sec-Fetch-Site or Origin" in says_nothing[0]["message"]


async def test_cookie_needs_a_same_origin_header_but_a_token_needs_none(browser, hub):
    """The cookie passes with ``Sec-Fetch-Site: same-origin`` or an ``Origin`` naming this host; a
    token in the header needs neither (scripts). Both then reach the pipeline, which refuses the
    unknown provider prefix: auth let them through without contacting anything."""
    token = await hub.user_token(f"nora{uuid.uuid4().hex[:4]}")
    async with binderapi(hub) as svc:
        cookie = svc.services.hub_auth.oauth.session_cookie(token, None)
        url = svc.url + "build/no-such-provider/x/y"
        host = urlsplit(svc.url).netloc
        answers = [await read_events(browser, url, headers=headers) for headers in (
            {"Cookie": f"binderapi-session={cookie}", "Sec-Fetch-Site": "same-origin"},
            {"Cookie": f"binderapi-session={cookie}", "Origin": f"http://{host}"},
            {"Authorization": f"Bearer {token}"},
        )]
    for events in answers:
        assert events[-1]["phase"] == "failed" and "no-such-provider" in events[-1]["message"], events


async def test_tokens_without_access_to_the_binder_service_are_refused(browser, hub):
    """As JupyterHub's HubAuth: a token is only good here with ``access:services!service=binder``
    (tokens made with restricted scopes through the hub's API)."""
    user = f"rita{uuid.uuid4().hex[:4]}"
    name_only = await hub.user_token(user, scopes=["read:users:name!user"])
    with_access = await hub.user_token(user, scopes=["read:users:name!user", "access:services!service=binder"])
    async with binderapi(hub) as svc:
        url = svc.url + "build/no-such-provider/x/y"
        refused = await read_events(browser, url, headers={"Authorization": f"Bearer {name_only}"})
        as_cookie = await read_events(browser, url, headers={
            "Cookie": f"binderapi-session={svc.services.hub_auth.oauth.session_cookie(name_only, None)}",
            "Sec-Fetch-Site": "same-origin"})
        accepted = await read_events(browser, url, headers={"Authorization": f"token {with_access}"})
    for events in (refused, as_cookie):
        assert len(events) == 1 and events[0]["status_code"] == 403, events
        assert "needs the scope access:services!service=binder" in events[0]["message"]
    assert "no-such-provider" in accepted[-1]["message"], accepted


async def test_a_non_ascii_state_is_a_clear_400(browser, hub):
    async with binderapi(hub) as svc:
        await start_login(browser, svc)  # a real state cookie, so the state itself is what is checked
        answer = await browser.get(svc.url + "oauth_callback", params={"code": "c", "state": "\u00e9t\u00e9-\u2603"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["detail"].startswith("Login state malformed: start again at /oauth_login")


async def test_a_callback_with_the_wrong_state_is_refused(browser, hub):
    async with binderapi(hub) as svc:
        await start_login(browser, svc)
        wrong = await browser.get(svc.url + "oauth_callback", params={"code": "c", "state": "not-the-state"})
        browser.cookies.clear()
        no_cookie = await browser.get(svc.url + "oauth_callback", params={"code": "c", "state": "s"})
        missing = await browser.get(svc.url + "oauth_callback")
        denied = await browser.get(svc.url + "oauth_callback", params={"error": "access_denied"})
    assert wrong.status_code == 403 and "state does not match" in wrong.json()["detail"]
    assert "binderapi-session=" not in wrong.headers.get("set-cookie", "")
    assert no_cookie.status_code == 400 and "start again at /oauth_login" in no_cookie.json()["detail"]
    assert missing.status_code == 400 and denied.status_code == 403
    assert "access_denied" in denied.json()["detail"]


async def test_the_hub_refusing_the_code_is_a_clear_403(browser, hub):
    async with binderapi(hub) as svc:
        query = await start_login(browser, svc)
        refused = await browser.get(svc.url + "oauth_callback", params={"code": "made-up", "state": query["state"][0]})
    assert refused.status_code == 403
    assert refused.json()["detail"].startswith("JupyterHub refused the login (")
    assert "binderapi-session=" not in refused.headers.get("set-cookie", "")


async def test_a_hub_that_is_down_is_a_clear_503(browser, hub):
    closed = free_port()
    async with binderapi(hub, port=free_port(), hub_url=f"http://127.0.0.1:{closed}/") as svc:
        query = await start_login(browser, svc)
        answer = await browser.get(svc.url + "oauth_callback", params={"code": "c", "state": query["state"][0]})
    assert answer.status_code == 503
    assert f"127.0.0.1:{closed}" in answer.json()["detail"] and "unreachable" in answer.json()["detail"]


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/x", "/\\evil.example", "evil",
                                    "javascript:alert(1)", "http://127.0.0.1:1/other-port"])
async def test_open_redirects_are_refused(browser, hub, target):
    async with binderapi(hub) as svc:
        response = await browser.get(svc.url + "oauth_login", params={"next": target})
    assert response.status_code == 400 and "Refusing to redirect" in response.json()["detail"]
    assert "location" not in response.headers


async def test_login_is_not_served_without_auth_mode(browser):
    async with serve(docker_settings()) as svc:
        response = await browser.get(svc.url + "oauth_login")
    assert response.status_code == 404 and "auth mode" in response.json()["detail"]


@pytest.mark.parametrize(("scopes", "ok"), [
    (["access:services!service=binder"], True), (["access:services"], True),
    (["access:services!service=other", "read:users:name!user"], False), ([], False), (None, False),
    (["access:servers"], False),
])
def test_access_scope_matching(scopes, ok):
    assert has_scope(scopes, default_access_scopes("service-binder")) is ok


@pytest.mark.parametrize(("target", "expected"), [
    ("", "/base/"), ("/v2/gh/a/b/HEAD?x=1#f", "/v2/gh/a/b/HEAD?x=1#f"),
    ("http://binder.example/page", "/page"), ("HTTPS://Binder.Example/p?q", "/p?q"),
])
def test_next_urls_on_this_site_are_kept_as_paths(target, expected):
    assert safe_next(target, "binder.example", "/base/") == expected
