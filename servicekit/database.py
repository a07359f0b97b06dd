"""The services' database plumbing: a pool with bounded waits everywhere, and turning
database failures into answers (unreachable or overloaded means 503 with Retry-After, so
the client may try again; anything else is a logged 500).

The URL may name several servers (``postgresql://u:p@h1:5432,h2:5432/db?
target_session_attrs=read-write``): each new connection goes to whichever of them is the
primary now, so the pool follows a failover by itself (a connection broken by it is
dropped on release and replaced on the next acquire)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg
from sanic import HTTPResponse, Request, Sanic

from servicekit import contract, http
from servicekit.http import ApiError

log = logging.getLogger("servicekit.database")

# SQLSTATE classes that mean "the database cannot serve right now", not "bad request"
# (as does any FATAL error, see on_database_error):
# 08 connection exception, 53 insufficient resources, 57 operator intervention (includes
# statement timeout and shutdown), 58 system error.
UNAVAILABLE_CLASSES = ("08", "53", "57", "58")


# The client-side limit on a request's statements, beyond the server's statement_timeout:
# it ends the wait when the server cannot even be told to stop (network silent, backend
# stuck).
STATEMENTS_TIMEOUT_MARGIN_S = 1.0

# Between two tries of a read the database could not serve (see Database.read).
READ_RETRY_PAUSE_S = 0.2

T = TypeVar("T")


class Database:
    """The service's connection pool, with every wait bounded."""

    def __init__(
        self, pool: asyncpg.Pool, *, acquire_timeout_s: float, statements_timeout_s: float
    ) -> None:
        self._pool = pool
        self._acquire_timeout_s = acquire_timeout_s
        self._statements_timeout_s = statements_timeout_s

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        application_name: str,
        max_size: int,
        connect_timeout_s: float,
        statement_timeout_ms: int,
        init: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
        reset: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
    ) -> Database:
        """Waiting for a free connection is bounded like making one (``connect_timeout_s``);
        a request's statements together by ``statement_timeout_ms`` and a margin."""
        # min_size=0: the service starts (and reports not ready) while the database is down.
        # (asyncpg opens min_size connections before it returns the pool, init_size being at
        # least min_size, and fails when the database is down: so no minimum is offered.)
        options: dict[str, Any] = {"init": init} if init else {}
        if reset:
            options["reset"] = reset
        pool = await asyncpg.create_pool(
            url,
            min_size=0,
            max_size=max_size,
            timeout=connect_timeout_s,
            server_settings={
                "application_name": application_name,
                "statement_timeout": str(statement_timeout_ms),
                "timezone": "UTC",
            },
            **options,
        )
        return cls(
            pool,
            acquire_timeout_s=connect_timeout_s,
            statements_timeout_s=statement_timeout_ms / 1000 + STATEMENTS_TIMEOUT_MARGIN_S,
        )

    async def read(self, run: Callable[[asyncpg.pool.PoolConnectionProxy], Awaitable[T]]) -> T:
        """``run``, which only reads, on a pooled connection; tried again after a short
        pause while the database answers that it cannot serve right now, within one
        statements deadline. A switchover of a worker group ends the reads in flight on its
        old primary and refuses new ones until the coordinator has the new primary (about
        3 s): those reads are served late, not failed. Writes are never tried again here: a
        write cut short may have been done (the client retries with its Idempotency-Key)."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self._statements_timeout_s
        while True:
            try:
                async with self.connection(until=give_up_at) as conn:
                    return await run(conn)
            except asyncpg.PostgresError as error:
                if not cannot_serve_now(error) or loop.time() + READ_RETRY_PAUSE_S >= give_up_at:
                    raise
                log.info("read tried again: %s", error)
            await asyncio.sleep(READ_RETRY_PAUSE_S)

    @asynccontextmanager
    async def connection(
        self, until: float | None = None
    ) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy]:
        """A pooled connection, and one deadline for the request's use of it: first for a
        free connection, then for the statements run on it (or ``until``, a loop time, when
        sooner). Past it: TimeoutError, so 503.
        (One timer per request: asyncpg's own acquire and command timeouts cost a task and
        a timer per call.) A statement cut short leaves its connection waiting for the
        server to acknowledge the cancel, and the answer with it: it is closed instead."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._acquire_timeout_s) as deadline:
            conn = await self._pool.acquire()
            statements_end = loop.time() + self._statements_timeout_s
            deadline.reschedule(statements_end if until is None else min(until, statements_end))
            try:
                yield conn
            except asyncio.CancelledError:  # the deadline passed, or the request was dropped
                conn.terminate()
                raise
            except asyncpg.InternalClientError:
                # The server ended the session while it sat idle in the pool (a primary
                # shutting down for a switchover sends its FATAL before closing): asyncpg is
                # left mid-protocol on it. Never hand it out again.
                conn.terminate()
                raise
            finally:
                await self._pool.release(conn)

    async def close(self) -> None:
        await self._pool.close()


def _server_died(error: asyncpg.PostgresError) -> bool:
    # Citus reports its postmaster's death during a distributed statement as a plain ERROR
    # without a code (XX000), the server's own "terminating connection" being a FATAL 57P01.
    return getattr(error, "sqlstate", None) == "XX000" and "postmaster was shut down" in str(error)


def cannot_serve_now(error: asyncpg.PostgresError) -> bool:
    """Whether ``error`` means "the database cannot serve right now" (a 503, worth another
    try), not "this request is wrong"."""
    sqlstate = getattr(error, "sqlstate", "") or ""
    # FATAL: the server is ending the session, whatever the code (a backend whose
    # postmaster died says so with XX000): the next connection may well be served.
    fatal = getattr(error, "severity", None) in ("FATAL", "PANIC")
    return sqlstate.startswith(UNAVAILABLE_CLASSES) or fatal or _server_died(error)


def install_error_handlers(app: Sanic, *, store: str, retry_after_s: int) -> None:
    """``store`` names what is down in the client's message, e.g. "the message store"."""

    def unavailable(error: BaseException) -> ApiError:
        log.warning("database unavailable: %s", error)
        return ApiError(
            503,
            f"{store} is unavailable, try again later",
            contract.DB_UNAVAILABLE,
            retry_after=retry_after_s,
        )

    # InternalClientError: a connection the server ended under asyncpg (see connection()),
    # or TargetServerAttributeNotMatched, its subclass: a multi-host URL with
    # target_session_attrs found no server of the kind asked for (during a failover, before
    # the standby is promoted).
    @app.exception(OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.InternalClientError)
    async def on_connection_error(request: Request, error: Exception) -> HTTPResponse:
        return http.error_response(request, unavailable(error))

    @app.exception(asyncpg.PostgresError)
    async def on_database_error(request: Request, error: asyncpg.PostgresError) -> HTTPResponse:
        if cannot_serve_now(error):
            return http.error_response(request, unavailable(error))
        log.error("database error %s", getattr(error, "sqlstate", ""), exc_info=error)
        return http.error_response(request, ApiError(500, "internal error", "db_error"))
