"""Turn the ``*_class`` options (short names, BinderHub's dotted names, import paths) into objects."""

from __future__ import annotations

import importlib
from typing import Any


def import_object(path: str) -> Any:
    """Import ``package.module.Name`` or ``package.module:Name``."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ImportError(f"{path!r} is not a dotted import path")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ImportError(f"cannot import {module_name!r} for {path!r}: {e}") from None
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj
    except AttributeError:
        raise ImportError(f"{module_name!r} has no attribute {attr!r}") from None


def resolve(ref: str, known: dict[str, str], kind: str) -> Any:
    """``known`` maps short names (and BinderHub's dotted names) to our import paths."""
    target = known.get(ref) or known.get(ref.rsplit(".", 1)[-1] if ref.startswith("binderhub.") else "")
    if target:
        return import_object(target)
    if "." in ref or ":" in ref:
        return import_object(ref)
    raise ImportError(f"unknown {kind} {ref!r}; use one of {', '.join(sorted(k for k in known if '.' not in k))} or a dotted import path")
