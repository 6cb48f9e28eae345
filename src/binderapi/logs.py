"""Logging set-up from the BinderHub options, and redaction of secrets in every log line."""

from __future__ import annotations

import copy
import logging
import logging.config
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "[secret]"
# query parameter names that carry credentials (BinderHub's list)
_SECRET_PARAM = re.compile(r"token|auth|key|code|state", re.IGNORECASE)


def redact_url(url: str) -> str:
    """Replace the value of every query parameter whose name looks like a credential."""
    if "?" not in url:
        return url
    parts = urlsplit(url)
    query = [(k, REDACTED if _SECRET_PARAM.search(k) else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit(parts._replace(query=urlencode(query, safe="[]/")))


# ``scheme://user:password@`` as sent, or percent-encoded once or more (a spec in a path: uvicorn's
# access log shows ``https%3A//user%3Apassword%40host``)
_COLON, _SLASH, _AT = (rf"(?:{c}|%(?:25)*{h})" for c, h in ((":", "3A"), ("/", "2F"), ("@", "40")))
_USERINFO = re.compile(rf"(?P<sep>{_COLON}{_SLASH}{_SLASH})(?:(?!%(?:25)*(?:2F|40))[^/@\s?#])+(?P<at>{_AT})", re.IGNORECASE)


def redact_userinfo(text: str) -> str:
    """Replace the ``user:password`` of every URL in ``text``, in whatever encoding it came."""
    return _USERINFO.sub(lambda m: f"{m['sep']}{REDACTED}{m['at']}", text)


class LevelFormatter(logging.Formatter):
    """Supports BinderHub's ``%(highlevel)s``: level context shown for warnings and above."""

    highlevel_limit = logging.WARNING
    highlevel_format = " %(levelname)s |"

    def format(self, record: logging.LogRecord) -> str:
        record.highlevel = self.highlevel_format % record.__dict__ if record.levelno >= self.highlevel_limit else ""
        return super().format(record)


def _redact_arg(value: str) -> str:
    if "?" in value:
        value = redact_url(value)
    if "@" in value or "%" in value:
        value = redact_userinfo(value)
    return value


class RedactingFilter(logging.Filter):
    """Scrubs credentials from records: URL query secrets and URL user-info (uvicorn's access log
    passes the path as an argument, and a refused ``git`` spec may hold ``user:password@``) and any
    configured secret value that would otherwise appear verbatim."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args and isinstance(record.args, tuple):
            record.args = tuple(_redact_arg(a) if isinstance(a, str) else a for a in record.args)
        if self.secrets:
            message = record.getMessage()
            scrubbed = message
            for secret in self.secrets:
                scrubbed = scrubbed.replace(secret, REDACTED)
            if scrubbed != message:
                record.msg, record.args = scrubbed, None
        return True


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value
    return base


def base_logging_config(level: int, fmt: str, datefmt: str) -> dict[str, Any]:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": RedactingFilter}},
        "formatters": {"console": {"()": LevelFormatter, "format": fmt, "datefmt": datefmt}},
        "handlers": {
            "console": {"class": "logging.StreamHandler", "formatter": "console", "filters": ["redact"],
                        "stream": "ext://sys.stderr"},
        },
        "loggers": {
            "binderapi": {"level": level, "handlers": ["console"], "propagate": False},
            "uvicorn": {"level": level, "handlers": ["console"], "propagate": False},
            "uvicorn.error": {"level": level, "handlers": ["console"], "propagate": False},
            "uvicorn.access": {"level": level, "handlers": ["console"], "propagate": False},
        },
    }


def setup_logging(binderhub: Any, secrets: Iterable[str] = ()) -> None:
    """Apply ``log_level``/``log_format``/``log_datefmt`` and merge ``logging_config`` on top."""
    level = logging.DEBUG if binderhub.debug else binderhub.log_level
    config = base_logging_config(level, binderhub.log_format, binderhub.log_datefmt)
    config["filters"]["redact"] = {"()": RedactingFilter, "secrets": list(secrets)}
    config = _deep_merge(copy.deepcopy(config), copy.deepcopy(binderhub.logging_config))
    logging.config.dictConfig(config)


def settings_secrets(settings: Any) -> list[str]:
    """Every secret value configured, so the log filter can scrub it wherever it appears."""
    from .settings.dump import is_secret
    from .settings.models import SECTIONS

    found: list[str] = []
    for name in SECTIONS:
        section = settings.section(name)
        for option in type(section).model_fields:
            if is_secret(name, option):
                value = getattr(section, option)
                found.extend(value.values() if isinstance(value, dict) else [value] if isinstance(value, str) else [])
    return found
