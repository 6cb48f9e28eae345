"""Builds in containers on a Docker engine, the way BinderHub runs a build pod: the builder image
(repo2docker) with the engine socket mounted and host networking. The container name is the build
name, so the engine itself is the lock that joins concurrent requests, even across replicas."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError

from ...errors import BuildError
from ...executors.base import COMPONENT_LABEL, BuildBackend, BuildExistsError, BuildInfo, BuildJob
from ...executors.repo2docker import builder_environment, repo2docker_command
from .engine import engine_url, make_engine, socket_path

if TYPE_CHECKING:
    from ...settings import Settings

log = logging.getLogger(__name__)

LABEL_COMPONENT = "component"
LABEL_NAMESPACE = "binderapi.namespace"
LABEL_BUILD = "binderhub.build"
LABEL_IMAGE = "binderhub.image"
LABEL_REPO = "binder-repo"
LABEL_BUILD_ID = "binderapi.build_id"

#: aiodocker's DockerError status for "could not connect to the engine"
NO_CONNECTION = 900
#: what a dropped or refused engine connection raises besides DockerError
CONNECTION_FAILURES = (aiohttp.ClientError, OSError, asyncio.TimeoutError)
#: how long the engine may take to answer "are you there?" after a build ended abnormally
PING_TIMEOUT = 5.0


def _epoch(timestamp: str | None) -> float | None:
    """Docker's RFC 3339 times (nanoseconds, ``Z``); the zero time means 'never'."""
    if not timestamp or timestamp.startswith("0001-"):
        return None
    text = timestamp.replace("Z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:  # trim nanoseconds to microseconds for fromisoformat
        digits = "".join(c for c in rest if c.isdigit())
        zone = rest[len(digits):]
        text = f"{head}.{digits[:6]}{zone}"
    return datetime.fromisoformat(text).timestamp()


class DockerBuildBackend(BuildBackend):
    kind = "docker"

    def __init__(self, settings: Settings, engine: aiodocker.Docker | None = None) -> None:
        self.config = settings.DockerBuildExecutor
        self.namespace = settings.DockerBuildExecutor.namespace
        self._owns_engine = engine is None  # a shared engine client is closed by its kind
        self.docker = engine or make_engine(settings)

    @property
    def builder_info(self) -> dict[str, Any]:
        return {"build_image": self.config.build_image}

    def _labels(self, job: BuildJob) -> dict[str, str]:
        labels = {LABEL_COMPONENT: COMPONENT_LABEL, LABEL_NAMESPACE: self.namespace, LABEL_BUILD: job.name,
                  LABEL_IMAGE: job.image_name, LABEL_REPO: job.repo_url}
        if job.build_id:
            labels[LABEL_BUILD_ID] = job.build_id
        return labels

    def container_config(self, job: BuildJob) -> dict[str, Any]:
        """The builder container: BinderHub's repo2docker command, credentials in the environment."""
        config = self.config
        env = builder_environment(job, config.registry_credentials, config.extra_envs)
        binds = []
        socket = socket_path(config.docker_host)
        if socket:
            binds.append(f"{socket}:/var/run/docker.sock")
        else:
            env["DOCKER_HOST"] = config.docker_host
        if config.docker_config_path:
            binds.append(f"{config.docker_config_path}:/root/.docker/config.json:ro")
        host_config: dict[str, Any] = {"NetworkMode": config.network_mode, "Binds": binds, "Init": True}
        if config.memory_limit:
            host_config["Memory"] = config.memory_limit
        return {
            "Image": config.build_image,
            "Cmd": repo2docker_command(job, memory_limit=config.memory_limit, extra_args=config.repo2docker_extra_args),
            "Env": [f"{key}={value}" for key, value in env.items()],
            "Labels": self._labels(job),
            "HostConfig": host_config,
        }

    async def start(self, job: BuildJob) -> None:
        config = self.container_config(job)
        try:
            container = await self._create(config, job.name)
        except DockerError as e:
            if e.status == 409:
                await self._check_ours(job.name)
                raise BuildExistsError(job.name) from None
            if e.status == NO_CONNECTION:
                raise self._unreachable(e) from None
            raise BuildError(f"The Docker engine refused to create the build container: {e.message}") from None
        try:
            await container.start()
        except DockerError as e:
            with contextlib.suppress(DockerError):
                await container.delete(force=True)
            raise BuildError(f"The Docker engine could not start the build container: {e.message}") from None
        log.info("Started build container %s for %s", job.name, job.image_name)

    async def _create(self, config: dict[str, Any], name: str) -> Any:
        try:
            return await self.docker.containers.create(config, name=name)
        except DockerError as e:
            if e.status != 404:
                raise
        # the builder image is missing: pull it once, as a kubelet would
        image = self.config.build_image
        log.info("Builder image %s not present; pulling it", image)
        try:
            await self.docker.images.pull(image)
        except DockerError as e:
            raise BuildError(f"The builder image {image} is not on the Docker engine and could not be pulled: {e.message}") from None
        return await self.docker.containers.create(config, name=name)

    async def _check_ours(self, name: str) -> None:
        container = await self.docker.containers.get(name)
        labels = container["Config"]["Labels"] or {}
        if labels.get(LABEL_COMPONENT) != COMPONENT_LABEL or labels.get(LABEL_NAMESPACE) != self.namespace:
            raise BuildError(f"A container named {name} exists on the engine but is not a build of this binderapi "
                             f"(namespace {self.namespace!r}); remove it or change DockerBuildExecutor.namespace.")

    async def inspect(self, name: str) -> BuildInfo | None:
        try:
            container = await self.docker.containers.get(name)
        except DockerError as e:
            if e.status == 404:
                return None
            if e.status == NO_CONNECTION:
                raise self._unreachable(e) from None
            raise BuildError(f"The Docker engine did not answer about build {name}: {e.message}") from None
        labels = container["Config"]["Labels"] or {}
        if labels.get(LABEL_COMPONENT) != COMPONENT_LABEL or labels.get(LABEL_NAMESPACE) != self.namespace:
            await self._check_ours(name)
        return self._info(name, labels, container["State"])

    @staticmethod
    def _info(name: str, labels: dict[str, str], state: dict[str, Any]) -> BuildInfo:
        running = bool(state.get("Running")) or state.get("Status") in ("created", "restarting")
        finished = state.get("Status") in ("exited", "dead")
        return BuildInfo(
            name=name,
            image_name=labels.get(LABEL_IMAGE, ""),
            repo_url=labels.get(LABEL_REPO, ""),
            running=running,
            exit_code=state.get("ExitCode") if finished else None,
            started_at=_epoch(state.get("StartedAt")),
            finished_at=_epoch(state.get("FinishedAt")) if finished else None,
            build_id=labels.get(LABEL_BUILD_ID, ""),
        )

    async def follow_logs(self, name: str, tail: int | None = None) -> AsyncIterator[str]:
        try:
            container = await self.docker.containers.get(name)
            stream = self._unless_engine_gone(
                container.log(stdout=True, stderr=True, follow=True, tail=tail if tail is not None else "all"))
        except DockerError as e:
            if e.status == 404:
                return
            raise BuildError(f"Could not read the logs of build {name}: {e.message}") from None
        pending = ""
        async for chunk in stream:
            pending += chunk
            *lines, pending = pending.split("\n")
            for text in lines:
                if text.strip():
                    yield text
        if pending.strip():
            yield pending

    async def wait(self, name: str) -> int | None:
        try:
            container = await self.docker.containers.get(name)
            result = await container.wait()
        except DockerError as e:
            if e.status == 404:
                return None
            raise await self._engine_gone(self._cause(e)) or BuildError(f"Lost track of build {name}: {e.message}") from None
        except CONNECTION_FAILURES as e:
            raise await self._engine_gone(self._cause(e)) or BuildError(
                f"Lost track of build {name}: {self._cause(e)}") from None
        code = int(result.get("StatusCode", 1))
        if code in (128 + signal.SIGTERM, 128 + signal.SIGKILL):  # what a stopping engine does to its containers
            how = f"the build was stopped with {signal.Signals(code - 128).name}, exit code {code}"
            raise await self._engine_gone(how) or BuildError(
                f"The build was stopped from outside ({how}), as a restart of the Docker engine or "
                f"`docker stop` does; try again")
        return code

    # -- when a build ends abnormally: was it the engine? -------------------------------------------

    @staticmethod
    def _cause(error: BaseException) -> str:
        if isinstance(error, DockerError):
            return error.message
        return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__

    def _unreachable(self, error: DockerError) -> BuildError:
        return BuildError(f"The Docker engine at {engine_url(self.config.docker_host)} cannot be reached "
                          f"({self._cause(error)}); try again later", status_code=503)

    async def _engine_gone(self, cause: str) -> BuildError | None:
        """The error to end a build with when the engine no longer answers (a 503: a dependency
        is down, not the build broken), or ``None`` when it does and ``cause`` is the build's own."""
        try:
            await asyncio.wait_for(self.docker.version(), PING_TIMEOUT)
        except (DockerError, *CONNECTION_FAILURES) as e:
            log.warning("The Docker engine went away during a build (%s); it no longer answers: %s", cause, self._cause(e))
            return BuildError(f"The Docker engine went away during the build ({cause}, and the engine at "
                              f"{engine_url(self.config.docker_host)} no longer answers); try again", status_code=503)
        return None

    async def _unless_engine_gone(self, chunks: AsyncIterator[str]) -> AsyncIterator[str]:
        """A build's log stream that broke: an engine gone is said so; else the logs simply end
        and :meth:`wait` tells how the build did."""
        try:
            async for chunk in chunks:
                yield chunk
        except CONNECTION_FAILURES as e:
            log.info("The log stream of a build broke: %s", self._cause(e))
            gone = await self._engine_gone(f"the build's log stream broke ({type(e).__name__})")
            if gone is not None:
                raise gone from None

    async def stop(self, name: str) -> None:
        try:
            container = await self.docker.containers.get(name)
            await container.delete(force=True)
        except DockerError as e:
            if e.status not in (404, 409):  # gone, or removal already in progress
                raise BuildError(f"Could not remove build container {name}: {e.message}") from None

    async def list_builds(self) -> list[BuildInfo]:
        filters = {"label": [f"{LABEL_COMPONENT}={COMPONENT_LABEL}", f"{LABEL_NAMESPACE}={self.namespace}"]}
        builds = []
        for summary in await self.docker.containers.list(all=True, filters=filters):
            labels = summary["Labels"] or {}
            name = summary["Names"][0].lstrip("/")  # the container's own name is the build name
            if summary["State"] == "running":
                try:
                    details = await self.docker.containers.get(name)
                except DockerError:
                    continue
                builds.append(self._info(name, labels, details["State"]))
            else:
                info = await self.inspect(name)
                if info is not None:
                    builds.append(info)
        return builds

    async def check(self) -> dict[str, Any]:
        version = await self.docker.version()
        try:
            await self.docker.images.inspect(self.config.build_image)
            image_ok = True
        except DockerError:
            image_ok = False
        return {"ok": True, "backend": "docker", "engine_version": version.get("Version"),
                "build_image": self.config.build_image, "build_image_present": image_ok}

    async def close(self) -> None:
        if self._owns_engine:
            await self.docker.close()
