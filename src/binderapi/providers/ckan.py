"""CKAN datasets (``ckan``): ``ckan/<url-escaped dataset URL>`` on any CKAN site.

The site's action API lives beside the dataset page (``<prefix>/api/3/action/``). A dataset is
versioned by its ``metadata_modified`` time; a URL naming an activity (``/history/<id>`` or
``?activity_id=``) pins that past version for good. The URL is the user's, so its host is checked
against ``denied_networks`` like every provider request.

Any site can name a dataset ``x`` and claim any ``metadata_modified``, so the image name carries the
whole dataset address (scheme, host, path prefix, dataset, activity), not BinderHub's bare
``ckan-<dataset>``: a dataset on one site can never be served an image built from another.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from ..errors import SpecError, UpstreamError
from . import _http
from ._cache import Resolution
from ._net import redact
from .base import RepoProvider
from .doi import epoch_seconds

if TYPE_CHECKING:
    from ..settings import models

#: a CKAN dataset name (lower case, digits, ``-``, ``_``) or id (a UUID), and an activity id
_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")  # it becomes part of an image tag (<= 128)


class CKANProvider(RepoProvider):
    name = "CKAN"
    config_section = "CKANProvider"
    config: models.CKANProvider
    display_config: ClassVar[dict[str, Any]] = {
        "displayName": "CKAN dataset",
        "id": "ckan",
        "spec": {"validateRegex": r"[^/]+"},
        "repo": {
            "label": "CKAN dataset URL",
            "placeholder": "https://demo.ckan.org/dataset/sample-dataset-1",
            "urlEncode": True,
        },
        "ref": {"enabled": False},
    }

    def __init__(self, spec: str, **kwargs: Any) -> None:
        super().__init__(spec, **kwargs)
        self.repo = unquote(spec)
        parts = urlsplit(self.repo)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SpecError(f'"{redact(self.repo)}" is not a CKAN dataset URL (http or https).')
        if parts.username is not None or parts.password is not None:
            raise SpecError("Credentials do not belong in the CKAN dataset URL.")
        if "/dataset/" not in parts.path:
            raise SpecError(f'"{redact(self.repo)}" is not a CKAN dataset URL: it has no "/dataset/" in its path.')
        # CKAN may live under a path prefix (https://example.org/data/dataset/<id>)
        url_prefix, _, rest = parts.path.partition("/dataset/")
        if any(part in (".", "..") for part in url_prefix.split("/")):
            raise SpecError(f'"{redact(self.repo)}" is not a CKAN dataset URL: its path has "." or ".." in it.')
        segments = rest.split("/")
        self.dataset_id = segments[0]
        if not self.dataset_id:
            raise SpecError(f'"{redact(self.repo)}" names no dataset.')
        activity = None
        if "history" in segments[1:] and segments.index("history") + 1 < len(segments):
            activity = segments[segments.index("history") + 1]
        elif parse_qs(parts.query).get("activity_id"):
            activity = parse_qs(parts.query)["activity_id"][0]
        self.activity_id = activity or None
        for value in (self.dataset_id, self.activity_id or "x"):
            if not _ID.fullmatch(value):
                raise SpecError(f'"{redact(self.repo)}" is not a CKAN dataset URL: "{value[:100]}" is not a dataset or activity id.')
        site = f"{parts.scheme}://{parts.netloc}{url_prefix}"
        self.api = f"{site}/api/3/action/"
        #: what identifies the dataset version built: the site (scheme, host, port, path), the
        #: dataset and the activity; other query parameters or a fragment change nothing
        self.identity = f"{site}/dataset/{self.dataset_id}" + (f"/history/{self.activity_id}" if self.activity_id else "")
        self.record_id: str | None = None

    async def get_resolved_ref(self) -> str | None:
        if self.record_id is None:
            if self.activity_id:
                url = f"{self.api}activity_data_show?" + urlencode({"id": self.activity_id, "object_type": "package"})
            else:
                url = f"{self.api}package_show?" + urlencode({"id": self.dataset_id})
            cache = self.context.cache("ckan", self.config)
            self.record_id = await cache.get_or_compute(url, lambda stale: self._resolve(url))
        return self.record_id

    async def _resolve(self, url: str) -> Resolution:
        response = await _http.fetch(self.context, self.config, "CKAN site", url)
        if 400 <= response.status_code < 500:  # CKAN answers 403 for private, 404 for unknown
            return Resolution(None, self.config.cache_404_ttl)
        body = _http.json_body("CKAN site", response)
        result = body.get("result") if isinstance(body, dict) else None
        if response.status_code != 200 or not isinstance(result, dict) or "metadata_modified" not in result:
            raise UpstreamError(f"The CKAN site {response.url.host} gave no dataset version (HTTP {response.status_code}).")
        record_id = f"{self.dataset_id}.v{epoch_seconds(result['metadata_modified'])}"
        return Resolution(record_id, None if self.activity_id else self.config.cache_ttl)

    async def get_resolved_spec(self) -> str:
        await self._require_ref()
        return self.repo

    def get_repo_url(self) -> str:
        return self.repo

    async def get_resolved_ref_url(self) -> str:
        await self._require_ref()
        return self.repo

    def get_build_slug(self) -> str:
        return f"ckan-{self.identity}"
