"""The dialogs schema (see docs/architecture.md for why each piece is there)."""

from dialogs.config import MAX_TEXT_LENGTH_CEILING
from servicekit.migrate import Distribution, Migration

MIGRATION = Migration(
    name="dialogs",
    statements=[
        """
        CREATE TABLE IF NOT EXISTS dialogs (
            id          uuid        NOT NULL,
            user_id1    uuid        NOT NULL,
            user_id2    uuid        NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT dialogs_pkey PRIMARY KEY (id),
            -- One canonical order per pair; id is derived from the pair, so the
            -- primary key also makes the pair unique.
            CONSTRAINT dialogs_users_ordered CHECK (user_id1 < user_id2)
        )
        """,
        f"""
        CREATE TABLE IF NOT EXISTS dialog_messages (
            dialog_id          uuid        NOT NULL,
            id                 uuid        NOT NULL,
            user_id            uuid        NOT NULL,
            content            text        NOT NULL,
            client_message_id  text,
            created_at         timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT dialog_messages_pkey PRIMARY KEY (dialog_id, id),
            CONSTRAINT dialog_messages_client_id_key
                UNIQUE (dialog_id, user_id, client_message_id),
            CONSTRAINT dialog_messages_content_length
                CHECK (char_length(content) BETWEEN 1 AND {MAX_TEXT_LENGTH_CEILING}),
            CONSTRAINT dialog_messages_client_id_length
                CHECK (char_length(client_message_id) BETWEEN 1 AND 128)
        )
        """,
    ],
    distributions=[
        Distribution("dialogs", "id"),
        Distribution("dialog_messages", "dialog_id", colocate_with="dialogs"),
    ],
    after_distribution=[
        """
        DO $$
        BEGIN
            IF NOT EXISTS (
                SELECT FROM pg_constraint WHERE conname = 'dialog_messages_dialog_fkey'
            ) THEN
                ALTER TABLE dialog_messages ADD CONSTRAINT dialog_messages_dialog_fkey
                    FOREIGN KEY (dialog_id) REFERENCES dialogs (id);
            END IF;
        END
        $$
        """,
    ],
)

# What the service's statements (dialogs/sql.py) need, for a deployment that runs the
# service as a role other than the schema's owner (the tests do): SELECT and INSERT, and
# UPDATE of dialog_messages, whose client_message_id a retried send rewrites to itself
# (sql.SEND says why; Citus refuses a grant on a column list).
SERVICE_GRANTS = (
    "GRANT SELECT, INSERT ON dialogs, dialog_messages TO {role}",
    "GRANT UPDATE ON dialog_messages TO {role}",
)
