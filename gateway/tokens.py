"""Bearer tokens: JWTs verified against one configured algorithm and key.

The algorithm list is fixed by configuration (never taken from the token), so ``alg: none``
and algorithm confusion (an RS256 public key used as an HS256 secret) are rejected.
``sub`` (a user id, a UUID), ``exp`` and ``iat`` are required; ``iss`` and ``aud`` are
checked when configured. With an asymmetric algorithm and no private key the gateway
verifies tokens that another service (e.g. the monolith) issues, and cannot issue its own.
"""

from __future__ import annotations

import re
import time
from typing import Any

import jwt
from jwt.exceptions import (
    ExpiredSignatureError,
    ImmatureSignatureError,
    InvalidAlgorithmError,
    InvalidAudienceError,
    InvalidIssuerError,
    InvalidSignatureError,
    InvalidTokenError,
    MissingRequiredClaimError,
)

from gateway.config import HMAC_ALGORITHMS, TokenSettings

CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
MAX_TOKEN_LENGTH = 8192
# Verified tokens are remembered (by their full text, signature included) so that a
# client's next requests skip the signature check; expiry is still checked every time.
CACHE_SIZE = 10_000


class TokenError(Exception):
    """The token cannot be accepted; the message is safe to show to the client."""


class SigningUnavailable(Exception):
    """This gateway only verifies tokens: it has no signing key."""


class TokenService:
    def __init__(self, settings: TokenSettings, *, cache_size: int = CACHE_SIZE) -> None:
        self._settings = settings
        self._cache_size = cache_size
        self._algorithms = [settings.algorithm]
        self._verify_key: Any
        self._sign_key: Any
        if settings.algorithm in HMAC_ALGORITHMS:
            assert settings.secret is not None
            self._verify_key = self._sign_key = settings.secret.encode()
        else:
            from cryptography.hazmat.primitives import serialization

            assert settings.public_key is not None
            self._verify_key = serialization.load_pem_public_key(settings.public_key.encode())
            self._sign_key = (
                serialization.load_pem_private_key(settings.private_key.encode(), password=None)
                if settings.private_key
                else None
            )
        required = ["sub", "exp", "iat"]
        if settings.issuer is not None:
            required.append("iss")
        if settings.audience is not None:
            required.append("aud")
        self._options: Any = {"require": required}
        # token -> (user id, valid from, valid until), bounds already include the leeway.
        self._cache: dict[str, tuple[str, float, float]] = {}

    @property
    def remembered(self) -> int:
        """How many verified tokens are remembered."""
        return len(self._cache)

    @property
    def can_issue(self) -> bool:
        return self._sign_key is not None

    def issue(self, subject: str, *, ttl_s: int | None = None, now: float | None = None) -> str:
        if self._sign_key is None:
            raise SigningUnavailable("no signing key configured (GATEWAY_JWT_PRIVATE_KEY)")
        issued = int(time.time() if now is None else now)
        claims: dict[str, Any] = {
            "sub": subject,
            "iat": issued,
            "exp": issued + (self._settings.ttl_s if ttl_s is None else ttl_s),
        }
        if self._settings.issuer is not None:
            claims["iss"] = self._settings.issuer
        if self._settings.audience is not None:
            claims["aud"] = self._settings.audience
        return jwt.encode(claims, self._sign_key, algorithm=self._settings.algorithm)

    def verify(self, token: str) -> str:
        """The user id (canonical lower-case UUID) the token was issued to."""
        now = time.time()
        cached = self._cache.get(token)
        if cached is not None:
            subject, valid_from, valid_until = cached
            if valid_from <= now < valid_until:
                return subject
            del self._cache[token]
        if len(token) > MAX_TOKEN_LENGTH:
            raise TokenError("token is too long")
        try:
            claims = jwt.decode(
                token,
                self._verify_key,
                algorithms=self._algorithms,
                options=self._options,
                issuer=self._settings.issuer,
                audience=self._settings.audience,
                leeway=self._settings.leeway_s,
            )
        except ExpiredSignatureError:
            raise TokenError("token has expired") from None
        except ImmatureSignatureError:
            raise TokenError("token is not valid yet") from None
        except MissingRequiredClaimError as error:
            raise TokenError(f"token has no {error.claim} claim") from None
        except InvalidAlgorithmError:
            raise TokenError("token algorithm is not accepted") from None
        except InvalidSignatureError:
            raise TokenError("token signature is invalid") from None
        except InvalidIssuerError:
            raise TokenError("token issuer is not accepted") from None
        except InvalidAudienceError:
            raise TokenError("token audience is not accepted") from None
        except InvalidTokenError:
            raise TokenError("token is malformed") from None
        subject = claims["sub"]
        if (
            not isinstance(subject, str)
            or not subject.isascii()
            or not CANONICAL_UUID.fullmatch(subject.lower())
        ):
            raise TokenError("token subject is not a user id")
        subject = subject.lower()
        self._remember(token, subject, claims)
        return subject

    def _remember(self, token: str, subject: str, claims: dict[str, Any]) -> None:
        leeway = self._settings.leeway_s
        try:
            valid_from = max(int(claims["iat"]), int(claims.get("nbf", 0))) - leeway
            valid_until = int(claims["exp"]) + leeway
        except (TypeError, ValueError):  # pragma: no cover - PyJWT already checked them
            return
        if len(self._cache) >= self._cache_size:
            # Dicts keep insertion order: drop the oldest entry.
            del self._cache[next(iter(self._cache))]
        self._cache[token] = (subject, valid_from, valid_until)


def bearer_token(header: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header (RFC 6750)."""
    if not header:
        raise MissingToken("an Authorization: Bearer token is required")
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise TokenError("Authorization header must be 'Bearer <token>'")
    return token


class MissingToken(TokenError):
    """No credentials at all (RFC 6750: answer without an error code)."""
