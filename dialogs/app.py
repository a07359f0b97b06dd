"""The dialogs HTTP service: an app factory wiring routes, the pool and the plumbing."""

from __future__ import annotations

import hmac
import logging
import uuid

import asyncpg
import orjson
from sanic import HTTPResponse, Request, Sanic
from sanic.response import raw

from dialogs import cursor, payloads
from dialogs.config import Settings
from dialogs.store import MessageStore
from servicekit import contract, database, http, metrics
from servicekit.http import ApiError, json_response
from servicekit.logs import log_config

log = logging.getLogger("dialogs")


def create_app(settings: Settings) -> Sanic:
    app = Sanic("dialogs", log_config=log_config(settings.log_level))
    app.config.REQUEST_MAX_SIZE = settings.max_body_bytes
    app.config.GRACEFUL_SHUTDOWN_TIMEOUT = 10.0
    app.config.NOISY_EXCEPTIONS = False
    app.ctx.settings = settings
    http.install(app)
    metrics.install(app, "dialogs")
    _install_database(app, settings)
    _install_routes(app, settings)
    return app


async def uuids_as_text(conn: asyncpg.Connection) -> None:
    # Rows go straight into JSON: strings serialise without a Python call per value.
    # (Timestamps come back in UTC: the pool sets the session's time zone.)
    await conn.set_type_codec("uuid", schema="pg_catalog", encoder=str, decoder=str, format="text")


async def keep_session(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's default reset on release: it costs a round trip per request, and the
    service keeps no session state (no SET, LISTEN or advisory locks). asyncpg still rolls
    back a transaction left open."""


def _install_database(app: Sanic, settings: Settings) -> None:
    @app.before_server_start
    async def open_pool(app: Sanic) -> None:
        app.ctx.database = await database.Database.open(
            settings.database_url,
            application_name="dialogs",
            max_size=settings.pool_max_size,
            connect_timeout_s=settings.connect_timeout_s,
            statement_timeout_ms=settings.statement_timeout_ms,
            init=uuids_as_text,
            reset=keep_session,
        )
        app.ctx.store = MessageStore(app.ctx.database)

    @app.after_server_stop
    async def close_pool(app: Sanic) -> None:
        await app.ctx.database.close()

    database.install_error_handlers(
        app, store="the message store", retry_after_s=settings.retry_after_s
    )


def _install_routes(app: Sanic, settings: Settings) -> None:
    expected_token = settings.internal_token.encode()

    @app.middleware("request", priority=80)
    async def require_internal_token(request: Request) -> None:
        if not request.path.startswith("/internal/"):
            return
        given = request.headers.get(contract.INTERNAL_TOKEN_HEADER, "").encode()
        if not hmac.compare_digest(given, expected_token):
            raise ApiError(401, "missing or wrong internal credential", contract.UNAUTHORIZED)

    replayed_headers = {contract.REPLAYED_HEADER: "true"}

    @app.post(contract.SEND_PATH, name="send")
    async def send(request: Request) -> HTTPResponse:
        body = payloads.parse_send(request.body, settings.max_text_length)
        message, replayed = await request.app.ctx.store.send(
            body.sender, body.recipient, body.text, body.client_message_id
        )
        if not replayed:
            return json_response(message.to_json())
        if message.text != body.text:
            raise ApiError(
                409,
                "Idempotency-Key (client_message_id) was already used for another message"
                " in this dialog",
                contract.IDEMPOTENCY_CONFLICT,
            )
        return json_response(message.to_json(), headers=replayed_headers)

    @app.post(contract.LIST_PATH, name="list")
    async def list_messages(request: Request) -> HTTPResponse:
        body = payloads.parse_list(request.body)
        page = await request.app.ctx.store.page(body.user, body.peer, body.limit, body.before)
        # The page arrives as JSON text from the database: the answer is that text, as the
        # public API gives it (the gateway relays it as is).
        headers = (
            {contract.NEXT_CURSOR_HEADER: cursor.encode(uuid.UUID(page.last_id))}
            if page.last_id
            else None
        )
        return raw(page.messages_json.encode(), headers=headers, content_type="application/json")

    @app.post(contract.LEGACY_LIST_PATH, name="list_v1")
    async def list_messages_v1(request: Request) -> HTTPResponse:
        body = payloads.parse_list(request.body)
        page = await request.app.ctx.store.page(body.user, body.peer, body.limit, body.before)
        next_cursor = cursor.encode(uuid.UUID(page.last_id)) if page.last_id else None
        payload = b'{"messages":%s,"next_cursor":%s}' % (
            page.messages_json.encode(),
            orjson.dumps(next_cursor),
        )
        return raw(payload, content_type="application/json")

    @app.get("/healthz", name="healthz")
    async def healthz(request: Request) -> HTTPResponse:
        return json_response({"status": "ok"})

    @app.get("/readyz", name="readyz")
    async def readyz(request: Request) -> HTTPResponse:
        await request.app.ctx.store.ready()
        return json_response({"status": "ready"})
