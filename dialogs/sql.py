"""Every statement the dialogs service runs, in one place.

Each one filters on the distribution column (``dialogs.id`` / ``dialog_messages.dialog_id``)
with one value, so Citus routes it to exactly one shard (``EXPLAIN`` shows ``Task Count: 1``).
"""

# Creates the dialog row on its first message and stores the message, in one statement:
# both tables are co-located, so this is a single-shard transaction.
# $1 dialog_id, $2 user_id1, $3 user_id2, $4 message id, $5 sender, $6 text, $7 client id
SEND = """
WITH new_dialog AS (
    INSERT INTO dialogs (id, user_id1, user_id2)
    VALUES ($1, $2, $3)
    ON CONFLICT (id) DO NOTHING
)
INSERT INTO dialog_messages (dialog_id, id, user_id, content, client_message_id)
VALUES ($1, $4, $5, $6, $7)
ON CONFLICT (dialog_id, user_id, client_message_id) DO NOTHING
RETURNING id, content, created_at
"""

# A retried send: the message stored by the first attempt.
# $1 dialog_id, $2 sender, $3 client id
FIND_BY_CLIENT_ID = """
SELECT id, content, created_at
FROM dialog_messages
WHERE dialog_id = $1 AND user_id = $2 AND client_message_id = $3
"""

# Newest first; the primary key (dialog_id, id) serves the order, so the cost of a page
# does not depend on how deep it is.
# $1 dialog_id, $2 limit
LIST_FIRST_PAGE = """
SELECT id, user_id, content, created_at
FROM dialog_messages
WHERE dialog_id = $1
ORDER BY id DESC
LIMIT $2
"""

# $1 dialog_id, $2 cursor (id of the last message of the previous page), $3 limit
LIST_NEXT_PAGE = """
SELECT id, user_id, content, created_at
FROM dialog_messages
WHERE dialog_id = $1 AND id < $2
ORDER BY id DESC
LIMIT $3
"""

READY = "SELECT 1"
