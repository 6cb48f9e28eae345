"""The benchmark suite's smallest configuration against the test fixtures, so bench/ cannot rot:
the cached, idle-streams and quota workloads run end to end against an in-process binderapi on
the real Docker engine and registry and the Kubernetes test server (launch needs JupyterHub and
fan-out two more builds: together over the smoke test's ~30 s budget), and the ``/api/v1``
workloads (issue 12: cached ``POST /api/v1/builds``; events replayed, here from memory: the full run
waits for the build to leave memory and replays it from the store). Figures are
not asserted (no wall-clock in tests); what the workloads must observe is: no errors, one build per
image, every idle stream held, every replayed stream complete."""

from __future__ import annotations

import os
import uuid

import pytest
from bench import api, cached, idle, quota
from bench.config import SMOKE
from bench.report import Report
from bench.stack import Stack

from fixtures.server import serve
from fixtures.stack import docker_settings

pytestmark = pytest.mark.docker


async def test_bench_smallest_configuration() -> None:
    namespace = f"bench-smoke-{uuid.uuid4().hex[:8]}"
    settings = docker_settings({"DockerBuildExecutor": {"namespace": namespace},
                                "GitRepoProvider": {"cache_ttl": 60}}, keepalive_interval=1.0)
    report = Report()
    async with serve(settings) as service, Stack.start(
            api_url=service.url, api_pid=os.getpid(), build_namespace=namespace, need_hub=False,
            keepalive_interval=1.0, owns_builds=True, slow_build_seconds=120) as stack:
        await cached.run(stack, report, SMOKE.cached_levels, SMOKE.cached_requests)
        await idle.run(stack, report, SMOKE.idle_levels, SMOKE.idle_hold_seconds)
        await api.run_create(stack, report, SMOKE.api_levels, SMOKE.api_requests)
        await api.run_replay(stack, report, SMOKE.replay_levels, SMOKE.replay_settle_seconds)
    await quota.run(report, SMOKE.quota_levels, SMOKE.quota_checks, SMOKE.quota_list_checks)

    rows = {(r.workload, r.case): r.figures for r in report.rows}
    for clients in SMOKE.cached_levels:
        case = f"{clients} client{'s' if clients > 1 else ''}"
        assert rows[(cached.WORKLOAD, case)]["errors"] == 0
        assert rows[("same-run floor: GET /versions", case)]["errors"] == 0
    for clients in SMOKE.idle_levels:
        figures = rows[(idle.WORKLOAD, f"{clients} streams")]
        assert figures["held"] == clients
        assert figures["threads"] >= 1 and figures["rss_mb"] > 0
    for clients in SMOKE.api_levels:
        case = f"{clients} client{'s' if clients > 1 else ''}"
        assert rows[(api.WORKLOAD_CREATE, case)]["errors"] == 0
        assert rows[(api.WORKLOAD_CREATE, case + ", baseline: cached classic build_only")]["errors"] == 0
    for streams in SMOKE.replay_levels:
        replay = rows[(api.WORKLOAD_REPLAY, f"{streams} streams")]
        assert replay["errors"] == 0 and replay["complete"] == streams and replay["events_each"] > 1
        assert rows[(api.WORKLOAD_REPLAY, f"{streams} streams, floor: cached classic build_only")]["errors"] == 0
    for servers in SMOKE.quota_levels:
        assert rows[(quota.WORKLOAD, f"binderapi, {servers} servers")]["requests_per_check"] == 0
        assert rows[(quota.WORKLOAD, f"full LIST, {servers} servers")]["requests_per_check"] == 1
    assert "## " + cached.WORKLOAD in report.table()
