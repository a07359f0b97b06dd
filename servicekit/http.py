"""Request ids, uniform error bodies and the handlers every service installs.

Every response carries X-Request-ID. Every error body is ``{message, request_id, code}``;
a 503 also carries Retry-After, so clients know when to try again.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import orjson
from sanic import HTTPResponse, Request, Sanic
from sanic.exceptions import SanicException
from sanic.response import BaseHTTPResponse, raw

from servicekit import contract
from servicekit.contract import REQUEST_ID_HEADER
from servicekit.logs import request_id_var
from servicekit.unique import unique_id

__all__ = ["REQUEST_ID_HEADER", "ApiError"]
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

log = logging.getLogger("servicekit.http")


class ApiError(Exception):
    """An error with a status, a message for the client and a stable machine-readable code."""

    def __init__(
        self, status: int, message: str, code: str, *, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.retry_after = retry_after


def bad_request(message: str) -> ApiError:
    return ApiError(400, message, contract.BAD_REQUEST)


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> HTTPResponse:
    return raw(orjson.dumps(body), status=status, headers=headers, content_type="application/json")


def error_response(request: Request, error: ApiError) -> HTTPResponse:
    headers = {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(error.retry_after)
    body = {"message": error.message, "request_id": request_id(request), "code": error.code}
    return json_response(body, status=error.status, headers=headers)


def request_id(request: Request) -> str:
    rid: str | None = getattr(request.ctx, "request_id", None)
    if rid is None:
        # Errors raised before the request middleware ran (e.g. 413 while reading the body).
        rid = _pick_request_id(request)
        request.ctx.request_id = rid
    return rid


def _pick_request_id(request: Request) -> str:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    # Taken from the caller only when it is safe to log and to pass on.
    return given if _VALID_REQUEST_ID.match(given) else unique_id()


def install(app: Sanic, *, unexpected_code: str = "internal_error") -> None:
    """Request-id middleware and error handlers for ``app``."""

    @app.middleware("request", priority=100)
    async def assign_request_id(request: Request) -> None:
        rid = _pick_request_id(request)
        request.ctx.request_id = rid
        request_id_var.set(rid)

    @app.middleware("response", priority=100)
    async def echo_request_id(request: Request, response: BaseHTTPResponse) -> None:
        response.headers[REQUEST_ID_HEADER] = request_id(request)
        if app.ctx.draining:
            # Shutting down: answer, then close, so keep-alive clients (the gateway's pool)
            # reconnect elsewhere instead of being cut off when the grace period ends.
            request.stream.keep_alive = False  # type: ignore[union-attr]

    app.ctx.draining = False

    @app.before_server_stop
    async def start_draining(app: Sanic) -> None:
        app.ctx.draining = True

    @app.exception(ApiError)
    async def on_api_error(request: Request, error: ApiError) -> HTTPResponse:
        return error_response(request, error)

    @app.exception(SanicException)
    async def on_sanic_error(request: Request, error: SanicException) -> HTTPResponse:
        status = int(getattr(error, "status_code", 500) or 500)
        if status >= 500:
            log.error("request failed", exc_info=error)
            return error_response(request, ApiError(status, "internal error", unexpected_code))
        code = {
            400: contract.BAD_REQUEST,
            404: "not_found",
            405: "method_not_allowed",
            408: "request_timeout",
            413: contract.PAYLOAD_TOO_LARGE,
            415: "unsupported_media_type",
        }.get(status, "client_error")
        response = error_response(request, ApiError(status, str(error.message or error), code))
        for name, value in (getattr(error, "headers", None) or {}).items():
            response.headers.setdefault(name, value)  # e.g. Allow on a 405
        return response

    @app.exception(Exception)
    async def on_unexpected(request: Request, error: Exception) -> HTTPResponse:
        log.error("unhandled error", exc_info=error)
        return error_response(request, ApiError(500, "internal error", unexpected_code))
