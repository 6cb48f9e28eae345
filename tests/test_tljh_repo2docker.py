"""tljh-repo2docker (PyPI), unchanged, building through binderapi in its reference set-up.

tljh-repo2docker's BinderHub backend (``binderhub_builder.BinderHubBuildHandler.post``) runs as a
JupyterHub-managed service. On ``POST <service>/api/environments`` it answers at once, then calls
``GET <binderhub_url>build/git/<quoted repo>/<ref>?build_only=true`` with its own JupyterHub
*service* token (``Authorization: Bearer``) and httpx's default ``Accept: */*``, and reads ``data:``
lines until ``ready``/``built`` (its image ``imageName``) or ``failed``, writing status and log to
its database. So binderapi must accept a service token for ``build_only`` and stream without
``Accept: text/event-stream`` for such a client.

Here: a second real JupyterHub (the deploy config plus the service, registered exactly as
tljh-repo2docker's README does), the real service process, binderapi in auth mode on the real
Docker engine and registry, and a repository on the real git server. The test acts as a hub admin
would in the service's page: POST an environment, then poll the service's own API until it says
``built``.

tljh-repo2docker pins ``aiodocker<0.22``, ``jupyter-client<8`` and ``jupyter-repo2docker<2025``,
which binderapi's test environment cannot take (it uses aiodocker 0.27), so it is installed into a
virtualenv of its own, kept in ``$BINDERAPI_INFRA_DIR`` (default ``~/.cache/binderapi-infra``) and
made on first use from PyPI.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from fixtures.hub import RunningHub, start_hub
from fixtures.server import RunningService, free_port, read_events, serve
from fixtures.stack import SINGLEUSER_IMAGE, docker_settings, git_spec, manifest_exists, unique

pytestmark = [pytest.mark.docker, pytest.mark.hub]

TLJH_VERSION = "3.0.21"
INFRA_DIR = Path(os.environ.get("BINDERAPI_INFRA_DIR") or Path.home() / ".cache/binderapi-infra")
TLJH_VENV = INFRA_DIR / f"tljh-repo2docker-{TLJH_VERSION}"
INSTALL_TIMEOUT = 600.0
ADMIN = "tljh-admin"
BUILD_TIMEOUT = 240.0


async def _run(*argv: str | Path, seconds: float) -> None:
    proc = await asyncio.create_subprocess_exec(*map(str, argv), stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), seconds)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"{' '.join(map(str, argv))} did not finish within {seconds:.0f}s")
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, argv))} failed ({proc.returncode}):\n{out.decode(errors='replace')[-3000:]}")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def tljh_python() -> Path:
    """The Python of a virtualenv holding tljh-repo2docker (made once, then reused)."""
    python = TLJH_VENV / "bin" / "python"
    marker = TLJH_VENV / ".installed"
    if not marker.exists():
        await asyncio.to_thread(shutil.rmtree, TLJH_VENV, ignore_errors=True)
        await _run(sys.executable, "-m", "venv", TLJH_VENV, seconds=120)
        await _run(python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                   f"tljh-repo2docker=={TLJH_VERSION}", seconds=INSTALL_TIMEOUT)
        await asyncio.to_thread(marker.write_text, TLJH_VERSION)
    return python


class TljhHub:
    """The hub with tljh-repo2docker as a managed service, and the port binderapi must serve on."""

    def __init__(self, hub: RunningHub, binder_port: int, service_token: str, no_access_token: str) -> None:
        self.hub = hub
        self.binder_port = binder_port
        self.service_token = service_token  # tljh_repo2docker's own token (what it sends binderapi)
        self.no_access_token = no_access_token  # a service without access:services!service=binder
        self.service_url = hub.url + "services/tljh_repo2docker/"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def tljh_hub(tljh_python: Path) -> AsyncIterator[TljhHub]:
    binder_port, tljh_port = free_port(), free_port()
    service_token, no_access_token = secrets.token_hex(32), secrets.token_hex(32)
    workdir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="binderapi-tljh-"))
    path = f"{tljh_python.parent}{os.pathsep}{os.environ.get('PATH', os.defpath)}"
    # tljh-repo2docker's README, "Configuration": the service, its role, and an admin user
    extra = f"""
c.JupyterHub.services.append({{
    "name": "tljh_repo2docker",
    "url": "http://127.0.0.1:{tljh_port}",
    "api_token": {service_token!r},
    "command": [{str(tljh_python)!r}, "-m", "tljh_repo2docker", "--ip", "127.0.0.1", "--port", "{tljh_port}",
                "--binderhub_url", "http://127.0.0.1:{binder_port}/",
                "--TljhRepo2Docker.db_url=sqlite:///{workdir}/tljh_repo2docker.sqlite",
                "--TljhRepo2Docker.cookie_secret_file={workdir}/tljh_repo2docker_cookie_secret"],
    "cwd": {str(workdir)!r},
    "environment": {{"PATH": {path!r}}},  # it runs `alembic` from its own virtualenv
    "oauth_no_confirm": True,
}})
c.JupyterHub.load_roles.append({{
    "description": "Role for tljh_repo2docker service",
    "name": "tljh-repo2docker-service",
    "scopes": ["read:users", "read:roles:users", "admin:servers", "access:services!service=binder"],
    "services": ["tljh_repo2docker"],
}})
c.JupyterHub.services.append({{"name": "no-binder-access", "api_token": {no_access_token!r}}})
c.Authenticator.admin_users = {{{ADMIN!r}}}
"""
    try:
        async with start_hub(extra_config=extra, container_prefix=f"binderapi-tljh-{uuid.uuid4().hex[:8]}",
                             BINDER_AUTH_ENABLED="1") as hub:
            yield TljhHub(hub, binder_port, service_token, no_access_token)
    finally:
        await asyncio.to_thread(shutil.rmtree, workdir, ignore_errors=True)


@contextlib.asynccontextmanager
async def binderapi(tljh: TljhHub) -> AsyncIterator[RunningService]:
    """binderapi in auth mode with API-only mode, where the service's ``binderhub_url`` points."""
    settings = docker_settings(hub_url=tljh.hub.url, hub_api_token=tljh.hub.api_token, auth_enabled=True,
                               enable_api_only_mode=True)
    async with serve(settings, port=tljh.binder_port) as svc:
        yield svc


async def wait_for_service(client: httpx.AsyncClient, tljh: TljhHub, token: str) -> None:
    """Until the hub's proxy reaches the service (it starts with the hub, in its own process)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + 60
    while True:
        with contextlib.suppress(httpx.TransportError):
            response = await client.get(tljh.service_url + "api/environments", headers={"Authorization": f"token {token}"})
            if response.status_code == 200:
                return
        if loop.time() > give_up:
            pytest.fail(f"tljh-repo2docker did not answer within 60s:\n{tljh.hub.log_tail()}")
        await asyncio.sleep(0.5)


async def environment(client: httpx.AsyncClient, tljh: TljhHub, token: str, uid: str) -> dict[str, Any]:
    response = await client.get(tljh.service_url + "api/environments", headers={"Authorization": f"token {token}"})
    response.raise_for_status()
    (image,) = [image for image in response.json()["images"] if image["uid"] == uid]
    return image


@pytest.mark.timeout(INSTALL_TIMEOUT + 300)
@pytest.mark.usefixtures("no_leaked_build_containers")
async def test_tljh_repo2docker_builds_through_binderapi_with_its_service_token(tljh_hub, git_server):
    name = unique("tljh-env")
    git_server.create_repo(name, {"Dockerfile": f"FROM {SINGLEUSER_IMAGE}\nRUN echo built-for-tljh > /tmp/tljh.txt\n"})
    admin_token = await tljh_hub.hub.user_token(ADMIN)
    async with httpx.AsyncClient(timeout=30) as client, binderapi(tljh_hub):
        await wait_for_service(client, tljh_hub, admin_token)
        created = await client.post(tljh_hub.service_url + "api/environments", headers={"Authorization": f"token {admin_token}"},
                                    json={"repo": git_server.daemon_url(name), "ref": "main", "name": "tljh-env",
                                          "memory": "", "cpu": "", "provider": "git"})
        assert created.status_code == 200, created.text
        uid = created.json()["uid"]
        loop = asyncio.get_running_loop()
        give_up = loop.time() + BUILD_TIMEOUT
        while (image := await environment(client, tljh_hub, admin_token, uid))["status"] == "building":
            assert loop.time() < give_up, f"still building after {BUILD_TIMEOUT}s: {image}"
            await asyncio.sleep(1)
        # the service's own log page: every message it read from binderapi's stream
        logs = await client.get(tljh_hub.service_url + f"api/environments/{uid}/logs",
                                headers={"Authorization": f"token {admin_token}"})
    assert image["status"] == "built", f"{image}\n{logs.text[-3000:]}"
    # the service stored binderapi's image name from the final `ready` event
    assert image["image_name"].startswith("127.0.0.1:5000/") and await manifest_exists(image["image_name"])
    assert "built-for-tljh" in logs.text and "Done! Image built" in logs.text, logs.text[-3000:]


async def test_service_tokens_may_only_build_and_need_access_to_binder(tljh_hub):
    """The service's token without ``build_only`` (no server to launch for a service), a service
    token lacking ``access:services!service=binder``, and an anonymous bare GET (a crawler): each
    one clear refusal, before anything is resolved or built."""
    url = "build/" + git_spec("git://127.0.0.1:9/never-contacted", "main")
    async with httpx.AsyncClient(timeout=30) as client, binderapi(tljh_hub) as svc:
        launch = await read_events(client, svc.url + url, headers={"Authorization": f"Bearer {tljh_hub.service_token}"})
        no_access = await read_events(client, svc.url + url, params={"build_only": "true"},
                                      headers={"Authorization": f"Bearer {tljh_hub.no_access_token}"})
        crawler = await client.get(svc.url + url, params={"build_only": "true"})
    assert len(launch) == 1 and launch[0]["status_code"] == 403, launch
    assert "service 'tljh_repo2docker' may only build (build_only=true)" in launch[0]["message"]
    assert len(no_access) == 1 and no_access[0]["status_code"] == 403, no_access
    assert "needs the scope access:services!service=binder" in no_access[0]["message"]
    assert crawler.status_code == 200 and crawler.headers["content-type"].startswith("text/event-stream")
    assert '"status_code":400' in crawler.text and "Missing Accept header" in crawler.text
