"""Retry a registry or engine call a few times, then fail loudly.

BinderHub counted a registry that kept failing as "image missing" and rebuilt, which turned one
broken registry into a storm of builds. Here a failure worth retrying is a :class:`TransientError`;
after the last attempt it becomes a :class:`~binderapi.errors.RegistryError` the build stream shows.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ..errors import RegistryError

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_DELAY = 30.0


class TransientError(Exception):
    """A failure another attempt may cure: 5xx, 429, a timeout, a refused or dropped connection."""


async def retrying(op: Callable[[], Awaitable[T]], *, attempts: int, delay: float, what: str) -> T:
    """Run ``op`` up to ``attempts`` times, waiting ``delay``, ``2 * delay``, ... between tries.

    Any other exception (a definite refusal such as rejected credentials) passes through at once.
    """
    last: TransientError | None = None
    for attempt in range(1, attempts + 1):
        try:
            return await op()
        except TransientError as e:
            last = e
            if attempt == attempts:
                break
            wait = min(delay * 2 ** (attempt - 1), MAX_DELAY)
            log.warning("%s failed (attempt %d of %d): %s; retrying in %.1fs", what, attempt, attempts, e, wait)
            await asyncio.sleep(wait)
    plural = "s" if attempts != 1 else ""
    raise RegistryError(f"{last} (gave up after {attempts} attempt{plural})") from last
