"""Filters of the edge role: which network interface of a host an IPv4 address belongs to
(Ansible's ipaddr filter would need netaddr on the controller)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any


def interface_for(facts: Mapping[str, Any], address: str) -> str:
    """The interface (from ``ansible_facts``) whose IPv4 subnet holds ``address``: its own
    address or another one of that subnet. '' when none does or ``address`` is no IPv4."""
    try:
        wanted = ipaddress.IPv4Address(address)
    except ValueError:
        return ""
    for name in facts.get("interfaces", []):
        ipv4 = facts.get(name.replace("-", "_"), {}).get("ipv4") or {}
        if not {"address", "netmask"} <= set(ipv4):
            continue
        subnet = ipaddress.IPv4Interface(f"{ipv4['address']}/{ipv4['netmask']}").network
        if wanted in subnet and name != "lo":
            return str(name)
    return ""


class FilterModule:
    def filters(self) -> dict[str, Callable[..., str]]:
        return {"edge_interface_for": interface_for}
