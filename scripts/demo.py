"""Start JupyterHub, a git server with the bundled example and binderapi; build and launch the
example through ``/build``; print the URL; stop everything on Ctrl-C (or at once with ``--once``).

Run by ``scripts/demo`` after it installed the project and started the infrastructure.
Environment: DEMO_HUB_PORT [8000], DEMO_BINDERAPI_PORT [8585], DEMO_STATE_DIR
[~/.cache/binderapi-infra/demo], REGISTRY_ADDR [127.0.0.1:5000].
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import time
from pathlib import Path
from typing import IO
from urllib.parse import quote

import httpx

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
STATE = Path(os.environ.get("DEMO_STATE_DIR", Path.home() / ".cache/binderapi-infra/demo"))
CHP = Path.home() / ".cache/binderapi-infra/chp/node_modules/.bin/configurable-http-proxy"
REGISTRY = os.environ.get("REGISTRY_ADDR", "127.0.0.1:5000")
EXAMPLE = ROOT / "examples" / "hello-binder"


def say(text: str) -> None:
    print(f"[demo] {text}", file=sys.stderr, flush=True)


def port(preferred: int) -> int:
    """The preferred port when free, else any free one (so a busy 8000 does not stop the demo)."""
    for candidate in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", candidate))
                return s.getsockname()[1]
            except OSError:
                continue
    raise RuntimeError("no free port")


class Step:
    """Prints a named step and the time it took."""

    def __init__(self, number: int, total: int, name: str) -> None:
        self.label = f"{number}/{total} {name}"

    def __enter__(self) -> Step:
        self.started = time.monotonic()
        say(f"{self.label} ...")
        return self

    def __exit__(self, kind: object, error: object, tb: object) -> None:
        took = time.monotonic() - self.started
        say(f"{self.label}: {'done' if kind is None else 'FAILED'} in {took:.1f}s")


class Demo:
    def __init__(self) -> None:
        self.processes: list[tuple[str, asyncio.subprocess.Process]] = []
        self.logs: list[IO[bytes]] = []
        self.hub_port = port(int(os.environ.get("DEMO_HUB_PORT", "8000")))
        self.api_port = port(int(os.environ.get("DEMO_BINDERAPI_PORT", "8585")))
        self.git_port = port(9418)
        self.token = secrets.token_hex(32)
        self.prefix = f"demo-{secrets.token_hex(3)}"

    async def spawn(self, name: str, *argv: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        log = open_log(name)
        self.logs.append(log)
        proc = await asyncio.create_subprocess_exec(*argv, stdout=log, stderr=asyncio.subprocess.STDOUT,
                                                    stdin=asyncio.subprocess.DEVNULL, env={**os.environ, **(env or {})},
                                                    cwd=cwd, start_new_session=True)
        self.processes.append((name, proc))

    async def wait_http(self, name: str, url: str, within: float = 60) -> None:
        try:
            async with asyncio.timeout(within), httpx.AsyncClient() as client:
                while True:
                    for proc_name, proc in self.processes:
                        if proc.returncode is not None:
                            raise RuntimeError(f"{proc_name} exited; see {STATE / (proc_name + '.log')}")
                    with contextlib.suppress(httpx.TransportError):
                        if (await client.get(url, timeout=2)).status_code == 200:
                            return
                    await asyncio.sleep(0.2)
        except TimeoutError:
            raise RuntimeError(f"{name} did not answer at {url} within {within:.0f}s; see {STATE}") from None

    async def start_hub(self) -> None:
        hub_state = STATE / "hub"
        await self.spawn("jupyterhub", str(VENV_BIN / "jupyterhub"), "-f", str(ROOT / "deploy/jupyterhub/jupyterhub_config_docker.py"),
                         cwd=hub_state, env={
                             "BINDER_SERVICE_API_TOKEN": self.token,
                             "BINDER_HUB_PUBLIC_URL": f"http://127.0.0.1:{self.hub_port}",
                             "BINDER_HUB_BIND_URL": f"http://127.0.0.1:{port(8081)}",
                             "BINDER_HUB_PROXY_API_URL": f"http://127.0.0.1:{port(8001)}",
                             "BINDER_HUB_STATE_DIR": str(hub_state),
                             "BINDER_CONTAINER_PREFIX": self.prefix,
                             "BINDER_ALLOWED_IMAGE_PREFIX": f"{REGISTRY}/binder-",
                             "CHP_BIN": str(CHP),
                         })
        await self.wait_http("JupyterHub", f"http://127.0.0.1:{self.hub_port}/hub/api/")

    async def start_git(self) -> str:
        repos = STATE / "repos"
        await asyncio.to_thread(shutil.rmtree, repos, ignore_errors=True)
        work = repos / "hello-binder"
        await asyncio.to_thread(shutil.copytree, EXAMPLE, work)
        # Fixed names and dates: the commit, and so the image name, depend only on the example's
        # content, so a second run finds the image it built the first time instead of adding one.
        fixed = {"GIT_AUTHOR_NAME": "binderapi demo", "GIT_AUTHOR_EMAIL": "demo@localhost",
                 "GIT_COMMITTER_NAME": "binderapi demo", "GIT_COMMITTER_EMAIL": "demo@localhost",
                 "GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z"}
        for argv in (["git", "init", "-q", "-b", "main"], ["git", "add", "."],
                     ["git", "-c", "commit.gpgsign=false", "commit", "-qm", "Example"]):
            proc = await asyncio.create_subprocess_exec(*argv, cwd=work, env={**os.environ, **fixed})
            if await proc.wait() != 0:
                raise RuntimeError(f"{' '.join(argv)} failed in {work}")
        await self.spawn("git-daemon", "git", "daemon", f"--base-path={repos}", "--export-all", "--reuseaddr",
                         "--listen=127.0.0.1", f"--port={self.git_port}", str(repos))
        url = f"git://127.0.0.1:{self.git_port}/hello-binder"
        for _ in range(50):
            proc = await asyncio.create_subprocess_exec("git", "ls-remote", url, stdout=asyncio.subprocess.DEVNULL,
                                                        stderr=asyncio.subprocess.DEVNULL)
            if await proc.wait() == 0:
                return url
            await asyncio.sleep(0.1)
        raise RuntimeError("git daemon did not come up")

    async def start_binderapi(self) -> None:
        config = STATE / "binderapi.yaml"
        config.write_text(json.dumps({
            "BinderHub": {
                "hub_url": f"http://127.0.0.1:{self.hub_port}/", "hub_api_token": self.token,
                "image_prefix": f"{REGISTRY}/binder-", "build_class": "docker", "enable_api_only_mode": True,
                "log_level": "INFO",
            },
            "DockerBuildExecutor": {"build_image": "binderapi/repo2docker:2024.7.0"},
            "DockerRegistry": {"url": f"http://{REGISTRY}"},
            "DockerLaunchQuota": {"container_filter": self.prefix},
            # the demo's git daemon listens on 127.0.0.1: the default denied_networks without loopback
            "RepoProvider": {"denied_networks": ["0.0.0.0/8", "::/128", "169.254.0.0/16", "fe80::/10",
                                                 "100.100.100.200/32", "fd00:ec2::254/128"]},
        }, indent=2))
        await self.spawn("binderapi", str(VENV_BIN / "binderapi"), "--config-file", str(config),
                         "--ip", "127.0.0.1", "--port", str(self.api_port))
        await self.wait_http("binderapi", f"http://127.0.0.1:{self.api_port}/versions")

    async def build_and_launch(self, repo_url: str) -> dict:
        url = f"http://127.0.0.1:{self.api_port}/build/git/{quote(repo_url, safe='')}/main"
        say(f"GET {url}")
        async with httpx.AsyncClient(timeout=httpx.Timeout(900, connect=10)) as client, client.stream(
                "GET", url, headers={"Accept": "text/event-stream"}) as response:
            buffer = b""
            async for chunk in response.aiter_bytes():
                buffer += chunk
                while b"\n\n" in buffer:
                    frame, buffer = buffer.split(b"\n\n", 1)
                    if not frame.startswith(b"data: "):
                        continue
                    event = json.loads(frame[6:])
                    phase = event.get("phase") or "log"
                    message = (event.get("message") or "").strip()
                    if message and phase != "pushing":
                        print(f"        {phase:<9} {message[:150]}", file=sys.stderr, flush=True)
                    if phase == "failed":
                        raise RuntimeError(f"the launch failed: {message}")
                    if phase == "ready":
                        return event
        raise RuntimeError("the event stream ended without a result")

    async def stop(self) -> None:
        for name, proc in reversed(self.processes):
            if proc.returncode is None:
                say(f"stopping {name} (pid {proc.pid})")
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 30)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
        for log in self.logs:
            log.close()

    async def run(self, once: bool) -> None:
        try:
            with Step(1, 4, f"JupyterHub with DockerSpawner on http://127.0.0.1:{self.hub_port}"):
                say(f"servers run in containers named {self.prefix}-*")
                await self.start_hub()
            with Step(2, 4, "git server with the bundled example repository"):
                repo_url = await self.start_git()
            with Step(3, 4, f"binderapi on http://127.0.0.1:{self.api_port}"):
                await self.start_binderapi()
            with Step(4, 4, "build and launch the example through /build"):
                ready = await self.build_and_launch(repo_url)
            open_url = f"{ready['url']}lab/tree/hello.ipynb?token={ready['token']}"
            print(open_url, flush=True)
            say(f"ready. Open {open_url}")
            async with httpx.AsyncClient() as client:
                page = await client.get(open_url, follow_redirects=True)
            say(f"the URL answers {page.status_code} ({'JupyterLab' if 'jupyterlab' in page.text.lower() else 'not JupyterLab'})")
            if page.status_code != 200:
                raise RuntimeError(f"the launched server answered {page.status_code} at {open_url}")
            if once:
                return
            say("Ctrl-C stops everything this demo started.")
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
        finally:
            await self.stop()


def open_log(name: str) -> IO[bytes]:
    """A daemon's log file in the state directory (closed by :meth:`Demo.stop`)."""
    return (STATE / f"{name}.log").open("wb")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--once", action="store_true", help="stop everything right after the launch")
    args = parser.parse_args()
    (STATE / "hub").mkdir(parents=True, exist_ok=True)
    try:
        asyncio.run(Demo().run(args.once))
    except RuntimeError as e:
        say(f"error: {e}")
        sys.exit(1)


if __name__ == "__main__":
    main()
