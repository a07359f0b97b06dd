"""A small client for the dialogs internal API, used by the pg and citus tiers."""

from __future__ import annotations

import builtins
import uuid
from typing import Any

import httpx

from servicekit import contract
from tests.support.processes import INTERNAL_TOKEN


class DialogsClient:
    def __init__(self, base_url: str, token: str = INTERNAL_TOKEN, timeout: float = 10) -> None:
        self.http = httpx.Client(
            base_url=base_url, headers={contract.INTERNAL_TOKEN_HEADER: token}, timeout=timeout
        )

    def send(
        self, sender: str, recipient: str, text: str, client_message_id: str | None = None
    ) -> httpx.Response:
        body: dict[str, Any] = {"from": sender, "to": recipient, "text": text}
        if client_message_id is not None:
            body["client_message_id"] = client_message_id
        return self.http.post(contract.SEND_PATH, json=body)

    def list(self, user: str, peer: str, **page: Any) -> httpx.Response:
        return self.http.post(contract.LIST_PATH, json={"user_id": user, "peer_id": peer} | page)

    # builtins.list: inside this class, "list" is the method above.
    def all_messages(self, user: str, peer: str, limit: int = 100) -> builtins.list[dict[str, Any]]:
        """Every message of the dialog, following cursors to the end."""
        messages: builtins.list[dict[str, Any]] = []
        cursor = None
        while True:
            page = {"limit": limit} | ({"cursor": cursor} if cursor else {})
            response = self.list(user, peer, **page)
            response.raise_for_status()
            messages.extend(response.json())
            cursor = response.headers.get(contract.NEXT_CURSOR_HEADER)
            if cursor is None:
                return messages

    def close(self) -> None:
        self.http.close()


def new_user() -> str:
    return str(uuid.uuid4())
