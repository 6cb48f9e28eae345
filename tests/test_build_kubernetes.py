"""The Kubernetes build backend end to end, against the Kubernetes API test server
(tests/fixtures/kube) and only through kubernetes-asyncio and a kubeconfig, as on a cluster.

One real repo2docker build runs in a build pod (the kubelet runs it on the Docker engine) and is
compared with the same build on the Docker backend; the cross-replica lock runs one more, cached.
Everything else uses pods that never start a container (a missing builder image, an unschedulable
node selector, or pods the server stores directly), so failures and races are cheap and exact.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from typing import Any

import httpx
import pytest

from binderapi.backends.kubernetes import executor as kube_backend
from binderapi.backends.kubernetes.executor import KubernetesBuildBackend, rendezvous_rank
from binderapi.builds import BuildManager
from binderapi.executors.base import BuildJob
from binderapi.services import Services, StartupError
from binderapi.supervisor import Supervisor
from fixtures.kube import KubeAPIServer, write_kubeconfig
from fixtures.kubeapi import LIMIT, PUSH_SECRET, build_pods, kube_settings, until
from fixtures.server import free_port, read_events, serve
from fixtures.stack import (
    BASE_IMAGE,
    BUILDER_IMAGE,
    REGISTRY,
    RUN_ID,
    docker_settings,
    git_spec,
    manifest_exists,
    unique,
)

pytestmark = pytest.mark.docker

GIT_CREDENTIALS = "username=builder\\npassword=not-a-real-secret"
MISSING_IMAGE = "binderapi/no-such-builder:none"  # the test kubelet fails it at once with ErrImagePull
TOLERATIONS = [
    {"key": "hub.jupyter.org/dedicated", "operator": "Equal", "value": "user", "effect": "NoSchedule"},
    {"key": "hub.jupyter.org_dedicated", "operator": "Equal", "value": "user", "effect": "NoSchedule"},
]


def dockerfile() -> str:
    return f"FROM {BASE_IMAGE}\nRUN echo built-by-binderapi-kube-test > /built.txt\n"


@pytest.fixture
def fast_retries(monkeypatch):
    """Shorter pauses between retries of a failing API server; the number of attempts is unchanged."""
    monkeypatch.setattr(kube_backend, "RETRY_DELAY", 0.05)


async def build(client: httpx.AsyncClient, url: str) -> list[dict[str, Any]]:
    async with asyncio.timeout(LIMIT):
        return await read_events(client, url, params={"build_only": "true"})


def shape(events: list[dict[str, Any]]) -> list[tuple[Any, tuple[str, ...]]]:
    """The phases in order (repeats collapsed) with the fields each carries: what a client sees,
    without the build's own wording (layer cache hits, container ids)."""
    seen: list[tuple[Any, tuple[str, ...]]] = []
    for event in events:
        key = (event.get("phase"), tuple(sorted(event)))
        if not seen or seen[-1] != key:
            seen.append(key)
    return seen


def secrets(server: KubeAPIServer) -> list[str]:
    return sorted(s.name for s in server.store.items("secrets"))


# --- a real build ---------------------------------------------------------------------------------

@pytest.mark.kube_nodes({"name": "builder-a", "labels": {"pool": "build"}}, "node-b")
@pytest.mark.usefixtures("no_leaked_build_containers")
async def test_build_matches_the_docker_backend_and_pod_is_binderhubs(client, git_server, kube_api, kubeconfig):
    kube_api.add_secret(PUSH_SECRET, string_data={"config.json": '{"auths": {}}'})
    repo = unique("kube-ok")
    git_server.create_repo(repo, {"Dockerfile": dockerfile()})
    spec = git_spec(git_server.daemon_url(repo), "main")

    async with serve(docker_settings()) as svc:
        docker_events = await build(client, svc.url + "build/" + spec)
    settings = kube_settings(kubeconfig, {
        "KubernetesBuildExecutor": {"extra_envs": {"BINDERAPI_TEST_ENV": "from-extra-envs"},
                                    "node_selector": {"pool": "build"}, "memory_request": "256M",
                                    "image_pull_secrets": ["pull-secret"]},
        "GitRepoProvider": {"git_credentials": GIT_CREDENTIALS},
    })
    async with serve(settings) as svc:
        events = await build(client, svc.url + "build/" + spec)
        assert build_pods(kube_api) == []  # the owner removed its pod, and the garbage collector its Secret:
        await until(lambda: secrets(kube_api) == [PUSH_SECRET])
        again = await build(client, svc.url + "build/" + spec)

    assert shape(events) == shape(docker_events)
    build_id = events[0]["build_id"]
    assert events[0] == {"phase": "waiting", "message": "Waiting for build to start...\n", "build_id": build_id}
    assert docker_events[0] == {**events[0], "build_id": docker_events[0]["build_id"]}
    ready = events[-1]
    assert ready == {"phase": "ready", "message": "Done! Image built\n", "imageName": ready["imageName"], "build_id": build_id}
    assert ready["imageName"].split("-", 3)[3] == docker_events[-1]["imageName"].split("-", 3)[3]  # same name after the prefix
    assert any(e.get("message", "").startswith("Step 1/") for e in events)  # repo2docker's own log, streamed
    assert any(e.get("phase") == "pushing" for e in events)
    assert await manifest_exists(ready["imageName"])
    assert again == [{"phase": "ready", "message": "Done! Found built image\n", "imageName": ready["imageName"]}]

    # the pod exactly as the API server received it (the pod BinderHub's KubernetesBuildExecutor creates)
    (pod,) = kube_api.created("pods")
    name = pod["metadata"]["name"]
    repo_url = git_server.daemon_url(repo)
    assert name.startswith("build-") and len(name) <= 63
    assert pod["metadata"]["labels"] == {"name": name, "component": "binderhub-build",
                                         "binderapi.jupyter.org/build-id": build_id}
    assert pod["metadata"]["annotations"]["binder-repo"] == repo_url
    assert pod["metadata"]["annotations"]["binderapi/image"] == ready["imageName"]
    spec_ = pod["spec"]
    (container,) = spec_["containers"]
    assert container["name"] == "builder" and container["image"] == BUILDER_IMAGE
    sha = ready["imageName"].rsplit(":", 1)[1]
    assert container["args"] == ["jupyter-repo2docker", f"--ref={sha}", f"--image={ready['imageName']}", "--no-clean",
                                 "--no-run", "--json-logs", "--user-name=jovyan", "--user-id=1000", "--push", repo_url]
    credentials = f"{name}-credentials"
    assert container["env"] == [
        {"name": "BINDERAPI_TEST_ENV", "value": "from-extra-envs"},
        # the git provider's clone follows no redirect (the pin is added for host names, not addresses)
        {"name": "GIT_CONFIG_COUNT", "value": "1"},
        {"name": "GIT_CONFIG_KEY_0", "value": "http.followRedirects"},
        {"name": "GIT_CONFIG_VALUE_0", "value": "false"},
        {"name": "GIT_CREDENTIAL_ENV", "valueFrom": {"secretKeyRef": {"name": credentials, "key": "GIT_CREDENTIAL_ENV"}}},
    ]
    assert {"name": "docker-socket", "mountPath": "/var/run/docker.sock"} in container["volumeMounts"]
    assert {"name": "docker-config", "mountPath": "/root/.docker/config.json", "subPath": "config.json"} in container["volumeMounts"]
    assert {"name": "docker-socket", "hostPath": {"path": "/var/run/docker.sock", "type": "Socket"}} in spec_["volumes"]
    assert {"name": "docker-config", "secret": {"secretName": PUSH_SECRET}} in spec_["volumes"]
    # the mount makes the kubelet wait for the Secret, which is created after the pod
    assert {"name": "build-credentials", "secret": {"secretName": credentials, "defaultMode": 0o400}} in spec_["volumes"]
    assert {"name": "build-credentials", "mountPath": "/etc/binderapi/build-credentials", "readOnly": True} \
        in container["volumeMounts"]
    assert container["resources"] == {"limits": {}, "requests": {"memory": str(256 * 1024**2)}}
    assert spec_["tolerations"] == TOLERATIONS
    assert spec_["nodeSelector"] == {"pool": "build"}
    assert spec_["imagePullSecrets"] == [{"name": "pull-secret"}]
    assert spec_["restartPolicy"] == "Never"
    assert spec_["affinity"] == {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
        "weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                           "labelSelector": {"matchLabels": {"component": "binderhub-build"}}}}]}}
    assert {v["spec"].get("nodeName") for v in kube_api.versions(name)} >= {"builder-a"}  # the node selector held
    (secret,) = [s for s in kube_api.created("secrets") if s["metadata"]["name"] == credentials]
    assert base64.b64decode(secret["data"]["GIT_CREDENTIAL_ENV"]).decode() == GIT_CREDENTIALS
    assert secret["metadata"]["labels"] == {"component": "binderhub-build", "name": name}
    assert secret["metadata"]["ownerReferences"] == [{"apiVersion": "v1", "kind": "Pod", "name": name,
                                                      "uid": pod["metadata"]["uid"], "controller": False,
                                                      "blockOwnerDeletion": False}]
    assert kube_api.count("delete", "secrets") == 0  # the garbage collector removed it with its pod
    assert not {r.verb for r in kube_api.requests if r.resource == "secrets"} & {"get", "list", "watch"}


async def test_two_replicas_building_one_image_run_one_pod(client, git_server, kube_api, kubeconfig):
    """The pod name is the lock: the replica whose create loses gets 409 and follows the other's pod."""
    kube_api.add_secret(PUSH_SECRET, string_data={"config.json": '{"auths": {}}'})
    repo = unique("kube-shared")
    git_server.create_repo(repo, {"Dockerfile": dockerfile()})
    spec = git_spec(git_server.daemon_url(repo), "main")
    prefix = f"{REGISTRY}/kube-{RUN_ID}-{uuid.uuid4().hex[:4]}-"
    kube_api.hold_next(1, verb="create", resource="pods")  # replica A's create waits until B's is in
    async with serve(kube_settings(kubeconfig, image_prefix=prefix)) as a, \
            serve(kube_settings(kubeconfig, image_prefix=prefix)) as b:
        first = asyncio.ensure_future(build(client, a.url + "build/" + spec))
        await until(lambda: kube_api.holding == 1)
        second = asyncio.ensure_future(build(client, b.url + "build/" + spec))
        await until(lambda: build_pods(kube_api))
        kube_api.release_holds()
        events_a, events_b = await asyncio.gather(first, second)
        assert build_pods(kube_api) == []
    assert kube_api.count("create", "pods") == 2 and len(kube_api.created("pods")) == 1
    assert events_a[-1]["phase"] == events_b[-1]["phase"] == "ready"
    assert events_a[-1]["imageName"] == events_b[-1]["imageName"]
    # A attached to B's pod and streamed its log
    assert any(e.get("message", "").startswith("Step 1/") for e in events_a)


# --- the pod: sticky builds, credentials, resources -------------------------------------------------

NODES = [{"name": f"node-{c}", "labels": {"pool": "build"}} for c in "abcd"]


@pytest.mark.kube_nodes(*NODES)
@pytest.mark.parametrize("sticky", [True, False])
async def test_sticky_builds_prefer_the_ranked_image_builder_node(kube_api, kubeconfig, sticky):
    builders = ["node-b", "node-c", "node-d"]
    for node in builders:  # BinderHub's dind/pink DaemonSet pods mark the image-builder nodes
        kube_api.add_pod(f"dind-{node}", labels={"component": "image-builder", "app": "binder"}, node_name=node)
    repos = [f"https://github.com/binder-examples/repo-{i}" for i in range(6)]
    expected = {repo: rendezvous_rank(builders, repo)[0] for repo in repos}
    assert len(set(expected.values())) > 1  # the repos spread over several nodes
    settings = kube_settings(kubeconfig, {"KubernetesBuildExecutor": {"build_image": MISSING_IMAGE,
                                                                      "sticky_builds": sticky}})
    backend = KubernetesBuildBackend(settings)
    try:
        for i, repo in enumerate(repos):
            job = BuildJob(name=f"build-sticky-{i}", image_name=f"{REGISTRY}/sticky-{i}:abc", repo_url=repo, ref="abc")
            await backend.start(job)
            await until(lambda job=job: (kube_api.get_pod(job.name) or {}).get("spec", {}).get("nodeName"))
            pod = kube_api.get_pod(job.name)
            affinity = pod["spec"]["affinity"]
            if sticky:
                assert affinity == {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                    "weight": 100, "preference": {"matchExpressions": [
                        {"key": "kubernetes.io/hostname", "operator": "In", "values": [expected[repo]]}]}}]}}
                assert pod["spec"]["nodeName"] == expected[repo]  # the scheduler honoured the preference
            else:
                assert list(affinity) == ["podAntiAffinity"]
                assert affinity["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["weight"] == 100
            await backend.stop(job.name)
        assert build_pods(kube_api) == []
    finally:
        await backend.close()


async def test_pod_with_registry_credentials_and_explicit_resources(kube_api, kubeconfig):
    settings = kube_settings(kubeconfig, {"KubernetesBuildExecutor": {
        "build_image": MISSING_IMAGE, "registry_credentials": {"registry": REGISTRY, "username": "u", "password": "p"},
        "resources": {"limits": {"memory": "2Gi", "cpu": "2"}, "requests": {"cpu": "500m"}},
        "memory_limit": "1G", "docker_host": "unix:///var/run/docker.sock",
    }})
    backend = KubernetesBuildBackend(settings)
    job = BuildJob(name="build-creds-abc", image_name=f"{REGISTRY}/creds:abc", repo_url="https://example.org/r", ref="abc",
                   git_credentials=GIT_CREDENTIALS)
    try:
        await backend.start(job)
        (pod,) = kube_api.created("pods")
        (container,) = pod["spec"]["containers"]
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
        assert refs == {key: {"name": "build-creds-abc-credentials", "key": key}
                        for key in ("GIT_CREDENTIAL_ENV", "CONTAINER_ENGINE_REGISTRY_CREDENTIALS")}
        secret = kube_api.store.get("secrets", "default", "build-creds-abc-credentials").data
        assert base64.b64decode(secret["data"]["CONTAINER_ENGINE_REGISTRY_CREDENTIALS"]).decode() == \
            '{"registry": "127.0.0.1:5000", "username": "u", "password": "p"}'
        # registry credentials replace the push secret mount; the socket comes from docker_host
        assert [v["name"] for v in pod["spec"]["volumes"]] == ["docker-socket", "build-credentials"]
        assert container["resources"] == {"limits": {"memory": "2Gi", "cpu": "2"}, "requests": {"cpu": "500m"}}
        assert "--build-memory-limit" in container["args"] and "p" not in container["args"]
        await backend.stop(job.name)
        assert build_pods(kube_api) == []
        await until(lambda: secrets(kube_api) == [])  # the garbage collector follows the pod
    finally:
        await backend.close()


async def test_credentials_fall_back_to_plain_env_when_secrets_are_forbidden(kube_api, kubeconfig):
    settings = kube_settings(kubeconfig, {"KubernetesBuildExecutor": {"build_image": MISSING_IMAGE, "push_secret": "",
                                                                      "docker_host": None}})
    backend = KubernetesBuildBackend(settings)
    kube_api.fail_next(1, 403, verb="create", resource="secrets")
    job = BuildJob(name="build-plain-abc", image_name=f"{REGISTRY}/plain:abc", repo_url="https://example.org/r", ref="abc",
                   git_credentials=GIT_CREDENTIALS, push=False)
    try:
        await backend.start(job)
        # the first pod waited for a Secret that could not be made: replaced by one with plain values
        first, pod = kube_api.created("pods")
        assert first["metadata"]["uid"] not in {p["metadata"]["uid"] for p in kube_api.pods()}
        (container,) = pod["spec"]["containers"]
        assert container["env"] == [{"name": "GIT_CREDENTIAL_ENV", "value": GIT_CREDENTIALS}]
        assert pod["spec"]["volumes"] == [] and "--push" not in container["args"]
        await backend.stop(job.name)
        await backend.start(BuildJob(name="build-plain-def", image_name=f"{REGISTRY}/plain:def", ref="def",
                                     repo_url="https://example.org/r", git_credentials=GIT_CREDENTIALS, push=False))
        assert kube_api.count("create", "secrets") == 1  # known forbidden now: not asked again
        await backend.stop("build-plain-def")
    finally:
        await backend.close()
    assert build_pods(kube_api) == [] and secrets(kube_api) == []


# --- a failing or unreachable API server ----------------------------------------------------------

async def failed_build(client, settings, git_server) -> tuple[dict[str, Any], Any]:
    repo = unique("kube-fail")
    git_server.create_repo(repo, {"Dockerfile": dockerfile()})
    async with serve(settings) as svc:
        events = await build(client, svc.url + "build/" + git_spec(git_server.daemon_url(repo), "main"))
    assert [e["phase"] for e in events if e.get("phase") == "failed"] == ["failed"] and events[-1]["phase"] == "failed"
    return events[-1], svc


@pytest.mark.usefixtures("fast_retries")
@pytest.mark.parametrize("fault, answer", [
    ("fail", "500 Internal Server Error: injected failure (500)"),
    ("drop", "connection failed (ClientPayloadError"),
    ("hang", "no answer in time"),
])
async def test_create_failing_ends_in_a_clear_failed_event(client, git_server, kube_api, kubeconfig, fault, answer):
    getattr(kube_api, f"{fault}_next")(99, verb="create", resource="pods")
    settings = kube_settings(kubeconfig, {"KubernetesBuildExecutor": {"api_timeout": 1},
                                          "GitRepoProvider": {"git_credentials": GIT_CREDENTIALS}})
    failed, _ = await failed_build(client, settings, git_server)
    assert failed["message"].startswith(f"Kubernetes API {kube_api.url} failed creating the build pod build-")
    assert answer in failed["message"] and "try the build again later" in failed["message"]
    assert failed["status_code"] == 503  # a dependency is down (docs/events.md)
    assert kube_api.count("create", "pods") == kube_backend.API_ATTEMPTS  # retried, then given up
    assert build_pods(kube_api) == [] and secrets(kube_api) == []  # the credentials Secret went too


async def test_forbidden_create_is_not_retried_and_names_rbac(client, git_server, kube_api, kubeconfig):
    kube_api.fail_next(1, 403, verb="create", resource="pods", message='pods is forbidden: User "binder" cannot create')
    failed, _ = await failed_build(client, kube_settings(kubeconfig), git_server)
    assert "403 Forbidden: pods is forbidden" in failed["message"] and "RBAC Role in namespace default" in failed["message"]
    assert "status_code" not in failed  # a refusal to fix, not a dependency down
    assert kube_api.count("create", "pods") == 1 and build_pods(kube_api) == []


@pytest.mark.usefixtures("fast_retries")
async def test_lost_create_answer_is_adopted_not_leaked(client, git_server, kube_api, kubeconfig):
    """The pod was created but the answer never came: the retry's 409 finds our own creator mark,
    so this replica owns the build (and removes its pod) instead of leaving it to the cleaner."""
    kube_api.add_secret(PUSH_SECRET, string_data={"config.json": '{"auths": {}}'})  # the pod mounts it before pulling
    kube_api.drop_next(1, verb="create", resource="pods", after=True)
    settings = kube_settings(kubeconfig, {"KubernetesBuildExecutor": {"build_image": MISSING_IMAGE}})
    failed, _ = await failed_build(client, settings, git_server)
    assert failed["message"].startswith("The build pod cannot start: ErrImagePull: ")
    assert MISSING_IMAGE in failed["message"]
    assert kube_api.count("create", "pods") == 2 and len(kube_api.created("pods")) == 1
    assert kube_api.count("delete", "pods") >= 1 and build_pods(kube_api) == []


@pytest.mark.usefixtures("fast_retries")
@pytest.mark.parametrize("fault, answer", [
    ("fail", "500 Internal Server Error: injected failure (500)"),
    ("drop", "connection failed (ClientPayloadError"),
    ("forbidden-delete", "403 Forbidden"),
])
async def test_secret_that_cannot_be_created_fails_the_build_and_removes_its_pod(
        client, git_server, kube_api, kubeconfig, fault, answer):
    """The pod comes first and waits for its Secret: if the Secret cannot be made, the build
    fails saying so and the pod goes, rather than waiting until max_age."""
    settings = kube_settings(kubeconfig, {"KubernetesBuildExecutor": {"api_timeout": 1},
                                          "GitRepoProvider": {"git_credentials": GIT_CREDENTIALS}})
    if fault == "fail":
        kube_api.fail_next(99, verb="create", resource="secrets")
    elif fault == "drop":
        kube_api.drop_next(99, verb="create", resource="secrets")
    else:  # a stale Secret of that name (409), which RBAC does not let us replace
        kube_api.fail_next(1, 409, verb="create", resource="secrets")
        kube_api.fail_next(99, 403, verb="delete", resource="secrets")
    failed, _ = await failed_build(client, settings, git_server)
    what = "deleting build-" if fault == "forbidden-delete" else "storing the build credentials in Secret build-"
    assert failed["message"].startswith(f"Kubernetes API {kube_api.url} failed {what}")
    assert answer in failed["message"]
    assert kube_api.count("create", "pods") == 1 and kube_api.count("delete", "pods") == 1
    assert build_pods(kube_api) == []
    assert secrets(kube_api) == []


@pytest.mark.usefixtures("fast_retries")
async def test_lost_secret_create_answer_and_a_stale_secret(kube_api, kubeconfig):
    """A retry's 409 is our own Secret whose answer was lost; a first try's 409 is a Secret no
    live pod owns (here one from before Secrets had owners): it is replaced by ours."""
    settings = kube_settings(kubeconfig, {"KubernetesBuildExecutor": {"build_image": MISSING_IMAGE, "push_secret": ""}})
    backend = KubernetesBuildBackend(settings)
    lost = BuildJob(name="build-lost-abc", image_name=f"{REGISTRY}/lost:abc", repo_url="https://example.org/r",
                    ref="abc", git_credentials=GIT_CREDENTIALS, push=False)
    stale = BuildJob(name="build-stale-abc", image_name=f"{REGISTRY}/stale:abc", repo_url="https://example.org/r",
                     ref="abc", git_credentials=GIT_CREDENTIALS, push=False)
    kube_api.add_secret("build-stale-abc-credentials", string_data={"GIT_CREDENTIAL_ENV": "old"})
    try:
        kube_api.drop_next(1, verb="create", resource="secrets", after=True)
        await backend.start(lost)
        await backend.start(stale)
        assert kube_api.count("create", "secrets") == 4 and kube_api.count("delete", "secrets") == 1
        for job in (lost, stale):
            pod = kube_api.get_pod(job.name)
            secret = kube_api.store.get("secrets", "default", f"{job.name}-credentials").data
            assert secret["metadata"]["ownerReferences"][0]["uid"] == pod["metadata"]["uid"]
            assert base64.b64decode(secret["data"]["GIT_CREDENTIAL_ENV"]).decode() == GIT_CREDENTIALS
            await backend.stop(job.name)
        await until(lambda: secrets(kube_api) == [])
    finally:
        await backend.close()


@pytest.mark.usefixtures("fast_retries")
@pytest.mark.parametrize("fault, answer", [
    ("fail", "503 ServiceUnavailable: injected failure (503)"),
    ("drop", "connection failed (ClientPayloadError"),
])
async def test_watch_failing_ends_in_a_clear_failed_event(client, git_server, kube_api, kubeconfig, fault, answer):
    if fault == "fail":
        kube_api.fail_next(99, 503, verb="watch", resource="pods")
    else:
        kube_api.drop_next(99, verb="watch", resource="pods")
    # a node selector nothing matches: the pod stays Pending, no container runs
    settings = kube_settings(kubeconfig, {"KubernetesBuildExecutor": {"node_selector": {"pool": "nowhere"}}})
    failed, _ = await failed_build(client, settings, git_server)
    assert failed["message"].startswith(f"Kubernetes API {kube_api.url} failed watching the build pod build-")
    assert answer in failed["message"]
    assert kube_api.count("watch", "pods") == kube_backend.API_ATTEMPTS
    assert build_pods(kube_api) == []  # the owner removed its pod


@pytest.mark.usefixtures("fast_retries")
async def test_unreachable_api_server(client, git_server, tmp_path):
    dead = write_kubeconfig(tmp_path / "dead-kubeconfig", f"http://127.0.0.1:{free_port()}")
    settings = kube_settings(dead, builder_required=False)
    failed, svc = await failed_build(client, settings, git_server)
    assert failed["message"].startswith("Kubernetes API http://127.0.0.1:")
    assert "connection failed (ClientConnectorError" in failed["message"]


async def test_unreachable_api_server_refuses_to_start(tmp_path):
    dead = write_kubeconfig(tmp_path / "dead-kubeconfig", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StartupError, match=r"build backend \(kubernetes\) is unreachable: Kubernetes API .* failed answering /version"):
        await Services.start(kube_settings(dead))


async def test_a_pods_build_id_label_is_read_back(kube_api, kubeconfig):
    """A restarted binderapi knows which build a running pod is by its build-id label."""
    kube_api.add_pod("build-labelled", labels={"name": "build-labelled", "component": "binderhub-build",
                                               "binderapi.jupyter.org/build-id": "0123456789abcdef012345"},
                     phase="Running", annotations={"binder-repo": "https://example.org/r", "binderapi/image": "r:1"})
    kube_api.add_pod("build-unlabelled", labels={"name": "build-unlabelled", "component": "binderhub-build"},
                     phase="Running", annotations={"binder-repo": "https://example.org/r", "binderapi/image": "r:2"})
    backend = KubernetesBuildBackend(kube_settings(kubeconfig))
    try:
        assert (await backend.inspect("build-labelled")).build_id == "0123456789abcdef012345"
        assert {info.name: info.build_id for info in await backend.list_builds()} == {
            "build-labelled": "0123456789abcdef012345", "build-unlabelled": ""}
    finally:
        await backend.close()


# --- a pod deleted under a build (BinderHub #583) -------------------------------------------------

@pytest.mark.parametrize("last_phase, success", [("Running", False), ("Succeeded", True)])
async def test_pod_deleted_while_building_fails_unless_it_had_succeeded(kube_api, kubeconfig, last_phase, success):
    name = f"build-deleted-{last_phase.lower()}"
    image = f"{REGISTRY}/deleted:abc"
    kube_api.add_pod(name, labels={"name": name, "component": "binderhub-build"}, phase="Running",
                     annotations={"binder-repo": "https://example.org/r", "binderapi/image": image})
    backend = KubernetesBuildBackend(kube_settings(kubeconfig))
    supervisor = Supervisor()

    async def image_exists(_: str) -> bool:
        return False  # nothing was pushed: success may only come from the pod's own phase

    manager = BuildManager(backend, supervisor, concurrent_build_limit=2, log_tail_lines=100, max_age=0,
                           image_exists=image_exists)
    try:
        job = BuildJob(name=name, image_name=image, repo_url="https://example.org/r", ref="abc")
        async with manager.watch(job) as watch:
            await until(lambda: kube_api.count("watch", "pods") >= 1)  # it follows the running pod
            if last_phase == "Succeeded":
                kube_api.set_phase(name, "Succeeded")
            kube_api.remove_pod(name)  # e.g. kubectl delete, or a node going away
            async with asyncio.timeout(LIMIT):
                async for _ in watch:
                    pass
            assert watch.outcome.success is success
            if not success:
                assert watch.outcome.message == "The build stopped before finishing (its container or pod was removed)."
    finally:
        await supervisor.close()
        await backend.close()
