"""Idempotent schema migrations that work on plain PostgreSQL and on Citus.

A migration is a list of DDL statements (all ``IF NOT EXISTS``) plus the tables to
distribute when the ``citus`` extension is present. Hosts may run it at the same time:
an advisory lock serialises them, and every step checks before it acts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import asyncpg

log = logging.getLogger("servicekit.migrate")

# One lock for the whole database: all migrations of the platform queue behind it.
ADVISORY_LOCK_KEY = 0x6469616C6F6773  # "dialogs"


@dataclass(frozen=True)
class Distribution:
    table: str
    column: str
    colocate_with: str = "default"


@dataclass(frozen=True)
class Migration:
    name: str
    statements: list[str]
    distributions: list[Distribution] = field(default_factory=list)
    # Run after distribution: Citus accepts foreign keys between co-located tables only
    # once both are distributed.
    after_distribution: list[str] = field(default_factory=list)


@dataclass
class MigrationReport:
    citus: bool
    created: list[str] = field(default_factory=list)
    distributed: list[str] = field(default_factory=list)
    # Whether the run changed the schema at all: a table created or distributed, or any
    # column, constraint or index added (a missing foreign key restored counts too).
    changed: bool = False


async def citus_available(conn: asyncpg.Connection) -> bool:
    return bool(await conn.fetchval("SELECT count(*) FROM pg_extension WHERE extname = 'citus'"))


async def apply(dsn: str, migration: Migration) -> MigrationReport:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_KEY)
        try:
            return await _apply_locked(conn, migration)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_KEY)
    finally:
        await conn.close()


async def _apply_locked(conn: asyncpg.Connection, migration: Migration) -> MigrationReport:
    report = MigrationReport(citus=await citus_available(conn))
    tables_before = await _tables(conn)
    schema_before = await _schema_objects(conn)
    for statement in migration.statements:
        await conn.execute(statement)
    report.created = sorted(await _tables(conn) - tables_before)
    if report.citus:
        for dist in migration.distributions:
            if await _is_distributed(conn, dist.table):
                continue
            await conn.execute(
                "SELECT create_distributed_table($1, $2, colocate_with => $3)",
                dist.table,
                dist.column,
                dist.colocate_with,
            )
            report.distributed.append(dist.table)
    for statement in migration.after_distribution:
        await conn.execute(statement)
    report.changed = bool(report.distributed) or await _schema_objects(conn) != schema_before
    log.info(
        "migration applied",
        extra={"fields": {"migration": migration.name, **report.__dict__}},
    )
    return report


async def _tables(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
    return {row["tablename"] for row in rows}


async def _schema_objects(conn: asyncpg.Connection) -> list[str]:
    """The current schema's tables' columns, constraints and indexes, each as one line.
    (pg_tables, not pg_constraint alone: Citus hides shards placed on this node there.)"""
    rows = await conn.fetch(
        """
        WITH t AS (SELECT tablename FROM pg_tables WHERE schemaname = current_schema())
        SELECT 'column ' || c.relname || '.' || a.attname || ' '
               || format_type(a.atttypid, a.atttypmod)
               || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
          FROM pg_attribute a
          JOIN pg_class c ON c.oid = a.attrelid
          JOIN t ON t.tablename = c.relname
         WHERE c.relnamespace = current_schema()::regnamespace
           AND a.attnum > 0 AND NOT a.attisdropped
        UNION ALL
        SELECT 'constraint ' || c.relname || ' ' || k.conname || ' ' || pg_get_constraintdef(k.oid)
          FROM pg_constraint k
          JOIN pg_class c ON c.oid = k.conrelid
          JOIN t ON t.tablename = c.relname
         WHERE c.relnamespace = current_schema()::regnamespace
        UNION ALL
        SELECT 'index ' || indexname || ' ' || indexdef
          FROM pg_indexes JOIN t USING (tablename) WHERE schemaname = current_schema()
        """
    )
    return sorted(row[0] for row in rows)


async def _is_distributed(conn: asyncpg.Connection, table: str) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT count(*) FROM pg_dist_partition WHERE logicalrelid = $1::regclass", table
        )
    )
