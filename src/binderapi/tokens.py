"""Build tokens: short-lived HS256 JWTs an external frontend's server mints for one spec.

Claims as BinderHub: ``aud`` = ``<prefix>/<spec>`` (one string), ``origin`` = the host the token is
meant to be used from, ``exp`` (required: a token without it would be valid forever). A valid token exempts the request from the per-IP rate limit; an invalid one
is refused.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

from . import signing
from .errors import ForbiddenError

log = logging.getLogger(__name__)


def token_key(secret: str | None) -> bytes:
    """The signing key: hex (as ``BINDERHUB_BUILD_TOKEN_SECRET`` holds it) or plain text."""
    if secret is None or secret == "":
        log.warning("Generating random build token secret: build tokens will not survive a restart or work "
                    "across replicas; set BinderHub.build_token_secret")
        return secrets.token_bytes(32)
    return signing.key_from_text(secret)


def request_origin(origin_header: str | None, host_header: str | None) -> str:
    """The netloc of ``Origin`` when sent, else ``Host`` (BinderHub's rule)."""
    if origin_header:
        return urlparse(origin_header).netloc or origin_header
    return host_header or ""


class BuildTokens:
    def __init__(self, secret: str | None, expires_seconds: int, check_origin: bool) -> None:
        self.key = token_key(secret)
        self.expires_seconds = expires_seconds
        self.check_origin = check_origin

    def mint(self, audience: str, origin: str, now: float | None = None) -> str:
        claims = {"aud": audience, "origin": origin, "exp": int((now or time.time()) + self.expires_seconds)}
        return signing.sign(claims, self.key)

    def verify(self, token: str, audience: str, origin: str) -> dict[str, Any]:
        """The claims of a valid token; :class:`ForbiddenError` otherwise."""
        try:
            claims = signing.verify(token, self.key, audience, require_exp=True)
        except signing.InvalidToken as e:
            log.info("Invalid build token for %s: %s", audience, e)
            raise ForbiddenError("Invalid build token") from None
        if claims.get("origin") != origin:
            log.info("Build token for %s minted for origin %r, used from %r", audience, claims.get("origin"), origin)
            if self.check_origin:
                raise ForbiddenError("Invalid build token")
        return claims


def token_command(argv: list[str], load_settings: Callable[[str | None, dict[str, Any]], Any]) -> None:
    """``binderapi token <prefix>/<spec> --origin <host>``: print a build token."""
    parser = argparse.ArgumentParser(prog="binderapi token", description="Mint a build token for one spec.")
    parser.add_argument("spec", help="what the token allows, e.g. gh/binder-examples/requirements/HEAD")
    parser.add_argument("--origin", required=True, help="host of the page that will use it, e.g. mybinder.org")
    parser.add_argument("--config-file", "-f", help="config file holding BinderHub.build_token_secret")
    args = parser.parse_args(argv)
    settings = load_settings(args.config_file, {})
    binderhub = settings.BinderHub
    if not binderhub.build_token_secret:
        sys.exit("binderapi: BinderHub.build_token_secret (or BINDERHUB_BUILD_TOKEN_SECRET) must be set to mint tokens the service will accept")
    tokens = BuildTokens(binderhub.build_token_secret, binderhub.build_token_expires_seconds, binderhub.build_token_check_origin)
    print(tokens.mint(args.spec.strip("/"), args.origin))
