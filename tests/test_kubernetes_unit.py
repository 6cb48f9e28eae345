"""Pure parts of the Kubernetes backend: BinderHub-compatible node ranking and the pod manifest."""

from __future__ import annotations

import hashlib
from collections import Counter

from binderapi.backends.kubernetes.executor import KubernetesBuildBackend, rendezvous_rank
from binderapi.executors.base import BuildJob
from fixtures.server import make_settings


def binderhub_score(key: str, bucket: str) -> int:
    # BinderHub: blake2b, 8-byte digest, big-endian integer of b"%s-%s" % (key, bucket)
    return int.from_bytes(hashlib.blake2b(b"%s-%s" % (key.encode(), bucket.encode()), digest_size=8).digest(), "big")


def test_ranking_matches_binderhubs_scores():
    nodes = [f"node-{i}" for i in range(7)]
    for repo in ("https://github.com/binder-examples/requirements", "https://gitlab.com/a/b", "x"):
        expected = [n for _, n in sorted(((binderhub_score(repo, n), n) for n in nodes), reverse=True)]
        assert rendezvous_rank(nodes, repo) == expected


def test_ranking_is_stable_and_moves_few_keys_when_a_node_is_added():
    nodes = ["a", "b", "c"]
    keys = [f"https://github.com/org/repo{i}" for i in range(3000)]
    before = {k: rendezvous_rank(nodes, k)[0] for k in keys}
    assert before == {k: rendezvous_rank(list(reversed(nodes)), k)[0] for k in keys}  # order-independent
    share = Counter(before.values())
    assert all(800 < share[n] < 1200 for n in nodes)  # roughly even
    after = {k: rendezvous_rank([*nodes, "d"], k)[0] for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(after[k] == "d" for k in moved)  # keys only move to the new node
    assert 500 < len(moved) < 1000  # about a quarter


def test_pod_manifest():
    settings = make_settings({"KubernetesBuildExecutor": {
        "build_image": "example/r2d:1", "memory_limit": "2G", "memory_request": "1G", "node_selector": {"pool": "build"},
        "image_pull_secrets": ["pull"], "extra_envs": {"A": "b"}, "registry_credentials": {}}})
    backend = KubernetesBuildBackend(settings)
    job = BuildJob(name="build-x-abc", image_name="reg/x:abc", repo_url="https://github.com/o/r", ref="abc",
                   git_credentials="username=u\\npassword=p")
    pod = backend.pod_manifest(job, secret_name="build-x-abc-credentials")
    assert pod["metadata"]["labels"] == {"name": "build-x-abc", "component": "binderhub-build"}
    assert pod["metadata"]["annotations"]["binder-repo"] == "https://github.com/o/r"
    (container,) = pod["spec"]["containers"]
    assert container["name"] == "builder" and container["image"] == "example/r2d:1"
    assert container["args"][0] == "jupyter-repo2docker" and container["args"][-1] == "https://github.com/o/r"
    assert "--push" in container["args"] and "--ref=abc" in container["args"] and "--image=reg/x:abc" in container["args"]
    env = {e["name"]: e for e in container["env"]}
    assert env["A"] == {"name": "A", "value": "b"}
    assert env["GIT_CREDENTIAL_ENV"]["valueFrom"]["secretKeyRef"] == {"name": "build-x-abc-credentials", "key": "GIT_CREDENTIAL_ENV"}
    assert container["resources"] == {"limits": {"memory": str(2 * 1024**3)}, "requests": {"memory": str(1024**3)}}
    assert {"name": "docker-socket", "hostPath": {"path": "/var/run/docker.sock", "type": "Socket"}} in pod["spec"]["volumes"]
    assert {"name": "docker-config", "secret": {"secretName": "binder-build-docker-config"}} in pod["spec"]["volumes"]
    # the credentials Secret is mounted too: the kubelet then waits for it (it is created after the pod)
    assert {"name": "build-credentials", "secret": {"secretName": "build-x-abc-credentials", "defaultMode": 0o400}} \
        in pod["spec"]["volumes"]
    assert {"name": "build-credentials", "mountPath": "/etc/binderapi/build-credentials", "readOnly": True} \
        in container["volumeMounts"]
    assert pod["spec"]["nodeSelector"] == {"pool": "build"} and pod["spec"]["imagePullSecrets"] == [{"name": "pull"}]
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["affinity"]["podAntiAffinity"]  # spread by default
    sticky = backend.pod_manifest(job, sticky_node="node-2")
    terms = sticky["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert terms[0]["preference"]["matchExpressions"][0]["values"] == ["node-2"]
    assert "build-credentials" not in {v["name"] for v in sticky["spec"]["volumes"]}
    plain = {e["name"]: e for e in sticky["spec"]["containers"][0]["env"]}
    assert plain["GIT_CREDENTIAL_ENV"]["value"] == "username=u\\npassword=p"  # no secret: plain value


def test_the_node_socket_is_read_by_the_one_engine_address_rule():
    """``docker_host`` as a path, a ``unix://`` URL or pasted with spaces mounts the same socket, as
    the Docker kind reads its own (backends/docker/engine.py); a ``tcp://`` engine has no socket."""
    job = BuildJob(name="build-x-abc", image_name="reg/x:abc", repo_url="https://github.com/o/r", ref="abc")

    def socket_volumes(docker_host: str | None) -> list[dict]:
        backend = KubernetesBuildBackend(make_settings({"KubernetesBuildExecutor": {"docker_host": docker_host}}))
        return [v for v in backend.pod_manifest(job)["spec"]["volumes"] if v["name"] == "docker-socket"]

    expected = [{"name": "docker-socket", "hostPath": {"path": "/run/engine.sock", "type": "Socket"}}]
    for docker_host in ("/run/engine.sock", "unix:///run/engine.sock", " unix:///run/engine.sock\n"):
        assert socket_volumes(docker_host) == expected, docker_host
    assert socket_volumes("tcp://127.0.0.1:2375") == [] and socket_volumes(None) == []
