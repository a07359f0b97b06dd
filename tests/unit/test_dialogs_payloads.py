import uuid

import orjson
import pytest

from dialogs import cursor, payloads
from dialogs.ids import uuid7
from servicekit.http import ApiError

A, B = str(uuid.uuid4()), str(uuid.uuid4())


def send(**fields: object) -> payloads.SendRequest:
    return payloads.parse_send(orjson.dumps({"from": A, "to": B, "text": "hi"} | fields), 100)


def test_a_valid_send_is_parsed() -> None:
    parsed = send(client_message_id="k-1")
    assert parsed.sender == A
    assert parsed.recipient == B
    assert parsed.text == "hi"
    assert parsed.client_message_id == "k-1"


def test_list_defaults_to_fifty_newest() -> None:
    parsed = payloads.parse_list(orjson.dumps({"user_id": A, "peer_id": B}))
    assert parsed.limit == 50
    assert parsed.before is None


def test_list_cursor_is_decoded() -> None:
    message_id = uuid7()
    body = {"user_id": A, "peer_id": B, "cursor": cursor.encode(message_id), "limit": 3}
    parsed = payloads.parse_list(orjson.dumps(body))
    assert (parsed.before, parsed.limit) == (message_id, 3)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"text": ""}, "text must not be empty"),
        ({"text": " \n\t"}, "text must not be empty"),
        ({"text": "x" * 101}, "at most 100"),
        ({"text": 5}, "text must be a string"),
        ({"text": None}, "text is required"),
        ({"text": "a\x00b"}, "NUL"),
        ({"from": "not-a-uuid"}, "from must be a UUID"),
        ({"from": A + "\n"}, "from must be a UUID"),
        ({"to": 42}, "to must be a UUID"),
        ({"to": A}, "sending to yourself"),
        ({"client_message_id": ""}, "client_message_id"),
        ({"client_message_id": "has space"}, "client_message_id"),
        ({"client_message_id": "x" * 129}, "client_message_id"),
        ({"client_message_id": "key\n"}, "client_message_id"),
    ],
)
def test_bad_send_fields_are_named(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ApiError, match=message) as raised:
        send(**fields)
    assert raised.value.status == 400


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'"\\ud800"', "not valid JSON|JSON object"),
    ],
)
def test_bodies_that_are_not_objects_are_refused(body: bytes, message: str) -> None:
    with pytest.raises(ApiError, match=message):
        payloads.parse_send(body, 100)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"limit": 0}, "between 1 and 100"),
        ({"limit": 101}, "between 1 and 100"),
        ({"limit": True}, "integer"),
        ({"limit": "5"}, "integer"),
        ({"cursor": "nope"}, "cursor"),
        ({"cursor": 7}, "cursor must be a string"),
        ({"peer_id": A}, "different users"),
    ],
)
def test_bad_list_fields_are_named(fields: dict[str, object], message: str) -> None:
    body = orjson.dumps({"user_id": A, "peer_id": B} | fields)
    with pytest.raises(ApiError, match=message):
        payloads.parse_list(body)


def test_ids_come_out_in_canonical_lower_case() -> None:
    parsed = payloads.parse_send(orjson.dumps({"from": A.upper(), "to": B, "text": "x"}), 100)
    assert (parsed.sender, parsed.recipient) == (A, B)
    with pytest.raises(ApiError, match="different users"):
        payloads.parse_send(orjson.dumps({"from": A.upper(), "to": A, "text": "x"}), 100)
