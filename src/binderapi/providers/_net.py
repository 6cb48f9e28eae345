"""Where providers may connect, and how to talk about URLs without leaking credentials.

A public deployment resolves URLs its users choose (``git``, ``ckan``, DOI redirects). Without a
check, ``git/http%3A%2F%2F169.254.169.254...`` would make the service probe its own cloud metadata
endpoint or cluster. Every host a provider contacts is therefore resolved first and refused when
any of its addresses lies in ``denied_networks``, and the connection is then *pinned* to an address
that was checked (:class:`Pin`): a name answering one address to the check and another to the
connection (DNS rebinding) gains nothing. An unspecified address (``0.0.0.0``, ``::``) reaches this
host when connected to, so it is checked as loopback too.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

from ..errors import SpecError, UpstreamError
from ..netutil import IPAddress, NetworkSet, parse_ip

DEFAULT_PORTS = {"http": 80, "https": 443, "git": 9418, "ssh": 22}


class DeniedNetworkError(SpecError):
    """The target resolves to an address the operator does not allow providers to reach."""


@dataclass(frozen=True)
class Pin:
    """A host name and the checked address connections to it must use (``curl --resolve``)."""

    host: str
    port: int
    address: str

    def curl_resolve(self) -> str:
        """``host:port:address``, the form of git's ``http.curloptResolve``."""
        address = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.host}:{self.port}:{address}"


def _as_ipv4(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    """An IPv4-mapped IPv6 network (``::ffff:127.0.0.0/104``) as the IPv4 network it means:
    addresses are compared in their IPv4 form."""
    mapped = ipaddress.ip_network("::ffff:0:0/96")
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(mapped):
        ipv4 = ipaddress.IPv4Address(int(network.network_address) & 0xFFFFFFFF)
        return str(ipaddress.IPv4Network((ipv4, max(network.prefixlen - 96, 0))))
    return str(network)


@lru_cache(maxsize=64)
def _network_set(networks: tuple[str, ...]) -> NetworkSet:
    return NetworkSet([_as_ipv4(ipaddress.ip_network(n)) for n in networks])


def denied_networks(networks: list[str]) -> NetworkSet:
    """The configured deny-list as a :class:`NetworkSet` (memoised: configs are immutable)."""
    return _network_set(tuple(networks))


def is_denied(address: IPAddress, denied: NetworkSet) -> bool:
    """``address`` is in ``denied``; an unspecified address is also checked as the loopback
    address it reaches."""
    if denied.match(address) is not None:
        return True
    if address.is_unspecified:
        loopback = ipaddress.IPv4Address("127.0.0.1") if address.version == 4 else ipaddress.IPv6Address("::1")
        return denied.match(loopback) is not None
    return False


async def resolve_host(host: str) -> list[str]:
    """Every address ``host`` resolves to (the system resolver, off the event loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def check_host(host: str | None, denied: NetworkSet, what: str) -> IPAddress | None:
    """Refuse ``host`` if any address it resolves to is denied; else the address to connect to.

    All addresses are checked, not just the first, because the connecting library may pick any of
    them. ``what`` names the upstream in messages (``"git server"``, ``"CKAN site"``). ``None``
    when the deny-list is empty (nothing checked, nothing to pin).
    """
    if not denied:
        return None
    if not host:
        raise SpecError(f"The {what} URL has no host.")
    literal = parse_ip(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            found = await resolve_host(host)
        except (socket.gaierror, UnicodeError):
            raise UpstreamError(f"The {what} {host} is unreachable: its name does not resolve.") from None
        addresses = [a for a in (parse_ip(text.split("%", 1)[0]) for text in found) if a is not None]
        if not addresses:
            raise UpstreamError(f"The {what} {host} is unreachable: its name does not resolve.")
    for address in addresses:
        if is_denied(address, denied):
            raise DeniedNetworkError(
                f"The {what} {host} is on a network this service is not allowed to reach.")
    return addresses[0]


async def check_url(url: str, denied: NetworkSet, what: str) -> Pin | None:
    """Check ``url``'s host; the :class:`Pin` its connections must use, or ``None`` when the host
    is an address already (nothing to resolve) or nothing is denied."""
    parts = urlsplit(url)
    address = await check_host(parts.hostname, denied, what)
    if address is None or parts.hostname is None or parse_ip(parts.hostname) is not None:
        return None
    try:
        port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower(), 0)
    except ValueError:
        raise SpecError(f"The {what} URL has an invalid port.") from None
    try:  # the name as curl matches it (``http.curloptResolve``): ASCII, internationalised names encoded
        host = parts.hostname.encode("idna").decode("ascii")
    except UnicodeError:
        raise SpecError(f"The {what} URL has an invalid host name.") from None
    return Pin(host, port, str(address))


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
