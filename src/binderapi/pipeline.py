"""The one place that decides the order of a ``/build`` request's steps.

resolve the spec -> name the image -> is it in the registry? -> build (queued, deduplicated)
-> launch on JupyterHub. :meth:`BuildPipeline.run` is the stream: it yields event models, and the
build's frames as the shared build log already encoded them (bytes: one encoding serves every
client watching the build, 10,000 streams of a popular repository included; see ``builds.py``).
The steps that produce a result (:meth:`~BuildPipeline.resolve`, ``Launcher.launch``) return it
and report their progress through a ``report`` callback; ``run`` relays that progress as it
happens (:class:`~binderapi.progress.Relay`). A :class:`~binderapi.errors.BinderError` anywhere
ends the stream with a ``failed`` event carrying its message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from . import metrics, naming
from .builds import draft_record
from .errors import (
    BannedSpecError,
    BinderError,
    BuildError,
    QuotaExceededError,
    RefNotFoundError,
    UpstreamError,
)
from .events import (
    BuildReadyEvent,
    BuiltEvent,
    Event,
    LaunchingEvent,
    LaunchReadyEvent,
    WaitingEvent,
    encode,
    line,
)
from .executors.base import BuildJob
from .launcher import LaunchedServer, LaunchRequest
from .progress import Relay, Report, ignore

if TYPE_CHECKING:
    from .builds import BuildManager
    from .eventlog import EventLog
    from .launcher import Launcher
    from .providers import ProviderRegistry, RepoProvider
    from .quota import LaunchQuota, QuotaSlot
    from .registry import ImageStore
    from .settings import Settings
    from .warmpool import WarmPool

log = logging.getLogger(__name__)


class PipelineParts(Protocol):
    """What the pipeline uses of the service's parts. ``services.py`` builds them (and satisfies
    this), one layer above: the pipeline never imports it."""

    settings: Settings
    providers: ProviderRegistry
    images: ImageStore
    builds: BuildManager
    quota: LaunchQuota
    launcher: Launcher
    warm_pool: WarmPool | None
    event_log: EventLog

    @property
    def executor_settings(self) -> Any: ...


@dataclass
class BuildRequest:
    """What the router extracted from the HTTP request."""

    prefix: str
    spec: str
    build_only: bool = False
    client_ip: str = ""
    launch_host: str = ""  # binder_launch_host: badge_base_url or this service's own URL
    origin: str = ""  # host for the launch event (normalized_origin or the request's host)
    request_origin: str = ""  # the Origin (or Sec-Fetch-Site) header, for the launch event
    build_token: bool = False  # a valid build token came with the request
    username: str | None = None  # auth mode: the JupyterHub user the token or cookie belongs to
    #: a reconnecting EventSource's ``Last-Event-ID: <build_id>.<seq>``: resume that build after that seq
    resume_build: str = ""
    resume_seq: int = 0
    #: set to the build's id once the request has joined one ("" when it needs none), for the
    #: ``X-Build-Id`` header; the router drops it once read
    joined: asyncio.Future[str] | None = None
    build_id: str = ""  # the build this request joined

    def announce(self, build_id: str) -> None:
        if self.joined is not None and not self.joined.done():
            self.joined.set_result(build_id)


@dataclass
class ResolvedRepo:
    """A spec resolved to an immutable ref, and every name derived from it."""

    provider: RepoProvider
    ref: str
    resolved_spec: str
    repo_url: str
    ref_url: str
    image_name: str
    build_name: str

    @property
    def key(self) -> str:
        return f"{self.provider.prefix}:{self.provider.spec}"


class BuildPipeline:
    def __init__(self, services: PipelineParts) -> None:
        self.services = services

    async def resolve(self, request: BuildRequest, report: Report[Event] = ignore) -> ResolvedRepo:
        """The spec resolved to an immutable ref and its names; notices (the fallback from
        ``master`` to ``HEAD``) are reported on the way."""
        provider = self.services.providers.create(request.prefix, request.spec)
        if provider.is_banned():
            raise BannedSpecError(f"Sorry, {request.spec} is not allowed to launch. Please contact admins for more info!")
        key = f"{request.prefix}:{request.spec}"
        ref = await self._resolve_ref(provider, key)
        if ref is None:
            fallback = provider.default_branch_fallback()
            if fallback is not None:
                await report(WaitingEvent(message=line(
                    f'GitHub recently changed default branches from "master" to "main". Trying again with HEAD '
                    f"instead of {provider.unresolved_ref}. Please update your links.")))
                provider = fallback
                ref = await self._resolve_ref(provider, key)
        if ref is None:
            raise RefNotFoundError(f"Could not resolve ref for {key}. Double check your URL and that your repo is public.")
        slug = provider.get_build_slug()
        return ResolvedRepo(
            provider=provider,
            ref=ref,
            resolved_spec=await provider.get_resolved_spec(),
            repo_url=provider.get_repo_url(),
            ref_url=await provider.get_resolved_ref_url(),
            image_name=naming.image_name(self.services.settings.BinderHub.image_prefix, slug, ref),
            build_name=naming.build_name(slug, ref),
        )

    @staticmethod
    async def _resolve_ref(provider: RepoProvider, key: str) -> str | None:
        try:
            return await provider.get_resolved_ref()
        except BinderError:
            raise
        except Exception as e:
            log.warning("Resolving %s failed", key, exc_info=True)
            raise UpstreamError(f"Error resolving ref for {key}: {e}") from e

    async def run(self, request: BuildRequest) -> AsyncIterator[Event | bytes]:
        """The ``/build`` stream: events, and the build log's frames already encoded (bytes)."""
        resolving: Relay[Event, ResolvedRepo] = Relay(lambda report: self.resolve(request, report))
        async for event in resolving:
            yield event
        repo = resolving.result
        del resolving  # its step and closure would stay in this frame for the stream's life (3 MB at 10,000)
        services = self.services
        labels = {"provider": repo.provider.name, "repo": repo.repo_url}

        # joining a build in progress needs no registry round trip: thousands may join one build
        built_here = services.builds.in_progress(repo.build_name) or not await services.images.image_exists(repo.image_name)
        if not built_here:
            request.announce("")
            if request.build_only:
                yield BuildReadyEvent(message="Done! Found built image\n", imageName=repo.image_name)
                return
            yield BuiltEvent(message="Found built image, launching...\n", imageName=repo.image_name)
        else:
            repo_config = repo.provider.repo_config(services.settings.BinderHub)
            if not request.build_only:  # building for nobody is pointless when nobody may launch
                await self._check_quota(repo, repo_config, labels)
            async for frame in self._build(request, repo):
                yield frame
            # after the build, its id: a reconnect with `<id>.done` must not launch again
            build_id = request.build_id
            done = f"{build_id}.done"
            if request.build_only:
                yield encode(BuildReadyEvent(message="Done! Image built\n", imageName=repo.image_name, build_id=build_id), done)
                return
            yield encode(BuiltEvent(message="Built image, launching...\n", imageName=repo.image_name, build_id=build_id), done)
            async for event in self._launch(request, repo, labels):
                yield encode(event, done)
            # BinderHub's hold (PR #369): an EventSource that reconnects after a long build instead
            # of closing would launch again; an open stream lets it read `ready` and close.
            await asyncio.sleep(services.settings.BinderHub.ready_hold_seconds)
            return
        async for event in self._launch(request, repo, labels):
            yield event

    async def job(self, request: BuildRequest, repo: ResolvedRepo) -> BuildJob:
        """What the backend runs to build ``repo``'s image (``/build`` and ``POST /api/v1/builds``)."""
        services = self.services
        executor = services.executor_settings
        git_config = await repo.provider.build_git_config()
        return BuildJob(
            name=repo.build_name,
            image_name=repo.image_name,
            repo_url=repo.repo_url,
            ref=repo.ref,
            git_credentials=repo.provider.git_credentials,
            appendix=format_appendix(executor.appendix, request, repo),
            push=services.settings.BinderHub.use_registry and bool(executor.push_secret),
            provider=repo.provider.name,
            git_config=tuple(git_config),
        )

    async def _build(self, request: BuildRequest, repo: ResolvedRepo) -> AsyncIterator[Event | bytes]:
        services = self.services
        job = await self.job(request, repo)
        builds = services.builds
        resumed = await builds.resumable(request.resume_build) if request.resume_build else None
        if resumed is not None and builds.builds.get(job.name) is resumed:
            # the same URL reconnecting while its build runs (here or on another replica): the rest of its events
            watch = builds.watch(job, after_seq=request.resume_seq)
        else:
            resumed = None
            watch = await builds.join(job, draft_record(job, f"{request.prefix}/{request.spec}"))
        build_id = request.build_id = watch.build_id
        request.announce(build_id)
        if resumed is None:
            yield encode(WaitingEvent(message="Waiting for build to start...\n", build_id=build_id),
                         f"{build_id}.{watch.start}")
        async with watch:
            async for frame in watch:
                yield frame
        outcome = watch.outcome
        if not outcome.success:
            error = BuildError(outcome.message, outcome.status_code)
            error.build_id = build_id
            raise error

    async def _check_quota(self, repo: ResolvedRepo, repo_config: dict[str, Any], labels: dict[str, str]) -> None:
        try:
            await self.services.quota.check(repo.image_name, repo_config, repo.repo_url)
        except QuotaExceededError as e:
            metrics.count_launch(e.quota_kind, **labels)
            raise

    async def _admit_quota(self, repo: ResolvedRepo, repo_config: dict[str, Any],
                           labels: dict[str, str]) -> QuotaSlot | None:
        try:
            return await self.services.quota.admit(repo.image_name, repo_config, repo.repo_url)
        except QuotaExceededError as e:
            metrics.count_launch(e.quota_kind, **labels)
            raise

    async def _launch(self, request: BuildRequest, repo: ResolvedRepo, labels: dict[str, str]) -> AsyncIterator[Event]:
        services = self.services
        repo_config = repo.provider.repo_config(services.settings.BinderHub)
        launch = LaunchRequest(
            image=repo.image_name,
            repo_url=repo.repo_url,
            ref_url=repo.ref_url,
            launch_host=request.launch_host,
            binder_request=f"v2/{request.prefix}/{request.spec}",
            binder_persistent_request=f"v2/{request.prefix}/{repo.resolved_spec}",
            client_ip=request.client_ip,
            username=request.username,
        )
        started = time.perf_counter()
        # A warm server already holds its quota slot: only a spawn is checked against the quota,
        # and holds a slot until it has ended (so concurrent launches, here or on another replica,
        # cannot all take the last one).
        server = await services.warm_pool.take(launch, repo_config.get("quota") or 0) if services.warm_pool else None
        slot = None if server is not None else await self._admit_quota(repo, repo_config, labels)
        metrics.LAUNCHES_INPROGRESS.inc()
        try:
            if server is not None:
                yield LaunchingEvent(message="Handed over a warm server (already running, no spawn needed)\n")
            else:
                launching: Relay[LaunchingEvent, LaunchedServer] = Relay(
                    lambda report: services.launcher.launch(launch, report))
                async for event in launching:
                    yield event
                server = launching.result
        except BinderError:
            metrics.LAUNCH_TIME.labels(status="failure", retries=-1).observe(time.perf_counter() - started)
            metrics.count_launch("failure", **labels)
            raise
        finally:
            metrics.LAUNCHES_INPROGRESS.dec()
            services.quota.release_slot(slot)
        metrics.LAUNCH_TIME.labels(status="success", retries=server.retries).observe(time.perf_counter() - started)
        metrics.count_launch("success", **labels)
        services.event_log.emit_launch(
            provider=repo.provider.name, spec=request.spec, ref=repo.ref, status="success",
            build_token=request.build_token, origin=request.origin, request_origin=request.request_origin,
        )
        yield LaunchReadyEvent(message=f"server running at {server.url}\n", **server.ready_fields(launch))


class _KeepUnknown(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


#: URL characters that mean nothing to a Dockerfile instruction or a shell word; every other one
#: (whitespace, quotes, ``$``, ``;``, ``&``, ``\``, ``#``, ``?``, ``*``, newlines...) is percent-encoded
_APPENDIX_SAFE = "/:@%+=,[]"


def appendix_value(url: str) -> str:
    """A URL as it may stand unquoted in the appendix (``ENV BINDER_URL={binder_url}``, a ``RUN``
    line): the appendix is baked into a shared image, so a value with a space would set other
    variables (``ENV A=x PATH=/tmp/evil``) or run a command for every later user."""
    return quote(url, safe=_APPENDIX_SAFE)


def format_appendix(appendix: str, request: BuildRequest, repo: ResolvedRepo) -> str:
    """Fill BinderHub's appendix placeholders; anything else in braces (shell ``${VAR}``) stays.
    Each value goes through :func:`appendix_value`; the host in them is ``badge_base_url`` when set, else the
    request's ``Host``, which HostHeaderMiddleware has checked."""
    if not appendix:
        return ""
    values = _KeepUnknown(
        binder_url=appendix_value(f"{request.launch_host}v2/{request.prefix}/{request.spec}"),
        persistent_binder_url=appendix_value(f"{request.launch_host}v2/{request.prefix}/{repo.resolved_spec}"),
        repo_url=appendix_value(repo.repo_url),
        ref_url=appendix_value(repo.ref_url),
    )
    try:
        return appendix.format_map(values)
    except (ValueError, IndexError):
        return appendix
