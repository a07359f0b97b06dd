"""Validation of what clients send: JSON bodies, path ids, query parameters, headers.

Every failure raises ApiError (400, or 415 for a body that is not JSON) with a message
naming the field, before anything reaches the database or a dialogs instance. The rules
match openapi.yaml, which the property-based tests check against the running gateway.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Any

import orjson
from sanic import Request

from gateway.passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH
from gateway.tokens import CANONICAL_UUID
from gateway.users import NewUser
from servicekit.contract import DEFAULT_PAGE_SIZE, MAX_CLIENT_MESSAGE_ID_LENGTH, MAX_PAGE_SIZE
from servicekit.http import ApiError, bad_request

MAX_NAME_LENGTH = 100
MAX_BIOGRAPHY_LENGTH = 4000
MAX_CURSOR_LENGTH = 64
_CURSOR = re.compile(r"[A-Za-z0-9_-]+")
# Printable ASCII, no spaces: it becomes the client message id.
_IDEMPOTENCY_KEY = re.compile(rf"[\x21-\x7e]{{1,{MAX_CLIENT_MESSAGE_ID_LENGTH}}}")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def json_object(request: Request) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "")
    if content_type.split(";", 1)[0].strip().lower() != "application/json":
        raise ApiError(415, "Content-Type must be application/json", "unsupported_media_type")
    try:
        data = orjson.loads(request.body)
    except orjson.JSONDecodeError:
        raise bad_request("body is not valid JSON") from None
    if not isinstance(data, dict):
        raise bad_request("body must be a JSON object")
    return data


def user_id(value: Any, field: str) -> str:
    """A user id in canonical form (lower-case UUID with hyphens)."""
    if (
        not isinstance(value, str)
        or not value.isascii()
        or not CANONICAL_UUID.fullmatch(value.lower())
    ):
        raise bad_request(f"{field} must be a user id (a UUID)")
    return value.lower()


def _text(data: dict[str, Any], field: str, max_length: int) -> str | None:
    value = data.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad_request(f"{field} must be a string")
    if len(value) > max_length:
        raise bad_request(f"{field} must be at most {max_length} characters")
    if "\x00" in value:
        raise bad_request(f"{field} must not contain NUL characters")
    return value


def password(data: dict[str, Any], *, new: bool) -> str:
    value = data.get("password")
    if not isinstance(value, str):
        raise bad_request("password is required and must be a string")
    shortest = MIN_PASSWORD_LENGTH if new else 1
    if not shortest <= len(value) <= MAX_PASSWORD_LENGTH:
        raise bad_request(f"password must be {shortest} to {MAX_PASSWORD_LENGTH} characters long")
    return value


@dataclass(frozen=True)
class Login:
    user_id: str
    password: str


def parse_login(request: Request) -> Login:
    data = json_object(request)
    return Login(user_id(data.get("id"), "id"), password(data, new=False))


@dataclass(frozen=True)
class Registration:
    user: NewUser
    password: str


def parse_registration(request: Request) -> Registration:
    data = json_object(request)
    secret = password(data, new=True)
    return Registration(
        NewUser(
            first_name=_text(data, "first_name", MAX_NAME_LENGTH),
            second_name=_text(data, "second_name", MAX_NAME_LENGTH),
            birthdate=_birthdate(data.get("birthdate")),
            biography=_text(data, "biography", MAX_BIOGRAPHY_LENGTH),
            city=_text(data, "city", MAX_NAME_LENGTH),
        ),
        secret,
    )


def _birthdate(value: Any) -> date | None:
    if value is None:
        return None
    if isinstance(value, str) and _DATE.fullmatch(value):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise bad_request("birthdate must be a date like 1990-12-31")


def message_text(request: Request, max_length: int) -> str:
    value = json_object(request).get("text")
    if value is None:
        raise bad_request("text is required")
    if not isinstance(value, str):
        raise bad_request("text must be a string")
    if len(value) > max_length:
        raise bad_request(f"text must be at most {max_length} characters")
    if not value.strip():
        raise bad_request("text must not be empty")
    if "\x00" in value:
        raise bad_request("text must not contain NUL characters")
    return value


def idempotency_key(request: Request) -> str | None:
    value: str | None = request.headers.get("idempotency-key")
    if value is None:
        return None
    if not _IDEMPOTENCY_KEY.fullmatch(value):
        raise bad_request(
            f"Idempotency-Key must be 1 to {MAX_CLIENT_MESSAGE_ID_LENGTH}"
            " printable ASCII characters"
        )
    return value


@dataclass(frozen=True)
class Page:
    limit: int
    cursor: str | None


def page(request: Request) -> Page:
    raw_limit = request.args.get("limit")
    limit = DEFAULT_PAGE_SIZE
    if raw_limit is not None:
        if not raw_limit.isascii() or not raw_limit.isdigit() or len(raw_limit) > 3:
            raise bad_request(f"limit must be an integer from 1 to {MAX_PAGE_SIZE}")
        limit = int(raw_limit)
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise bad_request(f"limit must be an integer from 1 to {MAX_PAGE_SIZE}")
    cursor = request.args.get("cursor")
    if cursor is not None and (len(cursor) > MAX_CURSOR_LENGTH or not _CURSOR.fullmatch(cursor)):
        raise bad_request("cursor is malformed")
    return Page(limit, cursor)
