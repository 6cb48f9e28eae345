"""Assemble the effective configuration from pydantic-settings sources; explain any mistake in one
message naming the file or variable, the key and the problem, with a "did you mean" hint.

``Settings.settings_customise_sources`` lists the sources, highest precedence first:

1. command-line flags (``--<Section>.<option>=<value>``, as ``cli.py`` hands them over);
2. ``BINDERAPI_<SECTION>__<OPTION>`` environment variables: pydantic-settings' ``EnvSettingsSource``;
3. ``.env``: ``DotEnvSettingsSource``;
4. the config file: ``YamlConfigSettingsSource``, ``JsonConfigSettingsSource`` or
   ``TomlConfigSettingsSource``, a whole Helm values file translated first (:mod:`.helm`);
5. BinderHub's own environment variables (``LEGACY_ENV``), defaults in BinderHub too;
6. what those imply: deprecated options forwarded, parent sections inherited, backends paired.

Each is wrapped in :class:`_Layer`, which checks the source's values on their own (so an error names
that source) and keeps only the options no higher source set. What stays custom, and why:

- Command line: ``CliSettingsSource`` parses argv strings, while ``load_settings(cli=...)`` takes
  typed values (tests and fixtures pass dicts and ints). Owning argv beside cli.py's flags and its
  ``token`` subcommand, it builds an argparse parser of ~400 options per start (36 ms measured); an
  unknown ``--BinderHub.nonsense`` either exits with argparse's usage of every option or, with
  ``cli_ignore_unknown_args``, vanishes silently, never "unknown option ... (did you mean ...)".
- ``LEGACY_ENV``: fixed variable names per option, which no library source maps.
- The config file's name is itself a setting (``BinderHub.config_file``, e.g. from the environment),
  known only once the higher sources are read, so :class:`_ConfigFile` makes the library source when
  called; errors, Python (traitlets) files (:mod:`.pyconfig`) and Helm values wrap its parsing.
- Option-by-option precedence, as traitlets had: pydantic-settings alone deep-merges sources, so a
  dict option (``ban_networks``) from the environment would be merged into the file's, not replace it.
- Deprecated forwarding, inheritance and pairing depend on every source (a deprecated option on the
  command line yields to its replacement set in the file), so they are the lowest source,
  :class:`_Implied`, which sees all the others' values and fills only what none of them set.
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    InitSettingsSource,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)
from pydantic_settings.exceptions import SettingsError
from pydantic_settings.sources.utils import parse_env_vars

from ..backends import pair_defaults  # the table of kinds; it imports no kind's code
from . import helm, models, pyconfig
from .models import LEGACY_ENV, SECTIONS, section_parent

ENV_PREFIX = "BINDERAPI_"


class ConfigError(Exception):
    """The configuration cannot be used; the message says where and why."""


class Sections(BaseModel):
    """One attribute per BinderHub configurable class; each source's values are checked against
    this plain model on its own (``Settings.model_validate`` would read the sources again)."""

    model_config = ConfigDict(extra="forbid")

    BinderHub: models.BinderHub = Field(default_factory=models.BinderHub)
    BuildExecutor: models.BuildExecutor = Field(default_factory=models.BuildExecutor)
    KubernetesBuildExecutor: models.KubernetesBuildExecutor = Field(default_factory=models.KubernetesBuildExecutor)
    DockerBuildExecutor: models.DockerBuildExecutor = Field(default_factory=models.DockerBuildExecutor)
    KubernetesCleaner: models.KubernetesCleaner = Field(default_factory=models.KubernetesCleaner)
    DockerCleaner: models.DockerCleaner = Field(default_factory=models.DockerCleaner)
    DockerRegistry: models.DockerRegistry = Field(default_factory=models.DockerRegistry)
    LaunchQuota: models.LaunchQuota = Field(default_factory=models.LaunchQuota)
    KubernetesLaunchQuota: models.KubernetesLaunchQuota = Field(default_factory=models.KubernetesLaunchQuota)
    DockerLaunchQuota: models.DockerLaunchQuota = Field(default_factory=models.DockerLaunchQuota)
    Launcher: models.Launcher = Field(default_factory=models.Launcher)
    HubOAuth: models.HubOAuth = Field(default_factory=models.HubOAuth)
    EventLog: models.EventLog = Field(default_factory=models.EventLog)
    RateLimiter: models.RateLimiter = Field(default_factory=models.RateLimiter)
    RepoProvider: models.RepoProvider = Field(default_factory=models.RepoProvider)
    GitHubRepoProvider: models.GitHubRepoProvider = Field(default_factory=models.GitHubRepoProvider)
    GistRepoProvider: models.GistRepoProvider = Field(default_factory=models.GistRepoProvider)
    GitLabRepoProvider: models.GitLabRepoProvider = Field(default_factory=models.GitLabRepoProvider)
    GitRepoProvider: models.GitRepoProvider = Field(default_factory=models.GitRepoProvider)
    DoiProvider: models.DoiProvider = Field(default_factory=models.DoiProvider)
    ZenodoProvider: models.ZenodoProvider = Field(default_factory=models.ZenodoProvider)
    FigshareProvider: models.FigshareProvider = Field(default_factory=models.FigshareProvider)
    HydroshareProvider: models.HydroshareProvider = Field(default_factory=models.HydroshareProvider)
    DataverseProvider: models.DataverseProvider = Field(default_factory=models.DataverseProvider)
    CKANProvider: models.CKANProvider = Field(default_factory=models.CKANProvider)
    SwhidProvider: models.SwhidProvider = Field(default_factory=models.SwhidProvider)
    WarmPool: models.WarmPool = Field(default_factory=models.WarmPool)
    BuildStore: models.BuildStore = Field(default_factory=models.BuildStore)


class Settings(Sections, BaseSettings):
    """The whole configuration, read from the sources :func:`load_settings` names."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", case_sensitive=False, extra="forbid"
    )

    _warnings: list[str] = PrivateAttr(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        """Notices gathered while loading (deprecated options, Helm values left out), logged once at
        start-up and printed by ``--show-config``."""
        return self._warnings

    def section(self, name: str) -> models.Section:
        return getattr(self, name)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The sources of the module docstring, reading what :func:`load_settings` was given;
        values passed to ``Settings(...)`` itself still come first."""
        return (init_settings, *(_LOAD.get(None) or _Load()).sources(settings_cls))


assert set(Settings.model_fields) == set(SECTIONS), "every section needs a Settings field"


@dataclass
class _Load:
    """What one :func:`load_settings` call reads, and what it learns on the way."""

    config_file: str | os.PathLike[str] | None = None
    cli: dict[str, dict[str, Any]] = field(default_factory=dict)
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    dotenv_path: str | os.PathLike[str] | None = ".env"
    notices: list[str] = field(default_factory=list)
    # (section, option) -> how the source that set it names it, e.g. "--BinderHub.port (command-line flags)"
    origins: dict[tuple[str, str], str] = field(default_factory=dict)

    def sources(self, settings_cls: type[BaseSettings]) -> tuple[PydanticBaseSettingsSource, ...]:
        """Highest precedence first, as the module docstring lists them."""
        environ = self.environ
        dotenv_file = Path(environ.get(f"{ENV_PREFIX}ENV_FILE", self.dotenv_path)) if self.dotenv_path else None
        dotenv = _dotenv_values(dotenv_file) if dotenv_file and dotenv_file.is_file() else {}
        cli = {section: dict(options) for section, options in self.cli.items()}
        if self.config_file:  # the file read is the one the settings name
            cli.setdefault("BinderHub", {})["config_file"] = str(self.config_file)
        legacy, legacy_names = _legacy_env({**dotenv, **environ})

        def env_layer(source: str, reader: EnvSettingsSource, environ: dict[str, str]) -> _Layer:
            return _Layer(settings_cls, self, source, partial(_env_values, source, reader, environ), _env_name)

        return (
            _Layer(settings_cls, self, "command-line flags", lambda: cli, lambda s, o: f"--{s}.{o}"),
            env_layer("environment variables", _EnvSource(settings_cls, environ), environ),
            env_layer(f".env file {dotenv_file}", DotEnvSettingsSource(settings_cls, env_file=dotenv_file), {}),
            _ConfigFile(settings_cls, self, "config file"),
            _Layer(settings_cls, self, "BinderHub environment variables", lambda: legacy, lambda s, o: legacy_names[s, o]),
            _Implied(settings_cls, self, "implied values"),
        )


_LOAD: ContextVar[_Load] = ContextVar("binderapi_settings_load")


def load_settings(
    config_file: str | None = None,
    cli: dict[str, dict[str, Any]] | None = None,
    environ: dict[str, str] | None = None,
    dotenv_path: str | os.PathLike[str] | None = ".env",
) -> Settings:
    """Build the effective settings from every source, or raise :class:`ConfigError`."""
    load = _Load(config_file, cli or {}, dict(os.environ if environ is None else environ), dotenv_path)
    token = _LOAD.set(load)
    try:
        settings = Settings()
    except ValidationError as e:
        raise ConfigError(_explain(e, "the combined configuration", load.origins)) from None
    finally:
        _LOAD.reset(token)
    settings._warnings.extend(load.notices)
    return settings


# -- sources -------------------------------------------------------------------------------------


class _Layer(PydanticBaseSettingsSource):
    """One source's values, checked on their own, then only the options no higher source sets."""

    def __init__(self, settings_cls: type[BaseSettings], load: _Load, source: str,
                 read: Callable[[], dict[str, Any]] = dict, key_name: Callable[[str, str], str] | None = None) -> None:
        super().__init__(settings_cls)
        self.load, self.source, self.read, self.key_name = load, source, read, key_name

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the source whole

    def __call__(self) -> dict[str, Any]:
        return self.take(self.source, self.read(), self.key_name)

    def take(self, source: str, raw: dict[str, Any], key_name: Callable[[str, str], str] | None) -> dict[str, Any]:
        values, names = _canonical(raw, source, key_name)
        _validate(values, source, names)
        taken: dict[str, dict[str, Any]] = {}
        for section, options in values.items():
            higher = self.current_state.get(section) or {}
            for option, value in options.items():
                if option not in higher:  # a dict option is replaced whole, not merged
                    taken.setdefault(section, {})[option] = value
                    self.load.origins[section, option] = f"{names[section, option]} ({source})"
        return taken


class _ConfigFile(_Layer):
    """The config file named by the caller or by a higher source (``BinderHub.config_file``)."""

    def __call__(self) -> dict[str, Any]:
        path = self.load.config_file or (self.current_state.get("BinderHub") or {}).get("config_file")
        if not path:
            return {}
        values, notices = read_config_file_with_notices(path)
        self.load.notices.extend(notices)
        return self.take(f"config file {path}", values, None)


class _Implied(_Layer):
    """Deprecated options forwarded, parent sections inherited, backends paired: only where no
    source set the option, so this is the lowest source and sees all the others' values."""

    def __call__(self) -> dict[str, Any]:
        state = self.current_state
        merged = {section: dict(options) for section, options in state.items()}
        self.load.notices.extend(_forward_deprecated(merged))
        _inherit(merged)
        _pair_backends(merged)
        return {section: {option: value for option, value in options.items() if option not in state.get(section, {})}
                for section, options in merged.items()}


class _EnvSource(EnvSettingsSource):
    """pydantic-settings' environment source reading a given mapping instead of ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], environ: dict[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> dict[str, str | None]:
        return parse_env_vars(self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


def _env_name(section: str, option: str) -> str:
    return f"{ENV_PREFIX}{section.upper()}__{option.upper()}"


def _env_values(source: str, reader: EnvSettingsSource, environ: dict[str, str]) -> dict[str, Any]:
    try:
        raw = reader()
    except SettingsError as e:
        raise ConfigError(f"Invalid configuration in {source}: {e}") from None
    for section, options in raw.items():
        if not isinstance(options, dict):
            var = f"{ENV_PREFIX}{section.upper()}"
            raise ConfigError(f"Invalid configuration in {source}: {var} must be {var}__<option>")
    # variables with our prefix that name no section are typos, not noise
    section_names = {name.upper() for name in SECTIONS}
    for var in environ:
        if var.upper().startswith(ENV_PREFIX):
            head = var[len(ENV_PREFIX):].upper().split("__", 1)[0]
            if head not in section_names and head != "ENV_FILE":
                raise ConfigError(f"Invalid configuration in {source}: {var} names no section; "
                                  f"use {ENV_PREFIX}<Section>__<option>, e.g. {ENV_PREFIX}BINDERHUB__PORT")
    return raw


def _dotenv_values(path: Path) -> dict[str, str]:
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def _legacy_env(environ: dict[str, str]) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str], str]]:
    """BinderHub's own environment variables, and the variable behind each option they set."""
    values: dict[str, dict[str, Any]] = {}
    names: dict[tuple[str, str], str] = {}
    for var, (section, option) in LEGACY_ENV.items():
        if var in environ:
            values.setdefault(section, {})[option] = environ[var]
            names[section, option] = var
    # A service JupyterHub manages gets JUPYTERHUB_SERVICE_PREFIX; without it, the same path from
    # the hub's base URL and the service's name.
    base, name = environ.get("JUPYTERHUB_BASE_URL"), environ.get("JUPYTERHUB_SERVICE_NAME")
    if "JUPYTERHUB_SERVICE_PREFIX" not in environ and base and name:
        values.setdefault("BinderHub", {})["base_url"] = f"{base.rstrip('/')}/services/{name}/"
        names["BinderHub", "base_url"] = "JUPYTERHUB_BASE_URL + JUPYTERHUB_SERVICE_NAME"
    return values, names


# -- config files --------------------------------------------------------------------------------


class _NotAMapping(Exception):
    pass


class _Mapping:
    """For pydantic-settings' file sources: a document that is not a mapping is refused by name."""

    def _read_file(self, path: Path) -> dict[str, Any]:
        data = super()._read_file(path)  # type: ignore[misc]
        if not isinstance(data, dict):
            raise _NotAMapping(type(data).__name__)
        return data


class _Yaml(_Mapping, YamlConfigSettingsSource):
    pass


class _Json(_Mapping, JsonConfigSettingsSource):
    pass


class _Toml(_Mapping, TomlConfigSettingsSource):
    pass


_FILE_SOURCES: dict[str, type[InitSettingsSource]] = {".json": _Json, ".toml": _Toml}  # else YAML
_PARSE_ERRORS = (yaml.YAMLError, json.JSONDecodeError, tomllib.TOMLDecodeError)


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a YAML, JSON or TOML file whose top-level keys are class names.

    A whole BinderHub Helm values file also works: see :func:`read_config_file_with_notices`.
    """
    return read_config_file_with_notices(path)[0]


def read_config_file_with_notices(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[str]]:
    """The file's sections, and notices about what a Helm values file sets that was translated
    or is ignored (:mod:`.helm`). A Python config file is refused with how to convert it."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"Cannot read config file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"Config file {path} is not text (YAML, JSON or TOML)") from None
    if path.suffix == ".py":
        raise ConfigError(pyconfig.python_config_message(path, text))
    try:
        data = _FILE_SOURCES.get(path.suffix, _Yaml)(Settings, path)()
    except (*_PARSE_ERRORS, _NotAMapping) as e:
        if pyconfig.looks_like_python(text):
            raise ConfigError(pyconfig.python_config_message(path, text)) from None
        if isinstance(e, _NotAMapping):
            raise ConfigError(f"Config file {path} must map class names (BinderHub, ...) to options, not hold a {e}") from None
        raise ConfigError(f"Config file {path} is not valid {_format_name(path)}: {e}") from None
    if helm.is_values_file(data, set(SECTIONS)):
        if not isinstance(data.get("config") or {}, dict):
            raise ConfigError(f"Config file {path}: the Helm values' config: must map class names to options")
        data, notices = helm.translate(data)
        return data, [f"{notice} ({path})" for notice in notices]
    return data, []


def _format_name(path: Path) -> str:
    return {".toml": "TOML", ".json": "JSON"}.get(path.suffix, "YAML")


# -- checking and combining ----------------------------------------------------------------------


def _canonical(raw: dict[str, Any], source: str, key_name: Callable[[str, str], str] | None
               ) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str], str]]:
    """Map section and option names case-insensitively; reject unknown names with a suggestion.
    Also returns how the source names each key, for messages."""
    by_lower = {name.lower(): name for name in SECTIONS}
    values: dict[str, dict[str, Any]] = {}
    names: dict[tuple[str, str], str] = {}
    for section, options in raw.items():
        canon = by_lower.get(str(section).lower())
        if canon is None:
            hint = difflib.get_close_matches(str(section), list(SECTIONS), n=1)
            raise ConfigError(f"Invalid configuration in {source}: unknown section {section!r}"
                              + (f" (did you mean {hint[0]}?)" if hint else f"; known sections: {', '.join(SECTIONS)}"))
        if options is None:
            continue
        if not isinstance(options, dict):
            raise ConfigError(f"Invalid configuration in {source}: {canon} must map option names to values")
        fields = SECTIONS[canon].model_fields
        for option, value in options.items():
            name = str(option).lower() if str(option).lower() in fields else str(option)
            key = key_name(section, option) if key_name else f"{canon}.{option}"
            if name not in fields:
                hint = difflib.get_close_matches(name, list(fields), n=1)
                raise ConfigError(f"Invalid configuration in {source}: unknown option {key}"
                                  + (f" (did you mean {canon}.{hint[0]}?)" if hint else ""))
            values.setdefault(canon, {})[name] = value
            names[canon, name] = key
    return values, names


def _validate(values: dict[str, Any], source: str, key_names: dict[tuple[str, str], str]) -> None:
    try:
        Sections.model_validate(values)
    except ValidationError as e:
        raise ConfigError(_explain(e, source, key_names)) from None


def _explain(error: ValidationError, source: str, key_names: dict[tuple[str, str], str]) -> str:
    lines = []
    for item in error.errors(include_url=False):
        loc = [str(part) for part in item["loc"]]
        section, option = (loc + ["", ""])[:2]
        key = key_names.get((section, option), ".".join(loc[:2]) if option else section)
        detail = ".".join(part for part in loc[2:] if part != "[key]")
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{key}{'[' + detail + ']' if detail else ''}: {message}")
    head = f"Invalid configuration in {source}"
    return head + ": " + lines[0] if len(lines) == 1 else head + ":\n  " + "\n  ".join(lines)


def _forward_deprecated(merged: dict[str, dict[str, Any]]) -> list[str]:
    notices = []
    binderhub = merged.get("BinderHub", {})
    for option, info in models.BinderHub.model_fields.items():
        targets = (info.json_schema_extra or {}).get("deprecated_to") if isinstance(info.json_schema_extra, dict) else None
        if not targets or option not in binderhub:
            continue
        used = []
        for target in targets:
            section, target_option = target.split(".")
            if target_option not in merged.get(section, {}):
                merged.setdefault(section, {})[target_option] = binderhub[option]
                used.append(target)
        replacement = " / ".join(targets)
        if used:
            notices.append(f"BinderHub.{option} is deprecated: use {replacement} (value forwarded)")
        else:
            notices.append(f"BinderHub.{option} is deprecated and ignored here: {replacement} is set")
    return notices


def _inherit(merged: dict[str, dict[str, Any]]) -> None:
    """Options set on a parent section apply to child sections that do not set them."""

    def depth(name: str) -> int:
        parent = section_parent(name)
        return 0 if parent is None else 1 + depth(parent)

    for name in sorted(SECTIONS, key=depth):
        parent = section_parent(name)
        if parent is None:
            continue
        for option, value in merged.get(parent, {}).items():
            if option in SECTIONS[name].model_fields:
                merged.setdefault(name, {}).setdefault(option, value)


def _pair_backends(merged: dict[str, dict[str, Any]]) -> None:
    """Left at their defaults, the cleaner and launch quota follow ``build_class``."""
    pair_defaults(merged.setdefault("BinderHub", {}))
