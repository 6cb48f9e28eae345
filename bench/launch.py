"""Workload 2: cached launch (request -> ``ready``) against a bare JupyterHub spawn of the same
image with the same ``user_options`` (POST /users/{u}/server, then the hub's progress stream until
ready), interleaved A-B-B-A so drift on a shared machine hits both alike. After every sample the
server is stopped and the user deleted."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from urllib.parse import quote, urlsplit

from .cached import ensure_built
from .report import Report, Row, ms, percentile
from .sse import stream
from .stack import Stack

WORKLOAD = "cached launch vs bare spawn"


async def stop_user(stack: Stack, name: str) -> None:
    user = quote(name, safe="")
    await stack.hub_api("DELETE", f"users/{user}/server")
    for _ in range(240):
        response = await stack.hub_api("GET", f"users/{user}")
        if response.status_code == 404 or not (response.json().get("servers") or {}):
            break
        await asyncio.sleep(0.25)
    await stack.hub_api("DELETE", f"users/{user}")


async def bare_spawn(stack: Stack, image: str, repo_url: str, user_creations: list[float] | None = None) -> float:
    """Seconds from the start request to the hub's ``ready``, as the launcher would see it. The
    user is created before the clock starts (its cost goes to ``user_creations``)."""
    name = f"bench-bare-{secrets.token_hex(4)}"
    user = quote(name, safe="")
    options = {"image": image, "repo_url": repo_url, "token": secrets.token_hex(16), "binder_ref_url": "",
               "binder_launch_host": "", "binder_request": "", "binder_persistent_request": "", "binder_client_ip": ""}
    try:
        created = time.perf_counter()
        (await stack.hub_api("POST", f"users/{user}")).raise_for_status()
        started = time.perf_counter()
        if user_creations is not None:
            user_creations.append(started - created)
        response = await stack.hub_api("POST", f"users/{user}/server", json=options)
        if response.status_code not in (201, 202):
            raise RuntimeError(f"bare spawn refused: {response.status_code} {response.text[:200]}")
        if response.status_code == 202:
            async with stack.http.stream("GET", f"{stack.hub_url}hub/api/users/{user}/server/progress",
                                         headers={"Authorization": f"token {stack.hub_admin_token}"}) as progress:
                async for text in progress.aiter_lines():
                    if text.startswith("data:"):
                        event = json.loads(text[5:])
                        if event.get("failed"):
                            raise RuntimeError(f"bare spawn failed: {event.get('message')}")
                        if event.get("ready"):
                            break
        return time.perf_counter() - started
    finally:
        await stop_user(stack, name)


async def binderapi_launch(stack: Stack) -> float:
    result = await stream(stack.build_url("hello", build_only=False))
    if not result.ok:
        raise RuntimeError(f"binderapi launch failed: {result.describe()}")
    assert result.final is not None
    name = urlsplit(result.final["url"]).path.rstrip("/").split("/user/", 1)[1].split("/")[0]
    await stop_user(stack, name)
    return result.seconds


async def run(stack: Stack, report: Report, samples: int) -> None:
    built = await ensure_built(stack)
    assert built.final is not None
    image, repo_url = built.final["imageName"], stack.git.url("hello")
    await bare_spawn(stack, image, repo_url)  # warm-up: the image is pulled into the engine once
    launches: list[float] = []
    spawns: list[float] = []
    user_creations: list[float] = []
    for i in range(samples):
        order = ("launch", "spawn") if i % 2 == 0 else ("spawn", "launch")
        for kind in order:
            if kind == "launch":
                launches.append(await binderapi_launch(stack))
            else:
                spawns.append(await bare_spawn(stack, image, repo_url, user_creations))
    launch_p50, spawn_p50 = percentile(launches, 50), percentile(spawns, 50)
    report.add(Row(WORKLOAD, "bare JupyterHub spawn", {"samples": samples, "p50_ms": ms(spawn_p50),
                                                       "min_ms": ms(min(spawns)), "max_ms": ms(max(spawns)),
                                                       "user_creation_p50_ms": ms(percentile(user_creations, 50))},
                   note="POST /users/{u}/server until ready; creating the user is not timed"))
    report.add(Row(WORKLOAD, "binderapi cached launch", {
        "samples": samples, "p50_ms": ms(launch_p50), "min_ms": ms(min(launches)), "max_ms": ms(max(launches)),
        "p50_minus_spawn_ms": ms(launch_p50 - spawn_p50), "ratio_p50": round(launch_p50 / spawn_p50, 3)},
        "p50 <= bare spawn p50 + 50 ms (BinderHub ratio 0.8-1.2)", launch_p50 <= spawn_p50 + 0.050))
