"""Errors whose messages a user can act on.

Anything raised as a :class:`BinderError` ends a ``/build`` stream with a ``failed`` event carrying
its message (and ``status_code`` when it has one). Anything else is a bug: it is logged with its
traceback and the client gets a short, generic ``failed`` event.
"""

from __future__ import annotations


class BinderError(Exception):
    """Base class: ``message`` is shown to the user as is."""

    status_code: int | None = None

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code


class SpecError(BinderError):
    """The spec cannot be understood (unknown prefix, malformed spec, unsafe URL)."""


class BannedSpecError(BinderError):
    """The operator does not allow this spec."""


class RefNotFoundError(BinderError):
    """The ref does not exist upstream (or the repository is private)."""


class UpstreamError(BinderError):
    """A provider's upstream (GitHub, a git server, a DOI resolver) failed or was unreachable."""


class UpstreamRateLimitError(UpstreamError):
    """The upstream refuses more requests for now."""


class RegistryError(BinderError):
    """The image registry failed; never treated as 'image missing'."""


class BuildError(BinderError):
    """The build backend failed to run a build."""

    #: the failed build's id, when it had one: the ``failed`` event names it
    build_id: str = ""


class LaunchError(BinderError):
    """JupyterHub could not start the server."""

    status_code = 500


class QuotaExceededError(BinderError):
    """Too many servers; ``quota_kind`` is the metrics label (``pod_quota`` or ``repo_quota``)."""

    def __init__(self, message: str, quota_kind: str) -> None:
        super().__init__(message)
        self.quota_kind = quota_kind


class ForbiddenError(BinderError):
    status_code = 403


class ConflictError(BinderError):
    status_code = 409


class RateLimitExceededError(BinderError):
    status_code = 429


class StartupError(Exception):
    """binderapi cannot serve with this configuration and environment; the message says why.

    Not a :class:`BinderError`: it stops the process at start-up, it never reaches a client."""
