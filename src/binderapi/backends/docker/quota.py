"""``DockerLaunchQuota``: running single-user containers counted from the engine's event stream
(DockerSpawner's servers), recounted in full every ``resync_interval``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError

from ... import retry
from ...quota import CountingQuota
from .engine import make_engine

if TYPE_CHECKING:
    from ...settings import Settings
    from ...supervisor import Supervisor

log = logging.getLogger(__name__)

#: while the engine is down, the events watch tries again after 1, 2, 4 ... seconds, at most this
#: many (each wait drawn between half and all of it, so replicas do not knock in step: binderapi.retry)
EVENTS_RETRY_MIN = 1.0
EVENTS_RETRY_MAX = 60.0
#: what an engine that is down, restarting or unreachable raises
ENGINE_ERRORS = (DockerError, OSError, TimeoutError, aiohttp.ClientError)


class _EventsEnded(Exception):
    """The engine closed the events stream (restarting, say): follow it again after a wait."""


class DockerLaunchQuota(CountingQuota):
    """Counts running single-user containers on the Docker engine (DockerSpawner's)."""

    def __init__(self, settings: Settings, supervisor: Supervisor | None = None,
                 engine: aiodocker.Docker | None = None) -> None:
        super().__init__(settings, supervisor)
        self.config = settings.DockerLaunchQuota
        self.total_quota = self.config.total_quota
        self.prefix = self.config.container_filter
        self.supervisor = supervisor
        self._owns_engine = engine is None  # a shared engine client is closed by its kind
        self.docker = engine or make_engine(settings)
        self.resyncs = 0
        self.engine_down: str | None = None  # why, while the engine cannot be reached
        self._synced = asyncio.Event()

    def _is_server(self, name: str) -> bool:
        return name.lstrip("/").startswith(self.prefix)

    async def resync(self) -> None:
        containers = await self.docker.containers.list(filters={"status": ["running"]})
        self.replace_all({c["Id"]: c["Image"] for c in containers if any(self._is_server(n) for n in c["Names"])})
        self.resyncs += 1
        self._synced.set()

    async def _follow_events(self) -> None:
        """Follow the engine's container events until the stream ends or the engine fails."""
        subscriber = self.docker.events.subscribe(filters={"type": ["container"], "event": ["start", "die", "destroy"]})
        try:
            await self.resync()  # after subscribing, so no start/stop falls between the two
            self._engine_answered()
            while True:
                event = await subscriber.get()
                if event is None:
                    return  # stream ended; _watch_events follows again (and resyncs)
                attributes = event.get("Actor", {}).get("Attributes", {})
                if not self._is_server(attributes.get("name", "")):
                    continue
                if event.get("Action") == "start":
                    self.added(event["Actor"]["ID"], attributes.get("image", event.get("from", "")))
                else:
                    self.removed(event["Actor"]["ID"])
        finally:
            with contextlib.suppress(Exception):
                await self.docker.events.stop()

    async def _watch_events(self) -> None:
        """Follow the events for good. An engine that is down is a state, not a crash: one
        WARNING when it goes, one INFO when it is back, and in between attempts spaced by the
        retry policy's capped, jittered exponential backoff (not a traceback every 2 s)."""
        backoff = retry.Backoff(transient=lambda e: True, attempts=None, delay=EVENTS_RETRY_MIN, cap=EVENTS_RETRY_MAX,
                                what="quota: following the Docker events", level=logging.DEBUG)
        while True:
            try:
                await self._follow_events()
            except ENGINE_ERRORS as e:
                if self.engine_down is None:  # a new outage
                    self.engine_down = str(e) or type(e).__name__
                    log.warning("quota: the Docker engine cannot be reached (%s); launch counts are frozen "
                                "until it is back, retrying with backoff", self.engine_down)
                    backoff.reset()
                await backoff.failed(e)
            else:  # the stream ended normally: follow again after the first wait
                backoff.reset()
                await backoff.failed(_EventsEnded("the events stream ended"))

    def _engine_answered(self) -> None:
        if self.engine_down is not None:
            log.info("quota: the Docker engine is back; launch counts resynced")
            self.engine_down = None

    async def _resync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.resync_interval)
            if self.engine_down is None:  # while it is down, the events watch owns the retries
                with contextlib.suppress(*ENGINE_ERRORS):
                    await self.resync()

    async def start(self) -> None:
        assert self.supervisor is not None
        self.supervisor.run_forever("quota: docker events", self._watch_events)
        self.supervisor.run_forever("quota: docker resync", self._resync_forever)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._synced.wait(), 10)

    async def close(self) -> None:
        if self._owns_engine:
            with contextlib.suppress(DockerError):
                await self.docker.close()
