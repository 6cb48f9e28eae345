"""Repository providers: ``gh``, ``gist``, ``gl``, ``git``, ``zenodo``, ``figshare``, ``hydroshare``,
``dataverse``, ``ckan`` and ``swhid``, all behind :class:`RepoProvider`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from .._importing import resolve
from ..errors import SpecError
from .base import ProviderContext, RepoProvider

if TYPE_CHECKING:
    from ..settings import Settings

# class names (ours and BinderHub's) -> where they live
KNOWN_PROVIDERS = {
    "GitHubRepoProvider": "binderapi.providers.github:GitHubRepoProvider",
    "GistRepoProvider": "binderapi.providers.github:GistRepoProvider",
    "GitLabRepoProvider": "binderapi.providers.gitlab:GitLabRepoProvider",
    "GitRepoProvider": "binderapi.providers.git:GitRepoProvider",
    "ZenodoProvider": "binderapi.providers.doi:ZenodoProvider",
    "FigshareProvider": "binderapi.providers.doi:FigshareProvider",
    "HydroshareProvider": "binderapi.providers.doi:HydroshareProvider",
    "DataverseProvider": "binderapi.providers.doi:DataverseProvider",
    "CKANProvider": "binderapi.providers.ckan:CKANProvider",
    "SwhidProvider": "binderapi.providers.swhid:SwhidProvider",
}


class ProviderRegistry:
    """The enabled providers (``BinderHub.repo_providers``), each with its settings section."""

    def __init__(self, settings: Settings, context: ProviderContext) -> None:
        self.settings = settings
        self.context = context
        self.classes: dict[str, type[RepoProvider]] = {}
        for prefix, ref in settings.BinderHub.repo_providers.items():
            try:
                self.classes[prefix] = resolve(ref, KNOWN_PROVIDERS, "repo provider")
            except ImportError as e:
                raise ValueError(f"BinderHub.repo_providers[{prefix!r}]: {e}") from None

    def _config(self, cls: type[RepoProvider]) -> Any:
        section = getattr(cls, "config_section", "RepoProvider")
        return getattr(self.settings, section, self.settings.RepoProvider)

    def create(self, prefix: str, spec: str) -> RepoProvider:
        cls = self.classes.get(prefix)
        if cls is None:
            raise SpecError(f"No provider found for prefix {prefix}")
        return cls(spec, prefix=prefix, config=self._config(cls), context=self.context)

    def path_spec(self, prefix: str, raw: str) -> str:
        """The spec of a URL path (``/build/<prefix>/<spec>``, ``/api/v1/images/...``), given as sent.

        As sent, a ``%2F`` stays part of one segment (a git or CKAN URL, a GitLab project). Only if
        the provider refuses that form and it holds no literal ``/`` is it percent-decoded, once:
        a generated SDK encodes the whole path parameter, so ``org%2Frepo%2Fref`` means
        ``org/repo/ref`` and a doubly encoded git URL decodes to its ``/build`` form. Never twice;
        if the decoded form is refused too, the spec as sent stands (its own error is the one shown).
        """
        if "/" in raw or "%" not in raw:
            return raw
        try:
            self.create(prefix, raw)
            return raw
        except SpecError:
            decoded = unquote(raw)
        try:
            self.create(prefix, decoded)
        except SpecError:
            return raw
        return decoded

    def display_configs(self) -> list[dict[str, Any]]:
        """Each enabled provider's display config, its ``id`` being the configured prefix."""
        return [{**cls.display_config, "id": prefix} for prefix, cls in self.classes.items()]


__all__ = ["KNOWN_PROVIDERS", "ProviderContext", "ProviderRegistry", "RepoProvider"]
