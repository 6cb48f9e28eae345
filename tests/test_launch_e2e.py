"""The main job end to end: /build -> repo2docker build -> registry -> JupyterHub + DockerSpawner ->
a live Jupyter server, with quotas, build tokens, rate limits, auth mode and the launch event log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import uuid

import httpx
import jsonschema
import pytest
import yaml
from jose import jwt

from binderapi.eventlog import load_schema
from binderapi.launcher import ORPHAN_MARGIN, Launcher, is_temporary_name
from binderapi.settings.dump import dump_settings
from fixtures.hub import containers
from fixtures.server import free_port, read_events, serve
from fixtures.stack import SINGLEUSER_IMAGE, docker_settings, git_spec

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.usefixtures("no_leaked_build_containers")]

NOTEBOOK_REPO = {
    "Dockerfile": f"FROM {SINGLEUSER_IMAGE}\nRUN echo launched-by-binderapi > /home/jovyan/hello.txt\n",
    "README.md": "A repository binderapi's tests build and launch.\n",
}
SECRET = "cd" * 32


@pytest.fixture(scope="module")
def notebook_repo(git_server):
    name = f"notebook-{uuid.uuid4().hex[:6]}"
    git_server.create_repo(name, NOTEBOOK_REPO)
    return git_server.daemon_url(name)


@pytest.fixture(scope="module")
def image_prefix():
    return f"127.0.0.1:5000/launch-{uuid.uuid4().hex[:6]}-"


@pytest.fixture
async def hub(jupyterhub):
    yield jupyterhub
    await jupyterhub.stop_all_servers()


def launch_settings(hub, image_prefix, config=None, **binderhub):
    sections = {"DockerLaunchQuota": {"container_filter": hub.container_prefix},
                "Launcher": {"retry_delay": 0.5}}
    for section, options in (config or {}).items():
        sections.setdefault(section, {}).update(options)
    return docker_settings(sections, **{"hub_url": hub.url, "hub_api_token": hub.api_token,
                                        "launch_quota_class": "docker", "image_prefix": image_prefix,
                                        "build_token_secret": SECRET, **binderhub})


async def test_build_and_launch_reaches_a_live_server(client, hub, notebook_repo, image_prefix, tmp_path):
    events_file = tmp_path / "events.jsonl"
    settings = launch_settings(hub, image_prefix, {"EventLog": {"path": str(events_file)}},
                               ready_hold_seconds=1.5, keepalive_interval=0.2)
    spec = git_spec(notebook_repo, "main")
    raw: list[bytes] = []
    async with serve(settings) as svc:
        # read to the end: after a build, the stream is held open (keepalives only) past `ready`
        events = await read_events(client, svc.url + "build/" + spec, headers={"Origin": "https://frontend.example"},
                                   until=(), raw=raw)
        metrics = (await client.get(svc.url + "metrics")).text
    after_ready = b"".join(raw).split(b'"phase":"ready"', 1)[1].split(b"\n\n", 1)[1]
    assert b"data:" not in after_ready and after_ready.count(b":keepalive") >= 1, after_ready
    phases = [e.get("phase") for e in events]
    assert "building" in phases and "built" in phases
    launching = [e["message"] for e in events if e.get("phase") == "launching"]
    assert len(launching) >= 2 and any("ready" in m.lower() or "server" in m.lower() for m in launching), launching
    ready = events[-1]
    assert ready["phase"] == "ready"
    assert set(ready) == {"phase", "message", "url", "token", "image", "repo_url", "binder_ref_url", "binder_launch_host",
                          "binder_request", "binder_persistent_request", "binder_client_ip"}
    assert ready["url"].startswith(hub.url + "user/") and ready["binder_request"] == "v2/" + spec
    assert ready["binder_client_ip"] == "127.0.0.1" and ready["repo_url"] == notebook_repo
    status = await client.get(ready["url"] + "api/status", params={"token": ready["token"]})
    assert status.status_code == 200, status.text
    files = await client.get(ready["url"] + "api/contents/hello.txt", params={"token": ready["token"]})
    assert files.status_code == 200  # the repository's build step is in the running image
    # the launch event was written, valid against its schema
    (line,) = events_file.read_text().splitlines()
    record = json.loads(line)
    assert record["schema"] == "binderhub.jupyter.org/launch" and record["version"] == 6
    jsonschema.validate({k: v for k, v in record.items() if k not in ("timestamp", "schema", "version")}, load_schema("launch.json"))
    assert (record["provider"], record["status"], record["request_origin"]) == ("Git", "success", "https://frontend.example")
    assert 'binderhub_launch_count_total{provider="Git"' in metrics and 'status="success"' in metrics


async def test_a_failed_build_never_launches(client, hub, git_server, image_prefix):
    name = f"broken-{uuid.uuid4().hex[:6]}"
    git_server.create_repo(name, {"Dockerfile": f"FROM {SINGLEUSER_IMAGE}\nRUN exit 7\n"})
    users_before = await user_names(hub)
    async with serve(launch_settings(hub, image_prefix)) as svc:
        events = await read_events(client, svc.url + "build/" + git_spec(git_server.daemon_url(name), "main"))
    phases = [e.get("phase") for e in events]
    assert phases[-1] == "failed" and "launching" not in phases and "built" not in phases
    # the hub was never asked (a start-up sweep may remove an earlier test's leftovers, never add users)
    assert await user_names(hub) <= users_before


async def test_total_quota_refuses_with_binderhubs_message(client, hub, notebook_repo, image_prefix):
    settings = launch_settings(hub, image_prefix, {"LaunchQuota": {"total_quota": 0}})
    async with serve(settings) as svc:
        events = await read_events(client, svc.url + "build/" + git_spec(notebook_repo, "main"))
        metrics = (await client.get(svc.url + "metrics")).text
    assert events[-1] == {"phase": "failed", "message": "Too many users on this BinderHub! Try again soon.\n"}
    assert "launching" not in [e.get("phase") for e in events]
    assert 'status="pod_quota"' in metrics


async def test_per_repo_quota_counts_running_servers(client, hub, notebook_repo, image_prefix):
    settings = launch_settings(hub, image_prefix, per_repo_quota=1)
    url_spec = git_spec(notebook_repo, "main")
    async with serve(settings) as svc:
        first = await read_events(client, svc.url + "build/" + url_spec)
        assert first[-1]["phase"] == "ready"
        for _ in range(40):  # the engine's start event reaches the counts
            if svc.services.quota.total_servers() >= 1:
                break
            import asyncio
            await asyncio.sleep(0.1)
        second = await read_events(client, svc.url + "build/" + url_spec)
        metrics = (await client.get(svc.url + "metrics")).text
        resyncs = svc.services.quota.resyncs
    assert second[-1] == {"phase": "failed", "message": f"Too many users running {notebook_repo}! Try again soon.\n"}
    assert 'status="repo_quota"' in metrics
    assert resyncs == 1  # counts came from the event stream, not a scan per request


@pytest.mark.parametrize("case", ["forged", "expired", "audience"])
async def test_bad_build_tokens_are_refused(client, hub, notebook_repo, image_prefix, case):
    spec = git_spec(notebook_repo, "main")
    claims = {"aud": spec, "origin": "127.0.0.1", "exp": int(time.time()) + 300}
    key = bytes.fromhex(SECRET)
    token = {
        "forged": jwt.encode(claims, b"not-the-secret", algorithm="HS256"),
        "expired": jwt.encode({**claims, "exp": int(time.time()) - 10}, key, algorithm="HS256"),
        "audience": jwt.encode({**claims, "aud": "gh/someone/else/HEAD"}, key, algorithm="HS256"),
    }[case]
    async with serve(launch_settings(hub, image_prefix)) as svc:
        events = await read_events(client, svc.url + "build/" + spec, params={"build_token": token},
                                   headers={"Host": "127.0.0.1"})
    assert events == [{"phase": "failed", "status_code": 403, "message": "Invalid build token\n"}]


async def test_rate_limit_headers_and_valid_tokens_skip_it(client, hub, notebook_repo, image_prefix):
    settings = launch_settings(hub, image_prefix, {"RateLimiter": {"limit": 1, "period_seconds": 600}},
                               enable_api_only_mode=True)
    spec = git_spec(notebook_repo, "main")
    async with serve(settings) as svc:
        url = svc.url + "build/" + spec
        async with client.stream("GET", url, params={"build_only": "true"}, headers={"Accept": "text/event-stream"}) as first:
            headers = first.headers
            await first.aread()
        assert (headers["x-ratelimit-limit"], headers["x-ratelimit-remaining"]) == ("1", "0")
        assert int(headers["x-ratelimit-reset"]) > time.time()
        second = await client.get(url, params={"build_only": "true"}, headers={"Accept": "text/event-stream"})
        assert second.headers["x-ratelimit-remaining"] == "0"
        event = json.loads(second.text.split("data: ", 1)[1])
        assert event["status_code"] == 429 and event["message"].startswith("Rate limit exceeded. Try again in ")
        token = svc.services.build_tokens.mint(spec, "127.0.0.1")
        with_token = await read_events(client, url, params={"build_only": "true", "build_token": token},
                                       headers={"Host": "127.0.0.1"})
    assert with_token[-1]["phase"] == "ready"


async def test_auth_mode_starts_the_token_holders_own_server(client, hub, notebook_repo, image_prefix):
    user = f"alice{uuid.uuid4().hex[:4]}"
    token = await hub.user_token(user)
    settings = launch_settings(hub, image_prefix, auth_enabled=True)
    spec = git_spec(notebook_repo, "main")
    async with serve(settings) as svc:
        url = svc.url + "build/" + spec
        missing = await read_events(client, url)
        bad = await read_events(client, url, headers={"Authorization": "Bearer not-a-real-token"})
        events = await read_events(client, url, headers={"Authorization": f"Bearer {token}"})
        again = await read_events(client, url, headers={"Authorization": f"token {token}"})
    assert missing[-1]["status_code"] == 403 and bad[-1]["status_code"] == 403
    ready = events[-1]
    assert ready["phase"] == "ready" and ready["url"] == f"{hub.url}user/{user}/"
    model = await hub.user(user)
    assert "" in model["servers"]  # the user's own default server, no temporary user
    assert again[-1] == {"phase": "failed", "status_code": 409, "message": f"User {user} already has a running server.\n"}
    status = await client.get(ready["url"] + "api/status", params={"token": ready["token"]})
    assert status.status_code == 200


async def test_hub_down_is_a_clear_failure(client, git_server, notebook_repo, image_prefix):
    closed = free_port()
    settings = docker_settings({"Launcher": {"launch_timeout": 20, "retry_delay": 0.2}},
                               hub_url=f"http://127.0.0.1:{closed}/", hub_api_token="x", image_prefix=image_prefix,
                               launch_quota_class="none")
    started = time.monotonic()
    async with serve(settings) as svc:
        events = await read_events(client, svc.url + "build/" + git_spec(notebook_repo, "main"))
    assert time.monotonic() - started < 120  # no hang; generous bound for the build it may do first
    assert events[-1]["phase"] == "failed"
    assert f"127.0.0.1:{closed}" in events[-1]["message"]


# -- nothing left on the hub when binderapi stops or crashed ----------------------------------------

SLOW_START_REPO = {  # its server takes two minutes to start: a stop always finds it spawning
    "Dockerfile": f"FROM {SINGLEUSER_IMAGE}\n"
    """ENTRYPOINT ["/bin/sh", "-c", "trap 'exit 0' TERM; sleep 120 & wait $!; exec \\"$@\\"", "slow-start"]\n""",
}


async def user_names(hub) -> set[str]:
    return {user["name"] for user in (await hub.api("GET", "users")).json()}


@pytest.fixture(scope="module")
def slow_start_repo(git_server):
    name = f"slow-start-{uuid.uuid4().hex[:6]}"
    git_server.create_repo(name, SLOW_START_REPO)
    return git_server.daemon_url(name)


async def wait_until_spawning(hub, before: set[str], reader: asyncio.Task) -> str:
    """The temporary user whose server is starting, once the build is done and the spawn begun."""
    for _ in range(600):
        for user in (await hub.api("GET", "users")).json():
            if user["name"] not in before and (user.get("servers") or {}).get("", {}).get("pending") == "spawn":
                return user["name"]
        if reader.done():
            break
        await asyncio.sleep(0.2)
    raise AssertionError((await reader) if reader.done() else "no server started spawning")


async def test_stopping_binderapi_mid_launch_leaves_no_user_behind(client, hub, slow_start_repo, image_prefix):
    before = await user_names(hub)
    async with serve(launch_settings(hub, image_prefix)) as svc:
        reader = asyncio.create_task(read_events(client, svc.url + "build/" + git_spec(slow_start_repo, "main")))
        spawning = await wait_until_spawning(hub, before, reader)
    # binderapi stopped gracefully: it removed the user (and its server) before it was gone
    assert await user_names(hub) - before == set()
    assert await containers(hub.container_name(spawning)) == []
    with contextlib.suppress(httpx.HTTPError):
        await reader


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_stopping_the_binderapi_process_mid_launch_leaves_no_user_behind(
        client, hub, slow_start_repo, image_prefix, tmp_path, stop):
    """The real command, stopped mid-launch as ``docker stop`` and Kubernetes do (SIGTERM) or as
    Ctrl-C does (SIGINT): it finishes its clean-ups before it exits, exits 0, and says no traceback."""
    port = free_port()
    config = tmp_path / "binderapi.yaml"
    settings = launch_settings(hub, image_prefix, ip="127.0.0.1", port=port, log_level="INFO")
    config.write_text(yaml.safe_dump(dump_settings(settings, redact=False)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BINDERAPI_")}  # PYTHONPATH stays
    stderr = tmp_path / "stderr.log"
    before = await user_names(hub)
    with stderr.open("w") as log:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "binderapi", "--config-file", str(config),
                                                    stdin=asyncio.subprocess.DEVNULL, stderr=log, env=env)
    try:
        url = f"http://127.0.0.1:{port}/"
        for _ in range(600):
            with contextlib.suppress(httpx.TransportError):
                await client.get(url + "versions")
                break
            assert proc.returncode is None, stderr.read_text()
            await asyncio.sleep(0.1)
        reader = asyncio.create_task(read_events(client, url + "build/" + git_spec(slow_start_repo, "main")))
        spawning = await wait_until_spawning(hub, before, reader)
        proc.send_signal(stop)
        # a hang guard, well past the stop's bound (5 s for open connections, Launcher.cleanup_timeout 20 s)
        returncode = await asyncio.wait_for(proc.wait(), 90)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    output = stderr.read_text()
    assert returncode == 0, output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    assert await user_names(hub) - before == set()
    assert await containers(hub.container_name(spawning)) == []
    # the client was told, not cut off
    final = (await reader)[-1]
    assert (final["phase"], final["message"]) == ("failed", "binderapi is shutting down; try again in a moment\n")


async def test_a_start_removes_temporary_users_a_crash_left(client, hub, image_prefix):
    namer = Launcher(launch_settings(hub, image_prefix), httpx.AsyncClient())
    leftover = namer.unique_name_from_repo("https://example.org/crashed/launch")
    person = f"crashed-launch-{uuid.uuid4().hex[:8]}"  # a user people named, of the same shape
    if is_temporary_name(person):
        person = person[:-1] + ("0" if person[-1] != "0" else "1")
    for user in (leftover, person):
        assert (await hub.api("POST", f"users/{user}")).status_code == 201
    try:
        await asyncio.sleep(1 + ORPHAN_MARGIN + 1)  # older than any launch (launch_timeout: 1) could be
        async with serve(launch_settings(hub, image_prefix, {"Launcher": {"launch_timeout": 1}})) as svc:
            for _ in range(100):
                if await hub.user(leftover) is None:
                    break
                await asyncio.sleep(0.1)
            # (earlier tests' temporary users, whose servers the `hub` fixture stopped, go too)
            assert svc.services.launcher.orphans_removed >= 1
        assert await hub.user(leftover) is None
        assert await hub.user(person) is not None
    finally:
        for user in (leftover, person):
            await hub.delete_user(user)
