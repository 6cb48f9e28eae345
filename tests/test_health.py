"""Faults said plainly: ``/health`` follows a dependency down and back up promptly (a burst of
probes asks it once), and the launch quota's engine watch reports an outage once, not every 2 s."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest

from binderapi import health, quota
from binderapi.supervisor import Supervisor
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


# -- the launch quota's watch of the Docker engine -------------------------------------------------


async def wait_for(condition, what: str, bound: float = 60.0) -> None:
    """Poll ``condition`` (a generous bound: a hang fails, a slow machine does not)."""
    for _ in range(int(bound / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


@pytest.mark.docker
async def test_engine_outage_is_one_warning_and_one_recovery_line(engine_proxy, caplog, monkeypatch):
    monkeypatch.setattr(quota, "EVENTS_RETRY_MIN", 0.05, raising=False)  # many retries within the test
    monkeypatch.setattr(quota, "EVENTS_RETRY_MAX", 0.2, raising=False)
    settings = make_settings({"DockerBuildExecutor": {"docker_host": engine_proxy.docker_host}},
                             build_class="docker", launch_quota_class="docker", use_registry=False)
    supervisor = Supervisor()
    watch = quota.DockerLaunchQuota(settings, supervisor)
    caplog.set_level(logging.INFO, logger="binderapi")
    try:
        await watch.start()
        assert watch.resyncs == 1

        engine_proxy.cut()
        await wait_for(lambda: engine_proxy.refused >= 5, "the watch retried while the engine was away")
        during = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(during) == 1, [r.getMessage() for r in during]
        (warning,) = during
        assert warning.levelno == logging.WARNING and warning.exc_info is None
        assert "the Docker engine cannot be reached" in warning.getMessage()

        engine_proxy.restore()
        await wait_for(lambda: watch.resyncs == 2, "the watch resynced after the engine came back")
        back = [r for r in caplog.records if "Docker engine is back" in r.getMessage()]
        assert len(back) == 1 and back[0].levelno == logging.INFO
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == [warning]
    finally:
        await supervisor.close()
        await watch.close()
