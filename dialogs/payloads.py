"""Parsing and validation of the internal API's JSON bodies.

Every failure raises ApiError(400) with a message that names the field, before anything
touches the database.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from dialogs import cursor as cursor_codec
from servicekit.contract import DEFAULT_PAGE_SIZE, MAX_CLIENT_MESSAGE_ID_LENGTH, MAX_PAGE_SIZE
from servicekit.http import bad_request

__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE"]
_CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
# Printable ASCII, no spaces.
_CLIENT_ID = re.compile(rf"[\x21-\x7e]{{1,{MAX_CLIENT_MESSAGE_ID_LENGTH}}}")


# User ids are canonical strings (lower-case UUIDs with hyphens): the form the database
# codec and the dialog key take.
@dataclass(frozen=True)
class SendRequest:
    sender: str
    recipient: str
    text: str
    client_message_id: str | None


@dataclass(frozen=True)
class ListRequest:
    user: str
    peer: str
    limit: int
    before: uuid.UUID | None


def parse_object(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise bad_request("body is not valid JSON") from None
    if not isinstance(data, dict):
        raise bad_request("body must be a JSON object")
    return data


def user_id(data: dict[str, Any], field: str) -> str:
    """The id in canonical form (lower-case)."""
    value = data.get(field)
    if value is None:
        raise bad_request(f"{field} is required")
    if not isinstance(value, str) or not _CANONICAL_UUID.fullmatch(value):
        raise bad_request(f"{field} must be a UUID")
    return value.lower()


def message_text(value: Any, max_length: int) -> str:
    if value is None:
        raise bad_request("text is required")
    if not isinstance(value, str):
        raise bad_request("text must be a string")
    if not value.strip():
        raise bad_request("text must not be empty")
    if len(value) > max_length:
        raise bad_request(f"text must be at most {max_length} characters")
    if "\x00" in value:
        raise bad_request("text must not contain NUL characters")
    return value


def client_message_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _CLIENT_ID.fullmatch(value):
        raise bad_request(
            f"client_message_id must be 1 to {MAX_CLIENT_MESSAGE_ID_LENGTH}"
            " printable ASCII characters"
        )
    return value


def page_size(value: Any) -> int:
    if value is None:
        return DEFAULT_PAGE_SIZE
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request("limit must be an integer")
    if not 1 <= value <= MAX_PAGE_SIZE:
        raise bad_request(f"limit must be between 1 and {MAX_PAGE_SIZE}")
    return value


def page_cursor(value: Any) -> uuid.UUID | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad_request("cursor must be a string")
    try:
        return cursor_codec.decode(value)
    except cursor_codec.InvalidCursor as error:
        raise bad_request(str(error)) from None


def parse_send(body: bytes, max_text_length: int) -> SendRequest:
    data = parse_object(body)
    sender = user_id(data, "from")
    recipient = user_id(data, "to")
    if sender == recipient:
        raise bad_request(
            "from and to must be different users: sending to yourself is not supported"
        )
    return SendRequest(
        sender,
        recipient,
        message_text(data.get("text"), max_text_length),
        client_message_id(data.get("client_message_id")),
    )


def parse_list(body: bytes) -> ListRequest:
    data = parse_object(body)
    user = user_id(data, "user_id")
    peer = user_id(data, "peer_id")
    if user == peer:
        raise bad_request("user_id and peer_id must be different users")
    return ListRequest(user, peer, page_size(data.get("limit")), page_cursor(data.get("cursor")))
