"""The provider interface: turn a spec into a resolved, immutable ref and the names derived from it.

Providers know nothing about builds. One instance is made per request; state that must outlive a
request (HTTP connection pool, resolution caches) lives in :class:`ProviderContext`.
"""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

import httpx

from ..errors import RefNotFoundError
from ._net import DEFAULT_PORTS, Pin, check_url, denied_networks

if TYPE_CHECKING:
    from ..settings import models
    from ._cache import ResolutionCache

_SHA1 = re.compile(r"[0-9a-f]{40}")


def is_sha1(text: str) -> bool:
    """A full, lower-case hexadecimal commit SHA: immutable, so it needs no lookup to stay valid."""
    return bool(_SHA1.fullmatch(text))


@dataclass
class ProviderContext:
    """Shared by every provider instance: one HTTP client and one resolution cache per provider
    (see :mod:`._cache`; created on first use with that provider's ``cache_size``)."""

    http: httpx.AsyncClient
    caches: dict[str, ResolutionCache] = field(default_factory=dict)

    def cache(self, name: str, config: models.RepoProvider) -> ResolutionCache:
        from ._cache import ResolutionCache

        if name not in self.caches:
            self.caches[name] = ResolutionCache(config.cache_size)
        return self.caches[name]


def _matches(patterns: list[str], spec: str) -> bool:
    return any(re.match(pattern, spec, re.IGNORECASE) for pattern in patterns)


class RepoProvider(abc.ABC):
    """Base class of every provider. Subclasses parse ``spec`` in ``__init__`` (raising
    :class:`~binderapi.errors.SpecError` with a helpful message) and implement the resolution."""

    #: human-readable name; also the ``provider`` label of metrics and launch events
    name: ClassVar[str]
    #: settings section holding this provider's options
    config_section: ClassVar[str]
    #: what a frontend needs to offer this provider (``/api/repoproviders``)
    display_config: ClassVar[dict[str, Any]] = {}

    def __init__(self, spec: str, *, prefix: str, config: models.RepoProvider, context: ProviderContext) -> None:
        self.spec = spec
        self.prefix = prefix
        self.config = config
        self.context = context
        self.unresolved_ref = ""

    # -- resolution (may call upstreams) --------------------------------------------------------
    @abc.abstractmethod
    async def get_resolved_ref(self) -> str | None:
        """The immutable ref (commit SHA, record version) or ``None`` if it does not exist."""

    @abc.abstractmethod
    async def get_resolved_spec(self) -> str:
        """The spec with the ref replaced by the resolved one (for ``binder_persistent_request``)."""

    @abc.abstractmethod
    async def get_resolved_ref_url(self) -> str:
        """A URL a person can open to see exactly what was built."""

    # -- naming (no I/O) ----------------------------------------------------------------------
    @abc.abstractmethod
    def get_repo_url(self) -> str:
        """What repo2docker is given to fetch."""

    @abc.abstractmethod
    def get_build_slug(self) -> str:
        """The unescaped part of the image name identifying the repository."""

    async def _require_ref(self) -> str:
        """The resolved ref for methods that need one; a missing ref is the user's to fix."""
        ref = await self.get_resolved_ref()
        if ref is None:
            raise RefNotFoundError(f"Could not resolve ref for {self.prefix}:{self.spec}. "
                                   "Double check your URL and that your repo is public.")
        return ref

    def default_branch_fallback(self) -> RepoProvider | None:
        """A provider for ``HEAD`` when the requested default-branch name does not exist (GitHub's
        master/main rename); ``None`` where that makes no sense."""
        return None

    # -- what the build fetches --------------------------------------------------------------------
    async def build_git_config(self) -> list[tuple[str, str]]:
        """git configuration for the builder's clone of :meth:`get_repo_url`, checked against
        ``denied_networks`` right before the build (a cached resolution says nothing about where
        the name points now) and pinned to the address checked."""
        url = self.get_repo_url()
        parts = urlsplit(url)
        if parts.scheme.lower() not in DEFAULT_PORTS or not parts.hostname:
            return []  # not a URL git or an HTTP client fetches (a DOI, an archive id)
        pin = await check_url(url, denied_networks(self.config.denied_networks), "repository host")
        return self.clone_git_config(pin)

    def clone_git_config(self, pin: Pin | None) -> list[tuple[str, str]]:
        """git configuration making a fetch of :meth:`get_repo_url` connect to ``pin``'s address:
        ``http.curloptResolve`` for HTTP(S), a ``url.insteadOf`` rewrite for ``git://``. SSH is not
        pinned (its host keys are known by name)."""
        if pin is None:
            return []
        parts = urlsplit(self.get_repo_url())
        scheme = parts.scheme.lower()
        if scheme in ("http", "https"):
            return [("http.curloptResolve", pin.curl_resolve())]
        if scheme == "git":
            address = f"[{pin.address}]" if ":" in pin.address else pin.address
            port = f":{parts.port}" if parts.port else ""
            return [(f"url.git://{address}{port}/.insteadOf", f"{parts.scheme}://{parts.netloc}/")]
        return []

    # -- credentials and policy ------------------------------------------------------------------
    @property
    def git_credentials(self) -> str:
        """``GIT_CREDENTIAL_ENV`` for the build; empty for public repositories."""
        return self.config.git_credentials

    def is_banned(self) -> bool:
        """``banned_specs`` match, or ``allowed_specs`` set and none matches (case-insensitive,
        anchored at the start, on the unresolved spec)."""
        if _matches(self.config.banned_specs, self.spec):
            return True
        return bool(self.config.allowed_specs) and not _matches(self.config.allowed_specs, self.spec)

    def has_higher_quota(self) -> bool:
        return _matches(self.config.high_quota_specs, self.spec)

    def repo_config(self, binderhub: models.BinderHub) -> dict[str, Any]:
        """Per-repository settings: ``quota`` from the per-repo quotas, then every matching
        ``spec_config`` entry applied in order (the last match wins)."""
        quota = binderhub.per_repo_quota_higher if self.has_higher_quota() else binderhub.per_repo_quota
        config: dict[str, Any] = {"quota": quota}
        for entry in self.config.spec_config:
            if re.match(entry["pattern"], self.spec, re.IGNORECASE):
                config.update(entry["config"])
        return config
