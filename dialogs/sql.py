"""Every statement the dialogs service runs, in one place.

Each one filters on the distribution column (``dialogs.id`` / ``dialog_messages.dialog_id``)
with one value, so Citus routes it to exactly one shard (``EXPLAIN`` shows ``Task Count: 1``).
"""

# created_at in the page JSON, in one fixed format (UTC, microseconds always): the same as
# store.CREATED_AT_FORMAT gives for a sent message. (Citus refuses non-immutable functions
# such as to_char in RETURNING, so send formats in Python.)
_CREATED_AT = """to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')"""

# Stores a message, or, for a retried send (same sender and client id), answers with the
# message the first attempt stored. Its dialog row must exist (foreign key): see
# CREATE_DIALOG. A retry's answer is a write on purpose (DO UPDATE, not DO NOTHING): its
# commit waits for the synchronous standby, and with it every earlier commit of the shard.
# A first attempt whose wait for the standby was cancelled (a statement timeout while the
# standby was cut off) has committed on the primary alone and is visible there; a read would
# acknowledge it, and a failover would then lose an acknowledged message.
# $1 dialog_id, $2 message id, $3 sender, $4 text, $5 client id
SEND = """
INSERT INTO dialog_messages (dialog_id, id, user_id, content, client_message_id)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (dialog_id, user_id, client_message_id)
DO UPDATE SET client_message_id = EXCLUDED.client_message_id
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

# A page of a dialog, newest first: one row per message, each already as JSON text (the
# service joins them into the answer without decoding). The primary key (dialog_id, id)
# serves the order, so a page costs the same at any depth. One table, no subquery: Citus
# routes it by its "fast path", without planning it again on each execution.
# $1 dialog_id, $2 reader, $3 peer, $4 rows wanted[, $5 cursor: id of the previous page's last]
_PAGE = (
    """
SELECT id,
       json_build_object(
           'id', id,
           'dialog_id', dialog_id,
           'from', user_id,
           'to', CASE WHEN user_id = $2 THEN $3 ELSE $2 END,
           'text', content,
           'created_at', """
    + _CREATED_AT
    + """
       )::text AS message
FROM dialog_messages
WHERE {where}
ORDER BY id DESC
LIMIT $4
"""
)

LIST_FIRST_PAGE = _PAGE.format(where="dialog_id = $1")

LIST_NEXT_PAGE = _PAGE.format(where="dialog_id = $1 AND id < $5")

READY = "SELECT 1"
