"""Where providers may connect, and how to talk about URLs without leaking credentials.

A public deployment resolves URLs its users choose (``git``, ``ckan``, DOI redirects). Without a
check, ``git/http%3A%2F%2F169.254.169.254...`` would make the service probe its own cloud metadata
endpoint or cluster. Every host a provider contacts is therefore resolved first and refused when
any of its addresses lies in ``denied_networks``.
"""

from __future__ import annotations

import asyncio
import re
import socket
from functools import lru_cache
from urllib.parse import urlsplit

from ..errors import SpecError, UpstreamError
from ..netutil import NetworkSet, parse_ip


class DeniedNetworkError(SpecError):
    """The target resolves to an address the operator does not allow providers to reach."""


@lru_cache(maxsize=64)
def _network_set(networks: tuple[str, ...]) -> NetworkSet:
    return NetworkSet(networks)


def denied_networks(networks: list[str]) -> NetworkSet:
    """The configured deny-list as a :class:`NetworkSet` (memoised: configs are immutable)."""
    return _network_set(tuple(networks))


async def check_host(host: str | None, denied: NetworkSet, what: str) -> None:
    """Refuse ``host`` if any address it resolves to is denied.

    All addresses are checked, not just the first, because the connecting library may pick any of
    them. ``what`` names the upstream in messages (``"git server"``, ``"CKAN site"``).
    """
    if not denied:
        return
    if not host:
        raise SpecError(f"The {what} URL has no host.")
    literal = parse_ip(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except socket.gaierror:
            raise UpstreamError(f"The {what} {host} is unreachable: its name does not resolve.") from None
        addresses = [parse_ip(str(info[4][0]).split("%", 1)[0]) for info in infos]
    for address in addresses:
        if address is not None and denied.match(address) is not None:
            raise DeniedNetworkError(
                f"The {what} {host} is on a network this service is not allowed to reach.")


async def check_url(url: str, denied: NetworkSet, what: str) -> None:
    await check_host(urlsplit(url).hostname, denied, what)


_USERINFO = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@")


def redact(text: str, secrets: tuple[str, ...] | list[str] = ()) -> str:
    """``text`` with URL user-info and every given secret replaced, for messages and logs."""
    text = _USERINFO.sub(r"\1***@", text)
    for value in secrets:
        if value:
            text = text.replace(value, "***")
    return text


def display_url(url: str) -> str:
    """A URL fit for logs: no user-info, no query string (where tokens travel)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


def host_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.hostname or url
