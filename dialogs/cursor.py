"""Opaque paging cursors.

A cursor is the id of the last message a page returned, base64url-encoded. Clients must
treat it as opaque; the encoding may change.
"""

from __future__ import annotations

import base64
import binascii
import uuid


class InvalidCursor(ValueError):
    pass


def encode(message_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(message_id.bytes).rstrip(b"=").decode()


def decode(cursor: str) -> uuid.UUID:
    if len(cursor) != 22:
        raise InvalidCursor("cursor is malformed")
    try:
        raw = base64.urlsafe_b64decode(cursor + "==")
    except (binascii.Error, ValueError):
        raise InvalidCursor("cursor is malformed") from None
    if len(raw) != 16:  # the decoder silently drops characters outside the alphabet
        raise InvalidCursor("cursor is malformed")
    value = uuid.UUID(bytes=raw)
    if value.version != 7 or encode(value) != cursor:
        raise InvalidCursor("cursor is malformed")
    return value
