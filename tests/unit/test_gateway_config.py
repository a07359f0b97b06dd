"""Gateway settings: defaults, and a ConfigError naming the variable for each bad value."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from gateway.__main__ import main
from gateway.config import Settings, TokenSettings, parse_upstreams
from servicekit.config import ConfigError

SECRET = "s" * 32
BASE = {
    "GATEWAY_DATABASE_URL": "postgresql://gateway@127.0.0.1:5432/dialogs",
    "GATEWAY_UPSTREAMS": "http://10.0.0.5:8081, http://10.0.0.6:8081/",
    "GATEWAY_INTERNAL_TOKEN": "internal-token-0123456789",
    "GATEWAY_JWT_SECRET": SECRET,
}


def public_pem(key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def private_pem(key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def test_defaults() -> None:
    settings = Settings.from_env(BASE)
    assert settings.upstreams == ("http://10.0.0.5:8081", "http://10.0.0.6:8081")
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 8080, 1)
    assert settings.tokens.algorithm == "HS256"
    assert settings.tokens.secret == SECRET
    assert settings.tokens.can_issue
    assert settings.max_text_length == 4096
    assert settings.upstream_connect_timeout_s == 1.0
    assert settings.trusted_proxies == ()
    assert (settings.request_timeout_s, settings.keep_alive_timeout_s) == (10, 5)


def test_trusted_proxies_and_timeouts_are_read() -> None:
    settings = Settings.from_env(
        BASE
        | {
            "GATEWAY_TRUSTED_PROXIES": "10.0.0.5, fd00::/8",
            "GATEWAY_REQUEST_TIMEOUT_S": "2",
            "GATEWAY_KEEP_ALIVE_TIMEOUT_S": "300",
        }
    )
    assert [str(n) for n in settings.trusted_proxies] == ["10.0.0.5/32", "fd00::/8"]
    assert (settings.request_timeout_s, settings.keep_alive_timeout_s) == (2, 300)


def test_secrets_stay_out_of_repr() -> None:
    text = repr(Settings.from_env(BASE))
    assert SECRET not in text
    assert BASE["GATEWAY_INTERNAL_TOKEN"] not in text
    assert "postgresql://" not in text


@pytest.mark.parametrize(
    ("change", "variable"),
    [
        ({"GATEWAY_DATABASE_URL": ""}, "GATEWAY_DATABASE_URL"),
        ({"GATEWAY_DATABASE_URL": "mysql://x"}, "GATEWAY_DATABASE_URL"),
        ({"GATEWAY_UPSTREAMS": ""}, "GATEWAY_UPSTREAMS"),
        ({"GATEWAY_UPSTREAMS": " , "}, "GATEWAY_UPSTREAMS"),
        ({"GATEWAY_UPSTREAMS": "10.0.0.5:8081"}, "GATEWAY_UPSTREAMS"),
        ({"GATEWAY_UPSTREAMS": "http://10.0.0.5:8081/api"}, "GATEWAY_UPSTREAMS"),
        ({"GATEWAY_UPSTREAMS": "http://10.0.0.5:99999"}, "GATEWAY_UPSTREAMS"),
        ({"GATEWAY_UPSTREAMS": "http://a:1,http://a:1"}, "GATEWAY_UPSTREAMS"),
        ({"GATEWAY_INTERNAL_TOKEN": "short"}, "GATEWAY_INTERNAL_TOKEN"),
        ({"GATEWAY_INTERNAL_TOKEN": ""}, "GATEWAY_INTERNAL_TOKEN"),
        ({"GATEWAY_JWT_SECRET": ""}, "GATEWAY_JWT_SECRET"),
        ({"GATEWAY_JWT_SECRET": "too-short"}, "GATEWAY_JWT_SECRET"),
        ({"GATEWAY_JWT_ALGORITHM": "none"}, "GATEWAY_JWT_ALGORITHM"),
        ({"GATEWAY_JWT_ALGORITHM": "RS256"}, "GATEWAY_JWT_SECRET"),
        ({"GATEWAY_PORT": "0"}, "GATEWAY_PORT"),
        ({"GATEWAY_WORKERS": "many"}, "GATEWAY_WORKERS"),
        ({"GATEWAY_TOKEN_TTL_S": "5"}, "GATEWAY_TOKEN_TTL_S"),
        ({"GATEWAY_JWT_LEEWAY_S": "3600"}, "GATEWAY_JWT_LEEWAY_S"),
        ({"GATEWAY_UPSTREAM_TIMEOUT_S": "0"}, "GATEWAY_UPSTREAM_TIMEOUT_S"),
        ({"GATEWAY_UPSTREAM_CONNECT_TIMEOUT_S": "x"}, "GATEWAY_UPSTREAM_CONNECT_TIMEOUT_S"),
        ({"GATEWAY_UPSTREAM_COOLDOWN_S": "-1"}, "GATEWAY_UPSTREAM_COOLDOWN_S"),
        ({"GATEWAY_MAX_TEXT_LENGTH": "10001"}, "GATEWAY_MAX_TEXT_LENGTH"),
        ({"GATEWAY_MAX_BODY_BYTES": "10"}, "GATEWAY_MAX_BODY_BYTES"),
        ({"GATEWAY_LOGIN_MAX_FAILURES": "0"}, "GATEWAY_LOGIN_MAX_FAILURES"),
        ({"GATEWAY_ARGON2_MEMORY_KIB": "1024"}, "GATEWAY_ARGON2_MEMORY_KIB"),
        ({"GATEWAY_LOG_LEVEL": "LOUD"}, "GATEWAY_LOG_LEVEL"),
        ({"GATEWAY_TRUSTED_PROXIES": "10.0.0.1,edge"}, "GATEWAY_TRUSTED_PROXIES"),
        ({"GATEWAY_TRUSTED_PROXIES": "10.0.0.0/33"}, "GATEWAY_TRUSTED_PROXIES"),
        ({"GATEWAY_REQUEST_TIMEOUT_S": "0"}, "GATEWAY_REQUEST_TIMEOUT_S"),
        ({"GATEWAY_REQUEST_TIMEOUT_S": "301"}, "GATEWAY_REQUEST_TIMEOUT_S"),
        ({"GATEWAY_REQUEST_TIMEOUT_S": "2.5"}, "GATEWAY_REQUEST_TIMEOUT_S"),
        ({"GATEWAY_KEEP_ALIVE_TIMEOUT_S": "0"}, "GATEWAY_KEEP_ALIVE_TIMEOUT_S"),
        ({"GATEWAY_KEEP_ALIVE_TIMEOUT_S": "forever"}, "GATEWAY_KEEP_ALIVE_TIMEOUT_S"),
    ],
)
def test_bad_values_name_the_variable(change: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env(BASE | change)


def test_upstreams_are_normalised() -> None:
    assert parse_upstreams(["https://dialogs-1.internal:8443/", "http://[::1]:8081"]) == (
        "https://dialogs-1.internal:8443",
        "http://[::1]:8081",
    )


def test_eddsa_public_key_verifies_only(tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    pem_file = tmp_path / "jwt.pub"
    pem_file.write_text(public_pem(key))
    env = {"GATEWAY_JWT_ALGORITHM": "EdDSA", "GATEWAY_JWT_PUBLIC_KEY_FILE": str(pem_file)}
    tokens = TokenSettings.from_env(env)
    assert tokens.algorithm == "EdDSA"
    assert tokens.public_key == public_pem(key)
    assert not tokens.can_issue


def test_eddsa_with_matching_private_key_can_issue() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    env = {
        "GATEWAY_JWT_ALGORITHM": "EdDSA",
        "GATEWAY_JWT_PUBLIC_KEY": public_pem(key),
        "GATEWAY_JWT_PRIVATE_KEY": private_pem(key),
    }
    assert TokenSettings.from_env(env).can_issue


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"GATEWAY_JWT_ALGORITHM": "EdDSA"}, "GATEWAY_JWT_PUBLIC_KEY"),
        (
            {"GATEWAY_JWT_ALGORITHM": "EdDSA", "GATEWAY_JWT_PUBLIC_KEY": "not a key"},
            "GATEWAY_JWT_PUBLIC_KEY",
        ),
        (
            {"GATEWAY_JWT_ALGORITHM": "EdDSA", "GATEWAY_JWT_PUBLIC_KEY_FILE": "/nonexistent/k"},
            "GATEWAY_JWT_PUBLIC_KEY_FILE",
        ),
        (
            {"GATEWAY_JWT_ALGORITHM": "EdDSA", "GATEWAY_JWT_SECRET": SECRET},
            "GATEWAY_JWT_SECRET",
        ),
        ({"GATEWAY_JWT_SECRET": SECRET, "GATEWAY_JWT_PUBLIC_KEY": "x"}, "GATEWAY_JWT_PUBLIC_KEY"),
    ],
)
def test_bad_key_settings_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        TokenSettings.from_env(env)


def test_key_of_the_wrong_type_is_rejected() -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    env = {"GATEWAY_JWT_ALGORITHM": "EdDSA", "GATEWAY_JWT_PUBLIC_KEY": public_pem(rsa_key)}
    with pytest.raises(ConfigError, match="not a key for EdDSA"):
        TokenSettings.from_env(env)


def test_private_key_must_match_public_key() -> None:
    env = {
        "GATEWAY_JWT_ALGORITHM": "EdDSA",
        "GATEWAY_JWT_PUBLIC_KEY": public_pem(ed25519.Ed25519PrivateKey.generate()),
        "GATEWAY_JWT_PRIVATE_KEY": private_pem(ed25519.Ed25519PrivateKey.generate()),
    }
    with pytest.raises(ConfigError, match="does not match GATEWAY_JWT_PUBLIC_KEY"):
        TokenSettings.from_env(env)


def test_command_line_reports_config_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in list(BASE):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GATEWAY_JWT_SECRET", "short")
    assert main(["issue-token", "--sub", "7d444840-9dc0-11d1-b245-5ffdce74fad2"]) == 2
    assert "GATEWAY_JWT_SECRET" in capsys.readouterr().err


def test_issue_token_prints_a_token_for_the_user(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import jwt

    monkeypatch.setenv("GATEWAY_JWT_SECRET", SECRET)
    monkeypatch.delenv("GATEWAY_JWT_ALGORITHM", raising=False)
    user = "7d444840-9dc0-11d1-b245-5ffdce74fad2"
    assert main(["issue-token", "--sub", user, "--ttl", "120"]) == 0
    claims = jwt.decode(capsys.readouterr().out.strip(), SECRET, algorithms=["HS256"])
    assert claims["sub"] == user
    assert claims["exp"] - claims["iat"] == 120
