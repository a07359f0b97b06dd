"""On a real Citus cluster: the schema is distributed and every query touches one shard."""

from __future__ import annotations

import asyncio
import re

import asyncpg

from dialogs import sql
from servicekit.contract import NEXT_CURSOR_HEADER
from tests.support.citus import CitusCluster
from tests.support.dialogs_client import DialogsClient, new_user


def test_tables_are_distributed_and_colocated(migrated_cluster: CitusCluster) -> None:
    rows = migrated_cluster.sql(
        "SELECT table_name, distribution_column, colocation_id, shard_count "
        "FROM citus_tables WHERE table_name::text IN ('dialogs', 'dialog_messages') "
    ).splitlines()
    tables = {name: rest for name, *rest in (row.split("|") for row in rows)}
    msg_column, msg_group, msg_shards = tables["dialog_messages"]
    dlg_column, dlg_group, _ = tables["dialogs"]
    assert (msg_column, dlg_column) == ("dialog_id", "id")
    assert msg_group == dlg_group
    assert int(msg_shards) == 32
    nodes = migrated_cluster.sql("SELECT count(DISTINCT nodename || nodeport) FROM citus_shards")
    assert int(nodes) == 2


def test_migration_on_citus_is_idempotent(migrated_cluster: CitusCluster) -> None:
    from tests.support.processes import migrate

    report = migrate(migrated_cluster.dsn)
    assert report["citus"] is True
    assert (report["changed"], report["created"], report["distributed"]) == (False, [], [])


_ENTRY_START = re.compile(r"\n(?=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \w+ \[\d+\] )")
_EXECUTE = re.compile(r"LOG:  execute [^:]+: (.*)", re.S)
_PARAMETERS = re.compile(r"DETAIL:  parameters: (.*)", re.S)
_PARAMETER = re.compile(r"\$(\d+) = ('(?:[^']|'')*'|NULL)")


def captured_statements(server_log: str) -> list[tuple[str, list[str]]]:
    """Each statement the service executed, with its parameters as SQL literals, taken
    from the coordinator's log (``log_statement = all`` for the service's role)."""
    statements: list[tuple[str, list[str]]] = []
    for entry in _ENTRY_START.split(server_log):
        if executed := _EXECUTE.search(entry):
            statements.append((executed.group(1).strip(), []))
        elif (parameters := _PARAMETERS.search(entry)) and statements:
            values = sorted(_PARAMETER.findall(parameters.group(1)), key=lambda p: int(p[0]))
            statements[-1] = (statements[-1][0], [value for _, value in values])
    return statements


async def explain(dsn: str, statements: list[tuple[str, list[str]]]) -> dict[str, str]:
    """EXPLAIN each statement as the service ran it: prepared, then executed with its
    logged parameter values, so Citus prunes shards exactly as it did for the service."""
    conn = await asyncpg.connect(dsn)
    try:
        plans: dict[str, str] = {}
        for number, (query, values) in enumerate(statements):
            name = f"captured_{number}"
            await conn.execute(f"PREPARE {name} AS {query}")
            args = f"({', '.join(values)})" if values else ""
            plan = await conn.fetch(f"EXPLAIN EXECUTE {name}{args}")
            plans[query] = "\n".join(row[0] for row in plan)
        return plans
    finally:
        await conn.close()


def _normalise(statement: str) -> str:
    return " ".join(statement.split())


def test_every_statement_the_service_runs_is_single_shard(
    migrated_cluster: CitusCluster, client: DialogsClient
) -> None:
    server_log = migrated_cluster.coordinator.logfile
    log_start = server_log.stat().st_size
    alice, bob = new_user(), new_user()
    # Exercise every code path: send, idempotent replay, first page, next page, readiness.
    for i in range(3):
        assert client.send(alice, bob, f"m{i}", client_message_id=f"c{i}").status_code == 200
    assert client.send(alice, bob, "m0", client_message_id="c0").status_code == 200
    first = client.list(bob, alice, limit=2)
    cursor = first.headers[NEXT_CURSOR_HEADER]
    assert client.list(bob, alice, limit=2, cursor=cursor).status_code == 200
    assert client.http.get("/readyz").status_code == 200

    with server_log.open() as log:
        log.seek(log_start)
        statements = captured_statements(log.read())
    plans = asyncio.run(explain(migrated_cluster.dsn, statements))
    distributed = {q: p for q, p in plans.items() if "Citus" in p}
    for query, plan in distributed.items():
        # One task on one shard: no subplan, no second round of tasks.
        assert plan.count("Task Count:") == 1, f"several tasks:\n{query}\n{plan}"
        assert "Task Count: 1\n" in plan + "\n", f"fans out:\n{query}\n{plan}"
    # The service's data statements were all captured and checked (not copied by hand).
    seen = {_normalise(q) for q in distributed}
    service_statements = (
        sql.SEND,
        sql.CREATE_DIALOG,
        sql.LIST_FIRST_PAGE,
        sql.LIST_NEXT_PAGE,
    )
    for statement in service_statements:
        assert _normalise(statement) in seen, statement
    # Anything else the service ran touched no distributed table (e.g. SELECT 1).
    for query in plans:
        if query not in distributed:
            assert "dialog" not in query.lower(), query


def test_seed_check_fan_out_without_key_one_shard_with_key(
    migrated_cluster: CitusCluster, client: DialogsClient
) -> None:
    alice, bob = new_user(), new_user()
    dialog_id = client.send(alice, bob, "hi").json()["dialog_id"]
    everything = migrated_cluster.sql("EXPLAIN SELECT * FROM dialog_messages LIMIT 10")
    assert "Task Count: 32" in everything
    one = migrated_cluster.sql(
        f"EXPLAIN SELECT * FROM dialog_messages WHERE dialog_id = '{dialog_id}' LIMIT 10"
    )
    assert "Task Count: 1\n" in one + "\n"
