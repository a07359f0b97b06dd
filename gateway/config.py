"""Settings of the gateway, read from GATEWAY_* environment variables.

Every problem raises ConfigError naming the variable to fix, so a misconfigured gateway
stops at start instead of failing its first request. docs/api.md lists every variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from gateway.client_address import Network, parse_networks
from servicekit.config import ConfigError, Env

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "ES256", "EdDSA")
ALGORITHMS = HMAC_ALGORITHMS + ASYMMETRIC_ALGORITHMS
MIN_SECRET_LENGTH = 32  # RFC 7518 3.2: an HS256 key of at least 256 bits
MIN_INTERNAL_TOKEN_LENGTH = 16  # what dialogs accepts
# The dialogs schema's CHECK constraint; the gateway's limit may only be lower.
MAX_TEXT_LENGTH_CEILING = 10_000


@dataclass(frozen=True)
class TokenSettings:
    """How bearer tokens are verified (and, when a signing key is known, issued)."""

    algorithm: str = "HS256"
    # HS*: the shared secret. Asymmetric: PEM public key, and the private key (optional:
    # without it the gateway only verifies tokens that another service issues).
    secret: str | None = field(default=None, repr=False)
    public_key: str | None = field(default=None, repr=False)
    private_key: str | None = field(default=None, repr=False)
    issuer: str | None = None
    audience: str | None = None
    ttl_s: int = 3600
    leeway_s: int = 10

    @property
    def can_issue(self) -> bool:
        return self.secret is not None or self.private_key is not None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TokenSettings:
        env = Env(environ)
        raw = os.environ if environ is None else environ
        algorithm = env.text("GATEWAY_JWT_ALGORITHM", "HS256")
        if algorithm not in ALGORITHMS:
            raise ConfigError(
                f"GATEWAY_JWT_ALGORITHM must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}"
            )
        secret = raw.get("GATEWAY_JWT_SECRET") or None
        public_key = _pem(raw, "GATEWAY_JWT_PUBLIC_KEY")
        private_key = _pem(raw, "GATEWAY_JWT_PRIVATE_KEY")
        if algorithm in HMAC_ALGORITHMS:
            if secret is None:
                raise ConfigError(f"GATEWAY_JWT_SECRET is required (a secret) for {algorithm}")
            if len(secret) < MIN_SECRET_LENGTH:
                raise ConfigError(
                    f"GATEWAY_JWT_SECRET must be at least {MIN_SECRET_LENGTH} characters"
                )
            if public_key or private_key:
                raise ConfigError(
                    f"GATEWAY_JWT_PUBLIC_KEY/GATEWAY_JWT_PRIVATE_KEY do not apply to {algorithm}:"
                    " set GATEWAY_JWT_ALGORITHM to an asymmetric algorithm or remove them"
                )
        else:
            if secret is not None:
                raise ConfigError(
                    f"GATEWAY_JWT_SECRET does not apply to {algorithm}: remove it or use HS256"
                )
            if public_key is None:
                raise ConfigError(
                    f"GATEWAY_JWT_PUBLIC_KEY or GATEWAY_JWT_PUBLIC_KEY_FILE is required for"
                    f" {algorithm}"
                )
            _check_key_pair(algorithm, public_key, private_key)
        return cls(
            algorithm=algorithm,
            secret=secret,
            public_key=public_key,
            private_key=private_key,
            issuer=raw.get("GATEWAY_JWT_ISSUER") or None,
            audience=raw.get("GATEWAY_JWT_AUDIENCE") or None,
            ttl_s=env.integer("GATEWAY_TOKEN_TTL_S", 3600, minimum=60, maximum=30 * 86400),
            leeway_s=env.integer("GATEWAY_JWT_LEEWAY_S", 10, minimum=0, maximum=300),
        )


def _pem(raw: Mapping[str, str], name: str) -> str | None:
    """``name`` (the PEM text) or ``name_FILE`` (a path to it); not both."""
    inline = raw.get(name) or None
    path = raw.get(f"{name}_FILE") or None
    if inline and path:
        raise ConfigError(f"set {name} or {name}_FILE, not both")
    if path is None:
        return inline
    try:
        return Path(path).read_text()
    except OSError as error:
        raise ConfigError(f"{name}_FILE: cannot read {path}: {error.strerror}") from None


def _check_key_pair(algorithm: str, public_pem: str, private_pem: str | None) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    expected: tuple[type, ...] = {
        "EdDSA": (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey),
        "ES256": (ec.EllipticCurvePublicKey,),
    }.get(algorithm, (rsa.RSAPublicKey,))
    try:
        public = serialization.load_pem_public_key(public_pem.encode())
    except ValueError:
        raise ConfigError("GATEWAY_JWT_PUBLIC_KEY is not a PEM public key") from None
    if not isinstance(public, expected):
        raise ConfigError(f"GATEWAY_JWT_PUBLIC_KEY is not a key for {algorithm}")
    if private_pem is None:
        return
    try:
        private = serialization.load_pem_private_key(private_pem.encode(), password=None)
    except (ValueError, TypeError):
        raise ConfigError("GATEWAY_JWT_PRIVATE_KEY is not an unencrypted PEM private key") from None
    raw_format = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.PEM
    if private.public_key().public_bytes(encoding, raw_format) != public.public_bytes(
        encoding, raw_format
    ):
        raise ConfigError("GATEWAY_JWT_PRIVATE_KEY does not match GATEWAY_JWT_PUBLIC_KEY")


@dataclass(frozen=True)
class Settings:
    database_url: str = field(repr=False)
    upstreams: tuple[str, ...]
    internal_token: str = field(repr=False)
    tokens: TokenSettings
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    db_pool_max_size: int = 10
    db_connect_timeout_s: float = 3.0
    db_statement_timeout_ms: int = 3000
    upstream_connect_timeout_s: float = 1.0
    upstream_timeout_s: float = 7.0  # above dialogs' statement timeout (5 s) + 1 s
    upstream_pool_size: int = 100
    upstream_cooldown_s: float = 5.0
    upstream_probe_interval_s: float = 1.0
    retry_after_s: int = 2
    max_body_bytes: int = 64 * 1024
    max_text_length: int = 4096
    login_max_failures: int = 5
    login_max_failures_per_address: int = 50
    login_window_s: int = 300
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65536
    argon2_parallelism: int = 4
    # The edge proxies whose X-Forwarded-For names the client (gateway/client_address.py).
    trusted_proxies: tuple[Network, ...] = ()
    # Sanic's REQUEST_TIMEOUT (a request head or body stalled this long: 408) and
    # KEEP_ALIVE_TIMEOUT (an idle connection closed after this long).
    request_timeout_s: int = 10
    keep_alive_timeout_s: int = 5
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = Env(environ)
        raw = os.environ if environ is None else environ
        database_url = env.database_url("GATEWAY_DATABASE_URL", secret=True)
        token = env.text("GATEWAY_INTERNAL_TOKEN", secret=True)
        if len(token) < MIN_INTERNAL_TOKEN_LENGTH:
            raise ConfigError(
                f"GATEWAY_INTERNAL_TOKEN must be at least {MIN_INTERNAL_TOKEN_LENGTH} characters"
            )
        log_level = env.text("GATEWAY_LOG_LEVEL", "INFO").upper()
        if log_level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigError("GATEWAY_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR")
        connect_timeout = env.number(
            "GATEWAY_UPSTREAM_CONNECT_TIMEOUT_S", 1.0, minimum=0.05, maximum=60.0
        )
        return cls(
            database_url=database_url,
            upstreams=parse_upstreams(env.items("GATEWAY_UPSTREAMS")),
            internal_token=token,
            tokens=TokenSettings.from_env(environ),
            host=env.text("GATEWAY_HOST", "127.0.0.1"),
            port=env.integer("GATEWAY_PORT", 8080, minimum=1, maximum=65535),
            workers=env.integer("GATEWAY_WORKERS", 1, minimum=1, maximum=64),
            db_pool_max_size=env.integer("GATEWAY_DB_POOL_MAX_SIZE", 10, minimum=1, maximum=200),
            db_connect_timeout_s=env.number(
                "GATEWAY_DB_CONNECT_TIMEOUT_S", 3.0, minimum=0.1, maximum=60.0
            ),
            db_statement_timeout_ms=env.integer(
                "GATEWAY_DB_STATEMENT_TIMEOUT_MS", 3000, minimum=100, maximum=600_000
            ),
            upstream_connect_timeout_s=connect_timeout,
            upstream_timeout_s=env.number(
                "GATEWAY_UPSTREAM_TIMEOUT_S", 7.0, minimum=0.1, maximum=300.0
            ),
            upstream_pool_size=env.integer(
                "GATEWAY_UPSTREAM_POOL_SIZE", 100, minimum=1, maximum=10_000
            ),
            upstream_cooldown_s=env.number(
                "GATEWAY_UPSTREAM_COOLDOWN_S", 5.0, minimum=0.1, maximum=3600.0
            ),
            upstream_probe_interval_s=env.number(
                "GATEWAY_UPSTREAM_PROBE_INTERVAL_S", 1.0, minimum=0.05, maximum=600.0
            ),
            retry_after_s=env.integer("GATEWAY_RETRY_AFTER_S", 2, minimum=1, maximum=3600),
            max_body_bytes=env.integer(
                "GATEWAY_MAX_BODY_BYTES", 64 * 1024, minimum=1024, maximum=1024 * 1024
            ),
            max_text_length=env.integer(
                "GATEWAY_MAX_TEXT_LENGTH", 4096, minimum=1, maximum=MAX_TEXT_LENGTH_CEILING
            ),
            login_max_failures=env.integer(
                "GATEWAY_LOGIN_MAX_FAILURES", 5, minimum=1, maximum=1000
            ),
            login_max_failures_per_address=env.integer(
                "GATEWAY_LOGIN_MAX_FAILURES_PER_ADDRESS", 50, minimum=1, maximum=100_000
            ),
            login_window_s=env.integer("GATEWAY_LOGIN_WINDOW_S", 300, minimum=1, maximum=86400),
            argon2_time_cost=env.integer("GATEWAY_ARGON2_TIME_COST", 3, minimum=1, maximum=20),
            argon2_memory_kib=env.integer(
                "GATEWAY_ARGON2_MEMORY_KIB", 65536, minimum=8192, maximum=4 * 1024 * 1024
            ),
            argon2_parallelism=env.integer("GATEWAY_ARGON2_PARALLELISM", 4, minimum=1, maximum=64),
            trusted_proxies=parse_networks(
                "GATEWAY_TRUSTED_PROXIES", raw.get("GATEWAY_TRUSTED_PROXIES", "")
            ),
            request_timeout_s=env.integer("GATEWAY_REQUEST_TIMEOUT_S", 10, minimum=1, maximum=300),
            keep_alive_timeout_s=env.integer(
                "GATEWAY_KEEP_ALIVE_TIMEOUT_S", 5, minimum=1, maximum=300
            ),
            log_level=log_level,
        )


def parse_upstreams(items: list[str]) -> tuple[str, ...]:
    """Base URLs of the dialogs instances, normalised to ``scheme://host[:port]``."""
    seen: list[str] = []
    for item in items:
        parts = urlsplit(item)
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            parts = urlsplit("")
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
            or parts.username
        ):
            raise ConfigError(
                f"GATEWAY_UPSTREAMS: {item!r} is not a base URL like http://10.0.0.5:8081"
            )
        url = f"{parts.scheme}://{parts.netloc}"
        if url in seen:
            raise ConfigError(f"GATEWAY_UPSTREAMS lists {url} twice")
        seen.append(url)
    return tuple(seen)
