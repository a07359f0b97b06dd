"""The public API end to end: gateway + 2 dialogs instances + a real PostgreSQL."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.gateway import (
    JWT_SECRET,
    PASSWORD,
    Stack,
    login,
    make_token,
    new_user,
    register,
    running_stack,
    unsigned_token,
)
from tests.support.postgres import PgServer


@pytest.fixture(scope="module")
def database(pg_server: PgServer) -> Iterator[str]:
    name = f"gw_{uuid.uuid4().hex[:12]}"
    pg_server.psql(f"CREATE DATABASE {name}")
    yield name
    pg_server.psql(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def stack(pg_server: PgServer, database: str) -> Iterator[Stack]:
    env = {
        "GATEWAY_LOGIN_MAX_FAILURES": "3",
        "GATEWAY_LOGIN_MAX_FAILURES_PER_ADDRESS": "6",
        # The tests' own loopback address is the edge: X-Forwarded-For names the client.
        "GATEWAY_TRUSTED_PROXIES": "127.0.0.1",
    }
    with running_stack(pg_server.dsn_for(database), gateway_env=env) as running:
        yield running


@pytest.fixture
def api(stack: Stack) -> Iterator[httpx.Client]:
    # Each test from its own address, so that login throttling of one does not leak.
    address = f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.1"
    with httpx.Client(
        base_url=stack.url, timeout=10, headers={"X-Forwarded-For": address}
    ) as client:
        yield client


def sql(pg_server: PgServer, database: str, statement: str) -> str:
    return pg_server.psql(statement, database)


def stored(pg_server: PgServer, database: str, text: str) -> int:
    quoted = text.replace("'", "''")
    return int(
        sql(pg_server, database, f"SELECT count(*) FROM dialog_messages WHERE content = '{quoted}'")
    )


def send(
    api: httpx.Client, auth: dict[str, str], peer: str, text: str, **headers: str
) -> httpx.Response:
    return api.post(f"/dialog/{peer}/send", json={"text": text}, headers=auth | headers)


def test_register_login_send_and_list_between_two_users(
    api: httpx.Client, pg_server: PgServer, database: str
) -> None:
    alice = register(
        api,
        first_name="Alice",
        second_name="Liddell",
        birthdate="1852-05-04",
        biography="Curious",
        city="Oxford",
    )
    bob = register(api)
    alice_auth = {"Authorization": f"Bearer {login(api, alice)}"}
    bob_auth = {"Authorization": f"Bearer {login(api, bob)}"}

    first = send(api, alice_auth, bob, "hi Bob")
    assert first.status_code == 200, first.text
    assert (first.json()["from"], first.json()["to"]) == (alice, bob)
    assert send(api, bob_auth, alice, "hello Alice").status_code == 200

    for auth, peer in ((alice_auth, bob), (bob_auth, alice)):
        listed = api.get(f"/dialog/{peer}/list", headers=auth)
        assert listed.status_code == 200
        assert [(m["from"], m["to"], m["text"]) for m in listed.json()] == [
            (bob, alice, "hello Alice"),
            (alice, bob, "hi Bob"),
        ]
        assert all(m["id"] and m["created_at"] for m in listed.json())

    row = sql(
        pg_server,
        database,
        f"SELECT first_name, city, birthdate, password_hash FROM users WHERE id = '{alice}'",
    )
    first_name, city, birthdate, password_hash = row.split("|")
    assert (first_name, city, birthdate) == ("Alice", "Oxford", "1852-05-04")
    assert password_hash.startswith("$argon2id$")
    assert PASSWORD not in password_hash


def test_a_third_user_cannot_read_another_pair_s_dialog(api: httpx.Client) -> None:
    alice, alice_auth = new_user(api)
    bob, _ = new_user(api)
    _, carol_auth = new_user(api)
    assert send(api, alice_auth, bob, "private to Bob").status_code == 200
    # The dialog is always the token user's own: Carol asking for Alice or Bob gets hers.
    for peer in (alice, bob):
        response = api.get(f"/dialog/{peer}/list", headers=carol_auth)
        assert response.status_code == 200
        assert response.json() == []
    assert send(api, carol_auth, alice, "hi Alice, Carol here").status_code == 200
    assert [m["text"] for m in api.get(f"/dialog/{bob}/list", headers=alice_auth).json()] == [
        "private to Bob"
    ]


def bad_tokens(user: str) -> list[tuple[str, dict[str, str]]]:
    now = int(time.time())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    bearer = "Bearer "
    return [
        ("missing", {}),
        ("not bearer", {"Authorization": f"Basic {user}"}),
        ("malformed", {"Authorization": bearer + "abc.def"}),
        (
            "expired",
            {
                "Authorization": bearer
                + make_token({"sub": user, "iat": now - 7200, "exp": now - 3600})
            },
        ),
        ("not yet valid", {"Authorization": bearer + make_token({"sub": user, "nbf": now + 3600})}),
        (
            "issued in the future",
            {"Authorization": bearer + make_token({"sub": user, "iat": now + 3600})},
        ),
        ("wrongly signed", {"Authorization": bearer + make_token({"sub": user}, key="x" * 40)}),
        (
            "alg none",
            {"Authorization": bearer + unsigned_token({"sub": user, "iat": now, "exp": now + 600})},
        ),
        (
            "unknown algorithm",
            {
                "Authorization": bearer
                + make_token({"sub": user}, algorithm="HS512", key=JWT_SECRET * 2)
            },
        ),
        (
            "other key type",
            {"Authorization": bearer + make_token({"sub": user}, key=rsa_key, algorithm="RS256")},
        ),
        ("missing sub", {"Authorization": bearer + make_token(drop=("sub",))}),
        ("sub not a user id", {"Authorization": bearer + make_token({"sub": "admin"})}),
        ("missing exp", {"Authorization": bearer + make_token({"sub": user}, drop=("exp",))}),
        ("missing iat", {"Authorization": bearer + make_token({"sub": user}, drop=("iat",))}),
    ]


def test_every_bad_token_is_401_and_stores_nothing(
    api: httpx.Client, pg_server: PgServer, database: str
) -> None:
    alice, _ = new_user(api)
    bob, bob_auth = new_user(api)
    assert send(api, bob_auth, alice, "bob's only message").status_code == 200
    for case, headers in bad_tokens(alice):
        text = f"forged: {case}"
        response = api.post(f"/dialog/{bob}/send", json={"text": text}, headers=headers)
        assert response.status_code == 401, (case, response.text)
        challenge = response.headers["WWW-Authenticate"]
        assert challenge.startswith('Bearer realm="dialogs"'), case
        if case != "missing":
            assert 'error="invalid_token"' in challenge, case
        assert response.json()["code"] == "unauthorized"
        assert stored(pg_server, database, text) == 0, case
        listed = api.get(f"/dialog/{bob}/list", headers=headers)
        assert listed.status_code == 401, case
        assert "bob's only message" not in listed.text


def test_the_sender_is_the_token_s_user_whatever_the_body_says(
    api: httpx.Client, pg_server: PgServer, database: str
) -> None:
    alice, alice_auth = new_user(api)
    bob, _ = new_user(api)
    carol, _ = new_user(api)
    response = api.post(
        f"/dialog/{bob}/send",
        json={"text": "spoof attempt", "from": carol, "to": alice},
        headers=alice_auth,
    )
    assert response.status_code == 200
    assert (response.json()["from"], response.json()["to"]) == (alice, bob)
    sender = sql(
        pg_server, database, "SELECT user_id FROM dialog_messages WHERE content = 'spoof attempt'"
    )
    assert sender == alice


def test_unknown_user_and_wrong_password_get_the_same_answer(api: httpx.Client) -> None:
    user = register(api)
    unknown = api.post("/login", json={"id": str(uuid.uuid4()), "password": PASSWORD})
    wrong = api.post("/login", json={"id": user, "password": "not the password"})
    assert unknown.status_code == wrong.status_code == 404

    def without_request_id(response: httpx.Response) -> dict[str, Any]:
        return {k: v for k, v in response.json().items() if k != "request_id"}

    assert without_request_id(unknown) == without_request_id(wrong)
    assert set(unknown.headers) - {"date"} == set(wrong.headers) - {"date"}


def test_repeated_failures_for_one_user_are_throttled(api: httpx.Client, stack: Stack) -> None:
    user = register(api)
    for _ in range(3):
        assert api.post("/login", json={"id": user, "password": "guess-guess"}).status_code == 404
    # Even the right password waits now, and from another address too.
    for address in ("10.200.0.1", "10.200.0.2"):
        response = api.post(
            "/login", json={"id": user, "password": PASSWORD}, headers={"X-Forwarded-For": address}
        )
        assert response.status_code == 429
        assert 1 <= int(response.headers["Retry-After"]) <= 300
        assert response.json()["code"] == "too_many_attempts"


def test_repeated_failures_from_one_address_are_throttled(api: httpx.Client) -> None:
    for _ in range(6):
        response = api.post("/login", json={"id": str(uuid.uuid4()), "password": "guess-guess"})
        assert response.status_code == 404
    user = register(api)
    throttled = api.post("/login", json={"id": user, "password": PASSWORD})
    assert throttled.status_code == 429
    assert "Retry-After" in throttled.headers
    elsewhere = api.post(
        "/login", json={"id": user, "password": PASSWORD}, headers={"X-Forwarded-For": "10.201.0.1"}
    )
    assert elsewhere.status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"id": "42", "password": PASSWORD},
        {"id": str(uuid.uuid4())},
        {"id": str(uuid.uuid4()), "password": 12345678},
        {"id": str(uuid.uuid4()), "password": ""},
        ["not", "an", "object"],
    ],
)
def test_login_rejects_bad_bodies(api: httpx.Client, body: object) -> None:
    response = api.post("/login", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "bad_request"


def test_login_wants_json(api: httpx.Client) -> None:
    response = api.post("/login", data={"id": str(uuid.uuid4()), "password": PASSWORD})
    assert response.status_code == 415


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"password": "short"},
        {"password": PASSWORD, "birthdate": "04.05.1852"},
        {"password": PASSWORD, "birthdate": "1852-13-01"},
        {"password": PASSWORD, "first_name": "x" * 101},
        {"password": PASSWORD, "city": "nul\x00"},
        {"password": PASSWORD, "biography": ["list"]},
    ],
)
def test_register_rejects_bad_bodies_and_stores_nothing(
    api: httpx.Client, pg_server: PgServer, database: str, body: dict[str, object]
) -> None:
    before = sql(pg_server, database, "SELECT count(*) FROM users")
    response = api.post("/user/register", json=body)
    assert response.status_code == 400, response.text
    assert sql(pg_server, database, "SELECT count(*) FROM users") == before


def test_paging_with_the_cursor_header(api: httpx.Client) -> None:
    alice, alice_auth = new_user(api)
    bob, bob_auth = new_user(api)
    texts = [f"message {i}" for i in range(5)]
    for text in texts:
        assert send(api, alice_auth, bob, text).status_code == 200
    seen: list[str] = []
    params: dict[str, str | int] = {"limit": 2}
    while True:
        page = api.get(f"/dialog/{alice}/list", params=params, headers=bob_auth)
        assert page.status_code == 200
        seen += [m["text"] for m in page.json()]
        cursor = page.headers.get("X-Next-Cursor")
        if not cursor:
            break
        params = {"limit": 2, "cursor": cursor}
    assert seen == texts[::-1]


def test_a_cursor_the_service_did_not_issue_is_400(api: httpx.Client) -> None:
    _alice, alice_auth = new_user(api)
    response = api.get(
        f"/dialog/{uuid.uuid4()}/list", params={"cursor": "A" * 22}, headers=alice_auth
    )
    assert response.status_code == 400
    assert response.json()["code"] == "bad_request"


def test_idempotency_key_stores_one_message(
    api: httpx.Client, pg_server: PgServer, database: str
) -> None:
    _alice, alice_auth = new_user(api)
    bob, _ = new_user(api)
    key = {"Idempotency-Key": f"key-{uuid.uuid4()}"}
    first = send(api, alice_auth, bob, "exactly once", **key)
    again = send(api, alice_auth, bob, "exactly once", **key)
    assert first.status_code == again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert again.json()["id"] == first.json()["id"]
    assert stored(pg_server, database, "exactly once") == 1
    conflict = send(api, alice_auth, bob, "something else", **key)
    assert conflict.status_code == 409
    assert stored(pg_server, database, "something else") == 0


def test_text_limits(api: httpx.Client, pg_server: PgServer, database: str) -> None:
    _, alice_auth = new_user(api)
    bob, _ = new_user(api)
    longest = "я" * 4096
    assert send(api, alice_auth, bob, longest).status_code == 200
    too_long = send(api, alice_auth, bob, longest + "!")
    assert too_long.status_code == 400
    assert "4096" in too_long.json()["message"]
    assert stored(pg_server, database, longest + "!") == 0
    oversized = api.post(
        f"/dialog/{bob}/send",
        content=b'{"text":"' + b"x" * 70_000 + b'"}',
        headers=alice_auth | {"Content-Type": "application/json"},
    )
    assert oversized.status_code == 413
    assert "X-Request-ID" in oversized.headers


def test_request_id_is_echoed(api: httpx.Client) -> None:
    _, alice_auth = new_user(api)
    response = api.get(
        f"/dialog/{uuid.uuid4()}/list", headers=alice_auth | {"X-Request-ID": "client-trace-7"}
    )
    assert response.headers["X-Request-ID"] == "client-trace-7"
