"""Software Heritage (``swhid``), which BinderHub lacks: ``swhid/swh:1:<type>:<40 hex>[;qualifiers]``.

SWHIDs are content addresses, so every resolution is immutable and cached for good. repo2docker
builds a revision or a directory (it fetches the directory through the archive's vault), so:

* ``rev`` and ``dir`` are checked to exist and built as they are;
* ``rel`` (release) resolves to the revision it targets;
* ``snp`` (snapshot) resolves to the revision its ``HEAD`` branch points to (following an alias);
* ``cnt`` (one file) and ``ori`` (an origin, whose content changes) cannot be built and are refused.

The resolved ref is the 40-hex id of what is built, the repo URL the SWHID repo2docker is given
(``swh:1:rev:<id>`` or ``swh:1:dir:<id>``), and the build slug ``swh-<type>-<id>`` of that SWHID,
in the way BinderHub's data providers name theirs (``zenodo-<record>``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import SpecError, UpstreamError
from . import _http
from ._cache import Resolution
from .base import RepoProvider

if TYPE_CHECKING:
    from ..settings import models

SWHID = re.compile(r"swh:1:(ori|cnt|rev|dir|snp|rel):([0-9a-f]{40})")


class SwhidProvider(RepoProvider):
    name = "Software Heritage"
    config_section = "SwhidProvider"
    config: models.SwhidProvider
    display_config: ClassVar[dict[str, Any]] = {
        "displayName": "Software Heritage",
        "id": "swhid",
        "spec": {"validateRegex": r"swh:1:(ori|cnt|rev|dir|snp|rel):[0-9a-f]{40}(;.*)?"},
        "detect": {"regex": r"^(?<repo>swh:1:(rev|dir|snp|rel):[0-9a-f]{40})(;.*)?$"},
        "repo": {
            "label": "Software Heritage identifier (SWHID)",
            "placeholder": "example: swh:1:rev:94f44f3c2fa1f3a5ab3f4e2a8a3e0d1a5c3b4e6f",
            "urlEncode": False,
        },
        "ref": {"enabled": False},
    }

    def __init__(self, spec: str, **kwargs: Any) -> None:
        super().__init__(spec, **kwargs)
        core = spec.split(";", 1)[0]  # qualifiers (;origin=...;visit=...) do not change the object
        match = SWHID.fullmatch(core)
        if not match:
            raise SpecError(f'"{spec}" is not a Software Heritage identifier (swh:1:<rev|dir|rel|snp>:<40 hex digits>).')
        self.object_type, self.object_id = match.groups()
        if self.object_type in ("cnt", "ori"):
            what = "a single file" if self.object_type == "cnt" else "an origin, whose content changes over time"
            raise SpecError(f"{core} names {what}; use the SWHID of a revision, directory, release or snapshot.")
        self.unresolved_ref = self.object_id
        self.resolved: dict[str, str] | None = None

    @property
    def api_base(self) -> str:
        return self.config.api_base_url.rstrip("/")

    async def get_resolved_ref(self) -> str | None:
        if self.resolved is None:
            cache = self.context.cache("swhid", self.config)
            key = (self.object_type, self.object_id)
            self.resolved = await cache.get_or_compute(key, lambda stale: self._resolve())
        return self.resolved["id"] if self.resolved else None

    async def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        headers = {"Accept": "application/json"}
        if self.config.access_token:
            headers["Authorization"] = f"Bearer {self.config.access_token}"
        response = await _http.fetch(self.context, self.config, "Software Heritage",
                                     f"{self.api_base}/{path}", headers=headers, params=params)
        error = _http.rate_limit_error("Software Heritage", response)
        if error is not None:
            raise error
        if response.status_code in (404, 400):
            return None
        if response.status_code != 200:
            raise UpstreamError(f"Software Heritage ({response.url.host}) refused the request (HTTP {response.status_code}).")
        return _http.json_body("Software Heritage", response)

    async def _resolve(self) -> Resolution:
        kind, target = self.object_type, self.object_id
        if kind == "rel":
            release = await self._get(f"release/{target}/")
            if release is None:
                return self._not_found()
            kind, target = self._target(release.get("target_type"), release.get("target"))
        elif kind == "snp":
            resolved = await self._snapshot_head(target)
            if resolved is None:
                return self._not_found()
            kind, target = resolved
        if kind == "rev" and (kind, target) == (self.object_type, self.object_id):
            if await self._get(f"revision/{target}/") is None:
                return self._not_found()
        elif kind == "dir" and await self._get(f"directory/{target}/") is None:
            return self._not_found()
        return Resolution({"type": kind, "id": target}, None)

    async def _snapshot_head(self, snapshot: str) -> tuple[str, str] | None:
        """The object the snapshot's ``HEAD`` branch points to (aliases followed, a few hops)."""
        body = await self._get(f"snapshot/{snapshot}/")
        if body is None:
            return None
        branches = body.get("branches") or {}
        name = "HEAD"
        for _ in range(5):
            branch = branches.get(name)
            if branch is None:  # on a later page: ask for exactly that branch
                page = await self._get(f"snapshot/{snapshot}/", {"branches_from": name, "branches_count": "1"})
                branch = ((page or {}).get("branches") or {}).get(name)
            if branch is None:
                raise SpecError(f"The snapshot swh:1:snp:{snapshot} has no {name} branch to build.")
            if branch.get("target_type") != "alias":
                return self._target(branch.get("target_type"), branch.get("target"))
            name = branch.get("target")
        raise SpecError(f"The snapshot swh:1:snp:{snapshot} has a HEAD alias chain too long to follow.")

    @staticmethod
    def _target(target_type: Any, target: Any) -> tuple[str, str]:
        kinds = {"revision": "rev", "directory": "dir"}
        if target_type not in kinds or not isinstance(target, str) or not re.fullmatch(r"[0-9a-f]{40}", target):
            raise SpecError(f"This SWHID points to a {target_type}, which cannot be built; use a revision or directory.")
        return kinds[target_type], target

    def _not_found(self) -> Resolution:
        return Resolution(None, self.config.cache_404_ttl)

    async def _object(self) -> dict[str, str]:
        await self._require_ref()
        assert self.resolved is not None
        return self.resolved

    async def get_resolved_spec(self) -> str:
        obj = await self._object()
        return f"swh:1:{obj['type']}:{obj['id']}"

    def get_repo_url(self) -> str:
        obj = self.resolved or {"type": self.object_type, "id": self.object_id}
        return f"swh:1:{obj['type']}:{obj['id']}"

    async def get_resolved_ref_url(self) -> str:
        web = self.api_base.removesuffix("/api/1")
        return f"{web}/{await self.get_resolved_spec()}"

    def get_build_slug(self) -> str:
        obj = self.resolved or {"type": self.object_type, "id": self.object_id}
        return f"swh-{obj['type']}-{obj['id']}"
