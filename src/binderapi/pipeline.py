"""The one place that decides the order of a ``/build`` request's steps.

resolve the spec -> name the image -> is it in the registry? -> build (queued, deduplicated)
-> launch on JupyterHub. Each step yields typed events (or frames already encoded by the shared
build log); a :class:`~binderapi.errors.BinderError` anywhere ends the stream with a ``failed``
event carrying its message.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import naming
from .errors import BannedSpecError, BinderError, RefNotFoundError, UpstreamError
from .events import BuildReadyEvent, Event, WaitingEvent, line

if TYPE_CHECKING:
    from .providers import RepoProvider
    from .services import Services

log = logging.getLogger(__name__)


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
    def __init__(self, services: Services) -> None:
        self.services = services

    async def resolve(self, request: BuildRequest) -> AsyncIterator[Event | ResolvedRepo]:
        """Yield progress notices, then the :class:`ResolvedRepo`."""
        provider = self.services.providers.create(request.prefix, request.spec)
        if provider.is_banned():
            raise BannedSpecError(f"Sorry, {request.spec} is not allowed to launch. Please contact admins for more info!")
        key = f"{request.prefix}:{request.spec}"
        ref = await self._resolve_ref(provider, key)
        if ref is None:
            fallback = provider.default_branch_fallback()
            if fallback is not None:
                yield WaitingEvent(message=line(
                    f'GitHub recently changed default branches from "master" to "main". Trying again with HEAD '
                    f"instead of {provider.unresolved_ref}. Please update your links."))
                provider = fallback
                ref = await self._resolve_ref(provider, key)
        if ref is None:
            raise RefNotFoundError(f"Could not resolve ref for {key}. Double check your URL and that your repo is public.")
        slug = provider.get_build_slug()
        yield ResolvedRepo(
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
        repo: ResolvedRepo | None = None
        async for item in self.resolve(request):
            if isinstance(item, ResolvedRepo):
                repo = item
            else:
                yield item
        assert repo is not None
        # Builds and launches arrive with the build and launch steps.
        if request.build_only:
            yield BuildReadyEvent(message="Done! Found built image\n", imageName=repo.image_name)
            return
        raise BinderError("Launching is not available yet", status_code=501)
