"""The build cleaner with the Kubernetes backend, through the test API server: finished build pods
and those past ``max_age`` go, orphans of an earlier process included; running young builds and
pods that are not builds stay, and a build's credentials Secret goes with its pod (the server's
garbage collector, through the Secret's ownerReferences). Most pods are stored by the server
directly (no containers run)."""

from __future__ import annotations

import asyncio

import pytest

from binderapi.backends.kubernetes.executor import KubernetesBuildBackend
from binderapi.executors.base import BuildJob
from fixtures.kube import KubeAPIServer
from fixtures.kubeapi import PUSH_SECRET, build_pods, kube_settings, until
from fixtures.server import serve

pytestmark = pytest.mark.docker

BUILD = {"component": "binderhub-build"}


def add_build_pod(kube_api: KubeAPIServer, name: str, phase: str, age: float) -> None:
    kube_api.add_pod(name, labels={**BUILD, "name": name}, phase=phase, age=age,
                     annotations={"binder-repo": f"https://example.org/{name}",
                                  "binderapi/image": f"127.0.0.1:5000/{name}:abc"})


def cleaner_passes(kube_api: KubeAPIServer) -> int:
    """LISTs of build pods: one when the service starts (re-attaching), then one per cleaner pass."""
    return sum(1 for r in kube_api.requests
               if r.verb == "list" and r.query.get("labelSelector") == "component=binderhub-build")


@pytest.mark.parametrize("max_age", [
    {"KubernetesCleaner": {"max_age": 3600}},
    {"BinderHub": {"build_max_age": 3600}},  # BinderHub's deprecated name, forwarded
], ids=["KubernetesCleaner.max_age", "BinderHub.build_max_age"])
async def test_cleaner_removes_finished_and_expired_build_pods(kube_api, kubeconfig, max_age):
    # left behind by an earlier binderapi process (or another replica): orphans at start-up
    add_build_pod(kube_api, "build-succeeded", "Succeeded", age=120)
    add_build_pod(kube_api, "build-failed", "Failed", age=120)
    add_build_pod(kube_api, "build-expired", "Running", age=7200)
    add_build_pod(kube_api, "build-never-scheduled", "Pending", age=7200)
    add_build_pod(kube_api, "build-young", "Running", age=10)
    kube_api.add_pod("user-finished", labels={"app": "jupyterhub", "component": "singleuser-server"},
                     phase="Succeeded", age=120)
    kube_api.add_pod("someone-elses-old-pod", labels={"app": "other"}, phase="Running", age=99_999)

    settings = kube_settings(kubeconfig, max_age, build_cleanup_interval=1)
    async with serve(settings):
        await until(lambda: build_pods(kube_api) == ["build-young"])
        passes = cleaner_passes(kube_api)
        await until(lambda: cleaner_passes(kube_api) >= passes + 2)  # two more passes leave it alone
        assert build_pods(kube_api) == ["build-young"]
    assert sorted(p["metadata"]["name"] for p in kube_api.pods()) == ["build-young", "someone-elses-old-pod", "user-finished"]
    deletes = [r for r in kube_api.requests if r.verb == "delete" and r.resource == "pods"]
    assert deletes and all(r.query.get("gracePeriodSeconds") == "0" for r in deletes)  # BinderHub's cleanup()


async def test_young_build_is_stopped_once_it_passes_max_age(kube_api, kubeconfig):
    add_build_pod(kube_api, "build-ageing", "Running", age=30)
    settings = kube_settings(kubeconfig, {"KubernetesCleaner": {"max_age": 60}}, build_cleanup_interval=1)
    async with serve(settings):
        passes = cleaner_passes(kube_api)
        await until(lambda: cleaner_passes(kube_api) >= passes + 1)
        assert build_pods(kube_api) == ["build-ageing"]
        kube_api.backdate("build-ageing", 60)  # now 90 s old
        await until(lambda: build_pods(kube_api) == [])


async def test_credentials_secret_goes_with_its_pod_when_the_cleaner_removes_it(kube_api, kubeconfig):
    """The cleaner deletes pods only: each Secret is owned by its pod, and the garbage collector
    removes it, so binderapi never needs to list or read Secrets."""
    credentials = {"GIT_CREDENTIAL_ENV": "username=u\\npassword=p"}
    finished = kube_api.add_pod("build-finished", labels={**BUILD, "name": "build-finished"}, phase="Succeeded", age=120)
    running = kube_api.add_pod("build-running", labels={**BUILD, "name": "build-running"}, phase="Running", age=10)
    for pod in (finished, running):
        name = pod["metadata"]["name"]
        kube_api.add_secret(f"{name}-credentials", string_data=credentials, labels={**BUILD, "name": name}, owners=[pod])
    kube_api.add_secret("hub", string_data={"token": "x"})

    settings = kube_settings(kubeconfig, {"KubernetesBuildExecutor": {"credentials_in_secret": True}},
                             build_cleanup_interval=1)
    async with serve(settings):
        await until(lambda: build_pods(kube_api) == ["build-running"])
        await until(lambda: kube_api.secrets() == ["build-running-credentials", "hub"])
    assert kube_api.count("delete", "secrets") == 0  # the garbage collector did it
    assert not {r.verb for r in kube_api.requests if r.resource == "secrets"} & {"get", "list", "watch"}


async def test_pod_whose_process_died_before_its_secret_is_removed_at_max_age(kube_api, kubeconfig):
    """binderapi creates the pod, then its Secret. Killed in between, it leaves a pod that waits
    for the Secret in ContainerCreating (the kubelet retries the mount) and never runs. The next
    process adopts it as an orphan, and it goes at ``max_age`` like any build: no Secret is ever
    left, and none is read."""
    kube_api.add_secret(PUSH_SECRET, string_data={"config.json": '{"auths": {}}'})
    settings = kube_settings(kubeconfig, {"KubernetesCleaner": {"max_age": 60}}, build_cleanup_interval=1)
    job = BuildJob(name="build-crashed", image_name="127.0.0.1:5000/crashed:abc", repo_url="https://example.org/r",
                   ref="abc", git_credentials="username=u\\npassword=p")
    kube_api.hold_next(1, verb="create", resource="secrets")
    dying = KubernetesBuildBackend(settings)
    start = asyncio.ensure_future(dying.start(job))
    await until(lambda: kube_api.holding == 1)  # the pod exists, the Secret's create is in flight
    start.cancel()  # the process dies; its request never lands
    await asyncio.gather(start, return_exceptions=True)
    await dying.close()
    await until(lambda: kube_api.failed_mounts("build-crashed"))
    pod = kube_api.get_pod("build-crashed")
    assert pod["status"]["phase"] == "Pending"
    assert pod["status"]["containerStatuses"][0]["state"] == {"waiting": {"reason": "ContainerCreating"}}
    assert 'secret "build-crashed-credentials" not found' in kube_api.failed_mounts("build-crashed")[0]
    assert kube_api.secrets() == [PUSH_SECRET]

    async with serve(settings):
        passes = cleaner_passes(kube_api)
        await until(lambda: cleaner_passes(kube_api) >= passes + 1)
        assert build_pods(kube_api) == ["build-crashed"]  # young: it might still get its Secret
        kube_api.backdate("build-crashed", 90)  # now past max_age
        await until(lambda: build_pods(kube_api) == [])
    assert kube_api.secrets() == [PUSH_SECRET]
    assert not {r.verb for r in kube_api.requests if r.resource == "secrets"} & {"get", "list", "watch"}
