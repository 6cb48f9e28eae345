"""``/health`` follows a dependency down and back up promptly, and a burst of probes asks it once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from binderapi import health
from fixtures.registries import RegistryProcess
from fixtures.server import make_settings, serve


def registry_check(body: dict) -> dict:
    (check,) = [c for c in body["checks"] if c["service"] == "Docker registry"]
    return check


@pytest.mark.docker
async def test_health_follows_a_registry_going_down_and_coming_back(tmp_path: Path):
    registry = RegistryProcess(tmp_path / "registry").start()  # ours: stopping it disturbs nobody
    registry.stop()  # down before the first probe (a success stays cached 15 s, as BinderHub's)
    settings = make_settings({"DockerRegistry": {"url": registry.url, "retries": 1}}, build_class="docker",
                             use_registry=True, image_prefix=f"{registry.host}/binder-")
    try:
        async with serve(settings) as svc, httpx.AsyncClient(timeout=30) as client:
            down = await client.get(svc.url + "health")
            assert down.status_code == 503
            check = registry_check(down.json())
            assert check["ok"] is False and f"container registry at {registry.host} cannot be reached" in check["error"]

            # still down: the failure is asked again (not served from a 15 s cache) and still fails
            await asyncio.sleep(health.FAILURE_CACHE_SECONDS)
            assert registry_check((await client.get(svc.url + "health")).json())["ok"] is False

            registry.start()  # the same port
            await asyncio.sleep(health.FAILURE_CACHE_SECONDS)
            back = await client.get(svc.url + "health")  # the next request after recovery is ok
            assert registry_check(back.json())["ok"] is True
    finally:
        registry.stop()


@pytest.mark.parametrize("outcome", ["ok", "failing"])
async def test_a_burst_of_probes_runs_each_check_once(outcome: str):
    calls = 0
    release = asyncio.Event()

    async def dependency():
        nonlocal calls
        calls += 1
        await release.wait()
        if outcome == "failing":
            raise ConnectionError("dependency unreachable")
        return True

    checks = health.HealthChecks()
    checks.add("Dependency", dependency)
    burst = [asyncio.ensure_future(checks.run()) for _ in range(50)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*burst)
    assert calls == 1
    assert {ok for ok, _ in results} == {outcome == "ok"}
    if outcome == "ok":  # and once answered, a success is served from the cache
        assert (await checks.run())[0] is True
        assert calls == 1
