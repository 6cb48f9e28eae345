"""GitHub (``gh``) and GitHub Gist (``gist``).

Both ask the GitHub REST API. GitHub counts every answered request against an hourly limit except
``304 Not Modified``, so answers are cached with their ETag and revalidated with ``If-None-Match``
once ``cache_ttl`` has passed: an unchanged branch then costs nothing. The remaining budget is
exported as ``binderhub_github_rate_limit_remaining``.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any, ClassVar

import httpx

from ..errors import SpecError, UpstreamError
from ..metrics import GITHUB_RATE_LIMIT
from . import _http
from ._cache import Resolution
from ._paths import check_git_ref, segments
from .base import RepoProvider, is_sha1

if TYPE_CHECKING:
    from ..settings import models

log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def tokenize_spec(spec: str) -> tuple[str, str, str]:
    """``owner/repo/ref`` (the ref may contain ``/``), with BinderHub's hint when the ref is missing."""
    parts = spec.split("/", 2)
    if len(parts) != 3 or not all(parts):
        message = f'Spec is not of the form "user/repo/ref", provided: "{spec}".'
        if len(parts) == 2 and parts[-1] not in {"main", "master", "HEAD"}:
            message += f' Did you mean "{spec}/HEAD"?'
        raise SpecError(message)
    return parts[0], parts[1], parts[2]


def _check_name(kind: str, value: str, spec: str) -> str:
    if not _NAME.fullmatch(value) or value in {".", ".."}:
        raise SpecError(f'"{value}" is not a valid GitHub {kind} name (in "{spec}").')
    return value


class _GitHubAPI(RepoProvider):
    """What GitHub and Gist share: authentication, rate limits, cached conditional requests."""

    config: models.GitHubRepoProvider

    @property
    def api_base(self) -> str:
        return self.config.api_base_path.format(hostname=self.config.hostname).rstrip("/")

    def _auth(self) -> tuple[dict[str, str], tuple[str, str] | None]:
        headers = {"Accept": "application/vnd.github+json"}
        if self.config.access_token:
            headers["Authorization"] = f"token {self.config.access_token}"
        auth = None  # an OAuth app's id and secret raise the anonymous limit; a token wins over them
        if self.config.client_id and self.config.client_secret and not self.config.access_token:
            auth = (self.config.client_id, self.config.client_secret)
        return headers, auth

    @property
    def git_credentials(self) -> str:
        if self.config.git_credentials:
            return self.config.git_credentials
        token = self.config.access_token
        if not token:
            return ""
        if self.config.client_id:
            return rf"username={self.config.client_id}\npassword={token}"
        return rf"username={token}\npassword=x-oauth-basic"

    async def _conditional_get(self, url: str, stale: Resolution | None) -> httpx.Response:
        """GET with ``If-None-Match`` when a stale answer has an ETag; rate limits become errors."""
        headers, auth = self._auth()
        if stale is not None and stale.etag:
            headers["If-None-Match"] = stale.etag
        response = await _http.fetch(self.context, self.config, "GitHub", url, headers=headers, auth=auth)
        self._record_rate_limit(response)
        error = _http.rate_limit_error("GitHub", response)
        if error is not None:
            log.error("GitHub rate limit exhausted (limit %s)", response.headers.get("x-ratelimit-limit", "?"))
            raise error
        return response

    @staticmethod
    def _record_rate_limit(response: httpx.Response) -> None:
        remaining = response.headers.get("x-ratelimit-remaining")
        if remaining is None:
            return
        try:
            value = int(remaining)
            limit = int(response.headers.get("x-ratelimit-limit", "0"))
        except ValueError:
            return
        GITHUB_RATE_LIMIT.set(value)
        if limit and value / limit < 0.2:
            log.warning("GitHub rate limit remaining %d/%d", value, limit)

    def _unexpected(self, response: httpx.Response) -> UpstreamError:
        return UpstreamError(f"GitHub ({response.url.host}) refused the request (HTTP {response.status_code}).")


class GitHubRepoProvider(_GitHubAPI):
    """``gh/<owner>/<repo>/<ref>``: resolved with ``GET /repos/{owner}/{repo}/commits/{ref}``."""

    name = "GitHub"
    config_section = "GitHubRepoProvider"
    display_config: ClassVar[dict[str, Any]] = {
        "displayName": "GitHub",
        "id": "gh",
        "spec": {"validateRegex": r"[^/]+/[^/]+/.+"},
        "detect": {"regex": "^(https?://github.com/)?(?<repo>.*[^/])/?"},
        "repo": {
            "label": "GitHub repository name or URL",
            "placeholder": "example: binder-examples/requirements or https://github.com/binder-examples/requirements",
            "urlEncode": False,
        },
        "ref": {"enabled": True, "default": "HEAD"},
    }

    def __init__(self, spec: str, **kwargs: Any) -> None:
        super().__init__(spec, **kwargs)
        user, repo, ref = tokenize_spec(spec)
        self.user = _check_name("user", user, spec)
        self.repo = _check_name("repository", repo.removesuffix(".git"), spec)
        self.unresolved_ref = check_git_ref(ref, spec, "GitHub")
        self.resolved_ref: str | None = None

    def _api_url(self) -> str:
        # a ref keeps its "/" (GitHub's API takes "feature/x" as is); every part is quoted alone
        return (f"{self.api_base}/repos/{segments(self.user)}/{segments(self.repo)}"
                f"/commits/{segments(self.unresolved_ref, split=True)}")

    async def get_resolved_ref(self) -> str | None:
        if self.resolved_ref is None:
            url = self._api_url()
            cache = self.context.cache("github", self.config)
            self.resolved_ref = await cache.get_or_compute(url, lambda stale: self._resolve(url, stale))
        return self.resolved_ref

    async def _resolve(self, url: str, stale: Resolution | None) -> Resolution:
        response = await self._conditional_get(url, stale)
        if response.status_code == 304 and stale is not None:
            return Resolution(stale.value, self.config.cache_ttl, stale.etag)
        if response.status_code in (404, 422):  # 422: the repository exists, the ref does not
            return Resolution(None, self.config.cache_404_ttl)
        if response.status_code != 200:
            raise self._unexpected(response)
        sha = _http.json_body("GitHub", response).get("sha")
        if not isinstance(sha, str) or not is_sha1(sha):
            raise UpstreamError(f"GitHub ({response.url.host}) answered without a commit SHA.")
        immutable = sha == self.unresolved_ref
        return Resolution(sha, None if immutable else self.config.cache_ttl, response.headers.get("etag", ""))

    async def get_resolved_spec(self) -> str:
        return f"{self.user}/{self.repo}/{await self._require_ref()}"

    def get_repo_url(self) -> str:
        return f"https://{self.config.hostname}/{self.user}/{self.repo}"

    async def get_resolved_ref_url(self) -> str:
        return f"https://{self.config.hostname}/{self.user}/{self.repo}/tree/{await self._require_ref()}"

    def get_build_slug(self) -> str:
        return f"{self.user}-{self.repo}"

    def default_branch_fallback(self) -> RepoProvider | None:
        if self.unresolved_ref not in ("master", "main"):
            return None
        return type(self)(f"{self.user}/{self.repo}/HEAD", prefix=self.prefix, config=self.config, context=self.context)


class GistRepoProvider(_GitHubAPI):
    """``gist/<user>/<gist-id>[/<ref>]``: the gist's history lists its versions, newest first."""

    name = "Gist"
    config_section = "GistRepoProvider"
    config: models.GistRepoProvider
    display_config: ClassVar[dict[str, Any]] = {
        "displayName": "GitHub Gist",
        "id": "gist",
        "spec": {"validateRegex": r"[^/]+/[^/]+(/[^/]+)?"},
        "detect": {"regex": "^(https?://gist.github.com/)?(?<repo>.*[^/])/?"},
        "repo": {
            "label": "Gist ID (username/gistId) or URL",
            "placeholder": "",
            "urlEncode": False,
        },
        "ref": {"enabled": True, "default": "HEAD"},
    }

    def __init__(self, spec: str, **kwargs: Any) -> None:
        super().__init__(spec, **kwargs)
        parts = spec.split("/")
        if len(parts) < 2 or len(parts) > 3 or not all(parts):
            raise SpecError(f'Spec is not of the form "user/gist-id[/ref]", provided: "{spec}".')
        self.user = _check_name("user", parts[0], spec)
        self.gist_id = _check_name("gist", parts[1], spec)
        self.unresolved_ref = check_git_ref(parts[2], spec, "Gist") if len(parts) == 3 else ""
        self.resolved_ref: str | None = None

    async def get_resolved_ref(self) -> str | None:
        if self.resolved_ref is not None:
            return self.resolved_ref
        url = f"{self.api_base}/gists/{segments(self.gist_id)}"
        cache = self.context.cache("gist", self.config)
        gist = await cache.get_or_compute(url, lambda stale: self._fetch(url, stale))
        if gist is None:
            return None
        if not gist["public"] and not self.config.allow_secret_gist:
            raise SpecError(
                "This is a secret gist, and secret gists are not enabled here. An administrator can "
                "allow them with GistRepoProvider.allow_secret_gist.")
        versions: list[str] = gist["versions"]
        if not versions:
            return None
        if self.unresolved_ref in ("", "HEAD", "master", "main"):
            self.resolved_ref = versions[0]
        elif self.unresolved_ref in versions:
            self.resolved_ref = self.unresolved_ref
        return self.resolved_ref

    async def _fetch(self, url: str, stale: Resolution | None) -> Resolution:
        response = await self._conditional_get(url, stale)
        if response.status_code == 304 and stale is not None:
            return Resolution(stale.value, self.config.cache_ttl, stale.etag)
        if response.status_code == 404:
            return Resolution(None, self.config.cache_404_ttl)
        if response.status_code != 200:
            raise self._unexpected(response)
        body = _http.json_body("GitHub", response)
        history = body.get("history") or []
        gist = {
            "public": bool(body.get("public")),
            "versions": [entry["version"] for entry in history if isinstance(entry, dict) and "version" in entry],
        }
        return Resolution(gist, self.config.cache_ttl, response.headers.get("etag", ""))

    async def get_resolved_spec(self) -> str:
        return f"{self.user}/{self.gist_id}/{await self._require_ref()}"

    def get_repo_url(self) -> str:
        return f"https://{self.config.hostname}/{self.user}/{self.gist_id}.git"

    async def get_resolved_ref_url(self) -> str:
        return f"https://{self.config.hostname}/{self.user}/{self.gist_id}/{await self._require_ref()}"

    def get_build_slug(self) -> str:
        return self.gist_id
