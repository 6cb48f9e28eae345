"""BinderSpawnerMixin: what it hands the single-user server, its refusals on a real JupyterHub, and a
plain Jupyter server (BinderHub chart's ``jupyter-notebook`` style) started for real with the
arguments it builds. The launch through ``jupyterhub-singleuser`` is in ``test_launcher.py``."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from tornado import web
from traitlets.config import LoggingConfigurable

from binderapi.launcher import new_token
from binderapi.spawner import BinderSpawnerMixin
from fixtures.hub import (
    CONTAINER_PREFIX,
    REPO_ROOT,
    SINGLEUSER_IMAGE,
    RunningHub,
    containers,
    run,
)
from fixtures.server import free_port

OPTIONS = {
    "image": "127.0.0.1:5000/binder-x:abc", "repo_url": "https://github.com/o/r", "token": "t0k3n-abcdefghijklmnop",
    "binder_ref_url": "https://github.com/o/r/tree/abc", "binder_launch_host": "https://binder.example/",
    "binder_request": "v2/gh/o/r/HEAD", "binder_persistent_request": "v2/gh/o/r/abc", "binder_client_ip": "10.1.2.3",
}


class StubSpawner(LoggingConfigurable):
    """The parts of a JupyterHub Spawner the mixin builds on."""

    def __init__(self, user_options: dict[str, Any] | None = None, *, base_args: list[str] | None = None,
                 ip: str = "127.0.0.1", port: int = 8888, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.user_options = user_options or {}
        self.base_args = ["--Spawner-arg"] if base_args is None else base_args
        self.ip, self.port, self.default_url = ip, port, ""
        self.server = SimpleNamespace(base_url="/user/someone/")
        self.image = "default-image"
        self.started = False

    def get_args(self) -> list[str]:
        return list(self.base_args)

    def get_env(self) -> dict[str, str]:
        return {"JUPYTERHUB_API_TOKEN": "hub-issued"}

    async def start(self) -> str:
        self.started = True
        return f"http://{self.ip}:{self.port}"

    def run_post_stop_hook(self) -> None:
        return None


class BinderStub(BinderSpawnerMixin, StubSpawner):
    pass


def spawner(options: dict[str, Any] | None = None, **traits: Any) -> BinderStub:
    return BinderStub(dict(OPTIONS) if options is None else options, **traits)


# -- what the server gets -------------------------------------------------------------------------


def test_environment_carries_the_launch() -> None:
    env = spawner().get_env()
    assert env["JUPYTERHUB_API_TOKEN"] == "hub-issued"  # the spawner's own environment is kept
    assert {k: v for k, v in env.items() if k.startswith("BINDER_")} == {
        "BINDER_REPO_URL": OPTIONS["repo_url"], "BINDER_REF_URL": OPTIONS["binder_ref_url"],
        "BINDER_LAUNCH_HOST": OPTIONS["binder_launch_host"], "BINDER_REQUEST": OPTIONS["binder_request"],
        "BINDER_PERSISTENT_REQUEST": OPTIONS["binder_persistent_request"],
        "BINDER_CLIENT_IP": OPTIONS["binder_client_ip"],
    }
    # jupyterhub-singleuser 5+ ignores ?token= in page URLs unless allowed: Binder's links need it
    assert env["JUPYTERHUB_ALLOW_TOKEN_IN_URL"] == "1"
    assert "JUPYTERHUB_ALLOW_TOKEN_IN_URL" not in spawner(auth_enabled=True).get_env()


def test_arguments_open_a_plain_server_with_the_token() -> None:
    args = spawner(cors_allow_origin="https://frontend.example").get_args()
    token = OPTIONS["token"]
    assert args[0] == "--Spawner-arg"  # the spawner's (and operator's) arguments come first
    for prefix in ("--ServerApp.", "--NotebookApp."):
        assert f"{prefix}token={token}" in args
        assert f"{prefix}ip=127.0.0.1" in args and f"{prefix}port=8888" in args
        assert f"{prefix}base_url=/user/someone/" in args
        assert f"{prefix}allow_origin=https://frontend.example" in args
    assert f"--IdentityProvider.token={token}" in args
    assert not any("allow_origin_pat" in a for a in args)
    assert "--ServerApp.allow_origin_pat=.*" in spawner(cors_allow_origin="*").get_args()


def test_auth_mode_leaves_authentication_to_the_hub() -> None:
    args = spawner(auth_enabled=True, cors_allow_origin="*").get_args()
    assert not any("token" in a for a in args)
    assert args == ["--Spawner-arg", "--ServerApp.allow_origin=*", "--ServerApp.allow_origin_pat=.*",
                    "--NotebookApp.allow_origin=*", "--NotebookApp.allow_origin_pat=.*"]


# -- start ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "message"), [
    ({}, "token required"),
    ({"image": "x:1"}, "token required"),
    ({"token": "abcdefghijklmnopqrstuv"}, "image required"),
    ({"token": "abcdefghijklmnopqrstuv", "image": ""}, "image required"),
    ({"token": 12345678901, "image": "x:1"}, "token must be a string"),
    ({"token": "abcdefghijklmnopqrstuv", "image": ["x:1"]}, "image must be a string"),
])
async def test_start_refuses_a_launch_without_token_or_image(options: dict[str, Any], message: str) -> None:
    stub = spawner(options, register_launch_token=False)
    with pytest.raises(web.HTTPError) as e:
        await stub.start()
    assert (e.value.status_code, e.value.log_message) == (400, message)
    assert not stub.started


async def test_start_runs_the_requested_image() -> None:
    stub = spawner(register_launch_token=False)
    assert await stub.start() == "http://127.0.0.1:8888"
    assert stub.image == OPTIONS["image"]


async def test_auth_mode_needs_neither_token_nor_image() -> None:
    stub = spawner({}, auth_enabled=True)
    await stub.start()
    assert stub.started and stub.image == "default-image"


def test_the_mixin_imports_nothing_but_jupyterhub_and_traitlets() -> None:
    """It runs inside the hub's process, where binderapi's service dependencies need not exist."""
    code = ("import sys, binderapi.spawner; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'fastapi', 'starlette', 'httpx', 'pydantic', "
            "'uvicorn', 'aiodocker', 'kubernetes_asyncio', 'yaml'}), "
            "sorted(m for m in sys.modules if m.startswith('binderapi')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[] ['binderapi', 'binderapi.spawner']"


# -- on the real hub --------------------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.hub
async def test_hub_refuses_a_start_without_token_or_image(jupyterhub: RunningHub) -> None:
    user = f"nobody-{uuid.uuid4().hex[:6]}"
    await jupyterhub.user_token(user)
    try:
        for body, message in (({}, "token required"), ({"token": new_token()}, "image required"),
                              ({"image": SINGLEUSER_IMAGE}, "token required")):
            response = await jupyterhub.api("POST", f"users/{user}/server", token=jupyterhub.api_token, json=body)
            assert (response.status_code, response.json()["message"]) == (400, message)
        assert (await jupyterhub.user(user))["servers"] == {}
        assert await containers(jupyterhub.container_name(user)) == []
    finally:
        await jupyterhub.delete_user(user)


# -- a plain Jupyter server with the mixin's arguments ---------------------------------------------


@pytest.mark.docker  # runs the single-user image with the docker CLI
async def test_plain_jupyter_server_opens_with_the_launch_token() -> None:
    """BinderHub's chart runs `jupyter-notebook` instead of jupyterhub-singleuser; such a server knows
    only what its command line says. Run one with exactly the mixin's arguments."""
    port = free_port()
    stub = spawner(base_args=[], port=port, cors_allow_origin="*")
    name = f"{CONTAINER_PREFIX}-plain-{uuid.uuid4().hex[:6]}"
    await run("docker", "run", "-d", "--rm", "--network", "host", "--name", name, SINGLEUSER_IMAGE,
              "jupyter", "server", *stub.get_args())
    base = f"http://127.0.0.1:{port}/user/someone/"
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            for _ in range(240):
                try:
                    response = await http.get(base + "api/status", params={"token": OPTIONS["token"]},
                                              headers={"Origin": "https://elsewhere.example"})
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.25)
            else:
                raise AssertionError(f"the server never answered: {await run('docker', 'logs', name, check=False)}")
            assert response.status_code == 200, response.text
            assert response.headers.get("access-control-allow-origin") == "*"
        async with httpx.AsyncClient(timeout=5) as fresh:  # without the cookie the token earned
            assert (await fresh.get(base + "api/status")).status_code == 403
            assert (await fresh.get(base + "api/status", params={"token": new_token()})).status_code == 403
    finally:
        await run("docker", "rm", "-f", name, check=False)


# -- the example hub configurations ----------------------------------------------------------------


def load_hub_config(name: str, monkeypatch: pytest.MonkeyPatch, **env: str) -> Any:
    """Execute a deploy/jupyterhub config file the way JupyterHub does (traitlets' loader)."""
    from traitlets.config.loader import PyFileConfigLoader

    for key, value in {"BINDER_SERVICE_API_TOKEN": "service-token", **env}.items():
        monkeypatch.setenv(key, value)
    return PyFileConfigLoader(name, path=str(REPO_ROOT / "deploy" / "jupyterhub")).load_config()


def test_docker_config_wires_the_mixin_service_and_image_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_hub_config("jupyterhub_config_docker.py", monkeypatch,
                             BINDER_ALLOWED_IMAGE_PREFIX="127.0.0.1:5000/binder-", BINDER_CORS_ALLOW_ORIGIN="*")
    spawner_class = config.JupyterHub.spawner_class
    assert issubclass(spawner_class, BinderSpawnerMixin) and spawner_class.__mro__[1] is BinderSpawnerMixin
    assert config.JupyterHub.services == [{"name": "binder", "api_token": "service-token"}]
    assert config.JupyterHub.load_roles == [{"name": "binder", "services": ["binder"],
                                             "scopes": ["admin:users", "servers"]}]
    assert config.BinderSpawnerMixin.cors_allow_origin == "*"
    assert config.DockerSpawner.network_name == "host" and config.DockerSpawner.ip == "127.0.0.1"
    allowed = config.DockerSpawner.allowed_images
    assert allowed(SimpleNamespace(user_options={"image": "127.0.0.1:5000/binder-x:1"})) == ["127.0.0.1:5000/binder-x:1"]
    assert allowed(SimpleNamespace(user_options={"image": "evil/miner:latest"})) == []


def test_docker_config_refuses_to_start_without_a_service_token(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit, match="BINDER_SERVICE_API_TOKEN"):
        load_hub_config("jupyterhub_config_docker.py", monkeypatch, BINDER_SERVICE_API_TOKEN="")


async def test_kubespawner_config_wires_the_mixin(monkeypatch: pytest.MonkeyPatch) -> None:
    """KubeSpawner cannot run here (no cluster, not installed): load the config against a stand-in
    `kubespawner` module to check that the file itself is sound."""
    import types

    from jupyterhub.spawner import Spawner

    class KubeSpawner(Spawner):
        async def start(self) -> None: ...
        async def stop(self, now: bool = False) -> None: ...
        async def poll(self) -> None: ...

    monkeypatch.setitem(sys.modules, "kubespawner", types.SimpleNamespace(KubeSpawner=KubeSpawner))
    config = load_hub_config("jupyterhub_config_kubespawner.py", monkeypatch,
                             BINDER_ALLOWED_IMAGE_PREFIX="registry.example/binder-", POD_NAMESPACE="binder")
    assert config.JupyterHub.spawner_class.__mro__[1:3] == (BinderSpawnerMixin, KubeSpawner)
    assert config.JupyterHub.load_roles[0] == {"name": "binder", "services": ["binder"],
                                               "scopes": ["admin:users", "servers"]}
    assert config.KubeSpawner.namespace == "binder"
    check = config.KubeSpawner.pre_spawn_hook
    await check(SimpleNamespace(user_options={"image": "registry.example/binder-x:1"}))
    with pytest.raises(web.HTTPError) as e:
        await check(SimpleNamespace(user_options={"image": "evil/miner:latest"}))
    assert e.value.status_code == 400
