"""The dialogs service against a real PostgreSQL: storage, order, paging, idempotency."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

from servicekit.contract import LEGACY_LIST_PATH, NEXT_CURSOR_HEADER, REPLAYED_HEADER
from tests.support.dialogs_client import DialogsClient, new_user
from tests.support.postgres import PgServer


def count_messages(pg_server: PgServer, database_url: str, where: str = "true") -> int:
    database = database_url.rsplit("/", 1)[1]
    return int(pg_server.psql(f"SELECT count(*) FROM dialog_messages WHERE {where}", database))


def test_send_then_list_round_trip(client: DialogsClient) -> None:
    alice, bob = new_user(), new_user()
    sent = client.send(alice, bob, "hello, Bob")
    assert sent.status_code == 200, sent.text
    message = sent.json()
    assert message["from"] == alice and message["to"] == bob
    assert message["text"] == "hello, Bob"
    assert uuid.UUID(message["id"]).version == 7

    for user, peer in ((alice, bob), (bob, alice)):
        listed = client.list(user, peer)
        assert listed.status_code == 200
        assert listed.json() == [message]
        assert NEXT_CURSOR_HEADER not in listed.headers


def test_both_directions_share_one_dialog_newest_first(client: DialogsClient) -> None:
    alice, bob = new_user(), new_user()
    texts = [f"message {i}" for i in range(6)]
    for i, text in enumerate(texts):
        sender, recipient = (alice, bob) if i % 2 == 0 else (bob, alice)
        assert client.send(sender, recipient, text).status_code == 200

    messages = client.list(alice, bob).json()
    assert [m["text"] for m in messages] == texts[::-1]
    assert [m["from"] for m in messages] == [bob, alice] * 3
    assert len({m["dialog_id"] for m in messages}) == 1


def test_unicode_text_is_stored_as_sent(client: DialogsClient) -> None:
    alice, bob = new_user(), new_user()
    text = "Привет 👋 — «кавычки» \u200b ok"
    assert client.send(alice, bob, text).json()["text"] == text
    assert client.list(bob, alice).json()[0]["text"] == text


def test_other_dialogs_are_not_listed(client: DialogsClient) -> None:
    alice, bob, carol = new_user(), new_user(), new_user()
    client.send(alice, bob, "for bob")
    client.send(alice, carol, "for carol")
    assert [m["text"] for m in client.list(carol, alice).json()] == ["for carol"]


def test_paging_returns_each_message_once_while_new_ones_arrive(
    client: DialogsClient,
) -> None:
    alice, bob = new_user(), new_user()
    first = [client.send(alice, bob, f"old {i}").json()["id"] for i in range(1000)]

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = {"limit": 37} | ({"cursor": cursor} if cursor else {})
        answer = client.list(bob, alice, **page)
        seen.extend(m["id"] for m in answer.json())
        # Newer messages arrive between pages; they must not shift the pages being read.
        client.send(bob, alice, f"new during page {pages}")
        pages += 1
        cursor = answer.headers.get(NEXT_CURSOR_HEADER)
        if cursor is None:
            break

    # The first page already saw nothing new; pages after it see only the old messages.
    assert len(seen) == len(set(seen)) == 1000
    assert set(seen) == set(first)
    assert seen == sorted(seen, reverse=True)
    assert pages == 28  # ceil(1000 / 37)


def test_a_page_that_ends_the_dialog_has_no_next_cursor(client: DialogsClient) -> None:
    alice, bob = new_user(), new_user()
    texts = [f"message {i}" for i in range(4)]
    for text in texts:
        assert client.send(alice, bob, text).status_code == 200

    whole = client.list(bob, alice, limit=4)
    assert [m["text"] for m in whole.json()] == texts[::-1]
    assert NEXT_CURSOR_HEADER not in whole.headers

    first = client.list(bob, alice, limit=2)
    assert [m["text"] for m in first.json()] == ["message 3", "message 2"]
    last = client.list(bob, alice, limit=2, cursor=first.headers[NEXT_CURSOR_HEADER])
    assert [m["text"] for m in last.json()] == ["message 1", "message 0"]
    assert NEXT_CURSOR_HEADER not in last.headers


def test_the_v1_list_keeps_its_wrapped_page_for_older_gateways(client: DialogsClient) -> None:
    """During a rolling upgrade, gateways of the release before v2 still call v1."""
    alice, bob = new_user(), new_user()
    texts = [f"message {i}" for i in range(3)]
    for text in texts:
        assert client.send(alice, bob, text).status_code == 200

    def v1(**page: object) -> dict:
        reply = client.http.post(LEGACY_LIST_PATH, json={"user_id": bob, "peer_id": alice} | page)
        assert reply.status_code == 200, reply.text
        assert NEXT_CURSOR_HEADER not in reply.headers
        body: dict = reply.json()
        return body

    first = v1(limit=2)
    assert [m["text"] for m in first["messages"]] == ["message 2", "message 1"]
    assert first["messages"] == client.list(bob, alice, limit=2).json()
    last = v1(limit=2, cursor=first["next_cursor"])
    assert [m["text"] for m in last["messages"]] == ["message 0"]
    assert last["next_cursor"] is None


def test_repeated_client_message_id_stores_once(
    client: DialogsClient, pg_server: PgServer, dialogs_db: str
) -> None:
    alice, bob = new_user(), new_user()
    first = client.send(alice, bob, "pay 10 EUR", client_message_id="req-1")
    again = client.send(alice, bob, "pay 10 EUR", client_message_id="req-1")
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert count_messages(pg_server, dialogs_db, f"user_id = '{alice}'") == 1

    # The same key for another text is refused, and stores nothing.
    conflict = client.send(alice, bob, "pay 99 EUR", client_message_id="req-1")
    assert conflict.status_code == 409
    assert conflict.json()["code"] == "idempotency_conflict"
    assert REPLAYED_HEADER not in conflict.headers
    assert count_messages(pg_server, dialogs_db, f"user_id = '{alice}'") == 1

    # The same key from the other user, or in another dialog, is a different message.
    assert (
        client.send(bob, alice, "ok", client_message_id="req-1").json()["id"] != first.json()["id"]
    )
    assert count_messages(pg_server, dialogs_db, f"user_id = '{bob}'") == 1


def test_concurrent_sends_with_one_client_id_store_one_message(
    client: DialogsClient, pg_server: PgServer, dialogs_db: str
) -> None:
    alice, bob = new_user(), new_user()
    barrier = threading.Barrier(8)

    def attempt(_: int) -> str:
        api = DialogsClient(str(client.http.base_url))
        try:
            barrier.wait()
            response = api.send(alice, bob, "once", client_message_id="same-key")
            assert response.status_code == 200, response.text
            return str(response.json()["id"])
        finally:
            api.close()

    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(attempt, range(8)))
    assert len(ids) == 1
    assert count_messages(pg_server, dialogs_db, f"user_id = '{alice}'") == 1
