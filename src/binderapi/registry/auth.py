"""Registry authentication pieces: ``WWW-Authenticate`` challenges and a Bearer token cache.

Registries with token auth (Docker Hub, GCR, ACR, Harbor, distribution's ``auth.token``) answer an
anonymous request with ``401`` and ``WWW-Authenticate: Bearer realm=...,service=...,scope=...``;
the client fetches a token for that scope from the realm and repeats the request. Tokens live for
minutes, and a launch burst asks about many images, so tokens are cached per scope until shortly
before they expire.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from ..singleflight import SingleFlight

# name=value or name="quoted value" (the quoted form may hold commas, as scopes do)
_PARAM = re.compile(r'\s*([A-Za-z][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))\s*,?')
_SCHEME = re.compile(r"\s*([A-Za-z][\w-]*)(?:\s+|$)")

# a token is not reused when it has less than this many seconds left
EXPIRY_MARGIN = 10.0
# lifetime the distribution token spec implies when a token server does not say
DEFAULT_EXPIRES_IN = 60.0


@dataclass(frozen=True)
class Challenge:
    """One parsed ``WWW-Authenticate`` challenge; ``scheme`` is lower case."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")

    @property
    def service(self) -> str:
        return self.params.get("service", "")

    @property
    def scope(self) -> str:
        return self.params.get("scope", "")

    @property
    def error(self) -> str:
        return self.params.get("error", "")


def parse_challenge(header: str) -> Challenge | None:
    """``Bearer realm="...",service="...",scope="..."`` or ``Basic realm="..."``; None if empty."""
    match = _SCHEME.match(header or "")
    if not match:
        return None
    params: dict[str, str] = {}
    rest = header[match.end():]
    pos = 0
    while pos < len(rest):
        param = _PARAM.match(rest, pos)
        if not param or param.end() == pos:
            break
        quoted, bare = param.group(2), param.group(3)
        value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
        params[param.group(1).lower()] = value
        pos = param.end()
    return Challenge(match.group(1).lower(), params)


def pick_challenge(headers: Iterable[str]) -> Challenge | None:
    """Prefer a Bearer challenge when a registry offers several."""
    challenges = [c for c in (parse_challenge(h) for h in headers) if c is not None]
    for challenge in challenges:
        if challenge.scheme == "bearer":
            return challenge
    return challenges[0] if challenges else None


TokenKey = tuple[str, str, str]  # (realm, service, scope)
TokenFetch = Callable[[], Awaitable[tuple[str, float | None]]]  # -> (token, expires_in seconds)


class TokenCache:
    """Bearer tokens per (realm, service, scope), with at most one fetch in flight per key."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tokens: dict[TokenKey, tuple[str, float]] = {}
        self._fetching: SingleFlight[str] = SingleFlight()

    def get(self, key: TokenKey) -> str | None:
        entry = self._tokens.get(key)
        if entry is None:
            return None
        token, expires_at = entry
        if self._clock() >= expires_at - EXPIRY_MARGIN:
            del self._tokens[key]
            return None
        return token

    def put(self, key: TokenKey, token: str, expires_in: float | None) -> None:
        now = self._clock()
        # forget tokens of images nobody asked about again, so the cache stays small
        for old in [k for k, (_, at) in self._tokens.items() if now >= at - EXPIRY_MARGIN]:
            del self._tokens[old]
        lifetime = DEFAULT_EXPIRES_IN if expires_in is None else expires_in
        self._tokens[key] = (token, now + lifetime)

    def drop(self, key: TokenKey) -> None:
        self._tokens.pop(key, None)

    async def get_or_fetch(self, key: TokenKey, fetch: TokenFetch) -> str:
        """A cached token, or one fetch shared by every concurrent caller (a launch burst for one
        image makes one token request, not one per request)."""
        token = self.get(key)
        if token is not None:
            return token
        return await self._fetching.run(key, lambda: self._fetch(key, fetch))

    async def _fetch(self, key: TokenKey, fetch: TokenFetch) -> str:
        token, expires_in = await fetch()
        self.put(key, token, expires_in)
        return token

    def clear(self) -> None:
        self._tokens.clear()
