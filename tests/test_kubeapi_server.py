"""The Kubernetes API test server (tests/fixtures/kube), driven only through kubernetes-asyncio,
the client the Kubernetes backend uses, so these tests prove the protocol that backend will see.

Building a client, as any test of the Kubernetes backend does::

    path = kube_api.write_kubeconfig(tmp_path / "kubeconfig")   # or the `kubeconfig` fixture
    api = await kubernetes_asyncio.config.new_client_from_config(config_file=path)
    v1 = kubernetes_asyncio.client.CoreV1Api(api)
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import tracemalloc
from typing import Any

import aiodocker
import pytest
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from fixtures.kube import LABEL_INSTANCE, SKIP_KUBELET, KubeAPIServer, write_kubeconfig

DEBIAN = "binderapi/debian:bookworm"
R2D = "binderapi/repo2docker:2024.7.0"
NS = "default"
LIMIT = 60  # seconds: a guard against hangs, never an assertion on speed


@pytest.fixture
def v1(kube_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(kube_client)


def pod(name: str, *, command: list[str] | None = None, args: list[str] | None = None,
        image: str = DEBIAN, labels: dict[str, str] | None = None, skip: bool = False,
        **spec: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": image}
    if command:
        container["command"] = command
    if args:
        container["args"] = args
    container.update(spec.pop("container", {}))
    metadata: dict[str, Any] = {"name": name, "labels": labels or {}}
    if skip:
        metadata["annotations"] = {SKIP_KUBELET: "skip"}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
            "spec": {"restartPolicy": "Never", "containers": [container], **spec}}


async def current_rv(v1: client.CoreV1Api) -> str:
    return (await v1.list_namespaced_pod(NS, limit=1)).metadata.resource_version


async def pod_events(v1: client.CoreV1Api, name: str, since: str,
                     until: tuple[str, ...] = ("Succeeded", "Failed"), *,
                     stop: Any = None) -> list[tuple[str, dict[str, Any]]]:
    """Watch one pod from `since` until its phase is in `until` (or `stop(type, obj)`)."""
    events: list[tuple[str, dict[str, Any]]] = []
    async with asyncio.timeout(LIMIT), watch.Watch() as w:
        async for event in w.stream(v1.list_namespaced_pod, NS, resource_version=since,
                                    field_selector=f"metadata.name={name}"):
            obj = event["raw_object"]
            events.append((event["type"], obj))
            if stop is not None and stop(event["type"], obj):
                break
            if stop is None and obj.get("status", {}).get("phase") in until:
                break
    return events


def phases(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    out: list[str] = []
    for _, obj in events:
        phase = obj.get("status", {}).get("phase")
        if not out or out[-1] != phase:
            out.append(phase)
    return out


def status_body(exc: ApiException) -> dict[str, Any]:
    body = json.loads(exc.body)
    assert body["kind"] == "Status" and body["apiVersion"] == "v1" and body["status"] == "Failure"
    assert body["code"] == exc.status
    return body


async def until(predicate: Any) -> None:
    """Poll a condition the server changes on its own (bounded by LIMIT)."""
    async with asyncio.timeout(LIMIT):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.02)


# --- discovery and plain API semantics --------------------------------------------------------

async def test_discovery(kube_client: client.ApiClient, kube_api: KubeAPIServer) -> None:
    version = await client.VersionApi(kube_client).get_code()
    assert version.major == "1" and version.git_version.startswith("v1.")
    assert (await client.CoreApi(kube_client).get_api_versions()).versions == ["v1"]
    resources = {r.name: r for r in (await client.CoreV1Api(kube_client).get_api_resources()).resources}
    assert resources["pods"].namespaced and "watch" in resources["pods"].verbs
    assert "pods/log" in resources and not resources["nodes"].namespaced
    with pytest.raises(ApiException) as info:
        await client.AppsV1Api(kube_client).list_namespaced_deployment(NS)
    assert info.value.status == 404 and status_body(info.value)["reason"] == "NotFound"


async def test_create_sets_server_fields(v1: client.CoreV1Api, kube_api: KubeAPIServer) -> None:
    before = int(await current_rv(v1))
    created = await v1.create_namespaced_pod(NS, pod("p1", skip=True))
    assert created.metadata.uid and created.metadata.creation_timestamp is not None
    assert int(created.metadata.resource_version) > before
    assert created.status.phase == "Pending" and created.metadata.namespace == NS
    assert created.spec.restart_policy == "Never" and created.spec.containers[0].image_pull_policy == "IfNotPresent"
    read = await v1.read_namespaced_pod("p1", NS)
    assert read.metadata.uid == created.metadata.uid
    generated = await v1.create_namespaced_pod(
        NS, {"metadata": {"generateName": "build-", "annotations": {SKIP_KUBELET: "skip"}},
             "spec": {"containers": [{"name": "c", "image": DEBIAN}]}})
    assert generated.metadata.name.startswith("build-") and len(generated.metadata.name) == 11
    second = await v1.create_namespaced_pod(NS, pod("p2", skip=True))
    assert int(second.metadata.resource_version) > int(generated.metadata.resource_version)


async def test_duplicate_create_is_409(v1: client.CoreV1Api, kube_api: KubeAPIServer) -> None:
    await v1.create_namespaced_pod(NS, pod("dup", skip=True))
    with pytest.raises(ApiException) as info:
        await v1.create_namespaced_pod(NS, pod("dup", skip=True))
    body = status_body(info.value)
    assert info.value.status == 409 and body["reason"] == "AlreadyExists"
    assert body["details"] == {"name": "dup", "kind": "pods"}
    assert body["message"] == 'pods "dup" already exists'


async def test_concurrent_creates_of_one_name_make_one_pod(v1: client.CoreV1Api,
                                                            kube_api: KubeAPIServer) -> None:
    results = await asyncio.gather(*(v1.create_namespaced_pod(NS, pod("same", skip=True))
                                     for _ in range(5)), return_exceptions=True)
    created = [r for r in results if not isinstance(r, BaseException)]
    conflicts = [r for r in results if isinstance(r, ApiException) and r.status == 409]
    assert len(created) == 1 and len(conflicts) == 4
    assert len(kube_api.pods(NS)) == 1


async def test_not_found_and_invalid(v1: client.CoreV1Api, kube_api: KubeAPIServer) -> None:
    for call in (v1.read_namespaced_pod("nope", NS), v1.delete_namespaced_pod("nope", NS),
                 v1.read_namespaced_pod_log("nope", NS), v1.read_namespaced_secret("nope", NS),
                 v1.read_node("nope")):
        with pytest.raises(ApiException) as info:
            await call
        body = status_body(info.value)
        assert info.value.status == 404 and body["reason"] == "NotFound"
        assert body["details"]["name"] == "nope"
    with pytest.raises(ApiException) as info:
        await v1.create_namespaced_pod(NS, {"metadata": {"name": "Bad_Name"},
                                            "spec": {"containers": [{"name": "c", "image": DEBIAN}]}})
    assert info.value.status == 422 and status_body(info.value)["reason"] == "Invalid"
    with pytest.raises(ApiException) as info:
        await v1.create_namespaced_pod(NS, pod("x", container={"volumeMounts": [{"name": "v", "mountPath": "/v"}]}))
    body = status_body(info.value)
    assert info.value.status == 422 and body["details"]["causes"][0]["field"] == "spec.containers[0].volumeMounts[0].name"
    with pytest.raises(ApiException) as info:
        await v1.create_namespaced_pod(NS, {"metadata": {"name": "x", "namespace": "other"},
                                            "spec": {"containers": [{"name": "c", "image": DEBIAN}]}})
    assert info.value.status == 400 and status_body(info.value)["reason"] == "BadRequest"


async def test_list_selectors(v1: client.CoreV1Api, kube_api: KubeAPIServer) -> None:
    kube_api.set_nodes(["node-a", "node-b"])
    kube_api.add_pod("web-1", labels={"app": "web", "tier": "front", "env": "prod"}, node_name="node-a")
    kube_api.add_pod("web-2", labels={"app": "web", "tier": "front", "env": "dev"}, phase="Pending")
    kube_api.add_pod("db-1", labels={"app": "db", "tier": "back", "env": "prod", "legacy": "yes"},
                     node_name="node-b")
    kube_api.add_pod("other", namespace="elsewhere", labels={"app": "web"})

    async def names(**kwargs: Any) -> list[str]:
        return [p.metadata.name for p in (await v1.list_namespaced_pod(NS, **kwargs)).items]

    assert await names() == ["db-1", "web-1", "web-2"]
    assert await names(label_selector="app=web") == ["web-1", "web-2"]
    assert await names(label_selector="app==web,env!=dev") == ["web-1"]
    assert await names(label_selector="env in (prod, staging),tier notin (front)") == ["db-1"]
    assert await names(label_selector="!legacy") == ["web-1", "web-2"]
    assert await names(label_selector="legacy") == ["db-1"]
    assert await names(label_selector="app=web,missing!=x") == ["web-1", "web-2"]
    assert await names(field_selector="status.phase=Running") == ["db-1", "web-1"]
    assert await names(field_selector="status.phase!=Running") == ["web-2"]
    assert await names(field_selector="metadata.name=web-2") == ["web-2"]
    assert await names(field_selector="spec.nodeName=node-b", label_selector="app") == ["db-1"]
    everywhere = await v1.list_pod_for_all_namespaces(label_selector="app=web")
    assert [(p.metadata.namespace, p.metadata.name) for p in everywhere.items] == [
        ("default", "web-1"), ("default", "web-2"), ("elsewhere", "other")]
    for bad in ({"label_selector": "app in (web"}, {"field_selector": "spec.image=x"}):
        with pytest.raises(ApiException) as info:
            await v1.list_namespaced_pod(NS, **bad)
        assert info.value.status == 400 and status_body(info.value)["reason"] == "BadRequest"


async def test_list_pages_with_limit_and_continue(v1: client.CoreV1Api, kube_api: KubeAPIServer) -> None:
    kube_api.add_pods(25, prefix="p-")
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        page = await v1.list_namespaced_pod(NS, limit=10, _continue=token)
        pages += 1
        seen += [p.metadata.name for p in page.items]
        token = page.metadata._continue
        if not token:
            break
        assert page.metadata.remaining_item_count == 25 - len(seen)
    assert pages == 3 and sorted(seen) == sorted(f"p-{i}" for i in range(25)) and len(set(seen)) == 25


# --- watches ----------------------------------------------------------------------------------

async def test_watch_from_resource_version_and_resume(v1: client.CoreV1Api, kube_api: KubeAPIServer) -> None:
    kube_api.add_pod("old")
    since = await current_rv(v1)
    kube_api.add_pod("a")
    kube_api.set_phase("a", "Succeeded")
    seen: list[tuple[str, str, str | None]] = []
    w = watch.Watch()
    async with asyncio.timeout(LIMIT), w:
        async for event in w.stream(v1.list_namespaced_pod, NS, resource_version=since):
            obj = event["raw_object"]
            seen.append((event["type"], obj["metadata"]["name"], obj["status"].get("phase")))
            if len(seen) == 2:
                kube_api.close_watches()  # the server ends the stream; the client resumes
                kube_api.add_pod("b")
            if len(seen) == 3:
                break
    assert seen == [("ADDED", "a", "Running"), ("MODIFIED", "a", "Succeeded"), ("ADDED", "b", "Running")]
    watches = [r for r in kube_api.requests if r.verb == "watch"]
    assert len(watches) == 2
    assert watches[0].query["resourceVersion"] == since
    assert int(watches[1].query["resourceVersion"]) > int(since)  # resumed, no replay of "a"


async def test_watch_without_version_sends_current_state(v1: client.CoreV1Api, kube_api: KubeAPIServer) -> None:
    kube_api.add_pods(3, prefix="x-")
    seen = []
    async with asyncio.timeout(LIMIT), watch.Watch() as w:
        async for event in w.stream(v1.list_namespaced_pod, NS, timeout_seconds=30):
            seen.append((event["type"], event["object"].metadata.name))
            if len(seen) == 3:
                kube_api.remove_pod("x-1")
            if len(seen) == 4:
                break
    assert seen == [("ADDED", "x-0"), ("ADDED", "x-1"), ("ADDED", "x-2"), ("DELETED", "x-1")]


async def test_watch_410_gone(v1: client.CoreV1Api, kube_api: KubeAPIServer) -> None:
    kube_api.add_pod("a")
    old = await current_rv(v1)
    kube_api.add_pod("b")
    kube_api.compact()
    # the raw stream: HTTP 200, then one ERROR event with an Expired Status, then the end
    response = await v1.list_namespaced_pod(NS, watch=True, resource_version=old, _preload_content=False)
    async with asyncio.timeout(LIMIT):
        lines = [json.loads(line) async for line in response.content]
    response.release()
    assert response.status == 200 and len(lines) == 1
    assert lines[0]["type"] == "ERROR"
    assert lines[0]["object"]["code"] == 410 and lines[0]["object"]["reason"] == "Expired"
    assert lines[0]["object"]["kind"] == "Status"
    # kubernetes-asyncio turns it into ApiException(410) (after retrying once when watching forever)
    for kwargs in ({"timeout_seconds": 30}, {}):
        with pytest.raises(ApiException) as info:
            async with asyncio.timeout(LIMIT), watch.Watch() as w:
                async for _ in w.stream(v1.list_namespaced_pod, NS, resource_version=old, **kwargs):
                    pass
        assert info.value.status == 410
    # the cure a client applies: relist and watch from the list's version
    fresh = await v1.list_namespaced_pod(NS)
    assert [p.metadata.name for p in fresh.items] == ["a", "b"]
    async with asyncio.timeout(LIMIT), watch.Watch() as w:
        kube_api.add_pod("c")
        async for event in w.stream(v1.list_namespaced_pod, NS, resource_version=fresh.metadata.resource_version):
            assert (event["type"], event["object"].metadata.name) == ("ADDED", "c")
            break


async def test_history_is_bounded(kube_api_factory: Any, tmp_path: Any) -> None:
    server = await kube_api_factory(history_size=5, kubelet=False)
    async with await config.new_client_from_config(
            config_file=server.write_kubeconfig(tmp_path / "kc"), persist_config=False) as api:
        v1 = client.CoreV1Api(api)
        start = await current_rv(v1)
        server.add_pods(20)
        with pytest.raises(ApiException) as info:
            async with asyncio.timeout(LIMIT), watch.Watch() as w:
                async for _ in w.stream(v1.list_namespaced_pod, NS, resource_version=start, timeout_seconds=5):
                    pass
        assert info.value.status == 410
        recent = str(int(await current_rv(v1)) - 3)
        names = []
        async with asyncio.timeout(LIMIT), watch.Watch() as w:
            async for event in w.stream(v1.list_namespaced_pod, NS, resource_version=recent):
                names.append(event["object"].metadata.name)
                if len(names) == 3:
                    break
        assert names == ["pod-17", "pod-18", "pod-19"]


async def test_bookmarks(v1: client.CoreV1Api, kube_api: KubeAPIServer) -> None:
    kube_api.bookmark_interval = 0.05
    kube_api.add_pod("a")
    since = await current_rv(v1)
    kube_api.add_pod("b")
    seen = []
    async with asyncio.timeout(LIMIT), watch.Watch() as w:
        async for event in w.stream(v1.list_namespaced_pod, NS, resource_version=since,
                                    allow_watch_bookmarks=True, timeout_seconds=60):
            seen.append(event)
            if event["type"] == "BOOKMARK":
                break
    assert [e["type"] for e in seen] == ["ADDED", "BOOKMARK"]
    bookmark = seen[-1]["raw_object"]
    assert bookmark["kind"] == "Pod" and set(bookmark["metadata"]) >= {"resourceVersion"}
    assert bookmark["metadata"]["resourceVersion"] == await current_rv(v1)
    # without allowWatchBookmarks: none, and the stream ends at timeoutSeconds
    async with asyncio.timeout(LIMIT), watch.Watch() as w:
        rest = [e async for e in w.stream(v1.list_namespaced_pod, NS, resource_version=await current_rv(v1),
                                          timeout_seconds=1)]
    assert rest == []
    # sendInitialEvents: the current state, then a bookmark marking its end
    seen = []
    async with asyncio.timeout(LIMIT), watch.Watch() as w:
        async for event in w.stream(v1.list_namespaced_pod, NS, allow_watch_bookmarks=True,
                                    send_initial_events=True, resource_version_match="NotOlderThan"):
            seen.append(event)
            if event["type"] == "BOOKMARK":
                break
    assert [e["type"] for e in seen] == ["ADDED", "ADDED", "BOOKMARK"]
    assert seen[-1]["raw_object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


async def test_watch_follows_selector_transitions(v1: client.CoreV1Api, kube_api: KubeAPIServer) -> None:
    kube_api.add_pod("p", labels={"role": "build"})
    since = await current_rv(v1)
    await v1.patch_namespaced_pod("p", NS, {"metadata": {"labels": {"x": "1"}}})  # still matches
    await v1.patch_namespaced_pod("p", NS, {"metadata": {"labels": {"role": None}}})  # stops matching
    await v1.patch_namespaced_pod("p", NS, {"metadata": {"labels": {"role": "build"}}})  # matches again
    seen = []
    async with asyncio.timeout(LIMIT), watch.Watch() as w:
        async for event in w.stream(v1.list_namespaced_pod, NS, resource_version=since,
                                    label_selector="role=build"):
            seen.append((event["type"], event["object"].metadata.labels))
            if len(seen) == 3:
                break
    assert seen == [("MODIFIED", {"role": "build", "x": "1"}),
                    ("DELETED", {"role": "build", "x": "1"}),  # the last state that matched
                    ("ADDED", {"role": "build", "x": "1"})]


async def test_delete_emits_deleted(v1: client.CoreV1Api, kube_api: KubeAPIServer) -> None:
    await v1.create_namespaced_pod(NS, pod("gone", skip=True))
    since = await current_rv(v1)
    deleted = await v1.delete_namespaced_pod("gone", NS)
    assert deleted.metadata.name == "gone"
    events = await pod_events(v1, "gone", since, stop=lambda t, o: t == "DELETED")
    assert [t for t, _ in events] == ["DELETED"]
    assert int(events[0][1]["metadata"]["resourceVersion"]) > int(since)
    with pytest.raises(ApiException) as info:
        await v1.read_namespaced_pod("gone", NS)
    assert info.value.status == 404


async def test_all_namespaces_watch(v1: client.CoreV1Api, kube_api: KubeAPIServer) -> None:
    since = await current_rv(v1)
    kube_api.add_pod("a", namespace="ns-1")
    kube_api.add_pod("b", namespace="ns-2")
    seen = []
    async with asyncio.timeout(LIMIT), watch.Watch() as w:
        async for event in w.stream(v1.list_pod_for_all_namespaces, resource_version=since):
            seen.append((event["object"].metadata.namespace, event["object"].metadata.name))
            if len(seen) == 2:
                break
    assert seen == [("ns-1", "a"), ("ns-2", "b")]


async def test_delete_collection(v1: client.CoreV1Api, kube_api: KubeAPIServer) -> None:
    kube_api.add_pods(3, prefix="keep-", labels={"app": "keep"})
    kube_api.add_pods(4, prefix="drop-", labels={"app": "drop"})
    await v1.delete_collection_namespaced_pod(NS, label_selector="app=drop")
    assert sorted(p["metadata"]["name"] for p in kube_api.pods(NS)) == ["keep-0", "keep-1", "keep-2"]


# --- secrets and nodes ------------------------------------------------------------------------

async def test_secrets(v1: client.CoreV1Api, kube_api: KubeAPIServer) -> None:
    created = await v1.create_namespaced_secret(NS, {"metadata": {"name": "push-creds"},
                                                    "stringData": {"config.json": '{"auths": {}}'}})
    assert created.type == "Opaque" and created.string_data is None
    assert base64.b64decode(created.data["config.json"]) == b'{"auths": {}}'
    read = await v1.read_namespaced_secret("push-creds", NS)
    assert read.data == created.data and read.metadata.uid == created.metadata.uid
    with pytest.raises(ApiException) as info:
        await v1.create_namespaced_secret(NS, {"metadata": {"name": "push-creds"}, "data": {}})
    assert info.value.status == 409 and status_body(info.value)["details"]["kind"] == "secrets"
    assert [s.metadata.name for s in (await v1.list_namespaced_secret(NS)).items] == ["push-creds"]
    result = await v1.delete_namespaced_secret("push-creds", NS)
    assert result.status == "Success" and result.details.name == "push-creds"
    with pytest.raises(ApiException) as info:
        await v1.read_namespaced_secret("push-creds", NS)
    assert info.value.status == 404


def owner(obj: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": obj.kind or "Pod", "name": obj.metadata.name, "uid": obj.metadata.uid}


def secret_names(kube_api: KubeAPIServer) -> list[str]:
    return kube_api.secrets(NS)


async def test_garbage_collector_follows_owner_references(v1: client.CoreV1Api, kube_api: KubeAPIServer) -> None:
    """Background propagation: a dependent goes after its last owner does (matched by uid), and
    loses the reference to an owner that went while another is left."""
    a = await v1.create_namespaced_pod(NS, pod("owner-a", skip=True))
    b = await v1.create_namespaced_pod(NS, pod("owner-b", skip=True))
    await v1.create_namespaced_secret(NS, {"metadata": {"name": "of-a", "ownerReferences": [owner(a)]},
                                           "stringData": {"k": "v"}})
    both = await v1.create_namespaced_secret(NS, {"metadata": {"name": "of-both",
                                                               "ownerReferences": [owner(a), owner(b)]},
                                                  "stringData": {"k": "v"}})
    assert both.metadata.owner_references[1].uid == b.metadata.uid
    await v1.create_namespaced_secret(NS, {"metadata": {"name": "unowned"}, "stringData": {"k": "v"}})
    await asyncio.sleep(0.2)  # the collector has seen them all, owners present: nothing goes
    assert secret_names(kube_api) == ["of-a", "of-both", "unowned"]

    await v1.delete_namespaced_pod("owner-a", NS)
    await until(lambda: secret_names(kube_api) == ["of-both", "unowned"])
    await until(lambda: len(kube_api.store.get("secrets", NS, "of-both").data["metadata"]["ownerReferences"]) == 1)
    assert kube_api.store.get("secrets", NS, "of-both").data["metadata"]["ownerReferences"][0]["uid"] == b.metadata.uid

    # a pod of the same name is not the owner: the uid is
    await v1.create_namespaced_pod(NS, pod("owner-a", skip=True))
    await v1.create_namespaced_secret(NS, {"metadata": {"name": "of-old-a", "ownerReferences": [owner(a)]},
                                           "stringData": {"k": "v"}})
    await until(lambda: "of-old-a" not in secret_names(kube_api))  # created naming a gone owner

    kube_api.remove_pod("owner-b")  # however the owner goes
    await until(lambda: secret_names(kube_api) == ["unowned"])
    assert kube_api.count("delete", "secrets") == 0


@pytest.mark.docker
async def test_garbage_collector_deletes_a_running_pod_gracefully(v1: client.CoreV1Api, kube_api: KubeAPIServer) -> None:
    """A dependent pod goes like any deleted pod: its kubelet stops and removes its container."""
    secret = await v1.create_namespaced_secret(NS, {"metadata": {"name": "owner"}, "stringData": {"k": "v"}})
    body = pod("dependent", command=["sleep", "300"])
    body["metadata"]["ownerReferences"] = [{**owner(secret), "kind": "Secret"}]
    body["spec"]["terminationGracePeriodSeconds"] = 1
    await v1.create_namespaced_pod(NS, body)
    await until(lambda: (kube_api.get_pod("dependent") or {}).get("status", {}).get("phase") == "Running")
    await v1.delete_namespaced_secret("owner", NS)
    await until(lambda: kube_api.get_pod("dependent") is None)
    assert await kube_api.containers() == []


async def test_owner_references_are_validated(v1: client.CoreV1Api, kube_api: KubeAPIServer) -> None:
    for ref, field in (({"apiVersion": "v1", "kind": "Pod", "name": "p"}, "uid"),
                       ({"apiVersion": "v1", "kind": "Pod", "uid": "u"}, "name")):
        with pytest.raises(ApiException) as info:
            await v1.create_namespaced_secret(NS, {"metadata": {"name": "s", "ownerReferences": [ref]}})
        assert info.value.status == 422 and f"ownerReferences[0].{field}" in status_body(info.value)["message"]
    assert secret_names(kube_api) == []


@pytest.mark.kube_nodes("builder-1", {"name": "builder-2", "labels": {"pool": "builds"}})
async def test_nodes_from_marker(v1: client.CoreV1Api, kube_api: KubeAPIServer) -> None:
    nodes = (await v1.list_node()).items
    assert [n.metadata.name for n in nodes] == ["builder-1", "builder-2"]
    assert nodes[1].metadata.labels["pool"] == "builds"


async def test_nodes(v1: client.CoreV1Api, kube_api: KubeAPIServer) -> None:
    assert [n.metadata.name for n in (await v1.list_node()).items] == ["node-0"]
    since = await current_rv(v1)
    kube_api.set_nodes(["node-a", {"name": "node-b", "labels": {"binderhub/builds": "yes"}}])
    nodes = (await v1.list_node()).items
    assert [n.metadata.name for n in nodes] == ["node-a", "node-b"]
    node_b = await v1.read_node("node-b")
    assert node_b.metadata.labels["kubernetes.io/hostname"] == "node-b"
    assert node_b.metadata.labels["binderhub/builds"] == "yes"
    assert node_b.status.conditions[0].type == "Ready" and node_b.status.conditions[0].status == "True"
    assert [n.metadata.name for n in (await v1.list_node(label_selector="binderhub/builds")).items] == ["node-b"]
    seen = []
    async with asyncio.timeout(LIMIT), watch.Watch() as w:
        async for event in w.stream(v1.list_node, resource_version=since):
            seen.append((event["type"], event["object"].metadata.name))
            if len(seen) == 3:
                break
    assert sorted(seen) == [("ADDED", "node-a"), ("ADDED", "node-b"), ("DELETED", "node-0")]


# --- the kubelet: real containers -------------------------------------------------------------

@pytest.mark.docker
async def test_pod_runs_and_succeeds(v1: client.CoreV1Api, kube_api: KubeAPIServer) -> None:
    since = await current_rv(v1)
    script = "for i in 1 2 3 4 5; do echo line $i; sleep 0.2; done; echo to-stderr >&2"
    await v1.create_namespaced_pod(NS, pod("hello", command=["sh", "-c", script]))
    running = await pod_events(v1, "hello", since, ("Running", "Succeeded", "Failed"))
    assert running[-1][1]["status"]["phase"] == "Running"
    # follow from Running to the end, as the build executor does
    lines = []
    async with asyncio.timeout(LIMIT), watch.Watch() as w:
        async for line in w.stream(v1.read_namespaced_pod_log, "hello", NS):
            lines.append(line)
    assert "".join(lines).split("\n")[:5] == [f"line {i}" for i in range(1, 6)]
    assert "to-stderr" in "".join(lines)
    events = await pod_events(v1, "hello", since)
    assert phases(events) == ["Pending", "Running", "Succeeded"]
    assert all(t in ("ADDED", "MODIFIED") for t, _ in events) and events[0][0] == "ADDED"
    final = await v1.read_namespaced_pod("hello", NS)
    assert final.spec.node_name == "node-0" and final.status.start_time is not None
    state = final.status.container_statuses[0].state.terminated
    assert state.exit_code == 0 and state.reason == "Completed"
    assert state.started_at is not None and state.finished_at >= state.started_at
    assert final.status.container_statuses[0].container_id.startswith("docker://")
    assert await v1.read_namespaced_pod_log("hello", NS, tail_lines=2) == "line 5\nto-stderr\n"
    stamped = await v1.read_namespaced_pod_log("hello", NS, tail_lines=1, timestamps=True)
    assert stamped.endswith(" to-stderr\n") and stamped[:4].isdigit() and "T" in stamped.split()[0]
    # follow with tailLines on a finished pod: the tail, then the end of the stream
    response = await v1.read_namespaced_pod_log("hello", NS, follow=True, tail_lines=3, _preload_content=False)
    async with asyncio.timeout(LIMIT):
        body = await response.read()
    assert body == b"line 4\nline 5\nto-stderr\n"
    containers = await kube_api.containers()
    assert len(containers) == 1 and containers[0]["Labels"]["io.kubernetes.pod.name"] == "hello"


@pytest.mark.docker
async def test_pod_exit_1_fails(v1: client.CoreV1Api, kube_api: KubeAPIServer) -> None:
    since = await current_rv(v1)
    await v1.create_namespaced_pod(NS, pod("sad", command=["sh", "-c", "echo nope; exit 1"]))
    events = await pod_events(v1, "sad", since)
    assert phases(events) == ["Pending", "Running", "Failed"]
    terminated = events[-1][1]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 1 and terminated["reason"] == "Error"
    assert await v1.read_namespaced_pod_log("sad", NS) == "nope\n"


@pytest.mark.docker
async def test_repo2docker_pod_with_docker_socket(v1: client.CoreV1Api, kube_api: KubeAPIServer) -> None:
    since = await current_rv(v1)
    body = pod("r2d", image=R2D, args=["jupyter-repo2docker", "--version"],
               volumes=[{"name": "docker-socket", "hostPath": {"path": "/var/run/docker.sock", "type": "Socket"}}],
               container={"volumeMounts": [{"name": "docker-socket", "mountPath": "/var/run/docker.sock"}]})
    await v1.create_namespaced_pod(NS, body)
    events = await pod_events(v1, "r2d", since)
    assert phases(events) == ["Pending", "Running", "Succeeded"]
    assert await v1.read_namespaced_pod_log("r2d", NS) == "2024.07.0\n"  # repo2docker's own spelling
    [info] = await kube_api.containers()
    assert info["HostConfig"]["NetworkMode"] == "host"
    assert [(m["Type"], m["Source"], m["Destination"]) for m in info["Mounts"]] == [
        ("bind", "/var/run/docker.sock", "/var/run/docker.sock")]


@pytest.mark.docker
async def test_secret_env_and_volume(v1: client.CoreV1Api, kube_api: KubeAPIServer) -> None:
    await v1.create_namespaced_secret(NS, {"metadata": {"name": "creds"},
                                          "stringData": {"token": "t0k3n", "config.json": "{}"}})
    since = await current_rv(v1)
    body = pod("uses-secret", command=["sh", "-c", 'echo "$TOKEN $POD $PLAIN"; cat /secret/config.json; echo'],
               volumes=[{"name": "s", "secret": {"secretName": "creds"}}],
               container={"env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
                                  {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                                  {"name": "PLAIN", "value": "v"}],
                          "volumeMounts": [{"name": "s", "mountPath": "/secret"}]})
    await v1.create_namespaced_pod(NS, body)
    assert phases(await pod_events(v1, "uses-secret", since))[-1] == "Succeeded"
    assert await v1.read_namespaced_pod_log("uses-secret", NS) == "t0k3n uses-secret v\n{}\n"


@pytest.mark.docker
async def test_missing_secret_keeps_pod_pending(v1: client.CoreV1Api, kube_api: KubeAPIServer) -> None:
    since = await current_rv(v1)
    await v1.create_namespaced_pod(NS, pod("no-secret", command=["true"], container={"env": [
        {"name": "X", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}}]}))

    def config_error(_: str, obj: dict[str, Any]) -> bool:
        statuses = obj["status"].get("containerStatuses") or [{}]
        return statuses[0].get("state", {}).get("waiting", {}).get("reason") == "CreateContainerConfigError"
    events = await pod_events(v1, "no-secret", since, stop=config_error)
    assert events[-1][1]["status"]["phase"] == "Pending"
    assert "absent" in events[-1][1]["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
    with pytest.raises(ApiException) as info:
        await v1.read_namespaced_pod_log("no-secret", NS)
    assert info.value.status == 400 and "waiting to start" in status_body(info.value)["message"]


@pytest.mark.docker
async def test_missing_secret_volume_waits_for_the_secret(v1: client.CoreV1Api, kube_api: KubeAPIServer) -> None:
    """As on a real node: volumes are set up before anything is pulled or started, and a missing
    Secret is a FailedMount, retried until it exists; the pod waits in ContainerCreating."""
    since = await current_rv(v1)
    await v1.create_namespaced_pod(NS, pod(
        "waits", image="binderapi/does-not-exist:v0",  # not pulled while the volume waits
        volumes=[{"name": "creds", "secret": {"secretName": "later", "defaultMode": 0o400}}],
        container={"volumeMounts": [{"name": "creds", "mountPath": "/creds", "readOnly": True}]}))
    await until(lambda: len(kube_api.failed_mounts("waits")) >= 2)  # tried, and tried again
    assert kube_api.failed_mounts("waits")[0] == 'MountVolume.SetUp failed for volume "creds" : secret "later" not found'
    current = kube_api.get_pod("waits")
    assert current["status"]["phase"] == "Pending"
    assert current["status"]["containerStatuses"][0]["state"] == {"waiting": {"reason": "ContainerCreating"}}
    with pytest.raises(ApiException) as info:
        await v1.read_namespaced_pod_log("waits", NS)
    assert info.value.status == 400 and "waiting to start: ContainerCreating" in status_body(info.value)["message"]

    await v1.create_namespaced_secret(NS, {"metadata": {"name": "later"}, "stringData": {"k": "v"}})
    events = await pod_events(v1, "waits", since)  # mounted at the next try: then the image is pulled
    assert phases(events) == ["Pending", "Failed"] and events[-1][1]["status"]["reason"] == "ErrImagePull"


@pytest.mark.docker
async def test_secret_volume_mounted_once_it_exists(v1: client.CoreV1Api, kube_api: KubeAPIServer) -> None:
    since = await current_rv(v1)
    await v1.create_namespaced_pod(NS, pod(
        "reads-secret", command=["cat", "/creds/k"],
        volumes=[{"name": "creds", "secret": {"secretName": "soon"}}],
        container={"volumeMounts": [{"name": "creds", "mountPath": "/creds"}]}))
    await until(lambda: kube_api.failed_mounts("reads-secret"))
    await v1.create_namespaced_secret(NS, {"metadata": {"name": "soon"}, "stringData": {"k": "the-value"}})
    assert phases(await pod_events(v1, "reads-secret", since)) == ["Pending", "Running", "Succeeded"]
    assert await v1.read_namespaced_pod_log("reads-secret", NS) == "the-value"


@pytest.mark.docker
async def test_missing_image_fails_with_err_image_pull(v1: client.CoreV1Api, kube_api: KubeAPIServer) -> None:
    since = await current_rv(v1)
    await v1.create_namespaced_pod(NS, pod("no-image", image="binderapi/does-not-exist:v0"))
    events = await pod_events(v1, "no-image", since)
    reasons = [(o["status"].get("containerStatuses") or [{}])[0].get("state", {}).get("waiting", {}).get("reason")
               for _, o in events]
    assert "ErrImagePull" in reasons
    assert phases(events) == ["Pending", "Failed"]
    assert events[-1][1]["status"]["reason"] == "ErrImagePull"
    assert await kube_api.containers() == []


@pytest.mark.docker
async def test_delete_running_pod_is_graceful(v1: client.CoreV1Api, kube_api: KubeAPIServer) -> None:
    since = await current_rv(v1)
    await v1.create_namespaced_pod(NS, pod("sleeper", command=["sleep", "300"]))
    await pod_events(v1, "sleeper", since, ("Running",))
    assert len(await kube_api.containers()) == 1
    since = await current_rv(v1)
    answer = await v1.delete_namespaced_pod("sleeper", NS, grace_period_seconds=1)
    assert answer.metadata.deletion_timestamp is not None
    assert answer.metadata.deletion_grace_period_seconds == 1
    events = await pod_events(v1, "sleeper", since, stop=lambda t, o: t == "DELETED")
    assert [t for t, _ in events] == ["MODIFIED", "DELETED"]
    assert events[0][1]["metadata"]["deletionTimestamp"] == events[1][1]["metadata"]["deletionTimestamp"]
    assert await kube_api.containers() == []
    assert kube_api.get_pod("sleeper") is None


@pytest.mark.docker
async def test_scheduling(v1: client.CoreV1Api, kube_api: KubeAPIServer) -> None:
    kube_api.set_nodes(["node-a", "node-b", {"name": "node-c", "labels": {"disk": "ssd"}}])

    def hostname(operator: str, *names: str) -> dict[str, Any]:
        return {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": operator, "values": list(names)}]}
    specs = {
        "plain": {},
        "sticky": {"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 10, "preference": hostname("In", "node-a")},
            {"weight": 100, "preference": hostname("In", "node-b")}]}}},
        "required": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [hostname("In", "node-c")]}}}},
        "selector": {"nodeSelector": {"disk": "ssd"}},
        "named": {"nodeName": "node-b"},
        "nowhere": {"nodeSelector": {"disk": "nvme"}},
    }
    since = await current_rv(v1)
    for name, spec in specs.items():
        await v1.create_namespaced_pod(NS, pod(name, command=["true"], **spec))
    for name in specs:
        if name == "nowhere":
            def unschedulable(_: str, obj: dict[str, Any]) -> bool:
                return any(c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable"
                           for c in obj["status"].get("conditions") or [])
            await pod_events(v1, name, since, stop=unschedulable)
        else:
            await pod_events(v1, name, since)
    placed = {p.metadata.name: p.spec.node_name for p in (await v1.list_namespaced_pod(NS)).items}
    assert placed == {"plain": "node-a", "sticky": "node-b", "required": "node-c",
                      "selector": "node-c", "named": "node-b", "nowhere": None}
    assert (await v1.read_namespaced_pod("nowhere", NS)).status.phase == "Pending"


@pytest.mark.docker
async def test_close_removes_containers(kube_api_factory: Any, tmp_path: Any) -> None:
    server = await kube_api_factory()
    async with await config.new_client_from_config(
            config_file=server.write_kubeconfig(tmp_path / "kc"), persist_config=False) as api:
        v1 = client.CoreV1Api(api)
        since = await current_rv(v1)
        await v1.create_namespaced_pod(NS, pod("long", command=["sleep", "300"]))
        await pod_events(v1, "long", since, ("Running",))
    assert server.kubelet is not None
    instance = server.kubelet.instance
    await server.close()
    async with aiodocker.Docker() as docker:
        left = await docker.containers.list(all=True, filters=json.dumps({"label": [f"{LABEL_INSTANCE}={instance}"]}))
    assert left == []


@pytest.mark.docker
async def test_close_ends_open_streams(kube_api_factory: Any, tmp_path: Any) -> None:
    """Closing the server ends watches and log follows (clients see the end), leaving nothing."""
    server = await kube_api_factory()
    async with await config.new_client_from_config(
            config_file=server.write_kubeconfig(tmp_path / "kc"), persist_config=False) as api:
        v1 = client.CoreV1Api(api)
        since = await current_rv(v1)
        await v1.create_namespaced_pod(NS, pod("chatty", command=["sh", "-c", "echo up; sleep 300"]))
        await pod_events(v1, "chatty", since, ("Running",))
        log_response = await v1.read_namespaced_pod_log("chatty", NS, follow=True, _preload_content=False)
        watch_response = await v1.list_namespaced_pod(NS, watch=True, _preload_content=False)
        assert (await log_response.content.readline()) == b"up\n"
        assert json.loads(await watch_response.content.readline())["type"] == "ADDED"
        async with asyncio.timeout(LIMIT):
            await server.close()
            assert await log_response.content.read() == b""
            assert await watch_response.content.read() == b""
        log_response.release()
        watch_response.release()


# --- test control: request log, faults, auth, scale -------------------------------------------

async def test_counts_follow_a_watch_without_lists(v1: client.CoreV1Api, kube_api: KubeAPIServer) -> None:
    """The pattern the launch quota must follow: one LIST, then a watch keeps the count."""
    selector = "component=singleuser-server"
    kube_api.add_pods(100, prefix="user-", labels={"component": "singleuser-server"})
    kube_api.add_pods(10, prefix="build-", labels={"component": "binderhub-build"})
    initial = await v1.list_namespaced_pod(NS, label_selector=selector)
    names = {p.metadata.name for p in initial.items}
    assert len(names) == 100

    async def follow() -> None:
        async with watch.Watch() as w:
            async for event in w.stream(v1.list_namespaced_pod, NS, label_selector=selector,
                                        resource_version=initial.metadata.resource_version):
                if event["type"] == "ADDED":
                    names.add(event["object"].metadata.name)
                elif event["type"] == "DELETED":
                    names.discard(event["object"].metadata.name)
    task = asyncio.create_task(follow())
    try:
        kube_api.add_pods(50, prefix="more-", labels={"component": "singleuser-server"})
        for i in range(30):
            kube_api.remove_pod(f"user-{i}")
        kube_api.remove_pod("build-0")
        await until(lambda: len(names) == 120)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert kube_api.count("list", "pods") == 1 and kube_api.count("watch", "pods") == 1
    assert kube_api.verbs()[("list", "pods")] == 1
    method, path, query = kube_api.requests[-1]
    assert (method, path, query["labelSelector"]) == ("GET", "/api/v1/namespaces/default/pods", selector)


async def test_fault_injection(v1: client.CoreV1Api, kube_api: KubeAPIServer) -> None:
    kube_api.fail_next(1, 500)
    with pytest.raises(ApiException) as info:
        await v1.list_namespaced_pod(NS)
    assert info.value.status == 500 and status_body(info.value)["reason"] == "InternalError"
    await v1.list_namespaced_pod(NS)  # one failure only

    kube_api.fail_next(2, 503, verb="create")
    for _ in range(2):
        with pytest.raises(ApiException) as info:
            await v1.create_namespaced_pod(NS, pod("p", skip=True))
        assert info.value.status == 503 and status_body(info.value)["reason"] == "ServiceUnavailable"
        await v1.list_namespaced_pod(NS)  # other verbs are unaffected
    await v1.create_namespaced_pod(NS, pod("p", skip=True))

    kube_api.hang_next(1, verb="get", resource="pods")
    with pytest.raises(TimeoutError):
        await v1.read_namespaced_pod("p", NS, _request_timeout=0.5)
    await until(lambda: kube_api.hanging == 0)  # the server noticed the client gave up
    assert (await v1.read_namespaced_pod("p", NS)).metadata.name == "p"

    kube_api.hang_next(1, verb="watch")
    with pytest.raises(TimeoutError):
        async with watch.Watch() as w:
            async for _ in w.stream(v1.list_namespaced_pod, NS, timeout_seconds=30, _request_timeout=0.5):
                pass


async def test_faults_after_the_change(v1: client.CoreV1Api, kube_api: KubeAPIServer) -> None:
    """The answer is lost but the pod exists: what a client must clean up or adopt."""
    kube_api.fail_next(1, 500, verb="create", after=True)
    with pytest.raises(ApiException) as info:
        await v1.create_namespaced_pod(NS, pod("made-anyway", skip=True))
    assert info.value.status == 500
    assert kube_api.get_pod("made-anyway") is not None
    with pytest.raises(ApiException) as info:
        await v1.create_namespaced_pod(NS, pod("made-anyway", skip=True))
    assert info.value.status == 409

    kube_api.hang_next(1, verb="create", after=True)
    with pytest.raises(TimeoutError):
        await v1.create_namespaced_pod(NS, pod("timed-out", skip=True), _request_timeout=0.5)
    assert kube_api.get_pod("timed-out") is not None


async def test_dropped_connections(v1: client.CoreV1Api, kube_api: KubeAPIServer) -> None:
    """The answer starts, then the connection is cut: the client sees an aiohttp error, not an
    answer; with `after`, the change happened anyway."""
    import aiohttp

    kube_api.drop_next(1, verb="list")
    with pytest.raises(aiohttp.ClientPayloadError):
        await v1.list_namespaced_pod(NS)
    await v1.list_namespaced_pod(NS)  # the next connection works
    kube_api.drop_next(1, verb="create", after=True)
    with pytest.raises(aiohttp.ClientPayloadError):
        await v1.create_namespaced_pod(NS, pod("cut-off", skip=True))
    assert kube_api.get_pod("cut-off") is not None


async def test_hold_orders_two_clients(v1: client.CoreV1Api, kube_api: KubeAPIServer) -> None:
    """A held create is carried out only after release, so the other client's create wins."""
    kube_api.hold_next(1, verb="create", resource="pods")
    first = asyncio.ensure_future(v1.create_namespaced_pod(NS, pod("race", skip=True, labels={"by": "first"})))
    await until(lambda: kube_api.holding == 1)
    await v1.create_namespaced_pod(NS, pod("race", skip=True, labels={"by": "second"}))
    kube_api.release_holds()
    with pytest.raises(ApiException) as info:
        await asyncio.wait_for(first, LIMIT)
    assert info.value.status == 409
    assert kube_api.get_pod("race")["metadata"]["labels"] == {"by": "second"}
    assert [p["metadata"]["labels"] for p in kube_api.created()] == [{"by": "second"}]


async def test_pod_age(v1: client.CoreV1Api, kube_api: KubeAPIServer) -> None:
    kube_api.add_pod("young")
    kube_api.add_pod("old", age=7200, phase="Succeeded")
    pods = {p.metadata.name: p for p in (await v1.list_namespaced_pod(NS)).items}
    difference = pods["young"].metadata.creation_timestamp - pods["old"].metadata.creation_timestamp
    assert difference.total_seconds() >= 7200
    assert pods["old"].status.container_statuses[0].state.terminated.exit_code == 0
    assert pods["old"].status.start_time == pods["old"].metadata.creation_timestamp
    kube_api.backdate("young", 600)
    young = await v1.read_namespaced_pod("young", NS)
    assert (pods["young"].metadata.creation_timestamp - young.metadata.creation_timestamp).total_seconds() == 600
    assert (pods["young"].status.start_time - young.status.start_time).total_seconds() == 600


async def test_bearer_token(kube_api_factory: Any, tmp_path: Any) -> None:
    server = await kube_api_factory(token="s3cret", kubelet=False)
    async with await config.new_client_from_config(
            config_file=server.write_kubeconfig(tmp_path / "with-token"), persist_config=False) as api:
        assert (await client.CoreV1Api(api).list_namespaced_pod(NS)).items == []
    path = write_kubeconfig(tmp_path / "without", server.url)
    async with await config.new_client_from_config(config_file=path, persist_config=False) as api:
        with pytest.raises(ApiException) as info:
            await client.CoreV1Api(api).list_namespaced_pod(NS)
    assert info.value.status == 401 and status_body(info.value)["reason"] == "Unauthorized"


async def test_ten_thousand_pods(v1: client.CoreV1Api, kube_api: KubeAPIServer) -> None:
    labels = {"component": "singleuser-server"}
    tracemalloc.start()  # on a sample: tracing slows allocation-heavy code several times
    try:
        kube_api.add_pods(1_000, prefix="user-a", labels=labels)
        stored, _ = tracemalloc.get_traced_memory()  # about 4 KiB a pod: object, history, JSON
    finally:
        tracemalloc.stop()
    assert stored < 10 * 2**20, f"{stored / 2**10 / 1000:.1f} KiB per stored pod"
    kube_api.add_pods(9_000, prefix="user-b", labels=labels)
    response = await v1.list_namespaced_pod(NS, _preload_content=False)
    items = json.loads(await response.read())["items"]
    assert len(items) == 10_000 and items[0]["metadata"]["name"] == "user-a0"
    page = await v1.list_namespaced_pod(NS, limit=500, label_selector="component=singleuser-server")
    assert len(page.items) == 500 and page.metadata.remaining_item_count == 9_500
    assert len((await v1.list_namespaced_pod(NS, field_selector="metadata.name=user-b8999")).items) == 1
    response = await v1.list_namespaced_pod(NS, watch=True, timeout_seconds=60, _preload_content=False)
    added = 0
    async with asyncio.timeout(LIMIT):
        async for line in response.content:
            assert json.loads(line)["type"] == "ADDED"
            added += 1
            if added == 10_000:
                break
    response.release()
    assert added == 10_000


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
async def test_kubectl_get_pods(kube_api: KubeAPIServer, kubeconfig: str, tmp_path: Any) -> None:
    kube_api.add_pod("seen-by-kubectl")
    env = {**os.environ, "HOME": str(tmp_path), "KUBECACHEDIR": str(tmp_path / "cache")}
    process = await asyncio.create_subprocess_exec(
        "kubectl", "--kubeconfig", kubeconfig, "get", "pods", "-o", "name",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    async with asyncio.timeout(LIMIT):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    assert out.decode().split() == ["pod/seen-by-kubectl"]
