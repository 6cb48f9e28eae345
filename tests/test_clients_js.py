"""BinderHub's own JavaScript client (``@jupyterhub/binderhub-client``, pinned in
tests/clients/binderhub-client/package.json) against a live binderapi: how it reads our refusals.

What its 0.5.0 code does with an answer that is not 2xx (``onopen`` in lib/client.js): a 4xx other
than 429 yields one ``failed`` item "Failed to connect to event stream: <status> - ..." and stops; a
429 or 5xx yields an ``unknown`` "Error connecting to event stream, retrying" item and throws
``EventStreamRetry``. Its ``onerror`` compares ``error.name`` to that class name, but a subclass of
``Error`` keeps the name ``"Error"``, so in practice it does not retry either: it yields
``failed`` "Error in event stream: Error" and stops. Either way the client ends; it never reads the
body of a non-2xx answer (our ``failed`` event is there for EventSource-less clients and scripts).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from fixtures.server import make_settings, serve

CLIENT_DIR = Path(__file__).parent / "clients" / "binderhub-client"

pytestmark = [pytest.mark.skipif(not (shutil.which("node") and shutil.which("npm")), reason="needs node and npm"),
              pytest.mark.docker]  # the service starts the Docker backend


@pytest.fixture(scope="session")
def binderhub_client(tmp_path_factory) -> Path:
    """The pinned package installed from the npm registry into a temporary directory."""
    target = tmp_path_factory.mktemp("binderhub-client")
    for name in ("package.json", "fetch.mjs"):
        shutil.copy(CLIENT_DIR / name, target / name)
    result = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=target,
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        pytest.skip(f"npm could not install @jupyterhub/binderhub-client: {result.stderr[-500:]}")
    return target


async def fetch_items(client_dir: Path, endpoint: str, spec: str) -> list[dict]:
    """Every item ``BinderRepository.fetch()`` yields for ``spec`` (build only), until it ends."""
    process = await asyncio.create_subprocess_exec(
        "node", str(client_dir / "fetch.mjs"), endpoint, spec, "build_only",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    items = [json.loads(line) for line in stdout.decode().splitlines() if line.startswith("{")]
    assert items, stderr.decode()[-2000:]
    return items


def settings(**binderhub):
    return make_settings(binderhub.pop("config", None), build_class="docker", use_registry=False,
                         enable_api_only_mode=True, **binderhub)


async def test_a_banned_client_is_refused_by_status(binderhub_client):
    async with serve(settings(ban_networks={"127.0.0.0/8": "loopback"})) as svc:
        items = await fetch_items(binderhub_client, svc.url + "build/", "gh/o/r/HEAD")
    assert items[0]["phase"] == "failed"
    assert items[0]["message"].startswith("Failed to connect to event stream: 403 - ")
    assert all(item["phase"] == "failed" for item in items)  # it stopped: nothing else came


async def test_a_rate_limited_client_sees_429_and_stops(binderhub_client):
    async with serve(settings(config={"RateLimiter": {"limit": 1, "period_seconds": 600}})) as svc:
        first = await fetch_items(binderhub_client, svc.url + "build/", "gh/o")
        second = await fetch_items(binderhub_client, svc.url + "build/", "gh/o")
        async with httpx.AsyncClient() as client:  # what a script with raise_for_status sees
            raw = await client.get(svc.url + "build/gh/o", headers={"Accept": "text/event-stream"})
    # under the limit: our own failed event, read from the stream
    assert first[0] == {"phase": "failed", "message": 'Spec is not of the form "user/repo/ref", provided: "o".\n'}
    assert second[0]["phase"] == "unknown"
    assert second[0]["message"].startswith("Error connecting to event stream, retrying: 429 - ")
    assert second[-1]["phase"] == "failed"  # and the iteration ended (no retry loop)
    with pytest.raises(httpx.HTTPStatusError):
        raw.raise_for_status()
    assert raw.status_code == 429 and int(raw.headers["retry-after"]) > 0
