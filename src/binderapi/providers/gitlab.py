"""GitLab (``gl``), gitlab.com or self-hosted.

GitLab projects nest (``group/subgroup/project``), so the spec carries the project path URL-escaped
as one segment: ``gl/group%2Fsubgroup%2Fproject/<ref>``. The API takes the same escaped path as the
project id. Tokens travel in headers (``PRIVATE-TOKEN``, ``Authorization``) rather than BinderHub's
query parameters, so they never appear in a logged URL.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import unquote

from ..errors import SpecError, UpstreamError
from . import _http
from ._cache import Resolution
from ._paths import check_git_ref, segments
from .base import RepoProvider, is_sha1

if TYPE_CHECKING:
    from ..settings import models

#: a group or project path component, as GitLab allows them
_PATH_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


class GitLabRepoProvider(RepoProvider):
    """``gl/<url-escaped namespace>/<ref>``: ``GET /projects/{id}/repository/commits/{ref}``."""

    name = "GitLab"
    config_section = "GitLabRepoProvider"
    config: models.GitLabRepoProvider
    display_config: ClassVar[dict[str, Any]] = {
        "displayName": "GitLab.com",
        "id": "gl",
        "spec": {"validateRegex": r"[^/]+/.+"},
        "detect": {"regex": "^(https?://gitlab.com/)?(?<repo>.*[^/])/?"},
        "repo": {
            "label": "GitLab.com repository or URL",
            "placeholder": "example: https://gitlab.com/mosaik/examples/mosaik-tutorials-on-binder",
            "urlEncode": True,
        },
        "ref": {"enabled": True, "default": "HEAD"},
    }

    def __init__(self, spec: str, **kwargs: Any) -> None:
        super().__init__(spec, **kwargs)
        self.quoted_namespace, _, ref = spec.partition("/")
        self.namespace = unquote(self.quoted_namespace)
        self.unresolved_ref = unquote(ref)
        if not self.namespace or not self.unresolved_ref:
            hint = f' Did you mean "{spec.rstrip("/")}/HEAD"?' if self.namespace else ""
            raise SpecError(f'Spec is not of the form "<url-escaped namespace>/<ref>", provided: "{spec}".{hint}')
        parts = self.namespace.split("/")
        if len(parts) < 2 or not all(_PATH_PART.fullmatch(p) for p in parts):
            raise SpecError(f'"{self.namespace}" is not a GitLab project path (group/project), in "{spec}".')
        check_git_ref(self.unresolved_ref, spec, "GitLab")
        self.resolved_ref: str | None = None

    @property
    def api_base(self) -> str:
        return self.config.api_base_url.format(hostname=self.config.hostname).rstrip("/")

    @property
    def git_credentials(self) -> str:
        if self.config.git_credentials:
            return self.config.git_credentials
        if self.config.private_token:
            return rf"username=binderhub\npassword={self.config.private_token}"
        return ""

    def _headers(self) -> dict[str, str]:
        headers = {}
        if self.config.private_token:
            headers["PRIVATE-TOKEN"] = self.config.private_token
        if self.config.access_token:
            headers["Authorization"] = f"Bearer {self.config.access_token}"
        return headers

    async def get_resolved_ref(self) -> str | None:
        if self.resolved_ref is None:
            # the project path and the ref are one segment each, their "/" escaped as GitLab expects
            url = (f"{self.api_base}/projects/{segments(self.namespace)}"
                   f"/repository/commits/{segments(self.unresolved_ref)}")
            cache = self.context.cache("gitlab", self.config)
            self.resolved_ref = await cache.get_or_compute(url, lambda stale: self._resolve(url))
        return self.resolved_ref

    async def _resolve(self, url: str) -> Resolution:
        response = await _http.fetch(self.context, self.config, "GitLab", url, headers=self._headers())
        error = _http.rate_limit_error("GitLab", response)
        if error is not None:
            raise error
        if response.status_code in (404, 400):
            return Resolution(None, self.config.cache_404_ttl)
        if response.status_code != 200:
            raise UpstreamError(f"GitLab ({response.url.host}) refused the request (HTTP {response.status_code}).")
        sha = _http.json_body("GitLab", response).get("id")
        if not isinstance(sha, str) or not is_sha1(sha):
            raise UpstreamError(f"GitLab ({response.url.host}) answered without a commit SHA.")
        return Resolution(sha, None if sha == self.unresolved_ref else self.config.cache_ttl)

    async def get_resolved_spec(self) -> str:
        return f"{self.quoted_namespace}/{await self._require_ref()}"

    def get_repo_url(self) -> str:
        return f"https://{self.config.hostname}/{self.namespace}.git"

    async def get_resolved_ref_url(self) -> str:
        return f"https://{self.config.hostname}/{self.namespace}/tree/{await self._require_ref()}"

    def get_build_slug(self) -> str:
        # "-" joins the path parts, so a "-" inside a part is escaped first: a/b-c != a-b/c
        return "-".join(part.replace("-", "_-") for part in self.namespace.split("/"))
