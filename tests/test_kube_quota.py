"""KubernetesLaunchQuota through the test API server: counts kept from a watch (one LIST, then
events), checks that make no API request at all, the same with 10 and 10,000 pods, a resync after
``410 Gone``, and the soft ``Pod quota`` health check. Pods are stored by the server directly."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from binderapi.backends.kubernetes.quota import KubernetesLaunchQuota
from binderapi.errors import QuotaExceededError
from binderapi.services import Services, StartupError
from binderapi.supervisor import Supervisor
from fixtures.kube import KubeAPIServer
from fixtures.kubeapi import kube_settings, until
from fixtures.server import serve

USER = {"app": "jupyterhub", "component": "singleuser-server"}
BUILD = {"component": "binderhub-build"}
IMAGE_A = "127.0.0.1:5000/binder-repo-a"
IMAGE_B = "127.0.0.1:5000/binder-repo-b"
REPO_A = "https://github.com/org/repo-a"
CHECKS = 500


def add_user_pods(kube_api: KubeAPIServer, prefix: str, count: int, image: str, phase: str = "Running") -> list[str]:
    names = [f"{prefix}{i}" for i in range(count)]
    for i, name in enumerate(names):
        kube_api.add_pod(name, labels=USER, image=f"{image}:{i % 3}", phase=phase)  # tags differ: per repo
    return names


@pytest.fixture
async def start_quota(kube_api: KubeAPIServer, kubeconfig: str) -> AsyncIterator[Callable[..., Awaitable[KubernetesLaunchQuota]]]:
    supervisor = Supervisor()
    quotas: list[KubernetesLaunchQuota] = []

    async def start(**options: Any) -> KubernetesLaunchQuota:
        settings = kube_settings(kubeconfig, {"KubernetesLaunchQuota": options}, launch_quota_class="kubernetes")
        quota = KubernetesLaunchQuota(settings, supervisor)
        quotas.append(quota)
        await quota.start()
        return quota

    yield start
    await supervisor.close()
    for quota in quotas:
        await quota.close()
    assert not supervisor.tasks


def user_informer(quota: KubernetesLaunchQuota) -> Any:
    return next(i for i in quota.informers if i.selector == "app=jupyterhub,component=singleuser-server")


async def test_counts_follow_pods_added_and_removed(kube_api, start_quota):
    add_user_pods(kube_api, "a-", 2, IMAGE_A)
    quota = await start_quota(total_quota=100)
    assert quota.total_servers() == 2 and kube_api.count("list", "pods") == 2  # one LIST per informer

    b = add_user_pods(kube_api, "b-", 3, IMAGE_B)
    kube_api.add_pod("other", labels={"app": "other"}, image=IMAGE_A)  # not a single-user pod
    kube_api.add_pod("build-x", labels={**BUILD, "name": "build-x"})
    await until(lambda: quota.total_servers() == 5 and quota.build_pods == {"build-x"})
    assert quota.servers_of(IMAGE_A) == 2 and quota.servers_of(IMAGE_B) == 3

    kube_api.set_phase(b[0], "Succeeded")  # a stopped server no longer counts
    kube_api.remove_pod("a-0")
    kube_api.remove_pod("build-x")
    await until(lambda: quota.total_servers() == 3 and not quota.build_pods)
    assert quota.servers_of(IMAGE_A) == 1 and quota.servers_of(IMAGE_B) == 2
    assert kube_api.count("list", "pods") == 2  # everything since came from the watches


async def test_checks_make_no_request_with_10_or_10000_pods(kube_api, start_quota):
    add_user_pods(kube_api, "a-", 10, IMAGE_A)
    quota = await start_quota(total_quota=20_000)
    requests_per_check = {}
    for total in (10, 10_000):
        if total > quota.total_servers():
            kube_api.add_pods(total - quota.total_servers(), prefix="more-", labels=USER)
            await until(lambda total=total: quota.total_servers() == total)
        kube_api.clear_requests()
        for _ in range(CHECKS):
            check = await quota.check(f"{IMAGE_A}:abc", {"quota": 100}, REPO_A)
            assert (check.total, check.matching, check.quota) == (total, 10, 100)
        requests_per_check[total] = len(kube_api.requests) / CHECKS
    assert requests_per_check == {10: 0, 10_000: 0}
    assert kube_api.count("list", "pods") == 0  # the 9,990 new pods arrived as watch events
    assert user_informer(quota).lists == 1


async def test_refusals_use_binderhubs_messages(kube_api, start_quota):
    add_user_pods(kube_api, "a-", 3, IMAGE_A)
    quota = await start_quota(total_quota=4)
    with pytest.raises(QuotaExceededError, match="^Too many users running https://github.com/org/repo-a! Try again soon.$") as info:
        await quota.check(f"{IMAGE_A}:new", {"quota": 3}, REPO_A)
    assert info.value.quota_kind == "repo_quota"
    assert (await quota.check(f"{IMAGE_B}:new", {"quota": 3}, "https://github.com/org/repo-b")).matching == 0
    kube_api.add_pod("b-0", labels=USER, image=f"{IMAGE_B}:1")
    await until(lambda: quota.total_servers() == 4)
    with pytest.raises(QuotaExceededError, match="^Too many users on this BinderHub! Try again soon.$") as info:
        await quota.check(f"{IMAGE_B}:new", {}, "https://github.com/org/repo-b")
    assert info.value.quota_kind == "pod_quota"


async def test_resync_after_410_gone(kube_api, start_quota):
    old = add_user_pods(kube_api, "old-", 2, IMAGE_A)
    quota = await start_quota()
    informer = user_informer(quota)
    kube_api.hold_next(2, verb="watch", resource="pods")
    kube_api.close_watches()  # an apiserver restart: both informers watch again, and are held
    await until(lambda: kube_api.holding == 2)
    add_user_pods(kube_api, "new-", 3, IMAGE_B)
    kube_api.remove_pod(old[0])
    kube_api.compact()  # the changes are no longer in the history: resuming gets 410 Gone
    kube_api.release_holds()
    await until(lambda: informer.lists == 2)
    assert quota.total_servers() == 4
    assert quota.servers_of(IMAGE_A) == 1 and quota.servers_of(IMAGE_B) == 3


async def test_bookmarks_keep_the_watch_without_relisting(kube_api, start_quota):
    kube_api.bookmark_interval = 0.05
    quota = await start_quota()
    await until(lambda: all(i.bookmarks >= 5 for i in quota.informers))
    assert [i.lists for i in quota.informers] == [1, 1]
    assert kube_api.count("list", "pods") == 2


@pytest.mark.docker
async def test_unusable_kubeconfig_is_a_clear_startup_error(tmp_path):
    settings = kube_settings(str(tmp_path / "missing-kubeconfig"), build_class="docker", launch_quota_class="kubernetes")
    with pytest.raises(StartupError, match="^KubernetesLaunchQuota cannot reach Kubernetes: no in-cluster service "
                                           "account and no usable kubeconfig at .*missing-kubeconfig"):
        await Services.start(settings)


@pytest.mark.docker
async def test_pod_quota_health_check(kube_api, kubeconfig):
    add_user_pods(kube_api, "user-", 4, IMAGE_A)
    for name in ("build-a", "build-b"):
        kube_api.add_pod(name, labels={**BUILD, "name": name}, phase="Succeeded")
    settings = kube_settings(kubeconfig, {"KubernetesLaunchQuota": {"total_quota": 5}}, launch_quota_class="kubernetes")
    async with serve(settings) as svc, httpx.AsyncClient(timeout=60) as client:
        lists = kube_api.count("list", "pods")
        response = await client.get(svc.url + "health")
        assert kube_api.count("list", "pods") == lists  # answered from the watched counts
    body = response.json()
    (pod_quota,) = [c for c in body["checks"] if c["service"] == "Pod quota"]
    assert pod_quota == {"service": "Pod quota", "total_pods": 6, "build_pods": 2, "user_pods": 4, "quota": 5,
                         "ok": False, "_ignore_failure": True}
    assert response.status_code == 200 and body["ok"] is True  # a soft check: the service stays healthy
