"""The Docker engine: where ``DockerBuildExecutor.docker_host`` points, and the one API client
(aiodocker) the build backend, the launch quota and ``use_registry: false`` share."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiodocker

if TYPE_CHECKING:
    from ...settings import Settings


def engine_url(docker_host: str) -> str:
    """``/var/run/docker.sock`` -> ``unix:///var/run/docker.sock``; URLs (``tcp://``, ``unix://``)
    pass through. Surrounding spaces (a value pasted into YAML or an env file) are ignored."""
    host = docker_host.strip()
    return host if "://" in host else f"unix://{host}"


def socket_path(docker_host: str) -> str | None:
    """The socket file to mount into the builder, or ``None`` for an engine reached over TCP."""
    url = engine_url(docker_host)
    return url[len("unix://"):] if url.startswith("unix://") else None


def make_engine(settings: Settings) -> aiodocker.Docker:
    """One client for the engine at ``DockerBuildExecutor.docker_host``, without a default
    timeout: builds, logs and events are long, and each short call bounds itself. Create it with
    an event loop running (aiodocker binds its HTTP session to it)."""
    return aiodocker.Docker(url=engine_url(settings.DockerBuildExecutor.docker_host))
