"""``scripts/demo --once`` does what the README promises: every step, a working URL, nothing left."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
from pathlib import Path

import pytest

from fixtures.server import free_port

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["1/4 JupyterHub with DockerSpawner", "2/4 git server with the bundled example repository",
         "3/4 binderapi on", "4/4 build and launch the example through /build"]
#: a cold run builds the example (and may install packages); a warm one takes about 25 s
DEMO_TIMEOUT = 840

pytestmark = [pytest.mark.docker, pytest.mark.hub, pytest.mark.timeout(DEMO_TIMEOUT + 60)]


def processes_with_env(variable: str) -> list[str]:
    """Processes whose environment has ``variable`` (name=value): everything the demo started
    inherits its DEMO_STATE_DIR, the hub's proxy included."""
    needle = variable.encode() + b"\0"
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if needle in (proc / "environ").read_bytes() + b"\0":
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append(f"{proc.name}: {cmdline.strip()}")
    return found


def port_is_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


async def containers_named(prefix: str) -> list[str]:
    proc = await asyncio.create_subprocess_exec(
        "docker", "ps", "-a", "--filter", f"name=^/{prefix}-", "--format", "{{.Names}}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode().split()


async def run_demo(env: dict[str, str]) -> tuple[int, str, str]:
    """Run the demo in its own process group; on a hang, Ctrl-C it (so it still stops what it
    started) before failing."""
    proc = await asyncio.create_subprocess_exec(
        str(ROOT / "scripts/demo"), "--once", cwd=ROOT, env=env, start_new_session=True,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), DEMO_TIMEOUT)
    except TimeoutError:
        os.killpg(proc.pid, signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        pytest.fail(f"scripts/demo --once did not finish in {DEMO_TIMEOUT}s:\n{err.decode()[-3000:]}")
    return proc.returncode, out.decode(), err.decode()


async def test_demo_once_launches_a_working_server_and_leaves_nothing(tmp_path):
    hub_port, api_port = free_port(), free_port()
    state = tmp_path / "demo-state"
    env = {**os.environ, "DEMO_HUB_PORT": str(hub_port), "DEMO_BINDERAPI_PORT": str(api_port),
           "DEMO_STATE_DIR": str(state)}

    status, out, err = await run_demo(env)

    assert status == 0, f"scripts/demo --once exited with {status}:\n{err[-3000:]}"
    for step in STEPS:
        assert re.search(rf"^\[demo\] {re.escape(step)}.*: done in [\d.]+s$", err, re.MULTILINE), f"step not done: {step}\n{err}"
    # the URL it printed is the launched server's, opened with its token ...
    url = out.strip().splitlines()[-1]
    assert re.fullmatch(rf"http://127\.0\.0\.1:{hub_port}/user/[\w.-]+/lab/tree/hello\.ipynb\?token=\S+", url), out
    assert f"[demo] ready. Open {url}" in err
    # ... and it answered with JupyterLab while the demo ran (the demo checks before stopping)
    assert "[demo] the URL answers 200 (JupyterLab)" in err

    # afterwards nothing it started is left: processes, ports, single-user containers
    prefix = re.search(r"servers run in containers named (\S+)-\*", err)
    assert prefix, err
    assert processes_with_env(f"DEMO_STATE_DIR={state}") == []
    assert not port_is_open(hub_port) and not port_is_open(api_port)
    assert await containers_named(prefix.group(1)) == []
    assert (state / "binderapi.log").exists() and (state / "jupyterhub.log").exists()
