"""Prometheus metrics with BinderHub's names, labels and buckets, plus binderapi's own.

With ``--workers N`` (N > 1) the parent gives the workers one private directory for
prometheus_client's multiprocess mode (:func:`shared_directory`): each worker writes its values
to mmap files there, and a scrape reaching any worker shows the service's sums
(``MultiProcessCollector``, which prometheus-fastapi-instrumentator uses for ``/metrics`` whenever
``PROMETHEUS_MULTIPROC_DIR`` is set). Each gauge says how workers add up (``multiprocess_mode``);
one process alone (the default) ignores it and keeps the in-memory registry.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Iterator

from prometheus_client import Counter, Gauge, Histogram

#: prometheus_client reads it when it is imported: set before a worker imports it
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

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
# Gauges with several workers: "livesum" for what each process holds (its streams, launches, queue,
# slots, warm servers): the service's figure is the sum, and a dead worker's share goes with it.
BUILDS_INPROGRESS = Gauge("binderhub_inprogress_builds", "Builds currently in progress", multiprocess_mode="livesum")
LAUNCHES_INPROGRESS = Gauge("binderhub_inprogress_launches", "Launches currently in progress", multiprocess_mode="livesum")
# one GitHub token's budget read by every worker: a sum would count it N times; the value read last is the truth
GITHUB_RATE_LIMIT = Gauge("binderhub_github_rate_limit_remaining", "GitHub rate limit remaining",
                          multiprocess_mode="livemostrecent")

# binderapi additions
# each worker has its own queue and concurrent_build_limit (docs/scaling.md): the sum is the service's
BUILD_QUEUE_LENGTH = Gauge("binderapi_build_queue_length", "Builds waiting for a build slot", multiprocess_mode="livesum")
BUILDS_RUNNING = Gauge("binderapi_builds_running", "Builds holding a build slot", multiprocess_mode="livesum")
BUILD_WATCHERS = Gauge("binderapi_build_watchers", "Event streams attached to builds", multiprocess_mode="livesum")
# with a shared store each process publishes the rows it owns (warmpool._ready_count), so the sum is the pool's
WARM_POOL_SERVERS = Gauge("binderapi_warm_pool_servers", "Warm servers by image and state (ready, starting)",
                          ["image", "state"], multiprocess_mode="livesum")
WARM_POOL_HANDOVERS = Counter("binderapi_warm_pool_handovers", "Launches that found a warm server (hit) or not (miss)",
                              ["result"])
WARM_POOL_REFILLS_SKIPPED = Counter("binderapi_warm_pool_refills_skipped", "Warm server starts skipped for a quota",
                                    ["reason"])
WARM_POOL_RETIRED = Counter("binderapi_warm_pool_retired", "Warm servers removed unused (age, idle, lost, shutdown, leftover)",
                            ["reason"])
WARM_POOL_START_FAILURES = Counter("binderapi_warm_pool_start_failures", "Warm server starts that failed")
# one series per live worker ("liveall" adds its pid), gone with the worker: which workers serve
WORKER_INFO = Gauge("binderapi_worker_info", "1 for each live worker process (`--workers`: with several, by pid too)",
                    ["worker"], multiprocess_mode="liveall")


def multiprocess() -> bool:
    """This process writes its metrics for a scrape of every worker (:func:`shared_directory`)."""
    return MULTIPROC_ENV in os.environ


@contextlib.contextmanager
def shared_directory() -> Iterator[str]:
    """The parent of several workers: a fresh private directory (0700, ``mkdtemp``) for their
    metric files, in the environment the workers inherit, removed when the parent is done. One
    set by the operator is not reused: files left by an earlier run would be summed in."""
    path = tempfile.mkdtemp(prefix="binderapi-metrics-")
    previous = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = path
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous
        shutil.rmtree(path, ignore_errors=True)


def forget_process(pid: int, path: str) -> None:
    """A worker died: its live gauges leave the scrape (its counters stay: totals do not go back)."""
    from prometheus_client import multiprocess as mp

    mp.mark_process_dead(pid, path)


class RepoCounts:
    """``binderhub_build_count`` and ``binderhub_launch_count`` with a bounded ``repo`` label.

    Every URL that resolves (any git server will do) would otherwise become a permanent series,
    one of them 60 KB long. So: at most ``limit`` repositories have series, the least recently
    counted one's series are removed to make room (a counter that restarts, which ``rate()``
    handles), and a URL longer than ``max_length`` is counted as ``other``.

    With several workers (``evict=False``, the default there) a series cannot be removed: its
    value stays in the worker's metric file, summed into every scrape. So instead, once ``limit``
    repositories have series in this worker, a new one is counted as ``other``.
    """

    def __init__(self, limit: int = 1000, max_length: int = 256, *, evict: bool | None = None) -> None:
        self.limit = limit
        self.max_length = max_length
        self.evict = not multiprocess() if evict is None else evict
        self._series: OrderedDict[str, set[tuple[Counter, str, str]]] = OrderedDict()

    def inc(self, counter: Counter, *, status: str, provider: str, repo: str) -> None:
        label = repo if len(repo) <= self.max_length else "other"
        if not self.evict and label not in self._series and len(self._series) >= self.limit:
            label = "other"
        series = self._series.pop(label, None) or set()
        self._series[label] = series  # now the most recently counted
        series.add((counter, status, provider))
        counter.labels(status=status, provider=provider, repo=label).inc()
        while self.evict and len(self._series) > self.limit:
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
