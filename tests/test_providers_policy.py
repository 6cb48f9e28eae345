"""Provider policy (bans, allow-lists, quotas, per-spec config), names and display configs."""

from __future__ import annotations

import re

import pytest

from binderapi.errors import SpecError
from binderapi.providers import KNOWN_PROVIDERS
from binderapi.providers._net import display_url, redact

BINDERHUB_NAMES = {"GitHub", "Gist", "GitLab", "Git", "Zenodo", "Figshare", "Hydroshare", "Dataverse", "CKAN"}


def gh(make_registry, binderhub=None, **options):
    return make_registry({"GitHubRepoProvider": options}, **(binderhub or {}))


@pytest.mark.parametrize("spec, banned", [
    ("evil/repo/HEAD", True),
    ("EVIL/Repo/main", True),  # case-insensitive
    ("good/evil/HEAD", False),  # anchored at the start
    ("good/repo/HEAD", False),
])
def test_banned_specs(make_registry, spec, banned):
    registry = gh(make_registry, banned_specs=["evil/.*"])
    assert registry.create("gh", spec).is_banned() is banned


def test_allowed_specs(make_registry):
    registry = gh(make_registry, allowed_specs=["^jupyter/.*", "binder-examples/"])
    assert not registry.create("gh", "Jupyter/notebook/HEAD").is_banned()
    assert not registry.create("gh", "binder-examples/octave/HEAD").is_banned()
    assert registry.create("gh", "someone/else/HEAD").is_banned()


def test_ban_wins_over_allow(make_registry):
    registry = gh(make_registry, allowed_specs=["jupyter/.*"], banned_specs=["jupyter/secret"])
    assert registry.create("gh", "jupyter/secret/HEAD").is_banned()


def test_bans_set_on_repoprovider_apply_to_every_provider(make_registry):
    registry = make_registry({"RepoProvider": {"banned_specs": [".*evil.*"]}})
    assert registry.create("gh", "o/evil/HEAD").is_banned()
    assert registry.create("gl", "o%2Fevil/HEAD").is_banned()
    assert registry.create("zenodo", "10.5281/zenodo.evil").is_banned()


def test_quota_and_spec_config(make_registry):
    registry = gh(
        make_registry, {"per_repo_quota": 100, "per_repo_quota_higher": 200},
        high_quota_specs=["^jupyterlab/.*"],
        spec_config=[
            {"pattern": "^workshop/.*", "config": {"quota": 50, "note": "first"}},
            {"pattern": "^workshop/big.*", "config": {"quota": 300}},
        ],
    )
    settings = registry.settings.BinderHub
    assert registry.create("gh", "someone/repo/HEAD").repo_config(settings) == {"quota": 100}
    assert registry.create("gh", "JupyterLab/lab/HEAD").has_higher_quota()
    assert registry.create("gh", "jupyterlab/lab/HEAD").repo_config(settings) == {"quota": 200}
    assert registry.create("gh", "workshop/small/HEAD").repo_config(settings) == {"quota": 50, "note": "first"}
    assert registry.create("gh", "workshop/big-one/HEAD").repo_config(settings) == {"quota": 300, "note": "first"}


def test_spec_config_must_be_pattern_and_dict():
    from binderapi.settings.loader import ConfigError
    from fixtures.server import make_settings

    with pytest.raises(ConfigError, match="pattern"):
        make_settings({"GitHubRepoProvider": {"spec_config": [{"pattern": 1, "config": {}}]}})


def test_every_provider_has_names_section_and_display_config(make_registry):
    registry = make_registry()
    names = set()
    for prefix, cls in registry.classes.items():
        names.add(cls.name)
        assert cls.config_section in type(registry.settings).model_fields
        config = cls.display_config
        assert config["id"] == prefix and config["displayName"]
        assert config["repo"]["label"] and isinstance(config["repo"]["urlEncode"], bool)
        assert "enabled" in config["ref"]
        re.compile(config["spec"]["validateRegex"])
    assert names == BINDERHUB_NAMES | {"Software Heritage"}
    assert len(KNOWN_PROVIDERS) == 10


def test_display_configs_use_configured_prefixes(make_registry):
    registry = make_registry(repo_providers={"github": "GitHubRepoProvider", "git": "GitRepoProvider"})
    assert [c["id"] for c in registry.display_configs()] == ["github", "git"]
    with pytest.raises(SpecError, match="^No provider found for prefix gh$"):
        registry.create("gh", "o/r/HEAD")


def test_redaction_helpers():
    assert redact("https://user:tok@host/x and git://u@h/y") == "https://***@host/x and git://***@h/y"
    assert redact("token abc123 here", ["abc123"]) == "token *** here"
    assert display_url("https://u:p@api.example.org:8443/path?access_token=x") == "https://api.example.org:8443/path"
