"""/build end to end on the real Docker engine and registry: builds, cache hits, failures, one build
per image however many ask, the queue, disconnects, restarts, registry outages, leaks."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import uuid

import aiodocker
import httpx
import pytest
import yaml

from fixtures.hub import run
from fixtures.server import free_port, read_events, serve
from fixtures.stack import (
    BASE_IMAGE,
    BUILDER_IMAGE,
    DockerWatcher,
    docker_settings,
    git_spec,
    manifest_exists,
    namespace_containers,
    unique,
)

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("no_leaked_build_containers")]

DOCKERFILE_OK = f"FROM {BASE_IMAGE}\nRUN echo built-by-binderapi-test > /built.txt\n"
DOCKERFILE_BROKEN = f"FROM {BASE_IMAGE}\nRUN echo 'about to fail' && exit 3\n"


def slow_dockerfile(seconds: int) -> str:
    """A build that takes ``seconds`` and prints while it runs. The nonce defeats the engine's layer
    cache, which would otherwise make a rerun instant."""
    nonce = uuid.uuid4().hex[:8]
    return f"FROM {BASE_IMAGE}\nRUN echo {nonce} && for i in $(seq {seconds}); do echo tick $i; sleep 1; done\n"


def final(events):
    return events[-1]


async def test_build_push_then_found_in_registry(client, git_server):
    repo = unique("ok")
    git_server.create_repo(repo, {"Dockerfile": DOCKERFILE_OK})
    async with serve(docker_settings()) as svc:
        url = svc.url + "build/" + git_spec(git_server.daemon_url(repo), "main")
        events = await read_events(client, url, params={"build_only": "true"})
        phases = [e.get("phase") for e in events]
        assert phases[0] == "waiting" and "building" in phases and "pushing" in phases
        last = final(events)
        assert last["phase"] == "ready" and last["message"] == "Done! Image built\n"
        assert await manifest_exists(last["imageName"])
        # our own messages end with a newline; repo2docker's chunks pass through verbatim, as in BinderHub
        assert all(e["message"].endswith("\n") for e in events if e.get("phase") in ("waiting", "ready"))
        assert any(e.get("message", "").startswith("Step 1/") for e in events)

        again = await read_events(client, url, params={"build_only": "true"})
    assert again == [{"phase": "ready", "message": "Done! Found built image\n", "imageName": last["imageName"]}]


async def test_broken_dockerfile_fails_with_the_builds_own_error(client, git_server):
    repo = unique("broken")
    git_server.create_repo(repo, {"Dockerfile": DOCKERFILE_BROKEN})
    async with serve(docker_settings()) as svc:
        raw: list[bytes] = []
        events = await read_events(client, svc.url + "build/" + git_spec(git_server.daemon_url(repo), "main"),
                                   params={"build_only": "true"}, raw=raw)
    failed = [e for e in events if e.get("phase") == "failed"]
    assert len(failed) == 1 and events[-1] is failed[0]
    assert "exit 3" in failed[0]["message"] and "returned a non-zero code: 3" in failed[0]["message"]
    assert b"".join(raw).rstrip().endswith(b"}")  # the stream ended with the failed event
    assert "ready" not in [e.get("phase") for e in events]
    assert await namespace_containers() == []


async def test_unreachable_repository_fails_clearly(client):
    closed = free_port()
    async with serve(docker_settings()) as svc:
        events = await read_events(client, svc.url + "build/" + git_spec(f"git://127.0.0.1:{closed}/nothing", "main"),
                                   params={"build_only": "true"})
    assert len(events) == 1 and events[0]["phase"] == "failed"
    assert "127.0.0.1" in events[0]["message"]


async def test_concurrent_requests_share_one_build(client, git_server):
    repo = unique("shared")
    git_server.create_repo(repo, {"Dockerfile": slow_dockerfile(3)})
    async with serve(docker_settings()) as svc, DockerWatcher() as engine:
        url = svc.url + "build/" + git_spec(git_server.daemon_url(repo), "main")
        results = await asyncio.gather(*(read_events(client, url, params={"build_only": "true"}) for _ in range(6)))
    assert len(engine.actions("create")) == 1, engine.actions("create")
    assert all(final(events)["phase"] == "ready" for events in results)
    ticks = [[e["message"] for e in events if "tick" in (e.get("message") or "")] for events in results]
    assert all(t == ticks[0] and t for t in ticks)  # everyone saw the same build output


async def test_queue_runs_builds_one_at_a_time_and_reports_positions(client, git_server):
    repos = [unique(f"queued{i}") for i in range(3)]
    for repo in repos:
        git_server.create_repo(repo, {"Dockerfile": slow_dockerfile(2)})
    async with serve(docker_settings(concurrent_build_limit=1)) as svc, DockerWatcher() as engine:
        async def request(repo, delay):
            await asyncio.sleep(delay)  # a fixed arrival order
            return await read_events(client, svc.url + "build/" + git_spec(git_server.daemon_url(repo), "main"),
                                     params={"build_only": "true"})
        results = await asyncio.gather(*(request(repo, i * 0.3) for i, repo in enumerate(repos)))
    assert all(final(events)["phase"] == "ready" for events in results)
    # never two builders alive at once
    alive, peak = 0, 0
    for event in engine.events:
        if event.get("Action") == "start":
            alive += 1
        elif event.get("Action") == "die":
            alive -= 1
        peak = max(peak, alive)
    assert peak == 1 and len(engine.actions("start")) == 3
    positions = [[e["queue_position"] for e in events if e.get("queue_position")] for events in results]
    assert positions[0] == []
    assert positions[1] == [1]
    assert positions[2] == [2, 1]  # re-sent when it moved up


async def test_keepalive_comments_while_waiting(client, git_server):
    repo = unique("keepalive")
    git_server.create_repo(repo, {"Dockerfile": slow_dockerfile(3)})
    async with serve(docker_settings(keepalive_interval=0.5)) as svc:
        raw: list[bytes] = []
        events = await read_events(client, svc.url + "build/" + git_spec(git_server.daemon_url(repo), "main"),
                                   params={"build_only": "true"}, raw=raw)
    assert final(events)["phase"] == "ready"
    assert b":keepalive\n\n" in b"".join(raw)


async def test_disconnect_leaves_the_build_running_and_a_retry_rejoins(client, git_server):
    repo = unique("disconnect")
    git_server.create_repo(repo, {"Dockerfile": slow_dockerfile(4)})
    async with serve(docker_settings()) as svc, DockerWatcher() as engine:
        url = svc.url + "build/" + git_spec(git_server.daemon_url(repo), "main")
        async with client.stream("GET", url, params={"build_only": "true"}, headers={"Accept": "text/event-stream"}) as r:
            async for chunk in r.aiter_bytes():
                if b"tick 1" in chunk:
                    break  # the client goes away mid-build
        await asyncio.sleep(0.5)
        assert len(await namespace_containers()) == 1  # still building
        rejoined = await read_events(client, url, params={"build_only": "true"})  # a reconnect attaches
    assert final(rejoined)["phase"] == "ready"
    assert len(engine.actions("create")) == 1
    assert await manifest_exists(final(rejoined)["imageName"])


async def test_a_build_nobody_watches_still_finishes(client, git_server):
    repo = unique("abandoned")
    git_server.create_repo(repo, {"Dockerfile": slow_dockerfile(2)})
    async with serve(docker_settings()) as svc:
        url = svc.url + "build/" + git_spec(git_server.daemon_url(repo), "main")
        async with client.stream("GET", url, params={"build_only": "true"}, headers={"Accept": "text/event-stream"}) as r:
            async for chunk in r.aiter_bytes():
                if b"waiting" in chunk:
                    break
        manager = svc.services.builds
        for _ in range(40):  # the server notices the disconnect
            if all(b.watchers == 0 for b in manager.builds.values()):
                break
            await asyncio.sleep(0.25)
        assert manager.builds and all(b.watchers == 0 for b in manager.builds.values())  # nobody watches
        for _ in range(240):
            if all(b.done for b in manager.builds.values()):
                break
            await asyncio.sleep(0.25)
        events = await read_events(client, url, params={"build_only": "true"})
    assert [e.get("phase") for e in events] == ["ready"], events
    assert events[0]["message"] == "Done! Found built image\n"


async def test_registry_down_is_a_clear_failure_and_no_build(client, git_server):
    repo = unique("noregistry")
    git_server.create_repo(repo, {"Dockerfile": DOCKERFILE_OK})
    closed = free_port()
    settings = docker_settings({"DockerRegistry": {"url": f"http://127.0.0.1:{closed}", "retries": 2}},
                               prefix=f"127.0.0.1:{closed}/down")
    async with serve(settings) as svc, DockerWatcher() as engine:
        events = await read_events(client, svc.url + "build/" + git_spec(git_server.daemon_url(repo), "main"),
                                   params={"build_only": "true"})
    assert [e["phase"] for e in events] == ["failed"]
    assert f"127.0.0.1:{closed}" in events[0]["message"]
    assert engine.actions("create") == []


async def test_use_registry_false_checks_the_local_engine_and_does_not_push(client, git_server):
    repo = unique("local")
    git_server.create_repo(repo, {"Dockerfile": DOCKERFILE_OK})
    async with serve(docker_settings(use_registry=False, image_prefix="binderapi-test-local/")) as svc:
        url = svc.url + "build/" + git_spec(git_server.daemon_url(repo), "main")
        events = await read_events(client, url, params={"build_only": "true"})
        assert final(events)["phase"] == "ready"
        assert "pushing" not in [e.get("phase") for e in events]
        image = final(events)["imageName"]
        again = await read_events(client, url, params={"build_only": "true"})
    assert again[-1]["message"] == "Done! Found built image\n"
    proc = await asyncio.create_subprocess_exec("docker", "rmi", image, stdout=asyncio.subprocess.DEVNULL)
    await proc.wait()


async def test_killed_binderapi_reattaches_after_restart(client, git_server, tmp_path):
    """SIGKILL the service mid-build; the build container lives on and the restarted service
    re-attaches a returning client to it."""
    repo = unique("restart")
    git_server.create_repo(repo, {"Dockerfile": slow_dockerfile(6)})
    settings = docker_settings()
    config = tmp_path / "binderapi.yaml"
    config.write_text(yaml.safe_dump({
        "BinderHub": {k: getattr(settings.BinderHub, k) for k in ("build_class", "enable_api_only_mode", "image_prefix", "launch_quota_class")},
        "DockerBuildExecutor": {"build_image": settings.DockerBuildExecutor.build_image, "namespace": settings.DockerBuildExecutor.namespace},
        "DockerRegistry": {"url": settings.DockerRegistry.url},
        "RepoProvider": {"denied_networks": settings.RepoProvider.denied_networks},  # the git server is on loopback
        "BuildStore": {"state_dir": settings.BuildStore.state_dir},  # both lives share it
    }))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BINDERAPI_")}

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "binderapi", "-f", str(config), "--ip", "127.0.0.1", "--port", str(port)],
                                env=env, stderr=subprocess.DEVNULL)

    async def wait_up(proc):
        for _ in range(200):
            try:
                await client.get(f"http://127.0.0.1:{port}/versions")
                return
            except httpx.TransportError:
                assert proc.poll() is None
                await asyncio.sleep(0.05)

    url = f"http://127.0.0.1:{port}/build/" + git_spec(git_server.daemon_url(repo), "main")
    first = start()
    try:
        await wait_up(first)
        async with DockerWatcher() as engine:
            async with client.stream("GET", url, params={"build_only": "true"}, headers={"Accept": "text/event-stream"}) as r:
                async for chunk in r.aiter_bytes():
                    if b"tick 1" in chunk:
                        first.send_signal(signal.SIGKILL)
                        break
            first.wait(10)
            assert len(await namespace_containers()) == 1  # the build survived its parent
            second = start()
            try:
                await wait_up(second)
                events = await read_events(client, url, params={"build_only": "true"})
            finally:
                second.send_signal(signal.SIGINT)
                second.wait(30)
        assert final(events)["phase"] == "ready", events[-3:]
        assert any("tick" in (e.get("message") or "") for e in events)  # it saw the running build's output
        assert len(engine.actions("create")) == 1  # the first instance's build, and no second one
        assert await namespace_containers() == []  # the new owner removed it when it ended
    finally:
        if first.poll() is None:
            first.kill()


async def test_max_age_stops_overlong_builds(client, git_server):
    repo = unique("overlong")
    git_server.create_repo(repo, {"Dockerfile": slow_dockerfile(60)})
    async with serve(docker_settings({"DockerCleaner": {"max_age": 3}})) as svc:
        events = await read_events(client, svc.url + "build/" + git_spec(git_server.daemon_url(repo), "main"),
                                   params={"build_only": "true"})
    assert final(events)["phase"] == "failed"
    assert "maximum of 3 seconds" in final(events)["message"]
    assert await namespace_containers() == []


async def test_cleaner_removes_orphans(git_server):
    """A finished builder container nobody follows (left by a crash) is removed by the cleaner."""
    import aiodocker

    from fixtures.stack import NAMESPACE

    async with aiodocker.Docker() as docker:
        orphan = await docker.containers.run({"Image": BASE_IMAGE, "Cmd": ["true"], "HostConfig": {"NetworkMode": "host"},
                                              "Labels": {"component": "binderhub-build", "binderapi.namespace": NAMESPACE,
                                                         "binderhub.build": "build-orphan-test"}}, name=unique("build-orphan"))
        await orphan.wait()
    settings = docker_settings()
    async with serve(settings) as svc:
        assert len(await namespace_containers()) == 1
        await svc.services.builds.clean(grace=0)
    assert await namespace_containers() == []


def test_events_doc_lists_every_event_type():
    from pathlib import Path

    from binderapi import events

    text = (Path(__file__).parents[1] / "docs" / "events.md").read_text()
    for name in ("WaitingEvent", "FetchingEvent", "BuildingEvent", "PushingEvent", "LogEvent", "UnknownEvent",
                 "BuiltEvent", "LaunchingEvent", "BuildReadyEvent", "LaunchReadyEvent", "FailedEvent"):
        assert hasattr(events, name) and f"`{name}`" in text, name


async def appendix_given_to_repo2docker(client, svc, spec: str, headers: dict[str, str]) -> str:
    """Start a build and read the ``--appendix`` of the builder container the engine runs."""
    url = svc.url + "build/" + spec
    building = asyncio.create_task(read_events(client, url, params={"build_only": "true"}, headers=headers))
    try:
        for _ in range(600):
            containers = await namespace_containers()
            if containers:
                break
            await asyncio.sleep(0.05)
        async with aiodocker.Docker() as docker:
            details = await (await docker.containers.get(containers[0]["Id"])).show()
        command = [*(details["Config"]["Entrypoint"] or []), *details["Config"]["Cmd"]]
    finally:
        events = await building
    assert final(events)["phase"] == "ready"
    return command[command.index("--appendix") + 1]


async def test_the_appendix_gets_a_checked_host_or_the_configured_url(client, git_server):
    """The appendix is baked into a shared image: its binder_url comes from badge_base_url when set,
    else from a Host that HostHeaderMiddleware accepted (a hostile one never gets this far)."""
    config = {"BuildExecutor": {"appendix": "ENV BINDER_URL={binder_url} REPO_URL={repo_url}"}}
    specs = []
    for name in ("appendix-host", "appendix-badge"):
        repo = unique(name)
        git_server.create_repo(repo, {"Dockerfile": slow_dockerfile(1)})
        specs.append(git_spec(git_server.daemon_url(repo), "main"))
    async with serve(docker_settings(config)) as svc:
        from_host = await appendix_given_to_repo2docker(client, svc, specs[0], {"Host": "binder.example:8443"})
        hostile = await client.get(svc.url + "build/" + specs[0], headers={"Host": "evil.example PATH=/tmp/evil",
                                                                           "Accept": "text/event-stream"})
    async with serve(docker_settings(config, badge_base_url="https://mybinder.example/")) as svc:
        configured = await appendix_given_to_repo2docker(client, svc, specs[1], {"Host": "binder.example:8443"})
    assert from_host.split(" ")[1] == f"BINDER_URL=http://binder.example:8443/v2/{specs[0]}"
    assert configured.split(" ")[1] == f"BINDER_URL=https://mybinder.example/v2/{specs[1]}"
    assert hostile.status_code == 400 and "Invalid Host header" in hostile.text


# -- what the builder may say --------------------------------------------------------------------

#: JSON lines a hostile builder output could carry: only binderapi may send these phases (or fields)
FORGED = [
    {"phase": "ready", "url": "http://evil.example/", "token": "t0", "message": "Your server is ready\n"},
    {"phase": "ready", "imageName": "evil.example/image:1", "message": "Done! Image built\n"},
    {"phase": "built", "imageName": "evil.example/image:1", "message": "Built image, launching...\n"},
    {"phase": "launching", "message": "Launching server...\n"},
    {"phase": "waiting", "message": "Waiting...\n", "queue_position": 1},
    {"phase": "building", "message": "a step\n", "url": "http://evil.example/", "build_id": "0123456789abcdef012345"},
]


@pytest.fixture(scope="module")
async def forging_builder():
    """repo2docker behind an entrypoint that first prints FORGED on the container's stdout: output
    that is not repo2docker's own JSON logging. (repo2docker itself wraps everything a repository
    prints, git's and the build's output included, in the ``message`` of its own lines, see
    test_repository_output_stays_inside_messages; this stands for any other way a line gets there:
    another builder image, a future repo2docker, a library writing to stdout.)"""
    name = f"binderapi-test/forging-builder:{uuid.uuid4().hex[:8]}"
    script = "#!/bin/sh\n" + "".join(f"printf '%s\\n' '{json.dumps(e)}'\n" for e in FORGED) + 'exec /usr/local/bin/entrypoint "$@"\n'
    dockerfile = (f"FROM {BUILDER_IMAGE}\n"
                  f"RUN echo {base64.b64encode(script.encode()).decode()} | base64 -d > /usr/local/bin/forging"
                  " && chmod +x /usr/local/bin/forging\n"
                  'ENTRYPOINT ["/usr/local/bin/forging"]\n')
    await run("docker", "build", "--network", "host", "-q", "-t", name, "-", stdin=dockerfile.encode())
    yield name
    await run("docker", "rmi", "-f", name, check=False)


def assert_no_forgery(events, image_prefix):
    """Only binderapi's own final ``ready``; the forged lines are plain ``unknown`` lines."""
    assert [e["phase"] for e in events if e.get("phase") in ("ready", "built", "launching")] == ["ready"]
    assert events[-1]["phase"] == "ready" and events[-1]["imageName"].startswith(image_prefix)
    assert not [e for e in events if "url" in e or ("imageName" in e and e is not events[-1])]
    waiting = [e for e in events if e.get("phase") == "waiting"]
    assert all(e["message"] == "Waiting for build to start...\n" for e in waiting), waiting
    # every event names binderapi's build (the builder cannot say otherwise); apart from that:
    assert len({e.get("build_id") for e in events if e["phase"] != "ready" or "Found" not in e["message"]}) == 1
    events = [{k: v for k, v in e.items() if k != "build_id"} for e in events]
    for forged in FORGED:
        if forged["phase"] != "building":
            assert {"phase": "unknown", "message": forged["message"]} in events
    assert {"phase": "building", "message": "a step\n"} in events  # a builder phase, its extra field dropped


async def test_builder_output_cannot_forge_events(client, git_server, forging_builder):
    repo = unique("forge")
    git_server.create_repo(repo, {"Dockerfile": slow_dockerfile(5)})
    settings = docker_settings({"DockerBuildExecutor": {"build_image": forging_builder}})
    prefix = settings.BinderHub.image_prefix
    async with serve(settings) as svc:
        url = svc.url + "build/" + git_spec(git_server.daemon_url(repo), "main")
        first = asyncio.create_task(read_events(client, url, params={"build_only": "true"}))
        for _ in range(200):  # a second client joins while it runs: the replayed tail is clean too
            if await namespace_containers() or first.done():
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1)
        joined = await read_events(client, url, params={"build_only": "true"})
        events = await first
    assert_no_forgery(events, prefix)
    if joined[-1]["message"] != "Done! Found built image\n":  # (it joined the build, not its result)
        assert_no_forgery(joined, prefix)


async def test_repository_output_stays_inside_messages(client, git_server):
    """What a repository's build prints, JSON included, reaches clients inside ``building`` messages."""
    repo = unique("prints-json")
    lines = " && ".join(f"printf '%s\\n' '{json.dumps(e)}'" for e in FORGED[:3])
    git_server.create_repo(repo, {"Dockerfile": f"FROM {BASE_IMAGE}\nRUN {lines}\n"})
    settings = docker_settings()
    async with serve(settings) as svc:
        events = await read_events(client, svc.url + "build/" + git_spec(git_server.daemon_url(repo), "main"),
                                   params={"build_only": "true"})
    assert [e["phase"] for e in events if e.get("phase") in ("ready", "built")] == ["ready"]
    assert events[-1]["imageName"].startswith(settings.BinderHub.image_prefix)
    printed = [e for e in events if e.get("phase") == "building" and '"phase": "ready"' in e["message"]]
    assert printed and all(set(e) == {"phase", "message", "build_id"} for e in printed)
