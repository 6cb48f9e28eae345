"""``/health``: pluggable checks, each cached briefly, concurrent callers sharing one run.

A passing check is cached for its ``cache_seconds`` (BinderHub's 15 s), so frequent probes cost the
dependency little. A failing one is cached only :data:`FAILURE_CACHE_SECONDS`: a dependency that
comes back shows as recovered on the next probe, not up to 15 s later. Either way a burst of
concurrent requests runs a check once (single flight).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .singleflight import SingleFlight

log = logging.getLogger(__name__)

#: how long a failed check answers for itself before the dependency is asked again
FAILURE_CACHE_SECONDS = 1.0

CheckFn = Callable[[], Awaitable[dict[str, Any] | bool | None]]


@dataclass
class _Check:
    service: str
    fn: CheckFn
    cache_seconds: float
    soft: bool
    timeout: float
    result: dict[str, Any] | None = None
    checked_at: float = -1e9
    flight: SingleFlight[dict[str, Any]] = field(default_factory=SingleFlight, repr=False)  # concurrent probes share a run

    async def run(self) -> dict[str, Any]:
        if self.result is not None and time.monotonic() - self.checked_at < self._fresh_for(self.result):
            return self.result
        return await self.flight.run(self.service, self._run_once)

    def _fresh_for(self, result: dict[str, Any]) -> float:
        return self.cache_seconds if result["ok"] else min(self.cache_seconds, FAILURE_CACHE_SECONDS)

    async def _run_once(self) -> dict[str, Any]:
        started = time.monotonic()
        result: dict[str, Any] = {"service": self.service}
        try:
            outcome = await asyncio.wait_for(self.fn(), self.timeout)
            if isinstance(outcome, dict):
                result.update(outcome)
                result.setdefault("ok", True)
            else:
                result["ok"] = outcome is None or bool(outcome)
        except Exception as e:  # a failing dependency is a health answer, not an error
            log.warning("Health check %s failed: %s", self.service, e)
            result.update(ok=False, error=str(e) or type(e).__name__)
        if self.soft:
            result["_ignore_failure"] = True
        log.debug("Health check %s took %.3fs", self.service, time.monotonic() - started)
        self.result, self.checked_at = result, time.monotonic()
        return result


class HealthChecks:
    """The registry later components add their checks to (registry, JupyterHub, builder, quota)."""

    def __init__(self) -> None:
        self._checks: list[_Check] = []

    def add(self, service: str, fn: CheckFn, *, cache_seconds: float = 15.0, soft: bool = False,
            timeout: float = 10.0) -> None:
        """A soft check is reported but does not make the service unhealthy (BinderHub's
        ``_ignore_failure``), e.g. the pod quota federation redirectors read."""
        self._checks.append(_Check(service, fn, cache_seconds, soft, timeout))

    @property
    def services(self) -> list[str]:
        return [check.service for check in self._checks]

    async def run(self, only: set[str] | None = None) -> tuple[bool, list[dict[str, Any]]]:
        """Every check, or those named in ``only`` (a readiness probe that must not depend on
        everything ``/health`` asks, e.g. ``Build store`` for replicas sharing PostgreSQL)."""
        checks = self._checks if only is None else [check for check in self._checks if check.service in only]
        results = list(await asyncio.gather(*(check.run() for check in checks)))
        known = ", ".join(self.services)
        results += [{"service": name, "ok": False, "error": f"no such health check (known: {known})"}
                    for name in sorted((only or set()) - set(self.services))]
        ok = all(r["ok"] for r in results if not r.get("_ignore_failure"))
        return ok, results
