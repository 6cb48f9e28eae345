"""Client addresses and network lists."""

from __future__ import annotations

import ipaddress
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


def client_ip(peer: str | None, forwarded_for: str | None, trusted: NetworkSet) -> str:
    """The client's address. ``X-Forwarded-For`` is believed only when the direct peer is a trusted
    proxy; then the right-most address not itself a trusted proxy is the client."""
    peer = peer or ""
    if not forwarded_for or not trusted or trusted.match(peer) is None:
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if parse_ip(hop) is None:
            break  # garbage in the header: stop believing it
        if trusted.match(hop) is None:
            return hop
    return hops[0] if hops and parse_ip(hops[0]) else peer
