"""The Docker kind: builder containers on one Docker engine (``build_class: docker``), the launch
quota counted from its events, and ``use_registry: false`` answered by the same engine, all through
one shared aiodocker client."""

from __future__ import annotations

from ..kind import BackendKind

KIND = BackendKind(
    name="docker",
    build_backend="binderapi.backends.docker.executor:DockerBuildBackend",
    executor_section="DockerBuildExecutor",
    cleaner_section="DockerCleaner",
    launch_quota="binderapi.backends.docker.quota:DockerLaunchQuota",
    engine="binderapi.backends.docker.engine:make_engine",
    local_images="binderapi.backends.docker.images:local_images",
    aliases=("DockerBuildExecutor",),
)
