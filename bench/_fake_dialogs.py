"""A stand-in for a dialogs instance that answers at once with canned bodies in the internal
API's shape (a 50-message page with a next cursor; a stored message), so a benchmark can
measure the gateway alone. Run: python -m bench._fake_dialogs PORT (binds 127.0.0.1)."""

from __future__ import annotations

import sys

from sanic import HTTPResponse, Request, Sanic
from sanic.response import raw

from servicekit import contract

MESSAGE = (
    b'{"id":"01a2166a-d3df-70ca-9da1-f1ee9df9e0ff",'
    b'"dialog_id":"83e738f9-dc0b-58ad-bc4b-859da575ad13",'
    b'"from":"0b0f4c36-7b2f-4a43-9d6e-2f5d3a1c9e77","to":"1b0f4c36-7b2f-4a43-9d6e-2f5d3a1c9e77",'
    b'"text":"Neque porro quisquam est qui dolorem ipsum quia dolor sit amet",'
    b'"created_at":"2026-11-26T05:53:49.535994+00:00"}'
)
PAGE = b"[" + b",".join([MESSAGE] * 50) + b"]"
JSON = "application/json"

app = Sanic("fake_dialogs")


@app.post(contract.LIST_PATH)
async def page(request: Request) -> HTTPResponse:
    return raw(
        PAGE, content_type=JSON, headers={contract.NEXT_CURSOR_HEADER: "AaIWatQRc6K3mqduOsetGw"}
    )


@app.post(contract.SEND_PATH)
async def send(request: Request) -> HTTPResponse:
    return raw(MESSAGE, content_type=JSON)


@app.get("/readyz")
async def readyz(request: Request) -> HTTPResponse:
    return raw(b'{"status":"ready"}', content_type=JSON)


if __name__ == "__main__":
    app.run(
        host="127.0.0.1",
        port=int(sys.argv[1]),
        single_process=True,
        access_log=False,
        motd=False,
    )
