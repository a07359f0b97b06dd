"""Identifiers: dialog ids derived from the pair of users, and time-ordered message ids."""

from __future__ import annotations

import functools
import os
import threading
import time
import uuid

# Fixed forever: changing it would move every dialog to a new id.
DIALOG_NAMESPACE = uuid.UUID("6f1c2a4e-8d3b-5c7a-9e2f-1b4d6a8c0e3f")


def dialog_key(user_a: uuid.UUID, user_b: uuid.UUID) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    """Return ``(dialog_id, user_id1, user_id2)`` with ``user_id1 < user_id2``.

    The id depends only on the unordered pair, so finding a dialog needs no lookup query
    and both directions of a conversation land on the same shard.
    """
    if user_a == user_b:
        raise ValueError("a dialog needs two different users")
    low, high = sorted((user_a, user_b))
    return uuid.uuid5(DIALOG_NAMESPACE, f"{low}:{high}"), low, high


@functools.lru_cache(maxsize=16384)
def dialog_key_text(user_a: str, user_b: str) -> tuple[str, str, str]:
    """``dialog_key`` for user ids in canonical form (lower-case, with hyphens, as the API
    validates them), as strings: the same ids, without a round trip through UUID objects
    on every request. In that form the strings sort as the UUIDs do. Remembered for the
    dialogs in use (about 0.4 KB each)."""
    if user_a == user_b:
        raise ValueError("a dialog needs two different users")
    low, high = (user_a, user_b) if user_a < user_b else (user_b, user_a)
    return str(uuid.uuid5(DIALOG_NAMESPACE, f"{low}:{high}")), low, high


class _Uuid7Clock:
    """UUIDv7 (RFC 9562) with a 12-bit counter, so ids made in one process only increase."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = 0
        self._counter = 0

    def next(self) -> uuid.UUID:
        with self._lock:
            now_ms = time.time_ns() // 1_000_000
            if now_ms > self._last_ms:
                self._last_ms = now_ms
                self._counter = int.from_bytes(os.urandom(2)) & 0x3FF  # room to count up
            else:
                self._counter += 1
                if self._counter > 0xFFF:  # 4096 ids in one millisecond: borrow the next one
                    self._last_ms += 1
                    self._counter = 0
            ms, counter = self._last_ms, self._counter
        rand_b = int.from_bytes(os.urandom(8)) & ((1 << 62) - 1)
        value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand_b
        return uuid.UUID(int=value)


uuid7 = _Uuid7Clock().next


def uuid7_millis(value: uuid.UUID) -> int:
    """The Unix time in milliseconds stored in a UUIDv7."""
    return value.int >> 80
