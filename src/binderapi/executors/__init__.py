"""Build backends: run repo2docker somewhere and report on it. Orchestration shared by every
backend (deduplication, the queue, log tails, max age) lives in :mod:`binderapi.builds`."""

from .base import BuildBackend, BuildExistsError, BuildInfo, BuildJob

KNOWN_BACKENDS = {
    "docker": "binderapi.executors.docker:DockerBuildBackend",
    "DockerBuildExecutor": "binderapi.executors.docker:DockerBuildBackend",
    "kubernetes": "binderapi.executors.kubernetes:KubernetesBuildBackend",
    "KubernetesBuildExecutor": "binderapi.executors.kubernetes:KubernetesBuildBackend",
}

__all__ = ["KNOWN_BACKENDS", "BuildBackend", "BuildExistsError", "BuildInfo", "BuildJob"]
