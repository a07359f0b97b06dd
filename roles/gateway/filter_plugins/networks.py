"""gateway_invalid_networks: the entries of a list that the gateway would refuse in
GATEWAY_TRUSTED_PROXIES (gateway/client_address.py), checked on the controller so that
preflight names them before any host changes. Python's ipaddress, as the service uses."""

from __future__ import annotations

from ipaddress import ip_network
from typing import Any


def invalid_networks(items: Any) -> list[str]:
    if not isinstance(items, list):
        return [str(items)]
    invalid = []
    for item in items:
        try:
            ip_network(str(item).strip(), strict=True)
        except ValueError:  # also "" and "a,b": one address or network per entry
            invalid.append(str(item))
    return invalid


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"gateway_invalid_networks": invalid_networks}
