"""Assemble the effective configuration from its sources and explain any mistake in one message.

Sources, lowest precedence first: defaults, BinderHub's established environment variables (they
were defaults in BinderHub too), a config file, ``.env``, ``BINDERAPI_<Section>__<option>``
environment variables, command-line flags. Each source is validated on its own first, so an error
names the file or variable it came from.
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, PrivateAttr, ValidationError
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.exceptions import SettingsError
from pydantic_settings.sources.utils import parse_env_vars

from ..backends import pair_defaults  # the table of kinds; it imports no kind's code
from . import helm, models, pyconfig
from .models import LEGACY_ENV, SECTIONS, section_parent

ENV_PREFIX = "BINDERAPI_"


class ConfigError(Exception):
    """The configuration cannot be used; the message says where and why."""


class Settings(BaseSettings):
    """The whole configuration: one attribute per BinderHub configurable class."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", case_sensitive=False, extra="forbid"
    )

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

    _warnings: list[str] = PrivateAttr(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        """Notices gathered while loading (deprecated options, Helm values left out), logged once at
        start-up and printed by ``--show-config``."""
        return self._warnings

    def section(self, name: str) -> models.Section:
        return getattr(self, name)


assert set(Settings.model_fields) == set(SECTIONS), "every section needs a Settings field"


@dataclass
class Layer:
    """One configuration source: where it came from and the nested values it sets."""

    source: str
    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    # how to name a key of this source in messages, e.g. an environment variable
    key_names: dict[tuple[str, str], str] = field(default_factory=dict)


# -- reading sources ---------------------------------------------------------------------------


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
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        if pyconfig.looks_like_python(text):
            raise ConfigError(pyconfig.python_config_message(path, text)) from None
        raise ConfigError(f"Config file {path} is not valid {_format_name(path)}: {e}") from None
    if data is None:
        return {}, []
    if not isinstance(data, dict):
        if pyconfig.looks_like_python(text):
            raise ConfigError(pyconfig.python_config_message(path, text))
        raise ConfigError(f"Config file {path} must map class names (BinderHub, ...) to options, not hold a {type(data).__name__}")
    if helm.is_values_file(data, set(SECTIONS)):
        if not isinstance(data.get("config") or {}, dict):
            raise ConfigError(f"Config file {path}: the Helm values' config: must map class names to options")
        data, notices = helm.translate(data)
        return data, [f"{notice} ({path})" for notice in notices]
    return data, []


def _format_name(path: Path) -> str:
    return {".toml": "TOML", ".json": "JSON"}.get(path.suffix, "YAML")


def _legacy_env_layer(environ: dict[str, str]) -> Layer:
    layer = Layer("BinderHub environment variables")
    for var, (section, option) in LEGACY_ENV.items():
        if var in environ:
            layer.values.setdefault(section, {})[option] = environ[var]
            layer.key_names[(section, option)] = var
    # A service JupyterHub manages gets JUPYTERHUB_SERVICE_PREFIX; without it, the same path from
    # the hub's base URL and the service's name.
    base, name = environ.get("JUPYTERHUB_BASE_URL"), environ.get("JUPYTERHUB_SERVICE_NAME")
    if "JUPYTERHUB_SERVICE_PREFIX" not in environ and base and name:
        layer.values.setdefault("BinderHub", {})["base_url"] = f"{base.rstrip('/')}/services/{name}/"
        layer.key_names[("BinderHub", "base_url")] = "JUPYTERHUB_BASE_URL + JUPYTERHUB_SERVICE_NAME"
    return layer


def _env_layer(source: str, reader: Any, environ: dict[str, str]) -> Layer:
    try:
        raw = reader()
    except SettingsError as e:
        raise ConfigError(f"Invalid configuration in {source}: {e}") from None
    layer = Layer(source)
    for section, options in raw.items():
        if not isinstance(options, dict):
            var = f"{ENV_PREFIX}{section.upper()}"
            raise ConfigError(f"Invalid configuration in {source}: {var} must be {var}__<option>")
        for option, value in options.items():
            layer.values.setdefault(section, {})[option] = value
            layer.key_names[(section, option)] = f"{ENV_PREFIX}{section.upper()}__{option.upper()}"
    # variables with our prefix that name no section are typos, not noise
    section_names = {name.upper() for name in SECTIONS}
    for var in environ:
        if var.upper().startswith(ENV_PREFIX):
            head = var[len(ENV_PREFIX):].upper().split("__", 1)[0]
            if head not in section_names and head != "ENV_FILE":
                raise ConfigError(f"Invalid configuration in {source}: {var} names no section; "
                                  f"use {ENV_PREFIX}<Section>__<option>, e.g. {ENV_PREFIX}BINDERHUB__PORT")
    return layer


def _dotenv_values(path: Path) -> dict[str, str]:
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


# -- checking and merging ------------------------------------------------------------------------


def _canonical(layer: Layer) -> Layer:
    """Map section and option names case-insensitively; reject unknown names with a suggestion."""
    by_lower = {name.lower(): name for name in SECTIONS}
    out = Layer(layer.source, key_names={})
    for section, options in layer.values.items():
        canon = by_lower.get(str(section).lower())
        if canon is None:
            hint = difflib.get_close_matches(str(section), list(SECTIONS), n=1)
            raise ConfigError(f"Invalid configuration in {layer.source}: unknown section {section!r}"
                              + (f" (did you mean {hint[0]}?)" if hint else f"; known sections: {', '.join(SECTIONS)}"))
        if options is None:
            continue
        if not isinstance(options, dict):
            raise ConfigError(f"Invalid configuration in {layer.source}: {canon} must map option names to values")
        fields = SECTIONS[canon].model_fields
        for option, value in options.items():
            name = str(option).lower() if str(option).lower() in fields else str(option)
            key = layer.key_names.get((section, option), f"{canon}.{option}")
            if name not in fields:
                hint = difflib.get_close_matches(name, list(fields), n=1)
                raise ConfigError(f"Invalid configuration in {layer.source}: unknown option {key}"
                                  + (f" (did you mean {canon}.{hint[0]}?)" if hint else ""))
            out.values.setdefault(canon, {})[name] = value
            out.key_names[(canon, name)] = key
    return out


def _validate(values: dict[str, Any], source: str, key_names: dict[tuple[str, str], str]) -> Settings:
    try:
        return Settings.model_validate(values)
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


def _merge(layers: list[Layer]) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str], str]]:
    merged: dict[str, dict[str, Any]] = {}
    origin: dict[tuple[str, str], str] = {}
    for layer in layers:
        for section, options in layer.values.items():
            for option, value in options.items():
                merged.setdefault(section, {})[option] = value
                origin[(section, option)] = f"{layer.key_names.get((section, option), section + '.' + option)} ({layer.source})"
    return merged, origin


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


def load_settings(
    config_file: str | None = None,
    cli: dict[str, dict[str, Any]] | None = None,
    environ: dict[str, str] | None = None,
    dotenv_path: str | os.PathLike[str] | None = ".env",
) -> Settings:
    """Build the effective settings from every source, or raise :class:`ConfigError`."""
    environ = dict(os.environ if environ is None else environ)
    dotenv_file = Path(environ.get(f"{ENV_PREFIX}ENV_FILE", dotenv_path or "")) if dotenv_path else None
    dotenv = _dotenv_values(dotenv_file) if dotenv_file and dotenv_file.is_file() else {}

    legacy = _legacy_env_layer({**dotenv, **environ})
    env_layer = _env_layer("environment variables", lambda: _EnvSource(Settings, environ)(), environ)
    dotenv_layer = (
        _env_layer(f".env file {dotenv_file}", lambda: DotEnvSettingsSource(Settings, env_file=dotenv_file)(), {})
        if dotenv
        else Layer(".env file")
    )
    cli_layer = Layer("command-line flags", values={k: dict(v) for k, v in (cli or {}).items()},
                      key_names={(s, o): f"--{s}.{o}" for s, opts in (cli or {}).items() for o in opts})

    layers = [_canonical(layer) for layer in (legacy, dotenv_layer, env_layer, cli_layer)]
    path = config_file
    for layer in reversed(layers):  # the highest source naming a config file wins
        path = path or layer.values.get("BinderHub", {}).get("config_file")
    file_notices: list[str] = []
    if path:
        values, file_notices = read_config_file_with_notices(path)
        file_layer = _canonical(Layer(f"config file {path}", values=values))
        layers.insert(1, file_layer)
        layers[-1].values.setdefault("BinderHub", {})["config_file"] = str(path)

    for layer in layers:
        _validate(layer.values, layer.source, layer.key_names)

    merged, origin = _merge(layers)
    notices = _forward_deprecated(merged)
    _inherit(merged)
    _pair_backends(merged)
    settings = _validate(merged, "the combined configuration", {k: v for k, v in origin.items()})
    settings._warnings.extend(file_notices + notices)
    return settings


class _EnvSource(EnvSettingsSource):
    """pydantic-settings' environment source reading a given mapping instead of ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], environ: dict[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> dict[str, str | None]:
        return parse_env_vars(self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)
