"""Where the registry is and who we are there, from settings plus a docker ``config.json``.

BinderHub operators give the push credentials to BinderHub as a docker ``config.json`` (the Helm
chart's ``binder-build-docker-config`` Secret) and expect the check for existing images to use the
same file. So every ``DockerRegistry`` option left empty is derived from that file, by BinderHub's
rules: the first ``auths`` key is the registry, Docker Hub's v1 key means its v2 API host, and GCR
and Docker Hub get their well-known token endpoints.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..settings import models

DOCKER_HUB_URL = "https://registry-1.docker.io"
DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"
DOCKER_HUB_TOKEN_URL = "https://auth.docker.io/token?service=registry.docker.io"
_DOCKER_HUB_HOSTS = {"registry-1.docker.io", "index.docker.io", "docker.io", "registry.hub.docker.com"}


@dataclass(frozen=True)
class Endpoint:
    """The effective registry options after defaults were derived."""

    url: str
    auth_config_url: str
    token_url: str
    username: str
    password: str = field(repr=False)
    not_found_401: bool
    docker_config_path: str

    @property
    def has_credentials(self) -> bool:
        return bool(self.username or self.password)


def default_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json`` (the docker CLI's rule)."""
    env = os.environ if environ is None else environ
    if env.get("DOCKER_CONFIG"):
        return Path(env["DOCKER_CONFIG"]) / "config.json"
    home = env.get("HOME") or str(Path.home())
    return Path(home) / ".docker" / "config.json"


def read_docker_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed file; a missing file is an empty config (no credentials), a broken one an error."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ValueError(f"Cannot read docker config {path}: {e.strerror or e}") from None
    try:
        data = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"Docker config {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("auths", {}), dict):
        raise ValueError(f"Docker config {path} must be a JSON object whose `auths` is an object")
    return data


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def with_scheme(key: str) -> str:
    """An ``auths`` key as a URL: keys may be bare hosts. Docker itself talks plain http to loopback
    registries, so a bare loopback host gets ``http://``; every other bare host ``https://``."""
    if "://" in key:
        return key
    host = urlsplit("//" + key).hostname or ""
    return ("http://" if _is_loopback(host) else "https://") + key


def _is_docker_hub_key(key: str) -> bool:
    return with_scheme(key).rstrip("/") == DOCKER_HUB_AUTH_KEY.rstrip("/")


def is_docker_hub(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host in _DOCKER_HUB_HOSTS or host.endswith(".docker.io")


def derive_url(auths: Mapping[str, Any]) -> str:
    """The first ``auths`` key as the registry API URL; Docker Hub when there is none."""
    if not auths:
        return DOCKER_HUB_URL
    first = next(iter(auths))
    if _is_docker_hub_key(first):
        return DOCKER_HUB_URL
    return with_scheme(first).rstrip("/")


def _netloc(url: str) -> str:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return f"{host}:{parts.port}" if parts.port else host


def find_auth_key(url: str, auths: Mapping[str, Any]) -> str:
    """The ``auths`` key describing ``url``: the same URL, else the same host and port, else
    Docker Hub's v1 key for Docker Hub. ``url`` itself when nothing matches."""
    if url in auths:
        return url
    for key in auths:
        if key.rstrip("/") == url.rstrip("/"):
            return key
    target = _netloc(url)
    for key in auths:
        if _netloc(with_scheme(key)) == target:
            return key
    if is_docker_hub(url):
        for key in auths:
            if _is_docker_hub_key(key) or _netloc(with_scheme(key)) in _DOCKER_HUB_HOSTS:
                return key
    return url


def credentials_of(entry: Any) -> tuple[str, str]:
    """``(username, password)`` of one ``auths`` entry: its base64 ``auth`` (split on the first
    ``:``, as a GCR ``_json_key`` password is JSON full of colons), else plain fields."""
    if not isinstance(entry, dict):
        return "", ""
    encoded = entry.get("auth")
    if encoded:
        try:
            decoded = base64.b64decode(encoded, validate=False).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise ValueError("an `auth` value in the docker config is not base64 of 'user:password'") from None
        username, _, password = decoded.partition(":")
        return username, password
    return str(entry.get("username") or ""), str(entry.get("password") or "")


def default_token_url(url: str) -> str:
    """The token endpoints BinderHub knows; empty means 'follow the registry's challenge'."""
    host = urlsplit(url).hostname or ""
    if host == "gcr.io" or host.endswith(".gcr.io"):
        return f"https://{host}/v2/token?service={host}"
    if host.endswith(".docker.io"):
        return DOCKER_HUB_TOKEN_URL
    return ""


def resolve_endpoint(config: models.DockerRegistry, environ: Mapping[str, str] | None = None) -> Endpoint:
    """Fill every empty option of ``config`` from the docker config file, by BinderHub's rules."""
    path = Path(config.docker_config_path) if config.docker_config_path else default_config_path(environ)
    auths = read_docker_config(path).get("auths", {})
    url = (config.url or derive_url(auths)).rstrip("/")
    if "://" not in url:
        url = with_scheme(url)
    auth_key = config.auth_config_url or find_auth_key(url, auths)
    username, password = credentials_of(auths.get(auth_key))
    token_url = config.token_url or default_token_url(url)
    not_found_401 = config.not_found_401 if config.not_found_401 is not None else is_docker_hub(url)
    return Endpoint(
        url=url,
        auth_config_url=auth_key,
        token_url=token_url,
        username=config.username or username,
        password=config.password or password,
        not_found_401=not_found_401,
        docker_config_path=str(path),
    )
