"""Bad input and bad credentials: a 4xx with a message, and nothing stored."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from servicekit.contract import LIST_PATH as LIST
from servicekit.contract import SEND_PATH as SEND
from tests.support.dialogs_client import DialogsClient, new_user
from tests.support.postgres import PgServer
from tests.support.processes import INTERNAL_TOKEN, ServiceProcess

A, B = new_user(), new_user()
OK_SEND = {"from": A, "to": B, "text": "hello"}
OK_LIST = {"user_id": A, "peer_id": B}


def stored(pg_server: PgServer, database_url: str) -> tuple[int, int]:
    database = database_url.rsplit("/", 1)[1]
    messages = pg_server.psql("SELECT count(*) FROM dialog_messages", database)
    dialogs = pg_server.psql("SELECT count(*) FROM dialogs", database)
    return int(messages), int(dialogs)


# (name, path, raw body or JSON, extra headers, expected status, part of the message)
CASES: list[tuple[str, str, Any, dict[str, str], int, str]] = [
    ("malformed json", SEND, b'{"from": ', {}, 400, "not valid JSON"),
    ("empty body", SEND, b"", {}, 400, "not valid JSON"),
    ("array body", SEND, [OK_SEND], {}, 400, "JSON object"),
    ("string body", SEND, "hello", {}, 400, "JSON object"),
    ("missing from", SEND, {"to": B, "text": "x"}, {}, 400, "from is required"),
    ("missing to", SEND, {"from": A, "text": "x"}, {}, 400, "to is required"),
    ("missing text", SEND, {"from": A, "to": B}, {}, 400, "text is required"),
    ("from not a uuid", SEND, OK_SEND | {"from": "alice"}, {}, 400, "from must be a UUID"),
    ("to is a number", SEND, OK_SEND | {"to": 12}, {}, 400, "to must be a UUID"),
    ("uuid without dashes", SEND, OK_SEND | {"to": B.replace("-", "")}, {}, 400, "UUID"),
    ("text is a number", SEND, OK_SEND | {"text": 1}, {}, 400, "text must be a string"),
    ("text is a list", SEND, OK_SEND | {"text": ["a"]}, {}, 400, "text must be a string"),
    ("empty text", SEND, OK_SEND | {"text": ""}, {}, 400, "must not be empty"),
    ("whitespace text", SEND, OK_SEND | {"text": "  \n "}, {}, 400, "must not be empty"),
    ("text over limit", SEND, OK_SEND | {"text": "x" * 4097}, {}, 400, "at most 4096"),
    ("nul in text", SEND, OK_SEND | {"text": "a\u0000b"}, {}, 400, "NUL"),
    (
        "lone surrogate",
        SEND,
        b'{"from":"%s","to":"%s","text":"\\ud800"}' % (A.encode(), B.encode()),
        {},
        400,
        "not valid JSON",
    ),
    ("send to yourself", SEND, OK_SEND | {"to": A}, {}, 400, "yourself"),
    (
        "client id with space",
        SEND,
        OK_SEND | {"client_message_id": "a b"},
        {},
        400,
        "client_message_id",
    ),
    (
        "client id too long",
        SEND,
        OK_SEND | {"client_message_id": "k" * 129},
        {},
        400,
        "client_message_id",
    ),
    ("oversized body", SEND, OK_SEND | {"text": "x" * 70_000}, {}, 413, "exceeds"),
    ("list: bad cursor", LIST, OK_LIST | {"cursor": "abc"}, {}, 400, "cursor"),
    ("list: v4 cursor", LIST, OK_LIST | {"cursor": "AAAAAAAAQAAAAAAAAAAAAA"}, {}, 400, "cursor"),
    ("list: limit zero", LIST, OK_LIST | {"limit": 0}, {}, 400, "between 1 and 100"),
    ("list: limit too big", LIST, OK_LIST | {"limit": 1000}, {}, 400, "between 1 and 100"),
    ("list: limit string", LIST, OK_LIST | {"limit": "10"}, {}, 400, "integer"),
    ("list: missing peer", LIST, {"user_id": A}, {}, 400, "peer_id is required"),
    ("no credential", SEND, OK_SEND, {"X-Internal-Token": ""}, 401, "internal credential"),
    (
        "wrong credential",
        SEND,
        OK_SEND,
        {"X-Internal-Token": INTERNAL_TOKEN + "x"},
        401,
        "internal credential",
    ),
    (
        "credential prefix",
        SEND,
        OK_SEND,
        {"X-Internal-Token": INTERNAL_TOKEN[:-1]},
        401,
        "internal credential",
    ),
    (
        "list without credential",
        LIST,
        OK_LIST,
        {"X-Internal-Token": ""},
        401,
        "internal credential",
    ),
    ("unknown route", "/internal/v1/messages/delete", OK_SEND, {}, 404, ""),
]


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "message"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_request_is_refused_and_stores_nothing(
    client: DialogsClient,
    pg_server: PgServer,
    dialogs_db: str,
    path: str,
    body: Any,
    headers: dict[str, str],
    status: int,
    message: str,
) -> None:
    before = stored(pg_server, dialogs_db)
    content = body if isinstance(body, bytes) else httpx.Request("POST", "/", json=body).content
    response = client.http.post(
        path, content=content, headers={"Content-Type": "application/json"} | headers
    )
    assert response.status_code == status, response.text
    error = response.json()
    assert message in error["message"]
    assert error["request_id"] == response.headers["X-Request-ID"]
    assert error["code"]
    assert stored(pg_server, dialogs_db) == before


def test_there_are_at_least_twenty_bad_inputs() -> None:
    assert len([c for c in CASES if c[4] == 400]) >= 20


def test_health_endpoints_need_no_credential(dialogs_service: ServiceProcess) -> None:
    assert httpx.get(f"{dialogs_service.url}/healthz").status_code == 200
    assert httpx.get(f"{dialogs_service.url}/readyz").status_code == 200


def test_request_id_is_taken_from_the_caller(client: DialogsClient) -> None:
    given = f"trace-{uuid.uuid4().hex}"
    response = client.http.post(LIST, json=OK_LIST, headers={"X-Request-ID": given})
    assert response.headers["X-Request-ID"] == given
    unsafe = client.http.post(LIST, json=OK_LIST, headers={"X-Request-ID": "a b\tc"})
    assert unsafe.headers["X-Request-ID"] != "a b\tc"
    assert len(unsafe.headers["X-Request-ID"]) == 32
