"""The `repo` label of BinderHub's build and launch counters stays bounded, whatever URLs resolve."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest

from binderapi.metrics import RepoCounts


def counters() -> tuple[CollectorRegistry, Counter, Counter]:
    registry = CollectorRegistry()
    builds = Counter("binderhub_build_count", "builds", ["status", "provider", "repo"], registry=registry)
    launches = Counter("binderhub_launch_count", "launches", ["status", "provider", "repo"], registry=registry)
    return registry, builds, launches


def test_an_attacker_cannot_grow_the_series_without_bound():
    registry, builds, launches = counters()
    counts = RepoCounts(limit=3, max_length=100)
    counts.inc(builds, status="success", provider="GitHub", repo="https://github.com/popular/repo")
    for i in range(1000):
        counts.inc(launches, status="failure", provider="Git", repo=f"https://attacker.example/r{i}")
        counts.inc(launches, status="success", provider="GitHub", repo="https://github.com/popular/repo")
    text = generate_latest(registry).decode()
    series = [line for line in text.splitlines() if line.startswith("binderhub_") and "_created" not in line]
    assert len(counts) == 3
    repos = {line.split('repo="', 1)[1].split('"', 1)[0] for line in series}
    # the popular repository, counted all along, kept its series; only the latest attackers remain
    assert repos == {"https://github.com/popular/repo", "https://attacker.example/r998", "https://attacker.example/r999"}
    assert 'binderhub_launch_count_total{provider="GitHub",repo="https://github.com/popular/repo",status="success"} 1000.0' in text
    assert 'binderhub_build_count_total{provider="GitHub",repo="https://github.com/popular/repo",status="success"} 1.0' in text


def test_an_overlong_url_is_counted_as_other():
    registry, builds, _ = counters()
    counts = RepoCounts(limit=10, max_length=100)
    counts.inc(builds, status="failure", provider="Git", repo="https://attacker.example/" + "a" * 60_000)
    text = generate_latest(registry).decode()
    assert 'repo="other"' in text and "a" * 200 not in text


def test_with_several_workers_the_series_stay_bounded_without_removal():
    """A worker's series cannot be removed (prometheus_client keeps its value in the worker's metric
    file), so with several workers a repository beyond the limit is counted as ``other``."""
    registry, builds, _ = counters()
    counts = RepoCounts(limit=3, max_length=100, evict=False)
    for i in range(1000):
        counts.inc(builds, status="success", provider="Git", repo=f"https://attacker.example/r{i}")
    counts.inc(builds, status="success", provider="Git", repo="https://attacker.example/r0")
    text = generate_latest(registry).decode()
    series = [line for line in text.splitlines() if line.startswith("binderhub_build_count_total")]
    assert len(series) == 4 and len(counts) == 4
    assert 'repo="https://attacker.example/r0",status="success"} 2.0' in text
    assert 'repo="other",status="success"} 997.0' in text
