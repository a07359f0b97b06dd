"""User accounts: the only module of the gateway that talks to the database.

Every statement filters on ``users.id`` (the distribution column), so on Citus each one
is routed to a single shard.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date

from servicekit.database import Database

INSERT_USER = """
INSERT INTO users (id, password_hash, first_name, second_name, birthdate, biography, city)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""

PASSWORD_HASH = "SELECT password_hash FROM users WHERE id = $1"

UPDATE_PASSWORD_HASH = "UPDATE users SET password_hash = $2 WHERE id = $1 AND password_hash = $3"


@dataclass(frozen=True)
class NewUser:
    first_name: str | None
    second_name: str | None
    birthdate: date | None
    biography: str | None
    city: str | None


class UserStore:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def create(self, user: NewUser, password_hash: str) -> str:
        user_id = uuid.uuid4()
        async with self._database.connection() as conn:
            await conn.execute(
                INSERT_USER,
                user_id,
                password_hash,
                user.first_name,
                user.second_name,
                user.birthdate,
                user.biography,
                user.city,
            )
        return str(user_id)

    async def password_hash(self, user_id: str) -> str | None:
        async with self._database.connection() as conn:
            value = await conn.fetchval(PASSWORD_HASH, uuid.UUID(user_id))
        return None if value is None else str(value)

    async def replace_password_hash(self, user_id: str, old_hash: str, new_hash: str) -> None:
        """Store a hash made with the current parameters (only if nobody changed it meanwhile)."""
        async with self._database.connection() as conn:
            await conn.execute(UPDATE_PASSWORD_HASH, uuid.UUID(user_id), new_hash, old_hash)
