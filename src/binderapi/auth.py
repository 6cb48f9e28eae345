"""Auth mode: who is asking, according to JupyterHub.

A request carries a JupyterHub token (``Authorization: Bearer <t>`` or ``token <t>``, or a ``token``
query parameter). binderapi asks the hub whose it is (``GET <hub api>/user``) and caches the answer
briefly, so a stream of requests costs one hub call per token per minute.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict

import httpx

from .errors import BinderError, ForbiddenError

log = logging.getLogger(__name__)

CACHE_SECONDS = 60.0
CACHE_SIZE = 4096


def token_from_request(authorization: str | None, query_token: str | None) -> str | None:
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() in ("bearer", "token") and value.strip():
            return value.strip()
    return query_token or None


class HubAuth:
    def __init__(self, api_url: str, http: httpx.AsyncClient, timeout: float = 10.0) -> None:
        self.api_url = api_url.rstrip("/") + "/"
        self.http = http
        self.timeout = timeout
        self._cache: OrderedDict[str, tuple[str, float]] = OrderedDict()

    async def user_for_token(self, token: str) -> str:
        """The hub user owning ``token``; :class:`ForbiddenError` if the hub does not know it."""
        key = hashlib.sha256(token.encode()).hexdigest()
        cached = self._cache.get(key)
        if cached and cached[1] > time.monotonic():
            return cached[0]
        try:
            response = await self.http.get(self.api_url + "user", headers={"Authorization": f"token {token}"},
                                           timeout=self.timeout)
        except httpx.HTTPError as e:
            raise BinderError(f"Could not check your JupyterHub token: the hub at {self.api_url} is unreachable ({type(e).__name__})", status_code=503) from None
        if response.status_code in (401, 403):
            raise ForbiddenError("Invalid JupyterHub token: log in to JupyterHub and use a current API token")
        if response.status_code != 200:
            raise BinderError(f"Could not check your JupyterHub token: the hub answered {response.status_code}", status_code=503)
        model = response.json()
        if model.get("kind", "user") != "user":
            raise ForbiddenError("Only JupyterHub users can launch servers; this token belongs to a service")
        name = model["name"]
        self._cache[key] = (name, time.monotonic() + CACHE_SECONDS)
        self._cache.move_to_end(key)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return name
