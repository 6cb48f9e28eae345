"""The container image as the README documents it: build the ``Dockerfile``, run the README's own
``docker run`` line with the Docker build backend, pass ``/health`` and one ``build_only`` /build.

No container registry can be reached here, so the image is built ``FROM`` the local
``binderapi/python:3.11-bookworm`` (``scripts/infra.sh images``) through ``--build-arg BASE_IMAGE``.
It is built once per source hash and reused while the sources do not change.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import shlex
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from fixtures.server import free_port, read_events
from fixtures.stack import (
    BASE_IMAGE,
    BUILDER_IMAGE,
    NAMESPACE,
    REGISTRY,
    RUN_ID,
    git_spec,
    manifest_exists,
    unique,
)

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("no_leaked_build_containers")]

ROOT = Path(__file__).resolve().parent.parent
PYTHON_IMAGE = "binderapi/python:3.11-bookworm"
TEST_REPOSITORY = "binderapi-test/binderapi"
# what the Dockerfile copies in (.dockerignore keeps the rest out), so the tag changes with them
CONTEXT = ["Dockerfile", "pyproject.toml", "README.md", "src"]


def _docker(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=timeout)


def _source_hash() -> str:
    digest = hashlib.sha256(_docker("image", "inspect", "-f", "{{.Id}}", PYTHON_IMAGE).stdout.encode())
    for top in CONTEXT:
        path = ROOT / top
        files = sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts) if path.is_dir() else [path]
        for file in files:
            digest.update(str(file.relative_to(ROOT)).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def readme_docker_run() -> str:
    """The ``docker run`` line of the README's container block, as a user would paste it."""
    text = (ROOT / "README.md").read_text()
    block = text.split("tests/test_container_image.py", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    lines = [line for line in block.splitlines() if line.startswith("docker run ")]
    assert len(lines) == 1, "the README's container block must hold one `docker run` line"
    return lines[0]


@pytest.fixture(scope="module")
def image() -> str:
    """The binderapi image for the current sources, built once (and kept for the next run)."""
    if _docker("image", "inspect", PYTHON_IMAGE, check=False).returncode != 0:
        pytest.fail(f"{PYTHON_IMAGE} is missing: run scripts/infra.sh images")
    source = _source_hash()
    tag = f"{TEST_REPOSITORY}:{source}"
    if _docker("image", "inspect", tag, check=False).returncode != 0:
        # the build stage tagged too, then untagged: else every rebuild leaves it behind, dangling
        stage = f"{TEST_REPOSITORY}-build-stage:{source}"
        for extra in (["--target", "build", "-t", stage], ["-t", tag]):
            build = _docker("build", "--network", "host", "-q", "--build-arg", f"BASE_IMAGE={PYTHON_IMAGE}",
                            *extra, str(ROOT), check=False, timeout=900)
            assert build.returncode == 0, f"docker build failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}"
        _docker("image", "rm", stage, check=False)
        # earlier source versions' tags: only the newest is worth keeping (in use ones stay)
        for old in _docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", TEST_REPOSITORY).stdout.split():
            if old != tag:
                _docker("image", "rm", old, check=False)
    return tag


def test_readme_documents_the_engine_socket_group():
    command = readme_docker_run()
    assert "--group-add" in command and "/var/run/docker.sock:/var/run/docker.sock" in command
    assert "--network host" in command


async def _logs(name: str) -> str:
    process = await asyncio.create_subprocess_exec("docker", "logs", "--tail", "40", name,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await process.communicate()
    return out.decode(errors="replace")


async def test_image_runs_as_documented_and_builds(image, tmp_path, git_server, client):
    port = free_port()
    prefix = f"{REGISTRY}/test-{RUN_ID}-container-"
    config = {
        "BinderHub": {"build_class": "docker", "enable_api_only_mode": True, "launch_quota_class": "none",
                      "image_prefix": prefix, "port": port, "ip": "127.0.0.1"},
        "DockerBuildExecutor": {"build_image": BUILDER_IMAGE, "namespace": NAMESPACE},
        "DockerRegistry": {"url": f"http://{REGISTRY}"},
        # the test's git server is on loopback, which the default deny-list refuses
        "RepoProvider": {"denied_networks": []},
        "RateLimiter": {"limit": 0},
    }
    config_file = tmp_path / "binderhub.yaml"
    config_file.write_text(yaml.safe_dump(config))
    config_file.chmod(0o644)  # the container runs as uid 10001

    name = f"binderapi-test-{RUN_ID}-{uuid.uuid4().hex[:6]}"
    documented = readme_docker_run()
    # run the README's line as written; only detach, name it, and use the image built above
    command = re.sub(r" binderapi (?=--config-file)", f" {shlex.quote(image)} ", documented)
    assert command != documented, "the README's docker run line must run the image `binderapi`"
    command = command.replace("docker run ", f"docker run -d --name {name} ", 1)
    process = await asyncio.create_subprocess_shell(command, cwd=tmp_path, executable="/bin/bash",
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    try:
        assert process.returncode == 0, err.decode()
        url = f"http://127.0.0.1:{port}/"
        health = None
        for _ in range(300):
            try:
                health = await client.get(url + "health")
                break
            except httpx.TransportError:
                state = _docker("inspect", "-f", "{{.State.Running}}", name, check=False).stdout.strip()
                assert state == "true", f"the container stopped:\n{await _logs(name)}"
                await asyncio.sleep(0.2)
        assert health is not None, f"binderapi in the container never answered:\n{await _logs(name)}"
        assert health.status_code == 200 and health.json()["ok"] is True, health.text
        builder = next(c for c in health.json()["checks"] if c["service"] == "Builder")
        assert builder["ok"] and builder["backend"] == "docker"

        repo = unique("container")
        git_server.create_repo(repo, {"Dockerfile": f"FROM {BASE_IMAGE}\nRUN echo from-the-container > /built.txt\n"})
        events = await read_events(client, url + "build/" + git_spec(git_server.daemon_url(repo), "main"),
                                   params={"build_only": "true"})
        assert events[-1]["phase"] == "ready", f"{events[-3:]}\n{await _logs(name)}"
        assert events[-1]["imageName"].startswith(prefix)
        assert await manifest_exists(events[-1]["imageName"])
    finally:
        _docker("rm", "-f", name, check=False)
    assert _docker("ps", "-aq", "--filter", f"name=^{name}$").stdout.strip() == ""
