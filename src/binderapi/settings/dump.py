"""Render settings for people: ``--show-config`` output and the generated configuration reference."""

from __future__ import annotations

import inspect
import json
from typing import Any

from pydantic.fields import FieldInfo

from .models import SECTIONS, section_parent

REDACTED = "[secret]"


def field_meta(info: FieldInfo) -> dict[str, Any]:
    extra = info.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def is_secret(section: str, option: str) -> bool:
    return bool(field_meta(SECTIONS[section].model_fields[option]).get("secret"))


def dump_settings(settings: Any, redact: bool = True) -> dict[str, dict[str, Any]]:
    """Every section and option with its effective value; secrets replaced when set."""
    out: dict[str, dict[str, Any]] = {}
    for name in SECTIONS:
        values = settings.section(name).model_dump(mode="json")
        if redact:
            for option, value in values.items():
                if value and is_secret(name, option):
                    values[option] = REDACTED
        out[name] = values
    return out


def show_config_text(settings: Any) -> str:
    """YAML a config file can reuse (after filling the redacted secrets back in)."""
    import yaml

    header = "# binderapi effective configuration (secrets redacted)\n"
    return header + yaml.safe_dump(dump_settings(settings), sort_keys=False, default_flow_style=False, width=120)


def show_config_json(settings: Any) -> str:
    return json.dumps(dump_settings(settings), indent=2)


def _default_text(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value = info.default_factory()
    else:
        value = info.default
    return "`" + json.dumps(value) + "`"


def configuration_reference() -> str:
    """Markdown reference of every option, generated from the models' fields and docstrings."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from the settings models by `python -m binderapi.settings.docs`; do not edit by hand.",
        "",
        "Set options in a config file (`--config-file`, YAML/JSON/TOML, top-level keys are the section "
        "names below, exactly like the `config:` block of a BinderHub Helm chart), in `.env`, in "
        "environment variables `BINDERAPI_<SECTION>__<OPTION>` (JSON for lists and dicts), or on the "
        "command line as `--<Section>.<option>=<value>`. Later sources win in that order.",
        "",
    ]
    for name, model in SECTIONS.items():
        parent = section_parent(name)
        lines += [f"## {name}", "", inspect.cleandoc(model.__doc__ or "")]
        if parent:
            lines += ["", f"Options not set here are taken from `{parent}`."]
        lines += ["", "| option | default | description |", "|---|---|---|"]
        own = model.model_fields
        for option, info in own.items():
            if parent and option in SECTIONS[parent].model_fields and info == SECTIONS[parent].model_fields[option]:
                continue
            meta = field_meta(info)
            desc = (info.description or "").replace("|", "\\|").replace("\n", " ")
            if meta.get("deprecated_to"):
                desc = f"**Deprecated**: use {', '.join('`' + t + '`' for t in meta['deprecated_to'])}. " + desc
            if meta.get("secret"):
                desc += " *Secret: never shown.*"
            lines.append(f"| `{option}` | {_default_text(info)} | {desc} |")
        lines.append("")
    return "\n".join(lines)


def env_example() -> str:
    """Every option as a commented environment variable, with its default."""
    from .loader import ENV_PREFIX
    from .models import LEGACY_ENV

    lines = [
        "# binderapi configuration through environment variables (or this file, copied to .env).",
        "# Generated from the settings models by `python -m binderapi.settings.docs`; do not edit by hand.",
        "#",
        f"# Scheme: {ENV_PREFIX}<SECTION>__<OPTION>=<value>, section and option names as in the",
        "# configuration reference in README.md (case-insensitive). Lists and dicts are JSON. Precedence,",
        "# lowest first: defaults, BinderHub's environment variables below, the config file, .env, the",
        "# environment, command-line flags (--Section.option=value).",
        "#",
        "# BinderHub's established variables keep working:",
    ]
    for var, (section, option) in LEGACY_ENV.items():
        lines.append(f"#   {var} -> {section}.{option}")
    for name, model in SECTIONS.items():
        lines += ["", f"# --- {name}: {(model.__doc__ or '').strip().splitlines()[0]}"]
        parent = section_parent(name)
        for option, info in model.model_fields.items():
            if parent and option in SECTIONS[parent].model_fields and info == SECTIONS[parent].model_fields[option]:
                continue
            value = info.default_factory() if info.default_factory is not None else info.default
            if isinstance(value, (dict, list)):
                text = json.dumps(value)
            elif value is None:
                text = ""
            elif isinstance(value, bool):
                text = str(value).lower()
            else:
                text = str(value)
            lines.append(f"# {ENV_PREFIX}{name.upper()}__{option.upper()}={text}")
    return "\n".join(lines) + "\n"
