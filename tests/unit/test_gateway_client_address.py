"""The address the login throttle counts: X-Forwarded-For only from a trusted peer."""

from __future__ import annotations

import re
from ipaddress import ip_network

import pytest

from gateway.client_address import ClientAddresses, parse_networks
from servicekit.config import ConfigError

NAME = "GATEWAY_TRUSTED_PROXIES"


def test_addresses_and_networks_of_both_families_are_parsed() -> None:
    assert parse_networks(NAME, " 10.0.0.5, 192.168.0.0/16,::1 ,2001:db8::/32,,10.0.0.5") == (
        ip_network("10.0.0.5/32"),
        ip_network("192.168.0.0/16"),
        ip_network("::1/128"),
        ip_network("2001:db8::/32"),
    )


def test_empty_means_nobody_is_trusted() -> None:
    assert parse_networks(NAME, "") == ()
    assert parse_networks(NAME, " , ") == ()


@pytest.mark.parametrize(
    "raw",
    ["10.0.0.256", "edge.internal", "10.0.0.0/33", "10.0.0.5/8", "[::1]", "10.0.0.1-10.0.0.9"],
)
def test_a_malformed_entry_names_the_variable_and_the_entry(raw: str) -> None:
    expected = re.escape(f"{NAME}: '{raw}' is not an IP address or network")
    with pytest.raises(ConfigError, match=f"^{expected}"):
        parse_networks(NAME, f"127.0.0.1,{raw}")


EDGE = ClientAddresses(parse_networks(NAME, "127.0.0.1,10.1.0.0/16,fd00::/8"))
NOBODY = ClientAddresses(())


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "counted"),
    [
        ("127.0.0.1", ["203.0.113.7"], "203.0.113.7"),
        ("10.1.2.3", ["203.0.113.7"], "203.0.113.7"),
        ("fd00::5", ["2001:db8::7"], "2001:db8::7"),
        ("::ffff:127.0.0.1", ["203.0.113.7"], "203.0.113.7"),
        # What a client wrote itself comes first; the edge's entry is the rightmost one.
        ("127.0.0.1", ["198.51.100.1, 203.0.113.7"], "203.0.113.7"),
        ("127.0.0.1", ["198.51.100.1", "203.0.113.7"], "203.0.113.7"),
        ("127.0.0.1", ["[2001:db8::7]"], "2001:db8::7"),
        ("127.0.0.1", ["2001:DB8:0:0::7"], "2001:db8::7"),
        # A trusted peer without a usable address: the peer counts.
        ("127.0.0.1", [], "127.0.0.1"),
        ("127.0.0.1", ["unknown"], "127.0.0.1"),
        ("127.0.0.1", ["203.0.113.7, "], "127.0.0.1"),
        # Anyone else: the header is ignored.
        ("127.0.0.2", ["203.0.113.7"], "127.0.0.2"),
        ("10.2.0.1", ["203.0.113.7"], "10.2.0.1"),
        ("2001:db8::1", ["203.0.113.7"], "2001:db8::1"),
    ],
)
def test_forwarded_for_counts_only_from_a_trusted_peer(
    peer: str, forwarded_for: list[str], counted: str
) -> None:
    assert EDGE.of(peer, forwarded_for) == counted


@pytest.mark.parametrize("peer", ["127.0.0.1", "10.1.2.3", "::1", "fd00::5"])
def test_with_nobody_trusted_the_peer_always_counts(peer: str) -> None:
    assert NOBODY.of(peer, ["203.0.113.7"]) == peer


def test_the_peer_is_normalised_so_one_client_is_one_key() -> None:
    assert NOBODY.of("::ffff:192.0.2.1", []) == "192.0.2.1"
    assert NOBODY.of("2001:DB8::0:1", []) == "2001:db8::1"
    assert NOBODY.of("/run/gateway.sock", ["203.0.113.7"]) == "/run/gateway.sock"
