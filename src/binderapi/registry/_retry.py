"""Retry a registry or engine call a few times, then fail loudly.

BinderHub counted a registry that kept failing as "image missing" and rebuilt, which turned one
broken registry into a storm of builds. Here a failure worth retrying is a :class:`TransientError`;
after the last attempt it becomes a :class:`~binderapi.errors.RegistryError` the build stream shows,
with ``status_code`` 503: the registry (or engine) is down, not the request wrong.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from .. import retry
from ..errors import RegistryError

T = TypeVar("T")


class TransientError(Exception):
    """A failure another attempt may cure: 5xx, 429, a timeout, a refused or dropped connection."""


async def retrying(op: Callable[[], Awaitable[T]], *, attempts: int, delay: float, what: str) -> T:
    """Run ``op`` up to ``attempts`` times (:func:`binderapi.retry.retrying`), retrying only
    :class:`TransientError`; any other exception (a definite refusal such as rejected credentials)
    passes through at once."""
    plural = "s" if attempts != 1 else ""
    return await retry.retrying(
        op, attempts=attempts, delay=delay, what=what, transient=lambda e: isinstance(e, TransientError),
        exhausted=lambda e: RegistryError(f"{e} (gave up after {attempts} attempt{plural})", status_code=503))
