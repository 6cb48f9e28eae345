"""``LocalImages``: ``use_registry: false``, where images live only in the local Docker engine.

One-node set-ups (BinderHub's ``local-binder-local-hub``) build with the engine JupyterHub's
DockerSpawner starts servers from, so "already built" means "the engine has the image". Nothing is
pushed. An engine that cannot answer is an error after a few attempts, like a failing registry.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any

import aiodocker
import aiohttp

from ...errors import RegistryError
from ...registry._retry import TransientError, retrying
from .engine import engine_url

if TYPE_CHECKING:
    from ...settings import Settings

# aiodocker's status for "could not connect to the engine"
_NO_CONNECTION = 900


def _reason(error: aiodocker.DockerError) -> str:
    """aiodocker wraps the cause as ``Cannot connect to Docker Engine via URL [cause]``; keep the cause."""
    match = re.search(r"\[(.*)\]$", error.message)
    return match.group(1) if match else error.message


class LocalImages:
    """Image existence in the local Docker engine, through its API (aiodocker)."""

    def __init__(self, docker_host: str, *, retries: int = 3, retry_delay: float = 1.0, timeout: float = 10.0,
                 engine: aiodocker.Docker | None = None) -> None:
        self.docker_host = engine_url(docker_host)
        self.retries = retries
        self.retry_delay = retry_delay
        self.timeout = timeout
        self.name = f"the Docker engine at {self.docker_host}"
        self._docker: aiodocker.Docker | None = engine
        self._owns_engine = engine is None  # a shared engine client is closed by its kind

    def _client(self) -> aiodocker.Docker:
        # created on first use: aiodocker binds its HTTP session to the running event loop
        if self._docker is None:
            self._docker = aiodocker.Docker(url=self.docker_host, timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self._docker

    async def image_exists(self, image_name: str) -> bool:
        """Whether the engine has ``image_name`` (the full name it was built and tagged with)."""
        return await retrying(lambda: self._inspect(image_name), attempts=self.retries, delay=self.retry_delay,
                              what=f"Looking up {image_name} in {self.name}")

    async def _inspect(self, image_name: str) -> bool:
        try:
            async with asyncio.timeout(self.timeout):  # the shared client has no default timeout
                await self._client().images.inspect(image_name)
        except aiodocker.DockerError as e:
            if e.status == 404:
                return False
            if e.status == _NO_CONNECTION:
                raise TransientError(f"{self.name} cannot be reached ({_reason(e)})") from None
            if e.status >= 500:
                raise TransientError(f"{self.name} answered HTTP {e.status} for {image_name}: {e.message}") from None
            raise RegistryError(f"{self.name} answered HTTP {e.status} for {image_name}: {e.message}") from None
        except TimeoutError:
            raise TransientError(f"{self.name} did not answer within {self.timeout:g}s") from None
        except (aiohttp.ClientError, OSError) as e:
            raise TransientError(f"{self.name} cannot be reached ({type(e).__name__}: {e})") from None
        return True

    async def health(self) -> dict[str, Any]:
        """The engine answers its version endpoint (one attempt)."""
        try:
            await retrying(self._ping, attempts=1, delay=0, what=f"Pinging {self.name}")
        except RegistryError as e:
            return {"ok": False, "error": e.message}
        return {"ok": True}

    async def _ping(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await self._client().version()
        except aiodocker.DockerError as e:
            raise TransientError(f"{self.name} cannot be reached ({_reason(e)})") from None
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise TransientError(f"{self.name} cannot be reached ({type(e).__name__}: {e})") from None

    async def close(self) -> None:
        if self._docker is not None and self._owns_engine:
            await self._docker.close()
            self._docker = None


def local_images(settings: Settings, engine: aiodocker.Docker | None = None) -> LocalImages:
    """``use_registry: false``: the engine at ``DockerBuildExecutor.docker_host``, through the
    shared client when the Docker kind is in use."""
    registry = settings.DockerRegistry
    return LocalImages(settings.DockerBuildExecutor.docker_host, retries=registry.retries,
                       retry_delay=registry.retry_delay, timeout=registry.timeout, engine=engine)
