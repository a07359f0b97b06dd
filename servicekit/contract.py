"""The internal API between the gateway and dialogs: paths, headers, limits, error codes.

Both services and the tests import these, so the two sides cannot drift apart. dialogs
answers in the shape of the public API: a page is the JSON array of messages with the next
cursor in a header, a stored message is the public message object, and an error body is
``{message, request_id, code}``. The gateway relays those bodies as bytes, never decoding
and re-encoding them.
"""

from __future__ import annotations

SEND_PATH = "/internal/v1/messages/send"
# v2: the page is the public JSON array, the next cursor in NEXT_CURSOR_HEADER.
LIST_PATH = "/internal/v2/messages/list"
# v1: the page wrapped as {"messages": [...], "next_cursor": ...}. dialogs still serves it
# for the gateways of the release before v2 while a rolling upgrade (dialogs first) is under
# way; remove it one release later.
LEGACY_LIST_PATH = "/internal/v1/messages/list"

# The shared secret the gateway sends; dialogs compares it in constant time.
INTERNAL_TOKEN_HEADER = "X-Internal-Token"
# The caller's request id, kept across the hop (and echoed on every answer).
REQUEST_ID_HEADER = "X-Request-ID"
# On a page with older messages: the opaque cursor of the next page.
NEXT_CURSOR_HEADER = "X-Next-Cursor"
# "true" on the answer to a send whose client message id was already stored.
REPLAYED_HEADER = "Idempotent-Replayed"

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
MAX_CLIENT_MESSAGE_ID_LENGTH = 128

# The "code" of an error body.
BAD_REQUEST = "bad_request"
UNAUTHORIZED = "unauthorized"
PAYLOAD_TOO_LARGE = "payload_too_large"
IDEMPOTENCY_CONFLICT = "idempotency_conflict"
# The database (or the worker holding the dialog) is down: the instance itself is fine.
DB_UNAVAILABLE = "db_unavailable"

# dialogs' answers the gateway passes to the client as they are (body, and Retry-After on
# a 503): the client's own mistakes, a reused idempotency key, and a dialog out of reach.
RELAYED_STATUSES = frozenset({400, 409, 413, 503})
