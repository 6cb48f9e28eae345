"""The launcher against a real JupyterHub with DockerSpawner (``tests/fixtures/hub.py``).

Hub calls are counted with an httpx event hook on the client the launcher is given; a transport
wrapper injects a refused connection where a test needs one. Every server a test starts is stopped
and every user it makes is deleted before it ends.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import uuid
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import httpx
import pytest
import pytest_asyncio
from jupyterhub.slugs import is_valid_safe_slug  # what JupyterHub 6 requires of new named servers

from binderapi.errors import BinderError, ConflictError, LaunchError
from binderapi.events import LaunchingEvent, LaunchReadyEvent
from binderapi.launcher import (
    ORPHAN_MARGIN,
    LaunchedServer,
    Launcher,
    LaunchRequest,
    is_temporary_name,
    new_token,
)
from binderapi.progress import Relay
from fixtures.hub import SINGLEUSER_IMAGE, RunningHub, container_env, containers, run
from fixtures.server import free_port, make_settings

REPO_URL = "https://github.com/binder-examples/requirements"
MISSING_IMAGE = "127.0.0.1:5000/does-not-exist:v9"
READY_FIELDS = {"url", "token", "image", "repo_url", "binder_ref_url", "binder_launch_host", "binder_request",
                "binder_persistent_request", "binder_client_ip"}


# -- helpers -----------------------------------------------------------------------------------


class FlakyTransport(httpx.AsyncBaseTransport):
    """Refuses the first ``failures`` connections, as a hub that is restarting would."""

    def __init__(self, failures: int) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.failures = failures

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.failures:
            self.failures -= 1
            raise httpx.ConnectError("injected: connection refused", request=request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


class FailFirstStart(httpx.AsyncBaseTransport):
    """Answers the first start request itself with a 500, as a hub whose spawner crashed would
    (the hub never sees that request); everything else goes to the hub."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.failed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not self.failed and request.method == "POST" and request.url.path.endswith("/server"):
            self.failed = True
            return httpx.Response(500, json={"status": 500, "message": "injected: the spawner crashed"})
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


class Counted:
    """An httpx client recording every request it sends (``"POST users/x"``, relative to the API)."""

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.calls: list[str] = []
        self.client = httpx.AsyncClient(transport=transport, event_hooks={"request": [self._record]})

    async def _record(self, request: httpx.Request) -> None:
        path = request.url.path
        self.calls.append(f"{request.method} {path.split('/hub/api/', 1)[-1]}")

    def hub_calls(self) -> list[str]:
        return [call for call in self.calls if not call.split(" ", 1)[1].startswith("/user/")]


@pytest_asyncio.fixture
async def counted() -> AsyncIterator[Counted]:
    c = Counted()
    yield c
    await c.client.aclose()


def launcher_for(hub: RunningHub, http: httpx.AsyncClient, launcher: dict[str, Any] | None = None,
                 **binderhub: Any) -> Launcher:
    options = {"hub_url": hub.url, "hub_api_token": hub.api_token, **binderhub}
    return Launcher(make_settings({"Launcher": {"retry_delay": 0.05, **(launcher or {})}}, **options), http)


def launch_request(image: str = SINGLEUSER_IMAGE, **kwargs: Any) -> LaunchRequest:
    values = {
        "image": image, "repo_url": REPO_URL, "ref_url": f"{REPO_URL}/tree/0123abc",
        "launch_host": "http://127.0.0.1:8585/", "binder_request": "v2/gh/binder-examples/requirements/HEAD",
        "binder_persistent_request": "v2/gh/binder-examples/requirements/0123abc", "client_ip": "127.0.0.7",
        **kwargs,
    }
    return LaunchRequest(**values)


async def launch(launcher: Launcher, request: LaunchRequest) -> tuple[list[str], LaunchedServer | BinderError]:
    """The messages of the launching events, and the server (or the error the launch ended with)."""
    messages: list[str] = []

    async def report(event: LaunchingEvent) -> None:
        assert isinstance(event, LaunchingEvent)
        messages.append(event.message)

    try:
        server = await launcher.launch(request, report)
    except BinderError as e:
        return messages, e
    assert isinstance(server, LaunchedServer)
    return messages, server


def temporary_users(calls: list[str]) -> set[str]:
    return {m.group(1) for call in calls if (m := re.fullmatch(r"POST users/([^/]+)", call))}


# -- naming and fields (no hub needed) ------------------------------------------------------------


@pytest.mark.parametrize(("repo_url", "prefix"), [
    ("https://github.com/binder-examples/octave", "binder-examples-octave"),
    ("https://github.com/Binder-Examples/Octave.git", "binder-examples-octave"),
    ("https://gitlab.com/group/sub/project/", "group-sub-project"),
    ("git@github.com:org/repo.git", "org-repo"),
    ("https://github.com/a-rather-long-organisation-name/and-an-even-longer-repository-name",
     "a-rather-long-o-repository-name"),
])
def test_unique_name_from_repo(repo_url: str, prefix: str) -> None:
    launcher = Launcher(make_settings(), httpx.AsyncClient())
    name = launcher.unique_name_from_repo(repo_url)
    assert re.fullmatch(re.escape(prefix) + r"-[a-z0-9]{8}", name), name
    assert launcher.unique_name_from_repo(repo_url) != name


@pytest.mark.parametrize("repo_url", [
    "https://github.com/binder-examples/requirements", "https://github.com/1org/My..Repo_x.git",
    "10.5281/zenodo.3242074", "git@github.com:org/repo.git", "https://example.org/", "https://h/a--b/-c-",
    "https://github.com/a-rather-long-organisation-name/and-an-even-longer-repository-name",
])
def test_server_name_from_repo_is_a_name_jupyterhub_accepts(repo_url: str) -> None:
    launcher = Launcher(make_settings(), httpx.AsyncClient())
    name = launcher.server_name_from_repo(repo_url)
    assert is_valid_safe_slug(name) and len(name) <= 30, name
    assert re.fullmatch(r"[a-z][a-z0-9-]*-[a-z0-9]{8}", name)


def test_server_name_keeps_the_repository_recognisable() -> None:
    launcher = Launcher(make_settings(), httpx.AsyncClient())
    name = launcher.server_name_from_repo(REPO_URL)
    assert re.fullmatch(r"binder-exa-quirements-[a-z0-9]{8}", name), name
    assert re.fullmatch(r"org-repo-[a-z0-9]{8}", launcher.server_name_from_repo("https://github.com/org/repo"))


def test_temporary_names_carry_a_mark_other_names_do_not() -> None:
    launcher = Launcher(make_settings(), httpx.AsyncClient())
    names = [launcher.unique_name_from_repo(REPO_URL) for _ in range(50)]
    assert all(is_temporary_name(name) for name in names)
    # a name people chose, or another mark: not ours (one in 46,656 of the right shape would be)
    others = ["alice", "binder-examples-requirements", "binder-examples-requirements-3ilc7xl2", "x-" + "a" * 8,
              *(name[:-1] + ("a" if name[-1] != "a" else "b") for name in names)]
    assert not any(is_temporary_name(name) for name in others)


def test_token_is_binderhubs_format() -> None:
    token = new_token()
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", token)
    assert len(base64.urlsafe_b64decode(token + "==")) == 16
    assert new_token() != token


def test_ready_fields_are_exactly_binderhubs() -> None:
    request = launch_request()
    server = LaunchedServer(url="http://hub/user/x/", token="t" * 22, username="x", server_name="")
    fields = server.ready_fields(request)
    assert set(fields) == READY_FIELDS == set(LaunchReadyEvent.model_fields) - {"phase", "message"}
    assert fields["binder_ref_url"] == request.ref_url and fields["binder_client_ip"] == "127.0.0.7"
    LaunchReadyEvent(message="server running\n", **fields)  # the event accepts them as they are


def test_bad_pre_launch_hook_path_fails_at_start_up() -> None:
    with pytest.raises(ImportError, match="Launcher.pre_launch_hook"):
        Launcher(make_settings({"Launcher": {"pre_launch_hook": "test_launcher.no_such_hook"}}), httpx.AsyncClient())


# -- health ---------------------------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.hub
async def test_health(jupyterhub: RunningHub, counted: Counted) -> None:
    assert await launcher_for(jupyterhub, counted.client).health() == {"ok": True}
    down = Launcher(make_settings(hub_url=f"http://127.0.0.1:{free_port()}/"), counted.client)
    result = await down.health()
    assert result["ok"] is False and "unreachable" in result["error"]


# -- anonymous launches ---------------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.hub
async def test_launch_reaches_a_ready_server(jupyterhub: RunningHub, counted: Counted) -> None:
    launcher = launcher_for(jupyterhub, counted.client)
    request = launch_request()
    messages, server = await launch(launcher, request)
    assert isinstance(server, LaunchedServer), server
    try:
        name = server.username
        assert re.fullmatch(r"binder-examples-requirements-[a-z0-9]{8}", name)
        assert server.server_name == "" and server.retries == 0
        assert server.url == f"{jupyterhub.url}user/{name}/"
        # BinderHub's first notice, then the hub's own progress messages, one event each
        assert messages[0] == "Launching server...\n"
        assert "Server requested\n" in messages
        assert messages[-1] == f"Server ready at /user/{name}/\n"
        assert all(m.endswith("\n") and not m.endswith("\n\n") for m in messages)
        # three hub calls: create the user, start the server, follow its progress
        assert counted.hub_calls() == [f"POST users/{name}", f"POST users/{name}/server",
                                       f"GET users/{name}/server/progress"]

        fields = server.ready_fields(request)
        assert set(fields) == READY_FIELDS and fields["token"] == server.token
        # the ready URL and token open the server through the hub's proxy
        status = await counted.client.get(server.url + "api/status", params={"token": server.token})
        assert status.status_code == 200, status.text
        assert "started" in status.json()
        async with httpx.AsyncClient() as fresh:  # no cookie from the request above
            assert (await fresh.get(server.url + "api/status")).status_code == 403
            wrong = await fresh.get(server.url + "api/status", params={"token": new_token()})
            assert wrong.status_code == 403

        # the spawner ran the requested image with the launch's BINDER_* environment
        env = await container_env(jupyterhub.container_name(name))
        assert env["JUPYTER_IMAGE_SPEC"] == SINGLEUSER_IMAGE
        assert {key: env.get(key) for key in ("BINDER_REPO_URL", "BINDER_REF_URL", "BINDER_LAUNCH_HOST",
                                              "BINDER_REQUEST", "BINDER_PERSISTENT_REQUEST", "BINDER_CLIENT_IP")} == {
            "BINDER_REPO_URL": request.repo_url, "BINDER_REF_URL": request.ref_url,
            "BINDER_LAUNCH_HOST": request.launch_host, "BINDER_REQUEST": request.binder_request,
            "BINDER_PERSISTENT_REQUEST": request.binder_persistent_request, "BINDER_CLIENT_IP": request.client_ip,
        }
    finally:
        await jupyterhub.delete_user(server.username)
    assert await containers(jupyterhub.container_name(server.username)) == []
    # the launch token died with the server
    async with httpx.AsyncClient() as fresh:
        after = await fresh.get(server.url + "api/status", params={"token": server.token})
    assert after.status_code != 200


@pytest.mark.docker
@pytest.mark.hub
async def test_missing_image_fails_with_the_spawners_reason(jupyterhub: RunningHub, counted: Counted) -> None:
    launcher = launcher_for(jupyterhub, counted.client, {"retries": 4})
    messages, error = await launch(launcher, launch_request(MISSING_IMAGE))
    assert isinstance(error, LaunchError) and error.status_code == 500
    # the spawner's own words (DockerSpawner: the registry's "manifest unknown"), not "Launch attempt failed"
    assert error.message.startswith(f"Failed to launch image {MISSING_IMAGE}: ")
    assert "manifest unknown" in error.message, error.message
    # a second attempt failed the same way, so the launch stopped there instead of trying 4 times
    assert messages.count("Launch attempt 1 failed, retrying...\n") == 1
    assert not any(m.startswith("Launch attempt 2") for m in messages)
    calls = counted.hub_calls()
    assert len(calls) <= 8, calls  # per attempt: create user, start, progress, delete user
    users = temporary_users(calls)
    assert len(users) == 2
    for user in users:  # nothing left behind
        assert f"DELETE users/{user}" in calls
        assert await jupyterhub.user(user) is None
    assert await containers(jupyterhub.container_name("binder-examples-requirements")) == []


@pytest.mark.docker
@pytest.mark.hub
async def test_a_failed_attempt_is_retried_with_a_fresh_user(jupyterhub: RunningHub) -> None:
    counted = Counted(FailFirstStart())
    try:
        launcher = launcher_for(jupyterhub, counted.client)
        messages, server = await launch(launcher, launch_request())
    finally:
        await counted.client.aclose()
    assert isinstance(server, LaunchedServer), server
    try:
        assert server.retries == 1
        assert messages.count("Launch attempt 1 failed, retrying...\n") == 1
        first, second = temporary_users(counted.calls) - {server.username}, server.username
        [first] = first
        # the first attempt's user is gone before the second attempt starts
        assert counted.calls.index(f"DELETE users/{first}") < counted.calls.index(f"POST users/{second}")
        assert await jupyterhub.user(first) is None
        async with httpx.AsyncClient() as http:
            status = await http.get(server.url + "api/status", params={"token": server.token})
        assert status.status_code == 200
    finally:
        await jupyterhub.delete_user(server.username)


@pytest.mark.docker
@pytest.mark.hub
async def test_a_refusal_by_the_hub_is_not_retried(jupyterhub: RunningHub, counted: Counted) -> None:
    user = f"carol-{uuid.uuid4().hex[:6]}"
    await jupyterhub.user_token(user)
    launcher = launcher_for(jupyterhub, counted.client, {"allow_named_servers": True}, auth_enabled=True)
    try:
        messages, error = await launch(launcher, launch_request(username=user, server_name="Not_A_Slug"))
        assert isinstance(error, LaunchError)
        assert error.message == (f"Failed to launch image {SINGLEUSER_IMAGE}: JupyterHub refused to start "
                                 "the server: Invalid server_name: 'Not_A_Slug'")
        assert messages == ["Launching server...\n"]
        assert counted.calls[:2] == [f"GET users/{user}", f"POST users/{user}/servers/Not_A_Slug"]
        assert (await jupyterhub.user(user))["servers"] == {}
    finally:
        await jupyterhub.delete_user(user)


async def test_hub_down_fails_quickly_and_clearly(counted: Counted) -> None:
    port = free_port()  # nothing listens here
    launcher = Launcher(make_settings({"Launcher": {"api_retry_delay": 0.01}},
                                      hub_url=f"http://127.0.0.1:{port}/", hub_api_token="x"), counted.client)
    messages, error = await launch(launcher, launch_request())
    assert isinstance(error, LaunchError)
    assert f"JupyterHub API at http://127.0.0.1:{port}/hub/api/ is unreachable" in error.message
    assert error.status_code == 503  # docs/events.md: a dependency is down
    assert messages == ["Launching server...\n"]  # no launch retries on top of the request's own
    assert len(counted.calls) == launcher.config.api_retries


async def test_no_hub_configured_is_a_clear_error(counted: Counted) -> None:
    _, error = await launch(Launcher(make_settings(), counted.client), launch_request())
    assert isinstance(error, LaunchError) and "set BinderHub.hub_url" in error.message
    assert error.status_code == 500  # a launch that failed for another reason than a dependency down
    assert counted.calls == []


@pytest.mark.docker
@pytest.mark.hub
async def test_hub_url_local_is_used_for_the_api_and_hub_url_for_the_server(jupyterhub: RunningHub,
                                                                            counted: Counted) -> None:
    public = "https://binder-hub.example.org/"  # what clients are sent to; never contacted here
    launcher = launcher_for(jupyterhub, counted.client, hub_url=public, hub_url_local=jupyterhub.url)
    assert launcher.api_url == jupyterhub.api_url
    assert launcher.server_url("some-user", "") == f"{public}user/some-user/"
    assert launcher.server_url("some user", "srv") == f"{public}user/some%20user/srv/"
    assert (await launcher.health())["ok"] is True


# -- pre_launch_hook ------------------------------------------------------------------------------

HOOK_CALLS: list[tuple[Any, ...]] = []


def refuse_launch(launcher: Launcher, image: str, username: str, server_name: str, repo_url: str) -> None:
    HOOK_CALLS.append((launcher, image, username, server_name, repo_url))
    raise RuntimeError("launches of this repository are paused")


async def refuse_with_conflict(launcher: Launcher, image: str, username: str, server_name: str, repo_url: str) -> None:
    raise ConflictError(f"{username} may not launch {image} now")


@pytest.mark.docker
@pytest.mark.hub
async def test_pre_launch_hook_raising_aborts_the_launch(jupyterhub: RunningHub) -> None:
    HOOK_CALLS.clear()
    flaky = Counted(FlakyTransport(failures=1))  # the first connection is refused, then retried
    try:
        launcher = launcher_for(jupyterhub, flaky.client, {"pre_launch_hook": "test_launcher.refuse_launch",
                                                           "api_retry_delay": 0.01})
        messages, error = await launch(launcher, launch_request())
    finally:
        await flaky.client.aclose()
    assert isinstance(error, LaunchError)
    assert error.message == "Launch aborted by pre_launch_hook: launches of this repository are paused"
    assert messages == ["Launching server...\n"]
    [(hook_launcher, image, username, server_name, repo_url)] = HOOK_CALLS
    assert (hook_launcher, image, server_name, repo_url) == (launcher, SINGLEUSER_IMAGE, "", REPO_URL)
    # refused connection retried, user created, no server started, the temporary user removed
    assert flaky.calls == [f"POST users/{username}", f"POST users/{username}", f"DELETE users/{username}"]
    assert await jupyterhub.user(username) is None


@pytest.mark.docker
@pytest.mark.hub
async def test_pre_launch_hook_binder_errors_pass_through(jupyterhub: RunningHub, counted: Counted) -> None:
    launcher = launcher_for(jupyterhub, counted.client, {"pre_launch_hook": "test_launcher:refuse_with_conflict"})
    _, error = await launch(launcher, launch_request())
    assert isinstance(error, ConflictError) and error.status_code == 409
    assert error.message.endswith(f"may not launch {SINGLEUSER_IMAGE} now")
    [user] = temporary_users(counted.calls)
    assert await jupyterhub.user(user) is None


# -- launch_timeout -------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def slow_image() -> AsyncIterator[str]:
    """The single-user image behind an entrypoint that waits two minutes before starting the
    server: a spawn that cannot finish within a short launch_timeout, whatever the machine."""
    name = f"binderapi-test/slow-start:{uuid.uuid4().hex[:8]}"
    dockerfile = (
        f"FROM {SINGLEUSER_IMAGE}\n"
        """ENTRYPOINT ["/bin/sh", "-c", "trap 'exit 0' TERM; sleep 120 & wait $!; exec \\"$@\\"", "slow-start"]\n"""
    )
    await run("docker", "build", "--network", "host", "-q", "-t", name, "-", stdin=dockerfile.encode())
    yield name
    await run("docker", "rmi", "-f", name, check=False)


@pytest.mark.docker
@pytest.mark.hub
async def test_launch_timeout_fails_clearly_and_cleans_up(jupyterhub: RunningHub, counted: Counted,
                                                          slow_image: str) -> None:
    launcher = launcher_for(jupyterhub, counted.client, {"launch_timeout": 3})
    messages, error = await launch(launcher, launch_request(slow_image))
    assert isinstance(error, LaunchError) and error.status_code == 500
    [user] = temporary_users(counted.calls)
    assert error.message == f"Image {slow_image} for user {user} took too long to launch (launch_timeout: 3 s)"
    assert "Server requested\n" in messages  # it did get as far as spawning
    assert not any(m.startswith("Launch attempt") for m in messages)  # a timeout is not retried
    # the pending spawn was stopped and the temporary user deleted: no user, no container
    assert f"DELETE users/{user}/server" in counted.calls and counted.calls[-1] == f"DELETE users/{user}"
    assert await jupyterhub.user(user) is None
    assert await containers(jupyterhub.container_name(user)) == []


@pytest.mark.docker
@pytest.mark.hub
async def test_a_client_going_away_mid_launch_leaves_nothing_behind(jupyterhub: RunningHub, counted: Counted,
                                                                     slow_image: str) -> None:
    launcher = launcher_for(jupyterhub, counted.client)
    events = aiter(Relay(partial(launcher.launch, launch_request(slow_image))))
    async for event in events:
        assert isinstance(event, LaunchingEvent)
        if event.message == "Server requested\n":
            break  # the client disconnects while the server is starting
    await events.aclose()
    [user] = temporary_users(counted.calls)
    assert counted.calls[-1] == f"DELETE users/{user}"
    assert await jupyterhub.user(user) is None
    assert await containers(jupyterhub.container_name(user)) == []


# -- auth mode ------------------------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.hub
async def test_auth_mode_named_servers_and_their_limit(jupyterhub: RunningHub, counted: Counted) -> None:
    user = f"alice-{uuid.uuid4().hex[:6]}"
    user_token = await jupyterhub.user_token(user)
    launcher = launcher_for(jupyterhub, counted.client,
                            {"allow_named_servers": True, "named_server_limit_per_user": 1}, auth_enabled=True)
    try:
        messages, server = await launch(launcher, launch_request(username=user))
        assert isinstance(server, LaunchedServer), server
        assert server.username == user
        assert re.fullmatch(r"binder-exa-quirements-[a-z0-9]{8}", server.server_name)
        assert server.url == f"{jupyterhub.url}user/{user}/{server.server_name}/"
        assert messages[-1] == f"Server ready at /user/{user}/{server.server_name}/\n"
        assert counted.hub_calls() == [f"GET users/{user}", f"POST users/{user}/servers/{server.server_name}",
                                       f"GET users/{user}/servers/{server.server_name}/progress"]
        # the user's own hub token opens their named server
        own = await counted.client.get(server.url + "api/status", headers={"Authorization": f"token {user_token}"})
        assert own.status_code == 200, own.text

        counted.calls.clear()
        _, error = await launch(launcher, launch_request(username=user))
        assert isinstance(error, ConflictError) and error.status_code == 409
        assert error.message == (f"User {user} already has the maximum of 1 named servers.  "
                                 "One must be deleted before a new server can be created")
        assert counted.calls == [f"GET users/{user}"]  # refused before anything was started
    finally:
        await jupyterhub.delete_user(user)


@pytest.mark.docker
@pytest.mark.hub
async def test_auth_mode_default_server_already_running_is_409(jupyterhub: RunningHub, counted: Counted) -> None:
    user = f"bob-{uuid.uuid4().hex[:6]}"
    await jupyterhub.user_token(user)
    launcher = launcher_for(jupyterhub, counted.client, auth_enabled=True)
    try:
        _, server = await launch(launcher, launch_request(username=user))
        assert isinstance(server, LaunchedServer), server
        assert (server.username, server.server_name) == (user, "")
        assert server.url == f"{jupyterhub.url}user/{user}/"

        counted.calls.clear()
        _, error = await launch(launcher, launch_request(username=user))
        assert isinstance(error, ConflictError) and error.status_code == 409
        assert error.message == f"User {user} already has a running server."
        assert counted.calls == [f"GET users/{user}"]
        assert (await jupyterhub.user(user))["servers"][""]["ready"] is True  # left running, untouched
    finally:
        await jupyterhub.delete_user(user)


# -- faults: clean-ups that fail, leftovers ------------------------------------------------------


async def wait_until(check: Any, seconds: float = 90.0) -> bool:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + seconds
    while loop.time() < give_up:
        if await check():
            return True
        await asyncio.sleep(0.5)
    return False


@pytest.mark.docker
@pytest.mark.hub
@pytest.mark.parametrize("then", ["wait", "stop"])
async def test_a_clean_up_that_fails_while_the_hub_is_down_is_retried(jupyterhub: RunningHub, counted: Counted,
                                                                     slow_image: str, then: str) -> None:
    """The hub stops answering (SIGSTOP: the process is stopped, its proxy still forwards) while a
    server is spawning: the client gets a clear failure at once, and the temporary user and its
    server are removed once the hub answers again: in the background, or (``stop``) by the
    graceful stop that follows, before it returns."""
    launcher = launcher_for(jupyterhub, counted.client, {"launch_timeout": 6, "request_timeout": 3,
                                                         "api_retries": 2, "api_retry_delay": 0.1})
    events = aiter(Relay(partial(launcher.launch, launch_request(slow_image))))
    user = ""
    try:
        async for event in events:
            if isinstance(event, LaunchingEvent) and event.message == "Server requested\n":
                break
        [user] = temporary_users(counted.calls)
        os.kill(jupyterhub.pid, signal.SIGSTOP)
        try:
            with pytest.raises(LaunchError, match="took too long to launch"):
                async for _ in events:
                    pass
            assert f"DELETE users/{user}/server" in counted.calls  # tried, and it could not reach the hub
            assert launcher._cleanups  # still trying, in the background
            await asyncio.sleep(2)
        finally:
            os.kill(jupyterhub.pid, signal.SIGCONT)

        async def removed() -> bool:
            return await jupyterhub.user(user) is None

        if then == "stop":
            await launcher.close()
            assert await removed(), f"{user} is still on the hub"
        else:
            assert await wait_until(removed), f"{user} is still on the hub"
        assert counted.calls[-1] == f"DELETE users/{user}"
        assert await containers(jupyterhub.container_name(user)) == []
    finally:
        await events.aclose()
        await launcher.close()
        if user:
            await jupyterhub.delete_user(user)


@pytest.mark.docker
@pytest.mark.hub
async def test_leftover_temporary_users_are_removed_and_nothing_else(jupyterhub: RunningHub, counted: Counted) -> None:
    """What a crashed process leaves (a marked user without a ready server, older than any launch
    could take) is removed; users people named, a marked user with a running server (a session in
    use) and one too young to tell (another replica may be launching it) are not."""
    launcher = launcher_for(jupyterhub, counted.client, {"launch_timeout": 1})
    leftover, young = launcher.unique_name_from_repo(REPO_URL), launcher.unique_name_from_repo(REPO_URL)
    person = f"binder-examples-requirements-{uuid.uuid4().hex[:8]}"
    if is_temporary_name(person):  # one in 46,656
        person = person[:-1] + ("0" if person[-1] != "0" else "1")
    _, server = await launch(launcher_for(jupyterhub, counted.client), launch_request())  # a session in use
    assert isinstance(server, LaunchedServer), server
    try:
        for name in (leftover, person):
            assert (await jupyterhub.api("POST", f"users/{name}")).status_code == 201
        await asyncio.sleep(1 + ORPHAN_MARGIN + 1)  # older than launch_timeout + the margin
        assert (await jupyterhub.api("POST", f"users/{young}")).status_code == 201
        assert await launcher.remove_orphans() == 1
        assert await jupyterhub.user(leftover) is None
        assert await jupyterhub.user(person) is not None and await jupyterhub.user(young) is not None
        assert (await jupyterhub.user(server.username))["servers"][""]["ready"] is True
    finally:
        await launcher.close()
        for name in (leftover, young, person, server.username):
            await jupyterhub.delete_user(name)
