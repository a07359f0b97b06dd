"""Every statement the dialogs service runs, in one place.

Each one filters on the distribution column (``dialogs.id`` / ``dialog_messages.dialog_id``)
with one value, so Citus routes it to exactly one shard (``EXPLAIN`` shows ``Task Count: 1``).
"""

# Stores a message. Its dialog row must exist (foreign key): see CREATE_DIALOG.
# $1 dialog_id, $2 message id, $3 sender, $4 text, $5 client id
SEND = """
INSERT INTO dialog_messages (dialog_id, id, user_id, content, client_message_id)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (dialog_id, user_id, client_message_id) DO NOTHING
RETURNING id, content, created_at
"""

# Run (with SEND, in one transaction) only when SEND found no dialog row: a dialog's first
# message. Every later send is then one statement. The tables are co-located, so the
# transaction stays on one shard group.
# $1 dialog_id, $2 user_id1, $3 user_id2
CREATE_DIALOG = """
INSERT INTO dialogs (id, user_id1, user_id2)
VALUES ($1, $2, $3)
ON CONFLICT (id) DO NOTHING
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
