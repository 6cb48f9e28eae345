"""Client addresses and network lists."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_ip(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    # an IPv4 client seen through an IPv6 socket is still that IPv4 client
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


class NetworkSet:
    """Networks with optional labels, answering 'which one contains this address?'."""

    def __init__(self, networks: Mapping[str, str] | Iterable[str]) -> None:
        items = networks.items() if isinstance(networks, Mapping) else ((n, n) for n in networks)
        self._networks: list[tuple[IPNetwork, str]] = [(ipaddress.ip_network(n), label) for n, label in items]

    def __bool__(self) -> bool:
        return bool(self._networks)

    def match(self, address: str | IPAddress | None) -> str | None:
        ip = parse_ip(address) if isinstance(address, str) else address
        if ip is None:
            return None
        for network, label in self._networks:
            if ip.version == network.version and ip in network:
                return label
        return None


def client_address(client: tuple[str, int] | list | None) -> str:
    """The client's address from the ASGI scope, set by uvicorn's ``ProxyHeadersMiddleware`` (the
    right-most ``X-Forwarded-For`` hop not in ``trusted_proxies``, port stripped) or the peer.
    IPv4-mapped IPv6 addresses become IPv4. A hop a trusted proxy wrote as ``unknown`` stays as it
    is: one shared identity (one rate-limit bucket), never the client-written hops to its left."""
    host = client[0] if client else ""
    ip = parse_ip(host) if host else None
    return str(ip) if ip is not None else host


_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
_HOST = re.compile(rf"(?P<name>{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?|\[(?P<ipv6>[0-9A-Fa-f:.]+)\])(?::(?P<port>[0-9]{{1,5}}))?")


def host_name(host: str | None) -> str | None:
    """The name (lower case, IPv6 in brackets) of a ``Host`` header value that is a well-formed
    ``host[:port]``; ``None`` for anything else. The value ends up in URLs, events, logs and the
    build appendix, so whitespace, quotes or ``=`` must never get through."""
    match = _HOST.fullmatch(host or "")
    if match is None or len(host or "") > 260:
        return None
    if match["port"] is not None and not 0 < int(match["port"]) <= 65535:
        return None
    if match["ipv6"] is not None:
        try:
            ipaddress.IPv6Address(match["ipv6"])
        except ValueError:
            return None
    return match["name"].lower().rstrip(".") or None
