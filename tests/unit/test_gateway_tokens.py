"""Token checks: what is accepted, and every way a token is refused."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from gateway.config import TokenSettings
from gateway.tokens import MissingToken, SigningUnavailable, TokenError, TokenService, bearer_token
from tests.support.gateway import JWT_SECRET, make_token, unsigned_token

USER = "0b0f4c36-7b2f-4a43-9d6e-2f5d3a1c9e77"


@pytest.fixture
def service() -> TokenService:
    return TokenService(TokenSettings(secret=JWT_SECRET, leeway_s=10))


def test_issued_token_verifies_to_its_user(service: TokenService) -> None:
    token = service.issue(USER)
    assert service.verify(token) == USER
    claims = jwt.decode(token, JWT_SECRET, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 3600


def test_subject_is_canonicalised(service: TokenService) -> None:
    assert service.verify(make_token({"sub": USER.upper()})) == USER


def now() -> int:
    return int(time.time())


# Tokens are made when the test runs, not at collection: a whole-suite run collects every
# tier first, and a token "valid in 10 minutes" would be valid by the time this tier runs.
REFUSED: list[tuple[str, Callable[[], str], str]] = [
    ("expired", lambda: make_token({"iat": now() - 7200, "exp": now() - 60}), "expired"),
    ("not yet valid (nbf)", lambda: make_token({"nbf": now() + 600}), "not valid yet"),
    ("issued in the future", lambda: make_token({"iat": now() + 600}), "not valid yet"),
    (
        "wrongly signed",
        lambda: make_token(key="another-secret-of-enough-length-000000"),
        "signature",
    ),
    (
        "alg none",
        lambda: unsigned_token({"sub": USER, "iat": now(), "exp": now() + 600}),
        "algorithm",
    ),
    ("unknown algorithm", lambda: make_token(algorithm="HS512", key=JWT_SECRET * 2), "algorithm"),
    ("missing sub", lambda: make_token(drop=("sub",)), "no sub claim"),
    ("missing exp", lambda: make_token(drop=("exp",)), "no exp claim"),
    ("missing iat", lambda: make_token(drop=("iat",)), "no iat claim"),
    ("sub not a user id", lambda: make_token({"sub": "admin"}), "subject"),
    ("sub not a string", lambda: make_token({"sub": 12345}), "malformed"),
    ("audience not expected", lambda: make_token({"aud": "somebody-else"}), "audience"),
    ("garbage", lambda: "not-a-jwt", "malformed"),
    ("three empty parts", lambda: "..", "malformed"),
    ("too long", lambda: "a" * 9000, "too long"),
]


@pytest.mark.parametrize(("case", "token", "reason"), REFUSED, ids=[r[0] for r in REFUSED])
def test_refused(service: TokenService, case: str, token: Callable[[], str], reason: str) -> None:
    with pytest.raises(TokenError, match=reason):
        service.verify(token())


def test_small_leeway_accepts_slight_clock_skew(service: TokenService) -> None:
    assert service.verify(make_token({"sub": USER, "iat": now() + 5, "nbf": now() + 5})) == USER
    assert service.verify(make_token({"sub": USER, "exp": now() - 5})) == USER


def test_rsa_public_key_is_not_accepted_as_an_hmac_secret() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    service = TokenService(TokenSettings(algorithm="RS256", public_key=public))
    assert service.verify(make_token({"sub": USER}, key=key, algorithm="RS256")) == USER
    # The classic confusion attack: sign HS256 with the public key as the secret.
    forged = _hs256_with_key(public.encode(), {"sub": USER})
    with pytest.raises(TokenError, match="algorithm"):
        service.verify(forged)


def _hs256_with_key(secret: bytes, claims: dict[str, Any]) -> str:
    """HS256 by hand: PyJWT itself refuses to use a PEM key as an HMAC secret."""
    import base64
    import hashlib
    import hmac
    import json

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = json.dumps({"alg": "HS256", "typ": "JWT"}).encode()
    payload = {"iat": now(), "exp": now() + 600} | claims
    signing_input = f"{b64(header)}.{b64(json.dumps(payload).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def test_eddsa_from_an_identity_provider() -> None:
    provider_key = ed25519.Ed25519PrivateKey.generate()
    public = (
        provider_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    service = TokenService(
        TokenSettings(algorithm="EdDSA", public_key=public, issuer="monolith", audience="dialogs")
    )
    assert not service.can_issue
    with pytest.raises(SigningUnavailable):
        service.issue(USER)
    good = {"sub": USER, "iss": "monolith", "aud": "dialogs"}
    assert service.verify(make_token(good, key=provider_key, algorithm="EdDSA")) == USER
    for claims, reason in (
        ({"iss": "someone-else"}, "issuer"),
        ({"aud": "another-service"}, "audience"),
    ):
        token = make_token(good | claims, key=provider_key, algorithm="EdDSA")
        with pytest.raises(TokenError, match=reason):
            service.verify(token)
    for missing in ("iss", "aud"):
        token = make_token(good, key=provider_key, algorithm="EdDSA", drop=(missing,))
        with pytest.raises(TokenError, match=f"no {missing} claim"):
            service.verify(token)
    other_key = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(TokenError, match="signature"):
        service.verify(make_token(good, key=other_key, algorithm="EdDSA"))


def test_remembered_token_still_expires() -> None:
    service = TokenService(TokenSettings(secret=JWT_SECRET, leeway_s=0))
    expires = now() + 1
    token = make_token({"sub": USER, "exp": expires})
    assert service.verify(token) == USER
    assert service.verify(token) == USER  # second time from the cache
    time.sleep(max(0.0, expires - time.time()) + 0.05)
    with pytest.raises(TokenError, match="expired"):
        service.verify(token)


@pytest.mark.parametrize(
    ("header", "error"),
    [
        (None, MissingToken),
        ("", MissingToken),
        ("Basic dXNlcjpwYXNz", TokenError),
        ("Bearer", TokenError),
        ("Bearer ", TokenError),
        ("Bearer a b", TokenError),
        ("Token abc", TokenError),
    ],
)
def test_authorization_header_must_be_bearer(header: str | None, error: type[Exception]) -> None:
    with pytest.raises(error):
        bearer_token(header)


def test_bearer_scheme_is_case_insensitive() -> None:
    assert bearer_token("bearer abc.def.ghi") == "abc.def.ghi"
    assert bearer_token(f"Bearer {uuid.UUID(int=1)}") == str(uuid.UUID(int=1))


class CountingDecode:
    """jwt.decode, counting its calls: a token served from the cache is not decoded."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = jwt.decode

        def decode(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr("gateway.tokens.jwt.decode", decode)


def test_a_verified_token_is_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    decode = CountingDecode(monkeypatch)
    service = TokenService(TokenSettings(secret=JWT_SECRET))
    token = make_token({"sub": USER})
    assert [service.verify(token) for _ in range(3)] == [USER] * 3
    assert decode.calls == 1
    assert service.remembered == 1


def test_the_cache_is_bounded_and_forgets_the_oldest(monkeypatch: pytest.MonkeyPatch) -> None:
    decode = CountingDecode(monkeypatch)
    service = TokenService(TokenSettings(secret=JWT_SECRET), cache_size=3)
    users = [str(uuid.uuid4()) for _ in range(5)]
    tokens = [make_token({"sub": user}) for user in users]
    assert [service.verify(token) for token in tokens] == users
    assert service.remembered == 3
    assert decode.calls == 5
    assert service.verify(tokens[-1]) == users[-1]  # among the newest: remembered
    assert decode.calls == 5
    assert service.verify(tokens[0]) == users[0]  # forgotten: verified again
    assert decode.calls == 6
    assert service.remembered == 3


@pytest.mark.parametrize("part", ["header", "claims", "signature"])
def test_a_tampered_copy_of_a_remembered_token_is_refused(part: str) -> None:
    import base64
    import json

    service = TokenService(TokenSettings(secret=JWT_SECRET))
    token = make_token({"sub": USER})
    assert service.verify(token) == USER
    header, claims, signature = token.split(".")
    if part == "signature":
        # Another valid base64url signature of the same length.
        signature = ("A" if signature[0] != "A" else "B") + signature[1:]
    else:
        encoded = header if part == "header" else claims
        value = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
        if part == "header":
            value["kid"] = "other"
        else:
            value["sub"] = str(uuid.uuid4())
        changed = base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
        header, claims = (changed, claims) if part == "header" else (header, changed)
    with pytest.raises(TokenError, match="signature"):
        service.verify(f"{header}.{claims}.{signature}")
    assert service.verify(token) == USER
    assert service.remembered == 1
