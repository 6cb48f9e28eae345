"""Prometheus metrics with BinderHub's names, labels and buckets, plus binderapi's own."""

from __future__ import annotations

from collections import OrderedDict

from prometheus_client import Counter, Gauge, Histogram

BUILD_TIME = Histogram(
    "binderhub_build_time_seconds", "Histogram of build times", ["status"],
    buckets=[60, 120, 300, 600, 1800, 3600, 7200, float("inf")],
)
LAUNCH_TIME = Histogram(
    "binderhub_launch_time_seconds", "Histogram of launch times", ["status", "retries"],
    buckets=[2, 5, 10, 20, 30, 60, 120, 300, 600, float("inf")],
)
BUILD_COUNT = Counter("binderhub_build_count", "Counter of builds by repo", ["status", "provider", "repo"])
LAUNCH_COUNT = Counter("binderhub_launch_count", "Counter of launches by repo", ["status", "provider", "repo"])
BUILDS_INPROGRESS = Gauge("binderhub_inprogress_builds", "Builds currently in progress")
LAUNCHES_INPROGRESS = Gauge("binderhub_inprogress_launches", "Launches currently in progress")
GITHUB_RATE_LIMIT = Gauge("binderhub_github_rate_limit_remaining", "GitHub rate limit remaining")

# binderapi additions
BUILD_QUEUE_LENGTH = Gauge("binderapi_build_queue_length", "Builds waiting for a build slot")
BUILDS_RUNNING = Gauge("binderapi_builds_running", "Builds holding a build slot")
BUILD_WATCHERS = Gauge("binderapi_build_watchers", "Event streams attached to builds")
WARM_POOL_SERVERS = Gauge("binderapi_warm_pool_servers", "Warm servers by image and state (ready, starting)",
                          ["image", "state"])
WARM_POOL_HANDOVERS = Counter("binderapi_warm_pool_handovers", "Launches that found a warm server (hit) or not (miss)",
                              ["result"])
WARM_POOL_REFILLS_SKIPPED = Counter("binderapi_warm_pool_refills_skipped", "Warm server starts skipped for a quota",
                                    ["reason"])
WARM_POOL_RETIRED = Counter("binderapi_warm_pool_retired", "Warm servers removed unused (age, idle, lost, shutdown, leftover)",
                            ["reason"])
WARM_POOL_START_FAILURES = Counter("binderapi_warm_pool_start_failures", "Warm server starts that failed")
WORKER_INFO = Gauge("binderapi_worker_info", "1 for the worker process that answered this scrape (`--workers`: each has its own metrics)",
                    ["worker"])


class RepoCounts:
    """``binderhub_build_count`` and ``binderhub_launch_count`` with a bounded ``repo`` label.

    Every URL that resolves (any git server will do) would otherwise become a permanent series,
    one of them 60 KB long. So: at most ``limit`` repositories have series, the least recently
    counted one's series are removed to make room (a counter that restarts, which ``rate()``
    handles), and a URL longer than ``max_length`` is counted as ``other``.
    """

    def __init__(self, limit: int = 1000, max_length: int = 256) -> None:
        self.limit = limit
        self.max_length = max_length
        self._series: OrderedDict[str, set[tuple[Counter, str, str]]] = OrderedDict()

    def inc(self, counter: Counter, *, status: str, provider: str, repo: str) -> None:
        label = repo if len(repo) <= self.max_length else "other"
        series = self._series.pop(label, None) or set()
        self._series[label] = series  # now the most recently counted
        series.add((counter, status, provider))
        counter.labels(status=status, provider=provider, repo=label).inc()
        while len(self._series) > self.limit:
            old, old_series = self._series.popitem(last=False)
            for old_counter, old_status, old_provider in old_series:
                old_counter.remove(old_status, old_provider, old)

    def __len__(self) -> int:
        return len(self._series)


REPO_COUNTS = RepoCounts()


def count_build(status: str, provider: str, repo: str) -> None:
    REPO_COUNTS.inc(BUILD_COUNT, status=status, provider=provider, repo=repo)


def count_launch(status: str, provider: str, repo: str) -> None:
    REPO_COUNTS.inc(LAUNCH_COUNT, status=status, provider=provider, repo=repo)
