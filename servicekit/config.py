"""Typed readers for environment variables.

Every reader raises ConfigError naming the variable, so a misconfigured service stops
at start with a message that says what to fix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import parse_qs

# asyncpg's values (libpq's); a typo would otherwise surface as a 503 on every request.
TARGET_SESSION_ATTRS = ("any", "primary", "standby", "prefer-standby", "read-write", "read-only")


class ConfigError(ValueError):
    """A configuration value is missing or invalid."""


class Env:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ

    def text(self, name: str, default: str | None = None, *, secret: bool = False) -> str:
        value = self._environ.get(name, default)
        if value is None or value == "":
            raise ConfigError(f"{name} is required" + (" (a secret)" if secret else ""))
        return value

    def integer(self, name: str, default: int, *, minimum: int, maximum: int) -> int:
        raw = self._environ.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
        if not minimum <= value <= maximum:
            raise ConfigError(f"{name} must be between {minimum} and {maximum}, got {value}")
        return value

    def number(self, name: str, default: float, *, minimum: float, maximum: float) -> float:
        raw = self._environ.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {raw!r}") from None
        if not minimum <= value <= maximum:
            raise ConfigError(f"{name} must be between {minimum} and {maximum}, got {value}")
        return value

    def items(self, name: str) -> list[str]:
        raw = self.text(name)
        items = [item.strip() for item in raw.split(",") if item.strip()]
        if not items:
            raise ConfigError(f"{name} must list at least one value")
        return items

    def database_url(self, name: str, *, secret: bool = False) -> str:
        """A postgresql:// URL; it may name several servers (``h1:5432,h2:5432``) with
        ``target_session_attrs=read-write`` so that connections go to the primary."""
        url = self.text(name, secret=secret)
        if not url.startswith(("postgresql://", "postgres://")):
            raise ConfigError(f"{name} must be a postgresql:// URL")
        # Not urlsplit: it refuses several servers when one is an IPv6 address ("[fd00::1]:5432").
        attrs = parse_qs(url.partition("?")[2]).get("target_session_attrs", [])
        for value in attrs:
            if value not in TARGET_SESSION_ATTRS:
                raise ConfigError(
                    f"{name}: target_session_attrs must be one of "
                    f"{', '.join(TARGET_SESSION_ATTRS)}, got {value!r}"
                )
        return url
