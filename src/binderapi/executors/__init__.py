"""The build backend interface: run repo2docker somewhere and report on it. Orchestration shared by
every backend (deduplication, the queue, log tails, max age) lives in :mod:`binderapi.builds`; the
backends themselves, one package per kind, in :mod:`binderapi.backends`."""

from .base import BuildBackend, BuildExistsError, BuildInfo, BuildJob

__all__ = ["BuildBackend", "BuildExistsError", "BuildInfo", "BuildJob"]
