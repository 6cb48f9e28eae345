"""Explain that a BinderHub Python config file cannot be used, and convert what can be converted.

BinderHub reads ``binderhub_config.py``, a traitlets file run as Python. binderapi never runs
configuration as code, so such a file is refused; the message shows the YAML its plain
``c.<Class>.<option> = <literal>`` lines become (read with :mod:`ast`, never executed), and names
the lines left for the operator to convert by hand. Secret values are not repeated in the message.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import yaml

from .models import SECTIONS

# a traitlets assignment at the start of a line, to recognise such a file whatever its name
_ASSIGNMENT = re.compile(r"^c\.[A-Za-z_]\w*\.[A-Za-z_]\w*\s*=", re.MULTILINE)


def looks_like_python(text: str) -> bool:
    """For a file that is not YAML, JSON or TOML: does it hold traitlets assignments?"""
    return bool(_ASSIGNMENT.search(text))


def _secret(section: str, option: str) -> bool:
    model = SECTIONS.get(section)
    info = model.model_fields.get(option) if model else None
    extra = info.json_schema_extra if info else None
    return isinstance(extra, dict) and bool(extra.get("secret"))


def convert(text: str) -> tuple[dict[str, dict[str, Any]], list[int]]:
    """The sections the file's plain assignments set, and the line numbers of every other statement."""
    try:
        tree = ast.parse(text)
    except SyntaxError as e:
        return {}, [e.lineno or 0]
    sections: dict[str, dict[str, Any]] = {}
    by_hand: list[int] = []
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None
        if (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Attribute)
                and isinstance(target.value.value, ast.Name) and target.value.value.id == "c"):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                by_hand.append(node.lineno)
                continue
            section, option = target.value.attr, target.attr
            shown = f"<secret: copy it from line {node.lineno}>" if _secret(section, option) else value
            sections.setdefault(section, {})[option] = shown
        elif not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):  # docstrings
            by_hand.append(node.lineno)
    return sections, by_hand


def python_config_message(path: Path, text: str) -> str:
    sections, by_hand = convert(text)
    lines = [
        f"Config file {path} is a Python (traitlets) config file, which binderapi does not run. "
        "Write it as YAML, JSON or TOML instead, one section per class: each line "
        "`c.<Class>.<option> = <value>` becomes `<Class>:` / `  <option>: <value>` "
        "(`binderapi --show-config` prints every option in that shape)."
    ]
    if sections:
        lines.append(f"Its plain assignments as YAML (save as e.g. {path.with_suffix('.yaml').name}):")
        lines.append(yaml.safe_dump(sections, sort_keys=False, default_flow_style=False).rstrip())
    if by_hand:
        lines.append("Convert by hand (not plain `c.<Class>.<option> = <literal>` lines): line "
                     + ", ".join(map(str, by_hand[:20])) + (" ..." if len(by_hand) > 20 else ""))
    return "\n".join(lines)
