"""Signed tokens (build tokens, login cookies): HS256 JWTs made with python-jose.

python-jose is imported on first use: it pulls in ``cryptography``, about 50 ms of start-up that a
process serving no build token and no login never needs.
"""

from __future__ import annotations

import string
from typing import Any

ALGORITHM = "HS256"


def key_from_text(text: str) -> bytes:
    """A signing key as operators write secrets: hex (``openssl rand -hex 32``, as
    ``BINDERHUB_BUILD_TOKEN_SECRET`` holds it) or plain text."""
    text = text.strip()
    if len(text) % 2 == 0 and len(text) >= 32 and all(c in string.hexdigits for c in text):
        return bytes.fromhex(text)
    return text.encode()


class InvalidToken(Exception):
    """Not signed with our key, expired, for another audience, or not a token at all."""


def sign(claims: dict[str, Any], key: str | bytes) -> str:
    from jose import jwt

    return jwt.encode(claims, key, algorithm=ALGORITHM)


def verify(token: str, key: str | bytes, audience: str, *, require_exp: bool = False) -> dict[str, Any]:
    """The claims of a valid token; :class:`InvalidToken` saying why otherwise.

    ``aud`` must be exactly ``audience``, one string: JWT allows a list, and python-jose accepts a
    list that merely contains it, so a token made for several specs would pass for each of them.
    ``require_exp``: a token without ``exp`` is refused instead of being valid forever."""
    from jose import JWTError, jwt

    try:
        claims = jwt.decode(token, key, algorithms=[ALGORITHM], audience=audience,
                            options={"require_aud": True, "require_exp": require_exp})
    except JWTError as e:
        raise InvalidToken(str(e)) from None
    if claims.get("aud") != audience:
        raise InvalidToken("Invalid audience: must be the single string " + repr(audience))
    return claims
