"""The resolution cache every provider shares across requests.

Resolving a ref costs an upstream call (GitHub rate limit, a ``git ls-remote``, a DOI redirect
chain). A popular repository is launched many times a minute, often in bursts, so:

* an LRU bounded by ``cache_size`` keeps recent answers;
* each answer carries its own lifetime: immutable ones (a commit SHA asked for by SHA, a record
  version) live until evicted, moving refs for ``cache_ttl``, "not found" for ``cache_404_ttl``;
* an expired answer is kept (until evicted) so it can be *revalidated*: the compute function gets it
  and may send its ETag, turning a full answer into a free ``304``;
* concurrent lookups of a key that is being computed join that computation (single flight), so a
  burst of identical requests makes exactly one upstream call.

Errors are never cached: the next lookup tries again.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any

from ..singleflight import SingleFlight


@dataclass(frozen=True)
class Resolution:
    """One cached answer. ``value`` is what callers get (``None`` means "not found")."""

    value: Any
    #: seconds the answer is fresh; ``None`` = immutable, kept until evicted; ``0`` = do not keep
    ttl: float | None
    #: validator for a conditional re-request (``If-None-Match``), if the upstream gave one
    etag: str = ""


@dataclass
class CacheStats:
    hits: int = 0  # answered from a fresh entry
    misses: int = 0  # started a computation
    joins: int = 0  # waited for a computation another caller started
    revalidations: int = 0  # misses that had a stale entry to revalidate


@dataclass
class _Entry:
    resolution: Resolution
    expires: float | None


Compute = Callable[[Resolution | None], Awaitable[Resolution]]


class ResolutionCache:
    """LRU with per-entry TTL, stale-entry revalidation and single-flight computation."""

    def __init__(self, size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.size = size
        self.stats = CacheStats()
        self._clock = clock
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._flights: SingleFlight[Any] = SingleFlight()

    def __len__(self) -> int:
        return len(self._entries)

    def peek(self, key: Hashable) -> Resolution | None:
        """The stored answer, fresh or stale, without counting or reordering."""
        entry = self._entries.get(key)
        return entry.resolution if entry else None

    def _fresh(self, entry: _Entry) -> bool:
        return entry.expires is None or self._clock() < entry.expires

    async def get_or_compute(self, key: Hashable, compute: Compute) -> Any:
        """The value for ``key``: from a fresh entry, from a computation already running for it,
        or from ``compute(stale_entry_or_None)`` started now.

        The computation runs as its own task, so a caller that goes away (client disconnect) does
        not cancel it for the others, and its answer is still cached.
        """
        entry = self._entries.get(key)
        if entry is not None and self._fresh(entry):
            self._entries.move_to_end(key)
            self.stats.hits += 1
            return entry.resolution.value
        stale = entry.resolution if entry is not None else None
        if key in self._flights:
            self.stats.joins += 1
        else:
            self.stats.misses += 1
            if stale is not None:
                self.stats.revalidations += 1
        return await self._flights.run(key, lambda: self._compute(key, compute, stale))

    async def _compute(self, key: Hashable, compute: Compute, stale: Resolution | None) -> Any:
        resolution = await compute(stale)
        self._store(key, resolution)
        return resolution.value

    def _store(self, key: Hashable, resolution: Resolution) -> None:
        if self.size <= 0 or resolution.ttl == 0:
            self._entries.pop(key, None)
            return
        expires = None if resolution.ttl is None else self._clock() + resolution.ttl
        self._entries[key] = _Entry(resolution, expires)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

