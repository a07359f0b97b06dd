"""Turning database failures into answers: unreachable or overloaded means 503 with
Retry-After (the client may try again), anything else is a logged 500."""

from __future__ import annotations

import logging

import asyncpg
from sanic import HTTPResponse, Request, Sanic

from servicekit import http
from servicekit.http import ApiError

log = logging.getLogger("servicekit.database")

# SQLSTATE classes that mean "the database cannot serve right now", not "bad request":
# 08 connection exception, 53 insufficient resources, 57 operator intervention (includes
# statement timeout and shutdown), 58 system error.
UNAVAILABLE_CLASSES = ("08", "53", "57", "58")


def install_error_handlers(app: Sanic, *, store: str, retry_after_s: int) -> None:
    """``store`` names what is down in the client's message, e.g. "the message store"."""

    def unavailable(error: BaseException) -> ApiError:
        log.warning("database unavailable: %s", error)
        return ApiError(
            503,
            f"{store} is unavailable, try again later",
            "db_unavailable",
            retry_after=retry_after_s,
        )

    @app.exception(OSError, TimeoutError, asyncpg.InterfaceError)
    async def on_connection_error(request: Request, error: Exception) -> HTTPResponse:
        return http.error_response(request, unavailable(error))

    @app.exception(asyncpg.PostgresError)
    async def on_database_error(request: Request, error: asyncpg.PostgresError) -> HTTPResponse:
        sqlstate = getattr(error, "sqlstate", "") or ""
        if sqlstate.startswith(UNAVAILABLE_CLASSES):
            return http.error_response(request, unavailable(error))
        log.error("database error %s", sqlstate, exc_info=error)
        return http.error_response(request, ApiError(500, "internal error", "db_error"))
