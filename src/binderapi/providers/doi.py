"""Research-data providers addressed by DOI: Zenodo, Figshare, HydroShare and Dataverse.

The "ref" of a record is its version: a record id, ``<article>.v<n>``, a modification time or a
dataset version. repo2docker is given the DOI (or HydroShare URL) and fetches the data itself; this
module only pins down which version will be built, so the image name changes when the record does.
DOI redirects are followed hop by hop, each hop checked against ``denied_networks``.

Record ids and versions are not content addresses: anyone who registers a DOI can make it land on a
page whose id matches someone else's record. So the image name of a DOI record carries the DOI itself
and the host it landed on (``zenodo-<host>/<doi>``), unlike BinderHub's ``zenodo-<record>``: nobody
can pre-build an image that another DOI will be served. (Moving from BinderHub, such images are
rebuilt once.)
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qs, urlencode, urlsplit

from ..errors import SpecError, UpstreamError
from . import _http
from ._cache import Resolution
from ._paths import segments
from .base import RepoProvider

if TYPE_CHECKING:
    from ..settings import models

_DOI = re.compile(r"10\.\d+/\S+")
#: what a landing page's record id may be (it becomes an image tag)
_RECORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def epoch_seconds(timestamp: str) -> str:
    """``2019-10-24T19:39:53.208532Z`` -> ``"1571945993"``: whole seconds, the time read as UTC
    (BinderHub drops fractions and zone the same way, which keeps image names identical)."""
    try:
        parsed = datetime.strptime(timestamp[:19], "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        raise UpstreamError(f"Unexpected timestamp {timestamp!r} in the upstream's answer.") from None
    return str(int(parsed.replace(tzinfo=UTC).timestamp()))


class _DoiProvider(RepoProvider):
    """A DOI spec; repo2docker is given the DOI itself."""

    config: models.DoiProvider
    #: ``zenodo`` in ``10.5281/zenodo.123``: the part of the DOI the record id follows
    doi_marker: ClassVar[str] = ""

    def __init__(self, spec: str, **kwargs: Any) -> None:
        super().__init__(spec, **kwargs)
        self.parse_spec(spec)
        self.record_id: str | None = None
        #: the host the record was found on (part of the image name)
        self.host = ""

    def parse_spec(self, spec: str) -> None:
        if not _DOI.fullmatch(spec) or len(spec) > 500:
            raise SpecError(f'"{spec[:200]}" is not a DOI (of the form 10.1234/...).')
        segments(spec, split=True)  # no "." or ".." segment may move the resolver's path

    async def landing_url(self) -> str | None:
        """Where the DOI resolver sends the DOI (after every redirect), or ``None`` if it knows no
        such DOI or the landing page does not exist."""
        resolver = self.config.doi_resolver_url.rstrip("/")
        response = await _http.fetch(
            self.context, self.config, "DOI resolver", f"{resolver}/{segments(self.spec, split=True)}",
            follow_redirects=True, max_redirects=self.config.max_redirects)
        if response.status_code in (404, 410):
            return None
        if response.status_code >= 400:
            raise UpstreamError(f"{response.url.host} refused to resolve the DOI {self.spec} (HTTP {response.status_code}).")
        return str(response.url)

    async def get_resolved_ref(self) -> str | None:
        if self.record_id is None:
            cache = self.context.cache(self.name.lower(), self.config)
            found = await cache.get_or_compute(self.spec, lambda stale: self.resolve())
            if found is not None:
                self.host, self.record_id = found
        return self.record_id

    async def resolve(self) -> Resolution:
        """``(host, record id)`` or ``None``, with its lifetime."""
        raise NotImplementedError

    def allowed_landing(self, landing: str, hosts: list[str]) -> str:
        """The landing page's host, if it is one of ``hosts``; else :class:`SpecError`."""
        host = urlsplit(landing).hostname or ""
        if host not in hosts:
            raise SpecError(f"{self.spec} is not a {self.name} DOI: it resolves to {host}, not to {', '.join(hosts)}.")
        return host

    def not_found(self) -> Resolution:
        return Resolution(None, self.config.cache_404_ttl)

    async def get_resolved_spec(self) -> str:
        await self._require_ref()
        return self._versioned_doi()

    def _versioned_doi(self) -> str:
        head, sep, _ = self.spec.partition(self.doi_marker)
        return f"{head}{self.doi_marker}.{self.record_id}" if sep and self.record_id else self.spec

    def get_repo_url(self) -> str:
        return self.spec

    async def get_resolved_ref_url(self) -> str:
        return f"{self.config.doi_resolver_url.rstrip('/')}/{await self.get_resolved_spec()}"

    def get_build_slug(self) -> str:
        # DOIs are case-insensitive; a host has no "/", so host and DOI cannot be confused
        return f"{self.name.lower()}-{self.host}/{self.spec.lower()}"


class ZenodoProvider(_DoiProvider):
    """``zenodo/<DOI>``: the record the DOI lands on. A concept DOI lands on the latest version."""

    name = "Zenodo"
    config_section = "ZenodoProvider"
    config: models.ZenodoProvider
    doi_marker = "zenodo"
    display_config: ClassVar[dict[str, Any]] = {
        "displayName": "Zenodo DOI",
        "id": "zenodo",
        "spec": {"validateRegex": r"10\.\d+\/(.)+"},
        "repo": {"label": "Zenodo DOI", "placeholder": "example: 10.5281/zenodo.3242074", "urlEncode": False},
        "ref": {"enabled": False},
    }

    async def resolve(self) -> Resolution:
        landing = await self.landing_url()
        if landing is None:
            return self.not_found()
        host = self.allowed_landing(landing, self.config.hosts)
        record_id = urlsplit(landing).path.rstrip("/").rsplit("/", 1)[-1]
        if not _RECORD.fullmatch(record_id):
            raise SpecError(f"{self.spec} does not resolve to a Zenodo record (it lands on {host}{urlsplit(landing).path[:100]}).")
        # a version DOI names its record for good; a concept DOI follows the latest version
        immutable = self.spec.rsplit(".", 1)[-1] == record_id
        return Resolution((host, record_id), None if immutable else self.config.cache_ttl)


class FigshareProvider(_DoiProvider):
    """``figshare/10.6084/m9.figshare.<article>[.v<n>]``; without a version, the latest one."""

    name = "Figshare"
    config_section = "FigshareProvider"
    config: models.FigshareProvider
    doi_marker = "figshare"
    display_config: ClassVar[dict[str, Any]] = {
        "displayName": "Figshare DOI",
        "id": "figshare",
        "spec": {"validateRegex": r"10\.\d+\/(.)+"},
        "repo": {"label": "Figshare DOI", "placeholder": "example: 10.6084/m9.figshare.9782777.v1", "urlEncode": False},
        "ref": {"enabled": False},
    }
    _ARTICLE = re.compile(r"figshare\.(\d+)(?:\.v(\d+))?$", re.IGNORECASE)
    #: a landing page, ``/articles/[<type>/]<title>/<id>[/<version>]``, read as repo2docker reads it
    _LANDING = re.compile(r"/articles/(?:[^/]+/){1,2}(\d+)(?:/(\d+))?/?")

    def parse_spec(self, spec: str) -> None:
        super().parse_spec(spec)
        match = self._ARTICLE.search(spec)
        if not match:
            raise SpecError(f'"{spec}" is not a Figshare DOI (10.6084/m9.figshare.<id>[.v<version>]).')
        self.article_id, self.version = match.group(1), match.group(2)

    async def resolve(self) -> Resolution:
        landing = await self.landing_url()
        if landing is None:
            return self.not_found()
        # repo2docker builds the article the DOI lands on, so that must be the one named here
        host = self.allowed_landing(landing, self.config.hosts)
        path = urlsplit(landing).path
        match = self._LANDING.fullmatch(path)
        if (not match or match.group(1) != self.article_id
                or (self.version and match.group(2) != self.version)):
            raise SpecError(f"{self.spec} does not resolve to Figshare article {self.article_id}"
                            f"{f' version {self.version}' if self.version else ''} (it lands on {host}{path[:100]}).")
        if self.version:
            return Resolution((host, f"{self.article_id}.v{self.version}"), None)
        url = f"{self.config.api_base_url.rstrip('/')}/articles/{self.article_id}/versions"
        response = await _http.fetch(self.context, self.config, "Figshare", url)
        if response.status_code == 404:
            return self.not_found()
        if response.status_code != 200:
            raise UpstreamError(f"Figshare ({response.url.host}) refused the request (HTTP {response.status_code}).")
        versions = [v.get("version") for v in _http.json_body("Figshare", response) if isinstance(v, dict)]
        latest = max((v for v in versions if isinstance(v, int)), default=1)
        return Resolution((host, f"{self.article_id}.v{latest}"), self.config.cache_ttl)

    def get_repo_url(self) -> str:
        # the version the image is named after: given the bare DOI, repo2docker takes version 1
        return self._versioned_doi()


class HydroshareProvider(_DoiProvider):
    """``hydroshare/<anything holding the 32-hex resource id>``, versioned by modification time."""

    name = "Hydroshare"
    config_section = "HydroshareProvider"
    config: models.HydroshareProvider
    display_config: ClassVar[dict[str, Any]] = {
        "displayName": "Hydroshare resource",
        "id": "hydroshare",
        "spec": {"validateRegex": r"[^/]+"},
        "repo": {
            "label": "Hydroshare resource id or URL",
            "placeholder": "example: 8f7c2f0341ef4180b0dc53ed7d7e1ac0",
            "urlEncode": True,
        },
        "ref": {"enabled": False},
    }
    _RESOURCE = re.compile(r"([0-9a-f]{32})")

    def parse_spec(self, spec: str) -> None:
        match = self._RESOURCE.search(spec)
        if not match:
            raise SpecError("The specified Hydroshare resource id was not recognized.")
        self.resource_id = match.group(1)

    async def resolve(self) -> Resolution:
        base = self.config.base_url.rstrip("/")
        url = f"{base}/hsapi/resource/{self.resource_id}/scimeta/elements"
        response = await _http.fetch(self.context, self.config, "HydroShare", url)
        if response.status_code in (404, 403, 401):
            return self.not_found()
        if response.status_code != 200:
            raise UpstreamError(f"HydroShare ({response.url.host}) refused the request (HTTP {response.status_code}).")
        body = _http.json_body("HydroShare", response)
        modified = next((d.get("start_date") for d in body.get("dates", []) if d.get("type") == "modified"), None)
        if not isinstance(modified, str):
            raise UpstreamError(f"HydroShare ({response.url.host}) gave no modification date for {self.resource_id}.")
        host = urlsplit(base).hostname or ""
        return Resolution((host, f"{self.resource_id}.v{epoch_seconds(modified)}"), self.config.cache_ttl)

    async def get_resolved_spec(self) -> str:
        return self.get_repo_url()  # HydroShare keeps no history to point at

    def get_repo_url(self) -> str:
        return f"{self.config.base_url.rstrip('/')}/resource/{self.resource_id}"

    async def get_resolved_ref_url(self) -> str:
        return self.get_repo_url()

    def get_build_slug(self) -> str:
        # BinderHub's name kept: the one host is the operator's (base_url), and resource ids are
        # random UUIDs it assigns, which nobody can choose to match another resource's
        return f"hydroshare-{self.record_id}"


class DataverseProvider(_DoiProvider):
    """``dataverse/<DOI>`` on whichever Dataverse installation the DOI lands; its native API gives
    the dataset's latest version."""

    name = "Dataverse"
    config_section = "DataverseProvider"
    display_config: ClassVar[dict[str, Any]] = {
        "displayName": "Dataverse DOI",
        "id": "dataverse",
        "spec": {"validateRegex": r"10\.\d+\/(.)+"},
        "repo": {"label": "Dataverse DOI", "placeholder": "example: 10.7910/DVN/TJCLKP", "urlEncode": False},
        "ref": {"enabled": False},
    }

    def __init__(self, spec: str, **kwargs: Any) -> None:
        super().__init__(spec, **kwargs)
        self.dataset: dict[str, str] | None = None

    async def get_resolved_ref(self) -> str | None:
        if self.dataset is None:
            cache = self.context.cache("dataverse", self.config)
            self.dataset = await cache.get_or_compute(self.spec, lambda stale: self.resolve())
            if self.dataset:
                self.host, self.record_id = self.dataset["host"], self.dataset["record_id"]
        return self.dataset["record_id"] if self.dataset else None

    async def resolve(self) -> Resolution:
        landing = await self.landing_url()
        if landing is None:
            return self.not_found()
        parts = urlsplit(landing)
        query = parts.query if "persistentId" in parse_qs(parts.query) else urlencode({"persistentId": f"doi:{self.spec}"})
        api = f"{parts.scheme}://{parts.netloc}/api/datasets/:persistentId?{query}"
        response = await _http.fetch(self.context, self.config, "Dataverse", api)
        if response.status_code in (404, 403, 401):
            return self.not_found()
        body = _http.json_body("Dataverse", response)
        if response.status_code != 200 or body.get("status") != "OK":
            raise UpstreamError(f"Dataverse ({parts.hostname}) refused the request (HTTP {response.status_code}).")
        data = body["data"]
        version = data["latestVersion"]
        return Resolution({
            "host": parts.hostname or "",
            "record_id": f"{data['id']}.v{version['versionNumber']}.{version['versionMinorNumber']}",
            "identifier": data["identifier"],
            "resolved_spec": f"{data['authority']}/{data['identifier']}",
            "ref_url": data["persistentUrl"],
        }, self.config.cache_ttl)

    async def _dataset(self) -> dict[str, str]:
        await self._require_ref()
        assert self.dataset is not None
        return self.dataset

    async def get_resolved_spec(self) -> str:
        return (await self._dataset())["resolved_spec"]

    async def get_resolved_ref_url(self) -> str:
        return (await self._dataset())["ref_url"]
