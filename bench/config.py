"""The sizes of each workload: the full run the issue asks for, and ``--quick`` for a first look."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sizes:
    cached_levels: list[int] = field(default_factory=lambda: [1, 10, 50, 200])
    cached_requests: int = 1000  # per level (at least 5 per client; 1 client: a fifth of it)
    wrk_levels: list[int] = field(default_factory=lambda: [1, 10, 50, 200])
    wrk_seconds: int = 10
    workers_seconds: int = 10  # per round of --workers 1 and of --workers 2
    workers_rounds: int = 3
    launch_samples: int = 8  # of each kind, interleaved
    fanout_levels: list[int] = field(default_factory=lambda: [10, 50])
    idle_levels: list[int] = field(default_factory=lambda: [1000, 10000])
    idle_hold_seconds: float = 30.0
    api_levels: list[int] = field(default_factory=lambda: [1, 50])
    api_requests: int = 1000  # per level, as cached_requests
    replay_levels: list[int] = field(default_factory=lambda: [1000])  # concurrent events streams
    replay_settle_seconds: float = 62.0  # until the finished build left memory: replayed from the store
    quota_levels: list[int] = field(default_factory=lambda: [10, 10000])
    quota_checks: int = 10000
    quota_list_checks: int = 20
    profile_seconds: int = 20
    replica_fanout_clients: int = 50  # split across two replicas
    replica_idle_streams: int = 10000  # split across two replicas


FULL = Sizes()
QUICK = Sizes(cached_requests=200, api_requests=200, replay_levels=[200], wrk_seconds=5, workers_seconds=5, workers_rounds=1, launch_samples=2,
              fanout_levels=[10], idle_levels=[500], idle_hold_seconds=12,
              quota_levels=[10, 1000], quota_checks=1000, quota_list_checks=10, profile_seconds=5,
              replica_idle_streams=1000)
#: what tests/test_bench_smoke.py runs against the test fixtures
SMOKE = Sizes(cached_levels=[1, 10], cached_requests=20, api_levels=[1, 10], api_requests=20, replay_levels=[20], replay_settle_seconds=0, fanout_levels=[], idle_levels=[20], idle_hold_seconds=2,
              quota_levels=[10, 100], quota_checks=50, quota_list_checks=3)
