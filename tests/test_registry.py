"""The registry client against real registries (docker-registry with no auth, htpasswd and token
auth), the real Docker engine, and scripted servers for failures a real registry won't produce."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from binderapi.backends.docker.images import LocalImages
from binderapi.errors import RegistryError
from binderapi.registry import (
    DockerRegistry,
    ImageStore,
    RememberedImages,
    make_image_store,
)
from binderapi.registry.auth import TokenCache, parse_challenge, pick_challenge
from binderapi.registry.dockerconfig import default_config_path, resolve_endpoint
from binderapi.settings import load_settings, models
from fixtures.registries import (
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    PASSWORD,
    TOKEN_SERVICE,
    USERNAME,
    RunningRegistry,
    ScriptedServer,
)


@pytest.fixture
async def http():
    async with httpx.AsyncClient() as client:
        yield client


def registry_config(**options: Any) -> models.DockerRegistry:
    """Settings as an operator writes them; never the test runner's own ~/.docker."""
    options.setdefault("docker_config_path", "/nonexistent/config.json")
    options.setdefault("retry_delay", 0.01)
    return models.DockerRegistry(**options)


def write_docker_config(tmp_path: Path, auths: dict[str, Any]) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": auths}))
    return str(path)


def make_settings(config: dict[str, dict[str, Any]] | None = None, **binderhub: Any):
    """Settings from a BinderHub-style config dict, isolated from the runner's environment."""
    cli = {k: dict(v) for k, v in (config or {}).items()}
    cli.setdefault("BinderHub", {}).update(binderhub)
    return load_settings(cli=cli, environ={}, dotenv_path=None)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# -- WWW-Authenticate and the token cache -------------------------------------------------------


def test_parse_bearer_challenge_with_commas_in_scope():
    challenge = parse_challenge('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
                                'scope="repository:samalba/my-app:pull,push",error="insufficient_scope"')
    assert challenge is not None
    assert challenge.scheme == "bearer"
    assert challenge.realm == "https://auth.docker.io/token"
    assert challenge.service == "registry.docker.io"
    assert challenge.scope == "repository:samalba/my-app:pull,push"
    assert challenge.error == "insufficient_scope"


def test_parse_other_challenges():
    basic = parse_challenge('Basic realm="basic-realm"')
    assert basic is not None and basic.scheme == "basic" and basic.realm == "basic-realm"
    assert parse_challenge("") is None
    unquoted = parse_challenge("bearer realm=http://127.0.0.1:1/token, service=x")
    assert unquoted is not None and unquoted.realm == "http://127.0.0.1:1/token" and unquoted.service == "x"
    picked = pick_challenge(['Basic realm="a"', 'Bearer realm="http://t/token"'])
    assert picked is not None and picked.scheme == "bearer"


async def test_token_cache_keeps_tokens_until_shortly_before_expiry():
    now = [1000.0]
    cache = TokenCache(clock=lambda: now[0])
    key = ("realm", "svc", "repository:a:pull")
    cache.put(key, "t1", 300)
    now[0] += 280
    assert cache.get(key) == "t1"
    now[0] += 15  # 5 s left: too close to expiry to send
    assert cache.get(key) is None
    cache.put(key, "t2", 5)  # lives less than the safety margin: never reused
    assert cache.get(key) is None
    cache.put(key, "t3", None)  # no expires_in: the spec's 60 s
    now[0] += 45
    assert cache.get(key) == "t3"

    fetches = []

    async def fetch():
        fetches.append(1)
        return "t4", 300

    other = ("realm", "svc", "repository:b:pull")
    assert await cache.get_or_fetch(other, fetch) == "t4"
    assert await cache.get_or_fetch(other, fetch) == "t4"
    assert len(fetches) == 1


# -- defaults from the docker config.json (as BinderHub reads it) -----------------------------


def test_no_config_file_means_anonymous_docker_hub():
    endpoint = resolve_endpoint(registry_config())
    assert endpoint.url == "https://registry-1.docker.io"
    assert endpoint.token_url == "https://auth.docker.io/token?service=registry.docker.io"
    assert endpoint.not_found_401 is True
    assert (endpoint.username, endpoint.password) == ("", "")


def test_docker_hub_v1_key_maps_to_v2_host(tmp_path):
    path = write_docker_config(tmp_path, {"https://index.docker.io/v1/": {"auth": b64("hubuser:hubpass")}})
    endpoint = resolve_endpoint(registry_config(docker_config_path=path))
    assert endpoint.url == "https://registry-1.docker.io"
    assert endpoint.auth_config_url == "https://index.docker.io/v1/"
    assert (endpoint.username, endpoint.password) == ("hubuser", "hubpass")
    assert endpoint.token_url == "https://auth.docker.io/token?service=registry.docker.io"
    assert endpoint.not_found_401 is True
    assert "hubpass" not in repr(endpoint)


def test_gcr_json_key(tmp_path):
    json_key = json.dumps({"type": "service_account", "private_key": "-----BEGIN:KEY-----", "client_email": "a@b.c"})
    path = write_docker_config(tmp_path, {"https://gcr.io": {"auth": b64("_json_key:" + json_key)},
                                          "https://other.example.org": {"auth": b64("x:y")}})
    endpoint = resolve_endpoint(registry_config(docker_config_path=path))
    assert endpoint.url == "https://gcr.io"  # the first auths key
    assert endpoint.token_url == "https://gcr.io/v2/token?service=gcr.io"
    assert endpoint.username == "_json_key"
    assert endpoint.password == json_key  # split on the first colon only
    assert endpoint.not_found_401 is False


def test_bare_hosts_get_a_scheme(tmp_path):
    remote = write_docker_config(tmp_path, {"eu.gcr.io": {"auth": b64("_json_key:{}")}})
    endpoint = resolve_endpoint(registry_config(docker_config_path=remote))
    assert endpoint.url == "https://eu.gcr.io"
    assert endpoint.token_url == "https://eu.gcr.io/v2/token?service=eu.gcr.io"
    (tmp_path / "local").mkdir()
    local = write_docker_config(tmp_path / "local", {"127.0.0.1:5001": {"auth": b64("u:p")}})
    endpoint = resolve_endpoint(registry_config(docker_config_path=local))
    assert endpoint.url == "http://127.0.0.1:5001"  # docker talks plain http to loopback registries
    assert endpoint.token_url == ""
    assert (endpoint.username, endpoint.password) == ("u", "p")


def test_explicit_settings_win_and_find_their_auths_entry(tmp_path):
    path = write_docker_config(tmp_path, {"https://first.example.org": {"auth": b64("a:b")},
                                          "registry.example.org:8443": {"username": "plain", "password": "pw"}})
    endpoint = resolve_endpoint(registry_config(docker_config_path=path, url="https://registry.example.org:8443/"))
    assert endpoint.url == "https://registry.example.org:8443"
    assert endpoint.auth_config_url == "registry.example.org:8443"  # matched by host and port
    assert (endpoint.username, endpoint.password) == ("plain", "pw")
    endpoint = resolve_endpoint(registry_config(docker_config_path=path, url="https://first.example.org",
                                                username="override", token_url="https://t.example.org/token",
                                                not_found_401=True))
    assert (endpoint.username, endpoint.password) == ("override", "b")
    assert endpoint.token_url == "https://t.example.org/token"
    assert endpoint.not_found_401 is True


def test_config_path_follows_docker_cli_rules(tmp_path):
    assert default_config_path({"DOCKER_CONFIG": "/etc/dockercfg", "HOME": "/root"}) == Path("/etc/dockercfg/config.json")
    assert default_config_path({"HOME": "/home/binder"}) == Path("/home/binder/.docker/config.json")
    broken = tmp_path / "config.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match=str(broken)):
        resolve_endpoint(registry_config(docker_config_path=str(broken)))


# -- choosing the store --------------------------------------------------------------------------


@pytest.mark.parametrize("registry_class", ["docker", "DockerRegistry", "binderhub.registry.DockerRegistry",
                                            "binderapi.registry.docker.DockerRegistry"])
async def test_make_image_store_registry_classes(http, registry_class):
    settings = make_settings({"DockerRegistry": {"url": "http://127.0.0.1:5000", "docker_config_path": "/nonexistent"}},
                             registry_class=registry_class, image_prefix="127.0.0.1:5000/binder-")
    store = make_image_store(settings, http)
    assert isinstance(store, RememberedImages) and isinstance(store, ImageStore)
    assert isinstance(store.store, DockerRegistry) and store.store.image_prefix == "127.0.0.1:5000/binder-"
    uncached = make_settings({"DockerRegistry": {"url": "http://127.0.0.1:5000", "exists_cache_seconds": 0}},
                             registry_class=registry_class)
    assert isinstance(make_image_store(uncached, http), DockerRegistry)


async def test_make_image_store_unknown_class_is_a_clear_error(http):
    settings = make_settings(registry_class="GoogleArtifactRegistry")
    with pytest.raises(ValueError, match="BinderHub.registry_class"):
        make_image_store(settings, http)


async def test_use_registry_false_means_the_local_engine(http):
    settings = make_settings({"DockerBuildExecutor": {"docker_host": "/var/run/docker.sock"}}, use_registry=False)
    store = make_image_store(settings, http)
    assert isinstance(store, ImageStore) and isinstance(store.store, LocalImages)
    assert store.docker_host == "unix:///var/run/docker.sock"
    await store.close()


def test_split_keeps_names_without_a_host():
    assert DockerRegistry.split("127.0.0.1:5000/binder-abc:ref") == ("binder-abc", "ref")
    assert DockerRegistry.split("gcr.io/project/binder-abc:ref") == ("project/binder-abc", "ref")
    assert DockerRegistry.split("some-image-name:12345") == ("some-image-name", "12345")


def test_warns_when_image_prefix_names_another_registry(http, caplog):
    with caplog.at_level("WARNING", logger="binderapi.registry.docker"):
        DockerRegistry(registry_config(url="http://127.0.0.1:5000"), http, image_prefix="127.0.0.1:5000/binder-")
        DockerRegistry(registry_config(), http, image_prefix="docker.io/binderorg/binder-")
        assert not caplog.records
        DockerRegistry(registry_config(url="http://127.0.0.1:5001"), http, image_prefix="127.0.0.1:5000/binder-")
    assert "127.0.0.1:5000" in caplog.text and "http://127.0.0.1:5001" in caplog.text


# -- a registry without auth ---------------------------------------------------------------------


@pytest.mark.docker
async def test_open_registry_found_and_missing(http, open_registry: RunningRegistry):
    store = DockerRegistry(registry_config(url=open_registry.url), http)
    assert await store.image_exists(open_registry.images["docker"]) is True
    assert await store.image_exists(f"{open_registry.host}/binder-test/tiny:no-such-tag") is False
    assert await store.image_exists(f"{open_registry.host}/no-such/repository:v1") is False
    manifest = await store.get_image_manifest("binder-test/tiny", "v1")
    assert manifest is not None and manifest["mediaType"] == DOCKER_MANIFEST
    assert await store.get_image_manifest("binder-test/tiny", "nope") is None


@pytest.mark.docker
async def test_present_images_are_remembered_absent_ones_never(open_registry: RunningRegistry):
    manifest_requests: list[str] = []

    async def count(request: httpx.Request) -> None:
        if "/manifests/" in request.url.path:
            manifest_requests.append(request.url.path)

    now = [1000.0]
    async with httpx.AsyncClient(event_hooks={"request": [count]}) as http:
        store = RememberedImages(DockerRegistry(registry_config(url=open_registry.url), http), seconds=60,
                                 clock=lambda: now[0])
        present, absent = open_registry.images["docker"], f"{open_registry.host}/binder-test/tiny:not-yet"
        assert [await store.image_exists(present) for _ in range(3)] == [True, True, True]
        assert len(manifest_requests) == 1
        assert [await store.image_exists(absent) for _ in range(2)] == [False, False]
        assert len(manifest_requests) == 3
        now[0] += 61  # past the memory: the registry is asked again
        assert await store.image_exists(present) is True
        assert len(manifest_requests) == 4
        assert await store.get_image_manifest("binder-test/tiny", "v1") is not None  # the store's extras pass through


@pytest.mark.docker
async def test_oci_manifest_and_index_are_found(http, open_registry: RunningRegistry):
    store = DockerRegistry(registry_config(url=open_registry.url), http)
    assert await store.image_exists(open_registry.images["oci"]) is True
    assert await store.image_exists(open_registry.images["oci-index"]) is True
    assert (await store.get_image_manifest("binder-test/oci", "v1"))["mediaType"] == OCI_MANIFEST
    assert (await store.get_image_manifest("binder-test/oci", "index"))["mediaType"] == OCI_INDEX
    # why the Accept header matters: asking for Docker types only, the OCI image looks missing
    narrow = await http.get(f"{open_registry.url}/v2/binder-test/oci/manifests/v1", headers={"Accept": DOCKER_MANIFEST})
    assert narrow.status_code == 404


@pytest.mark.docker
async def test_health_counts_not_found_as_healthy(http, open_registry: RunningRegistry, stopped_registry: str):
    store = DockerRegistry(registry_config(url=open_registry.url), http, image_prefix=f"{open_registry.host}/binder-")
    assert await store.health() == {"ok": True}
    down = DockerRegistry(registry_config(url=stopped_registry), http, image_prefix="127.0.0.1/binder-")
    health = await down.health()
    assert health["ok"] is False
    assert f"container registry at {stopped_registry.removeprefix('http://')} cannot be reached" in health["error"]


# -- htpasswd basic auth -------------------------------------------------------------------------


@pytest.mark.docker
async def test_basic_auth_with_credentials_from_docker_login(http, basic_registry: RunningRegistry):
    # url, username and password all come from the config.json `docker login` wrote
    store = DockerRegistry(registry_config(docker_config_path=str(basic_registry.config_json)), http)
    assert store.url == basic_registry.url
    assert (store.endpoint.username, store.endpoint.password) == (USERNAME, PASSWORD)
    assert await store.image_exists(basic_registry.images["docker"]) is True
    assert await store.image_exists(f"{basic_registry.host}/private/tiny:other") is False
    assert await store.health() == {"ok": True}


@pytest.mark.docker
async def test_basic_auth_wrong_password_is_an_error_not_missing(http, basic_registry: RunningRegistry):
    store = DockerRegistry(registry_config(url=basic_registry.url, username=USERNAME, password="wrong-pass"), http)
    with pytest.raises(RegistryError, match=f"credentials rejected by {basic_registry.url}") as error:
        await store.image_exists(basic_registry.images["docker"])
    assert "wrong-pass" not in error.value.message
    assert (await store.health())["ok"] is False


@pytest.mark.docker
async def test_basic_auth_without_credentials(http, basic_registry: RunningRegistry):
    store = DockerRegistry(registry_config(url=basic_registry.url), http)
    with pytest.raises(RegistryError, match="requires credentials"):
        await store.image_exists(basic_registry.images["docker"])


# -- token auth ----------------------------------------------------------------------------------


@pytest.mark.docker
async def test_token_auth_via_challenge_caches_tokens_per_scope(http, token_registry: RunningRegistry):
    tokens = token_registry.token_server
    assert tokens is not None
    store = DockerRegistry(registry_config(docker_config_path=str(token_registry.config_json)), http)
    assert store.url == token_registry.url
    scope = "repository:tok/tiny:pull"
    before = tokens.tokens_for(scope)
    assert await store.image_exists(token_registry.images["docker"]) is True
    assert await store.image_exists(token_registry.images["docker"]) is True
    assert await store.image_exists(f"{token_registry.host}/tok/tiny:missing") is False
    assert tokens.tokens_for(scope) == before + 1  # one token for three checks of one repository
    assert tokens.issued[-1].service == TOKEN_SERVICE and tokens.issued[-1].user == USERNAME
    # a repository never seen asks the learned realm directly, without a 401 first
    assert await store.image_exists(f"{token_registry.host}/tok/other:v1") is False
    assert tokens.tokens_for("repository:tok/other:pull") == 1


@pytest.mark.docker
async def test_concurrent_checks_share_one_token_fetch(http, token_registry: RunningRegistry):
    tokens = token_registry.token_server
    assert tokens is not None
    store = DockerRegistry(registry_config(url=token_registry.url, username=USERNAME, password=PASSWORD), http)
    scope = "repository:tok/tiny:pull"
    before = tokens.tokens_for(scope)
    results = await asyncio.gather(*(store.image_exists(token_registry.images["docker"]) for _ in range(20)))
    assert results == [True] * 20
    assert tokens.tokens_for(scope) == before + 1


@pytest.mark.docker
async def test_token_auth_renews_a_refused_cached_token(http, token_registry: RunningRegistry):
    tokens = token_registry.token_server
    assert tokens is not None
    store = DockerRegistry(registry_config(url=token_registry.url, username=USERNAME, password=PASSWORD), http)
    assert await store.image_exists(token_registry.images["docker"]) is True
    key = (tokens.realm, TOKEN_SERVICE, "repository:tok/tiny:pull")
    assert store._tokens.get(key) is not None
    store._tokens.put(key, "not-a-valid-token", 300)  # as if revoked
    count = tokens.tokens_for("repository:tok/tiny:pull")
    assert await store.image_exists(token_registry.images["docker"]) is True
    assert tokens.tokens_for("repository:tok/tiny:pull") == count + 1


@pytest.mark.docker
async def test_short_lived_tokens_are_not_reused(http, token_registry: RunningRegistry):
    tokens = token_registry.token_server
    assert tokens is not None
    tokens.expires_in = 5
    try:
        store = DockerRegistry(registry_config(url=token_registry.url, username=USERNAME, password=PASSWORD), http)
        count = tokens.tokens_for("repository:tok/tiny:pull")
        assert await store.image_exists(token_registry.images["docker"]) is True
        assert await store.image_exists(token_registry.images["docker"]) is True
        assert tokens.tokens_for("repository:tok/tiny:pull") == count + 2
    finally:
        tokens.expires_in = 300


@pytest.mark.docker
async def test_explicit_token_url(http, token_registry: RunningRegistry):
    tokens = token_registry.token_server
    assert tokens is not None
    store = DockerRegistry(registry_config(url=token_registry.url, token_url=f"{tokens.realm}?service={TOKEN_SERVICE}",
                                           username=USERNAME, password=PASSWORD), http)
    assert await store.image_exists(token_registry.images["docker"]) is True
    assert tokens.issued[-1].scopes == ["repository:tok/tiny:pull"]
    assert tokens.issued[-1].service == TOKEN_SERVICE
    assert await store.image_exists(f"{token_registry.host}/tok/nothing:v1") is False


@pytest.mark.docker
async def test_token_auth_wrong_password_is_an_error_even_with_not_found_401(http, token_registry: RunningRegistry):
    for not_found_401 in (False, True):
        store = DockerRegistry(registry_config(url=token_registry.url, username=USERNAME, password="bad-pass",
                                               not_found_401=not_found_401), http)
        with pytest.raises(RegistryError, match=f"credentials rejected by {token_registry.url}") as error:
            await store.image_exists(token_registry.images["docker"])
        assert "bad-pass" not in error.value.message


@pytest.mark.docker
async def test_token_auth_anonymous(http, token_registry: RunningRegistry):
    store = DockerRegistry(registry_config(url=token_registry.url), http)
    with pytest.raises(RegistryError, match="requires credentials"):
        await store.image_exists(token_registry.images["docker"])


@pytest.mark.docker
async def test_401_after_a_token_is_missing_only_with_not_found_401(http, token_registry: RunningRegistry):
    """The token server grants nothing on `denied/*`, so the registry answers 401
    insufficient_scope: Docker Hub's answer for a repository that does not exist."""
    image = f"{token_registry.host}/denied/tiny:v1"
    hub_like = DockerRegistry(registry_config(url=token_registry.url, username=USERNAME, password=PASSWORD,
                                              not_found_401=True), http)
    assert await hub_like.image_exists(image) is False
    strict = DockerRegistry(registry_config(url=token_registry.url, username=USERNAME, password=PASSWORD), http)
    assert strict.endpoint.not_found_401 is False
    with pytest.raises(RegistryError, match=r"credentials rejected by .*insufficient_scope"):
        await strict.image_exists(image)


@pytest.mark.docker
async def test_failing_token_server_is_retried_then_reported(http, token_registry: RunningRegistry):
    with ScriptedServer() as broken_tokens:
        store = DockerRegistry(registry_config(url=token_registry.url, token_url=f"{broken_tokens.url}/token",
                                               username=USERNAME, password=PASSWORD, retries=2), http)
        with pytest.raises(RegistryError, match=r"token server .* answered HTTP 500 \(gave up after 2 attempts\)"):
            await store.image_exists(token_registry.images["docker"])
    assert len(broken_tokens.requests) == 2
    assert "service=container_registry" in broken_tokens.requests[0][1]  # BinderHub's default service


# -- registries that fail ------------------------------------------------------------------------


async def test_registry_answering_500_is_retried_then_an_error(http):
    with ScriptedServer() as server:
        store = DockerRegistry(registry_config(url=server.url, retries=3), http)
        with pytest.raises(RegistryError) as error:
            await store.image_exists("127.0.0.1/binder-x:abc")
    assert len(server.requests) == 3
    assert server.requests[0] == ("HEAD", "/v2/binder-x/manifests/abc")
    assert server.url in error.value.message
    assert "HTTP 500" in error.value.message and "3 attempts" in error.value.message


async def test_registry_recovering_within_the_retries_gives_its_answer(http):
    answers = iter([(503, {}, b""), (502, {}, b""), (200, {"Content-Type": DOCKER_MANIFEST}, b"{}")])
    with ScriptedServer(lambda method, path: next(answers)) as server:
        store = DockerRegistry(registry_config(url=server.url, retries=3), http)
        assert await store.image_exists("127.0.0.1/binder-x:abc") is True
    assert len(server.requests) == 3
    answers = iter([(500, {}, b""), (404, {}, b"")])
    with ScriptedServer(lambda method, path: next(answers)) as server:
        store = DockerRegistry(registry_config(url=server.url, retries=3), http)
        assert await store.image_exists("127.0.0.1/binder-x:abc") is False


async def test_unexpected_status_is_not_retried(http):
    body = json.dumps({"errors": [{"code": "NAME_INVALID", "message": "invalid repository name"}]}).encode()
    with ScriptedServer(lambda method, path: (400, {"Content-Type": "application/json"}, body)) as server:
        store = DockerRegistry(registry_config(url=server.url, retries=3), http)
        with pytest.raises(RegistryError, match="HTTP 400.*NAME_INVALID"):
            await store.get_image_manifest("x", "y")
    assert len(server.requests) == 1


async def test_registry_that_hangs_times_out(http):
    with ScriptedServer(hang=True) as server:
        store = DockerRegistry(registry_config(url=server.url, retries=2, timeout=0.2), http)
        with pytest.raises(RegistryError, match=r"the container registry at 127.0.0.1:\d+ did not answer within 0.2s "
                                                r"\(gave up after 2 attempts\)") as error:
            await store.image_exists("127.0.0.1/binder-x:abc")
    assert len(server.requests) == 2
    assert error.value.status_code == 503  # docs/events.md: a dependency is down


@pytest.mark.docker
async def test_stopped_registry_is_an_error_not_missing(http, stopped_registry: str):
    store = DockerRegistry(registry_config(url=stopped_registry, retries=2), http)
    host = stopped_registry.removeprefix("http://")
    with pytest.raises(RegistryError, match=rf"^the container registry at {host} cannot be reached \(Connect"
                                            r".*\) \(gave up after 2 attempts\)$") as error:
        await store.image_exists("127.0.0.1/binder-x:abc")
    assert error.value.status_code == 503


# -- use_registry: false: the local Docker engine ------------------------------------------------


@pytest.mark.docker
@pytest.mark.parametrize("docker_host", ["unix:///var/run/docker.sock", "/var/run/docker.sock"])
async def test_local_images_against_the_engine(tiny_image: str, docker_host: str):
    store = LocalImages(docker_host)
    try:
        assert await store.image_exists(tiny_image) is True
        assert await store.image_exists(tiny_image.rsplit(":", 1)[0] + ":not-built") is False
        assert await store.health() == {"ok": True}
    finally:
        await store.close()


async def test_local_images_without_an_engine_is_an_error(tmp_path):
    store = LocalImages(str(tmp_path / "no-docker.sock"), retries=2, retry_delay=0.01)
    try:
        with pytest.raises(RegistryError, match="the Docker engine at unix://.*no-docker.sock cannot be reached") as error:
            await store.image_exists("anything:v1")
        assert error.value.status_code == 503
        health = await store.health()
        assert health["ok"] is False and "no-docker.sock" in health["error"]
    finally:
        await store.close()
