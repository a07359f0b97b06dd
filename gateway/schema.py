"""The gateway's schema: the users table, distributed by user id when Citus is present.

It lives in the same database as the dialogs tables and is applied by ``gateway migrate``
(idempotent; the shared advisory lock serialises it with ``dialogs migrate``).
"""

from servicekit.migrate import Distribution, Migration

MIGRATION = Migration(
    name="gateway",
    statements=[
        """
        CREATE TABLE IF NOT EXISTS users (
            id             uuid        NOT NULL,
            password_hash  text        NOT NULL,
            first_name     text,
            second_name    text,
            birthdate      date,
            biography      text,
            city           text,
            created_at     timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT users_pkey PRIMARY KEY (id),
            CONSTRAINT users_password_hash_argon2 CHECK (password_hash LIKE '$argon2id$%'),
            CONSTRAINT users_first_name_length CHECK (char_length(first_name) <= 100),
            CONSTRAINT users_second_name_length CHECK (char_length(second_name) <= 100),
            CONSTRAINT users_biography_length CHECK (char_length(biography) <= 4000),
            CONSTRAINT users_city_length CHECK (char_length(city) <= 100)
        )
        """,
    ],
    # Own co-location group: users are looked up by id alone, never joined with dialogs.
    distributions=[Distribution("users", "id", colocate_with="none")],
)
