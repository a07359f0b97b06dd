"""servicekit.database.Database.read against a real PostgreSQL: a read the server cannot
serve right now (its session ended under it) is tried again within the deadline; any
other error is not."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from servicekit.database import Database
from tests.support.postgres import PgServer


async def _database(url: str, statement_timeout_ms: int = 2000) -> Database:
    return await Database.open(
        url,
        application_name="test-reads",
        max_size=2,
        connect_timeout_s=3,
        statement_timeout_ms=statement_timeout_ms,
    )


def test_a_read_whose_session_the_server_ended_is_served_by_the_next_try(
    pg_server: PgServer,
) -> None:
    async def main() -> tuple[int, list[str]]:
        database = await _database(pg_server.dsn)
        tries: list[str] = []

        async def run(conn: asyncpg.pool.PoolConnectionProxy) -> int:
            tries.append(str(await conn.fetchval("SELECT pg_backend_pid()")))
            if len(tries) == 1:  # the server ends this session: FATAL 57P01
                await conn.fetchval("SELECT pg_terminate_backend(pg_backend_pid())")
            return int(await conn.fetchval("SELECT 41 + 1"))

        try:
            return await database.read(run), tries
        finally:
            await database.close()

    answer, tries = asyncio.run(main())
    assert answer == 42
    assert len(tries) == 2 and tries[0] != tries[1]  # the second try had a new session


def test_a_read_that_is_wrong_is_tried_once(pg_server: PgServer) -> None:
    async def main() -> int:
        database = await _database(pg_server.dsn)
        tries = 0

        async def run(conn: asyncpg.pool.PoolConnectionProxy) -> int:
            nonlocal tries
            tries += 1
            return int(await conn.fetchval("SELECT 1 / 0"))

        try:
            with pytest.raises(asyncpg.DivisionByZeroError):
                await database.read(run)
            return tries
        finally:
            await database.close()

    assert asyncio.run(main()) == 1


def test_reads_the_server_keeps_refusing_end_within_the_deadline(pg_server: PgServer) -> None:
    """statement_timeout 500 ms: the statements deadline is 1.5 s for all the tries."""

    async def main() -> tuple[int, float]:
        database = await _database(pg_server.dsn, statement_timeout_ms=500)
        tries = 0

        async def run(conn: asyncpg.pool.PoolConnectionProxy) -> int:
            nonlocal tries
            tries += 1
            await conn.fetchval("SELECT pg_terminate_backend(pg_backend_pid())")
            return 0

        started = time.monotonic()
        try:
            with pytest.raises(asyncpg.PostgresError):
                await database.read(run)
            return tries, time.monotonic() - started
        finally:
            await database.close()

    tries, took = asyncio.run(main())
    assert tries > 1
    assert took < 1.5 + 0.5
