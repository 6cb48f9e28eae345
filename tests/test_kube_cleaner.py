"""The build cleaner with the Kubernetes backend, through the test API server: finished build pods
and those past ``max_age`` go, orphans of an earlier process included; running young builds and
pods that are not builds stay. The pods are stored by the server directly (no containers run)."""

from __future__ import annotations

import pytest

from binderapi.backends.kubernetes.executor import CREDENTIALS_GRACE_SECONDS
from fixtures.kube import KubeAPIServer
from fixtures.kubeapi import build_pods, kube_settings, until
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


def credentials_secrets(kube_api: KubeAPIServer) -> list[str]:
    return sorted(s.name for s in kube_api.store.items("secrets") if s.name.endswith("-credentials"))


async def test_cleaner_removes_credentials_secrets_whose_pod_never_came(kube_api, kubeconfig):
    """A Secret is written just before its pod: when the pod create failed and the clean-up
    after it failed too (or the process died in between), nothing else would remove it."""
    credentials = {"GIT_CREDENTIAL_ENV": "username=u\\npassword=p"}

    def add(build: str, age: float) -> None:
        kube_api.add_secret(f"{build}-credentials", string_data=credentials, labels={**BUILD, "name": build}, age=age)

    add("build-never-created", age=CREDENTIALS_GRACE_SECONDS + 60)  # the leak
    add("build-being-created", age=5)  # its pod is about to be created: left alone
    add("build-running", age=CREDENTIALS_GRACE_SECONDS + 60)  # its pod runs: left alone
    add_build_pod(kube_api, "build-running", "Running", age=CREDENTIALS_GRACE_SECONDS + 60)
    kube_api.add_secret("hub-secret", string_data={"token": "x"}, age=99_999)  # not a build's: left alone
    kube_api.add_secret("old-credentials", string_data={"token": "x"}, age=99_999)  # nor this (no build label)

    settings = kube_settings(kubeconfig, {"KubernetesBuildExecutor": {"credentials_in_secret": True}},
                             build_cleanup_interval=1)
    async with serve(settings):
        await until(lambda: "build-never-created-credentials" not in credentials_secrets(kube_api))
        passes = cleaner_passes(kube_api)
        await until(lambda: cleaner_passes(kube_api) >= passes + 2)  # two more passes leave the rest alone
    assert credentials_secrets(kube_api) == ["build-being-created-credentials", "build-running-credentials",
                                             "old-credentials"]
    assert "hub-secret" in {s.name for s in kube_api.store.items("secrets")}
    lists = [r for r in kube_api.requests if r.verb == "list" and r.resource == "secrets"]
    assert lists and all(r.query.get("labelSelector") == "component=binderhub-build" for r in lists)


async def test_cleaner_without_rbac_to_list_secrets_says_so_once(kube_api, kubeconfig, caplog):
    kube_api.fail_next(100, 403, verb="list", resource="secrets")
    settings = kube_settings(kubeconfig, {"KubernetesBuildExecutor": {"credentials_in_secret": True}},
                             build_cleanup_interval=1)
    async with serve(settings):
        passes = cleaner_passes(kube_api)
        await until(lambda: cleaner_passes(kube_api) >= passes + 2)
    assert kube_api.count("list", "secrets") == 1  # asked once, then not again
    warnings = [r for r in caplog.records if "Not allowed to list Secrets" in r.getMessage()]
    assert len(warnings) == 1
