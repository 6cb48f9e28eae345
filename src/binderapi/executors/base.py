"""The small protocol every build backend implements."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

#: label / annotation values BinderHub uses, so tooling that knows BinderHub's builds finds ours
COMPONENT_LABEL = "binderhub-build"


@dataclass(frozen=True)
class BuildJob:
    """Everything a backend needs to run one repo2docker build."""

    name: str  # deterministic per repo + ref: the container or pod name, and the lock
    image_name: str
    repo_url: str
    ref: str
    git_credentials: str = ""
    appendix: str = ""
    push: bool = True
    provider: str = ""  # for metrics labels only
    #: git configuration of the clone (set through the environment): the address the repository
    #: host was checked at, pinned, and no redirects (see RepoProvider.build_git_config)
    git_config: tuple[tuple[str, str], ...] = ()
    #: the build's id (the store's and ``/api/v1``'s): backends label the container or pod with it,
    #: so a restarted binderapi knows which build a running builder is
    build_id: str = ""

    def __repr__(self) -> str:  # never print credentials
        return f"BuildJob(name={self.name!r}, image_name={self.image_name!r}, repo_url={self.repo_url!r}, ref={self.ref!r})"


@dataclass
class BuildInfo:
    """What a backend knows about a build it is running or ran."""

    name: str
    image_name: str = ""
    repo_url: str = ""
    running: bool = False
    exit_code: int | None = None
    started_at: float | None = None  # epoch seconds
    finished_at: float | None = None
    build_id: str = ""  # the label of BuildJob.build_id ("" for a builder started without one)


class BuildExistsError(Exception):
    """A build with this name already exists: attach to it instead (another replica, or a build
    that outlived a restart)."""


class BuildBackend(abc.ABC):
    """Runs builds somewhere (a Docker engine, a Kubernetes cluster)."""

    #: the registered backend kind this backend belongs to (:mod:`binderapi.backends`): a class given
    #: to ``build_class`` by import path reads that kind's settings sections
    kind: str = ""

    @property
    @abc.abstractmethod
    def builder_info(self) -> dict[str, Any]:
        """For ``/versions``: e.g. ``{"build_image": ...}``."""

    @abc.abstractmethod
    async def start(self, job: BuildJob) -> None:
        """Create and start the build; raise :class:`BuildExistsError` if the name is taken."""

    @abc.abstractmethod
    async def inspect(self, name: str) -> BuildInfo | None:
        """The build's state, or ``None`` if there is no such build."""

    @abc.abstractmethod
    def follow_logs(self, name: str, tail: int | None = None) -> AsyncIterator[str]:
        """The build's output lines (without newline), live until it exits. ``tail`` limits the
        replay of lines already written."""

    @abc.abstractmethod
    async def wait(self, name: str) -> int | None:
        """Wait for the build to exit; its exit code, or ``None`` if it vanished without one."""

    @abc.abstractmethod
    async def stop(self, name: str) -> None:
        """Stop the build if running and remove it. No error if it is already gone."""

    @abc.abstractmethod
    async def list_builds(self) -> list[BuildInfo]:
        """Every build of this deployment, running or finished (for the cleaner and re-attach)."""

    @abc.abstractmethod
    async def check(self) -> dict[str, Any]:
        """Health of the backend, for ``/health``."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
