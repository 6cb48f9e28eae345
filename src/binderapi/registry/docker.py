"""``DockerRegistry``: is an image already in a Docker Registry HTTP API v2 registry?

The answer decides whether a launch needs a build (BinderHub keeps no build database), so it must
be right in both directions: a missing image is ``False``, and a registry that cannot answer is a
:class:`~binderapi.errors.RegistryError` after a few attempts, never ``False`` (BinderHub's
"image missing" on any error made broken credentials rebuild every launch).

The check is a ``HEAD`` of ``/v2/<image>/manifests/<tag>``: it carries the same status codes as a
``GET`` and Docker Hub does not count it against pull rate limits. Its ``Accept`` lists the Docker
v2 and OCI manifest and index types, because podman and buildah push OCI manifests and a registry
answers 404 for a manifest whose type the client did not accept.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from .. import naming
from ..errors import RegistryError
from ..settings import models
from ._retry import TransientError, retrying
from .auth import Challenge, TokenCache, TokenKey, pick_challenge
from .dockerconfig import Endpoint, is_docker_hub, resolve_endpoint

log = logging.getLogger(__name__)

MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
)
ACCEPT = ", ".join(MANIFEST_TYPES)
# what BinderHub's /health asks the registry about (any definite answer is healthy)
HEALTH_IMAGE = "some-image-name:12345"
# the token service BinderHub names when an explicit token_url does not carry one
DEFAULT_TOKEN_SERVICE = "container_registry"


def display_url(url: str) -> str:
    """A URL fit for messages: never user info, query strings or fragments."""
    parts = urlsplit(str(url))
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return f"{parts.scheme}://{netloc}{parts.path}".rstrip("/")


def _describe(error: Exception) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _error_detail(response: httpx.Response) -> str:
    """The registry's own error codes (``{"errors": [{"code", "message"}]}``), for messages."""
    try:
        errors = response.json().get("errors") or []
        text = "; ".join(f"{e.get('code', '')} {e.get('message', '')}".strip() for e in errors if isinstance(e, dict))
    except (ValueError, AttributeError):
        return ""
    return f": {text[:200]}" if text else ""


@dataclass(frozen=True)
class _Auth:
    """What a request carries: an ``Authorization`` value and, for tokens, the cache key."""

    header: str | None = None
    token_key: TokenKey | None = None
    fresh: bool = True  # a token just fetched, not one from the cache


class DockerRegistry:
    """Image existence checks against one registry, with its credentials and token flows."""

    def __init__(self, config: models.DockerRegistry, http: httpx.AsyncClient, image_prefix: str = "") -> None:
        self.config = config
        self.endpoint: Endpoint = resolve_endpoint(config)
        self.url = self.endpoint.url
        self.name = display_url(self.url)
        self.host = urlsplit(self.url).netloc.rpartition("@")[2] or self.name
        self.http = http
        self.image_prefix = image_prefix
        self._tokens = TokenCache()
        self._challenge: Challenge | None = None  # the registry's Bearer challenge, once seen
        self._basic: str | None = None
        if self.endpoint.has_credentials:
            pair = f"{self.endpoint.username}:{self.endpoint.password}".encode()
            self._basic = "Basic " + base64.b64encode(pair).decode("ascii")
        self._warn_if_prefix_elsewhere()

    # -- the ImageStore interface ------------------------------------------------------------

    async def image_exists(self, image_name: str) -> bool:
        """Whether ``image_name`` (registry host, path and tag) is in the registry."""
        image, tag = self.split(image_name)
        return await self._manifest(image, tag, "HEAD", self.config.retries) is not None

    async def get_image_manifest(self, image: str, tag: str) -> dict[str, Any] | None:
        """The manifest (or index) of ``image:tag``, ``image`` without the registry host; None
        when the registry says it does not exist."""
        response = await self._manifest(image, tag, "GET", self.config.retries)
        if response is None:
            return None
        try:
            manifest = response.json()
        except ValueError:
            raise RegistryError(f"{self.name} answered the manifest of {image}:{tag} with something that is not JSON") from None
        if not isinstance(manifest, dict):
            raise RegistryError(f"{self.name} answered the manifest of {image}:{tag} with JSON that is not an object")
        return manifest

    async def health(self) -> dict[str, Any]:
        """One attempt (the health endpoint is polled and cached); found and not found are both
        definite answers, so both are healthy."""
        image, tag = self.split(self.image_prefix + HEALTH_IMAGE)
        try:
            await self._manifest(image, tag, "HEAD", attempts=1)
        except RegistryError as e:
            return {"ok": False, "error": e.message}
        return {"ok": True}

    async def close(self) -> None:
        """The HTTP client belongs to the caller; only cached tokens are dropped."""
        self._tokens.clear()

    # -- naming ------------------------------------------------------------------------------

    @staticmethod
    def split(image_name: str) -> tuple[str, str]:
        """``host/path/name:tag`` -> (``path/name``, ``tag``) by BinderHub's rule; a name with no
        host part at all is kept whole rather than emptied."""
        image, tag = naming.split_image_name(image_name)
        if not image:
            image = naming.repo_of_image(image_name)
        return image, tag

    def _warn_if_prefix_elsewhere(self) -> None:
        """Images are checked at ``url`` whatever host their names carry; say so when the two
        differ, since a mismatch makes every check miss (and every launch build)."""
        first, sep, _ = self.image_prefix.partition("/")
        if not sep or not ("." in first or ":" in first or first == "localhost"):
            return
        prefix_host = urlsplit("//" + first)
        ours = urlsplit(self.url)
        same = (prefix_host.hostname, prefix_host.port) == (ours.hostname, ours.port)
        if not same and not (is_docker_hub("https://" + first) and is_docker_hub(self.url)):
            log.warning("BinderHub.image_prefix names registry %s but DockerRegistry.url is %s; "
                        "image checks go to %s", first, self.name, self.name)

    # -- one manifest request, with auth -----------------------------------------------------

    async def _manifest(self, image: str, tag: str, method: str, attempts: int) -> httpx.Response | None:
        return await retrying(lambda: self._manifest_once(image, tag, method), attempts=attempts,
                              delay=self.config.retry_delay, what=f"Checking {image}:{tag} in {self.name}")

    async def _manifest_once(self, image: str, tag: str, method: str) -> httpx.Response | None:
        url = f"{self.url}/v2/{image}/manifests/{tag}"
        scope = f"repository:{image}:pull"
        auth = await self._authorization(scope)
        response = await self._send(method, url, auth.header)
        if response.status_code == 401:
            if auth.token_key is not None:
                if not auth.fresh:  # a cached token refused: revoked or expired early, renew once
                    auth = await self._bearer(*auth.token_key, renew=True)
                    response = await self._send(method, url, auth.header)
            else:
                challenge = pick_challenge(response.headers.get_list("www-authenticate"))
                if challenge is not None and challenge.scheme == "bearer":
                    if not challenge.realm:
                        raise RegistryError(f"{self.name} asks for a Bearer token but its WWW-Authenticate "
                                            "challenge names no realm to get one from")
                    self._challenge = challenge
                    auth = await self._bearer(challenge.realm, challenge.service, challenge.scope or scope)
                    response = await self._send(method, url, auth.header)
        return self._outcome(response, image, tag, auth)

    async def _authorization(self, scope: str) -> _Auth:
        """Bearer when a token endpoint is configured or the registry asked for tokens before;
        else Basic when there are credentials (htpasswd registries, and the first request to a
        token registry, which answers with its challenge)."""
        if self.endpoint.token_url:
            has_service = "service" in httpx.URL(self.endpoint.token_url).params
            return await self._bearer(self.endpoint.token_url, "" if has_service else DEFAULT_TOKEN_SERVICE, scope)
        if self._challenge is not None:
            return await self._bearer(self._challenge.realm, self._challenge.service, scope)
        return _Auth(self._basic)

    async def _send(self, method: str, url: str, authorization: str | None) -> httpx.Response:
        headers = {"Accept": ACCEPT}
        if authorization:
            headers["Authorization"] = authorization
        try:
            return await self.http.request(method, url, headers=headers, timeout=self.config.timeout,
                                           follow_redirects=True)
        except httpx.TimeoutException:
            raise TransientError(f"the container registry at {self.host} did not answer within "
                                 f"{self.config.timeout:g}s") from None
        except httpx.TransportError as e:
            raise TransientError(f"the container registry at {self.host} cannot be reached ({_describe(e)})") from None

    def _outcome(self, response: httpx.Response, image: str, tag: str, auth: _Auth) -> httpx.Response | None:
        code = response.status_code
        if 200 <= code < 300:
            return response
        if code == 404:
            return None
        what = f"{image}:{tag}"
        detail = _error_detail(response)
        if code == 401:
            if auth.token_key is not None and self.endpoint.not_found_401:
                return None  # Docker Hub: 401 for a repository that does not exist
            challenge = pick_challenge(response.headers.get_list("www-authenticate"))
            if challenge is not None and challenge.error:
                detail += f" ({challenge.error})"
            if not self.endpoint.has_credentials:
                raise RegistryError(f"{self.name} requires credentials to read {what} (HTTP 401{detail}) "
                                    f"and none are configured; {self._credentials_hint()}")
            raise RegistryError(f"credentials rejected by {self.name} (HTTP 401 for {what}{detail}); "
                                f"{self._credentials_hint()}")
        if code == 403:
            raise RegistryError(f"{self.name} denied access to {what} (HTTP 403{detail}); "
                                "the configured account may not pull from this repository")
        if code == 429 or code >= 500:
            raise TransientError(f"{self.name} answered HTTP {code} for {what}{detail}")
        raise RegistryError(f"{self.name} answered HTTP {code} for {what}{detail}")

    def _credentials_hint(self) -> str:
        return (f"check DockerRegistry.username and password, or the `auths` entry "
                f"{self.endpoint.auth_config_url!r} in {self.endpoint.docker_config_path}")

    # -- tokens ------------------------------------------------------------------------------

    async def _bearer(self, realm: str, service: str, scope: str, *, renew: bool = False) -> _Auth:
        key: TokenKey = (realm, service, scope)
        if renew:
            self._tokens.drop(key)
        cached = self._tokens.get(key) is not None
        token = await self._tokens.get_or_fetch(key, lambda: self._fetch_token(realm, service, scope))
        return _Auth(f"Bearer {token}", key, fresh=not cached)

    async def _fetch_token(self, realm: str, service: str, scope: str) -> tuple[str, float | None]:
        """``GET realm?scope=...&service=...`` with basic auth when there are credentials."""
        url = httpx.URL(realm)
        params = {"scope": scope}
        if service and "service" not in url.params:
            params["service"] = service
        url = url.copy_merge_params(params)
        where = f"the token server {display_url(realm)} of the container registry at {self.host}"
        headers = {"Authorization": self._basic} if self._basic else {}
        try:
            response = await self.http.get(url, headers=headers, timeout=self.config.timeout, follow_redirects=True)
        except httpx.TimeoutException:
            raise TransientError(f"{where} did not answer within {self.config.timeout:g}s") from None
        except httpx.TransportError as e:
            raise TransientError(f"{where} cannot be reached ({_describe(e)})") from None
        code = response.status_code
        if code in (401, 403):
            if not self.endpoint.has_credentials:
                raise RegistryError(f"{self.name} requires credentials: {where} refused an anonymous token "
                                    f"(HTTP {code}) and none are configured; {self._credentials_hint()}")
            raise RegistryError(f"credentials rejected by {self.name}: {where} answered HTTP {code}; "
                                f"{self._credentials_hint()}")
        if code == 429 or code >= 500:
            raise TransientError(f"{where} answered HTTP {code}")
        if code != 200:
            raise RegistryError(f"{where} answered HTTP {code}{_error_detail(response)}")
        try:
            body = response.json()
            token = body.get("token") or body.get("access_token")
            expires_in = body.get("expires_in")
            expires_in = float(expires_in) if expires_in is not None else None
        except (ValueError, AttributeError, TypeError):
            raise RegistryError(f"{where} answered with something that is not a token response") from None
        if not token or not isinstance(token, str):
            raise RegistryError(f"{where} answered without a token")
        return token, expires_in
