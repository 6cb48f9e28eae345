"""Value types shared by the settings models: the traitlets types BinderHub's options used."""

from __future__ import annotations

import ipaddress
import logging
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

_BYTE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_BYTE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)


def parse_byte_size(value: Any) -> int:
    """Accept ``2G``, ``512M``, ``1.5G`` or a plain number of bytes, like JupyterHub's
    ``ByteSpecification`` (binary units)."""
    if isinstance(value, bool):
        raise ValueError("expected a byte size such as 2G, 512M or a number of bytes")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a byte size cannot be negative")
        return int(value)
    if isinstance(value, str):
        match = _BYTE_RE.match(value)
        if match:
            number, unit = match.groups()
            return int(float(number) * _BYTE_UNITS[unit.upper()])
    raise ValueError(f"{value!r} is not a byte size; use a number of bytes or a suffix K, M, G or T (e.g. 2G)")


ByteSize = Annotated[int, BeforeValidator(parse_byte_size)]

_LEVEL_NAMES = {"CRITICAL": 50, "FATAL": 50, "ERROR": 40, "WARN": 30, "WARNING": 30, "INFO": 20, "DEBUG": 10, "NOTSET": 0}


def parse_log_level(value: Any) -> int:
    """A log level by name (``INFO``) or number (``20``)."""
    if isinstance(value, bool):
        raise ValueError("expected a log level name or number")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return int(text)
        if text.upper() in _LEVEL_NAMES:
            return _LEVEL_NAMES[text.upper()]
    raise ValueError(f"{value!r} is not a log level; use one of {', '.join(_LEVEL_NAMES)} or a number")


LogLevel = Annotated[
    int,
    BeforeValidator(parse_log_level),
    PlainSerializer(lambda level: logging.getLevelName(level) if level in (0, 10, 20, 30, 40, 50) else level),
]


def parse_network(value: Any) -> str:
    """A CIDR network (``10.0.0.0/8``, ``2001:db8::/32``), normalised to its canonical text."""
    try:
        return str(ipaddress.ip_network(str(value).strip()))
    except ValueError as e:
        raise ValueError(f"{value!r} is not a valid CIDR network ({e})") from None


Network = Annotated[str, BeforeValidator(parse_network)]


def parse_class_ref(value: Any) -> str:
    """A short backend name (``docker``) or a dotted import path (``pkg.module.Class``)."""
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a short name such as 'docker' or a dotted import path")
    text = value.strip()
    if not re.fullmatch(r"[A-Za-z_][\w.:]*", text):
        raise ValueError(f"{value!r} is neither a short name nor a dotted import path")
    return text


ClassRef = Annotated[str, BeforeValidator(parse_class_ref)]
