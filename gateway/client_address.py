"""The client address that the login throttle counts.

The gateway sits behind an edge proxy that replaces any X-Forwarded-For with exactly the
client's address. So the header is believed only when the TCP peer itself is one of
GATEWAY_TRUSTED_PROXIES, and then only its rightmost entry (the one the edge added);
from anyone else it is ignored and the peer address counts. Sanic's own forwarded
handling is switched off (gateway/app.py) so that nothing else reads the header.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

from servicekit.config import ConfigError

Network = IPv4Network | IPv6Network
Address = IPv4Address | IPv6Address


def parse_networks(name: str, raw: str) -> tuple[Network, ...]:
    """Comma-separated addresses and CIDR networks; ConfigError naming ``name`` otherwise."""
    networks: list[Network] = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        try:
            # strict: 10.0.0.5/8 is more likely a typo than a wish to trust all of 10/8.
            network = ip_network(item, strict=True)
        except ValueError as error:
            raise ConfigError(
                f"{name}: {item!r} is not an IP address or network like 10.0.0.0/24 ({error})"
            ) from None
        if network not in networks:
            networks.append(network)
    return tuple(networks)


def _address(text: str) -> Address | None:
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        address = ip_address(text)
    except ValueError:
        return None
    # A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d: one client, one key.
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class ClientAddresses:
    """Chooses the address to count for a request; the networks are parsed once, at start."""

    def __init__(self, trusted: tuple[Network, ...]) -> None:
        self._trusted = trusted

    def of(self, peer: str, forwarded_for: Sequence[str]) -> str:
        """``peer``: the socket's peer address. ``forwarded_for``: every X-Forwarded-For
        header value of the request, in order."""
        peer_address = _address(peer)
        if peer_address is None:  # no IP peer (a UNIX socket): nothing to trust
            return peer
        if forwarded_for and any(peer_address in network for network in self._trusted):
            client = _address(forwarded_for[-1].rsplit(",", 1)[-1])
            # A trusted proxy sending no usable address: count the proxy itself, the
            # stricter choice, rather than nothing.
            if client is not None:
                return str(client)
        return str(peer_address)
