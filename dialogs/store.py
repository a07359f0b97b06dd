"""Message storage: the only module that talks to the database at request time."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import asyncpg

from dialogs import sql
from dialogs.ids import dialog_key_text, uuid7
from servicekit.database import Database

# The format sql._CREATED_AT gives in a page, so both answers show an instant alike.
CREATED_AT_FORMAT = "%Y-%m-%dT%H:%M:%S.%f+00:00"


@dataclass(frozen=True)
class StoredMessage:
    # Ids as canonical strings, the way the pool's codec returns them.
    id: str
    dialog_id: str
    sender: str
    recipient: str
    text: str
    created_at: str  # ISO 8601 in UTC, always with microseconds (CREATED_AT_FORMAT)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "dialog_id": self.dialog_id,
            "from": self.sender,
            "to": self.recipient,
            "text": self.text,
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class Page:
    messages_json: str  # a JSON array of messages, each built by the database
    last_id: str | None  # id of the page's oldest message, when older ones exist


class MessageStore:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def send(
        self, sender: str, recipient: str, text: str, client_message_id: str | None
    ) -> tuple[StoredMessage, bool]:
        """Store a message; returns it and whether it was already stored by an earlier try.
        User ids in canonical form (see payloads)."""
        dialog_id, user_id1, user_id2 = dialog_key_text(sender, recipient)
        args = (dialog_id, str(uuid7()), sender, text, client_message_id)
        async with self._database.connection() as conn:
            try:
                row = await conn.fetchrow(sql.SEND, *args)
            except asyncpg.ForeignKeyViolationError:
                # The dialog's first message: create the dialog with it, atomically.
                async with conn.transaction():
                    await conn.execute(sql.CREATE_DIALOG, dialog_id, user_id1, user_id2)
                    row = await conn.fetchrow(sql.SEND, *args)
        if row is None:  # pragma: no cover - DO UPDATE ... RETURNING always returns the row
            raise RuntimeError("SEND returned no row")
        # A retry gets the first attempt's message, with its id.
        replayed = str(row["id"]) != args[1]
        created_at = row["created_at"].astimezone(UTC).strftime(CREATED_AT_FORMAT)
        message = StoredMessage(row["id"], dialog_id, sender, recipient, row["content"], created_at)
        return message, replayed

    async def page(self, reader: str, peer: str, limit: int, before: uuid.UUID | None) -> Page:
        """The dialog's messages, newest first, older than ``before`` when given."""
        dialog_id = dialog_key_text(reader, peer)[0]
        # One row more than asked tells whether an older message exists.
        args = (dialog_id, reader, peer, limit + 1)
        if before is None:
            rows = await self._database.read(lambda conn: conn.fetch(sql.LIST_FIRST_PAGE, *args))
        else:
            rows = await self._database.read(
                lambda conn: conn.fetch(sql.LIST_NEXT_PAGE, *args, str(before))
            )
        last_id = rows[limit - 1]["id"] if len(rows) > limit else None
        messages = ",".join(row["message"] for row in rows[:limit])
        return Page(f"[{messages}]", last_id)

    async def ready(self) -> None:
        async with self._database.connection() as conn:
            await conn.fetchval(sql.READY)
