"""Benchmark of the dialogs service on a local Citus cluster (coordinator + 2 workers).

Prints three tables, all from one run on one machine:
  (a) send and list (50 newest of a 10,000-message dialog) through the service, at a few
      concurrencies: requests/s, p50, p99;
  (b) pgbench running the same SQL straight on the coordinator, and the ratio service/pgbench;
  (c) the seed's way (lookup on an unindexed local `dialogs` table + ORDER BY id OFFSET)
      against ours (keyset) at depths 1,000 / 10,000 / 100,000.

Usage: .venv/bin/python -m bench.dialogs_bench [--seconds 8] [--rounds 3] [--workers 2]
                                                [--pool-size 4]
Needs PostgreSQL 15 with Citus, wrk and pgbench; starts and removes everything itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import sys
import uuid
from dataclasses import dataclass
from statistics import median

import asyncpg
import httpx

from bench._load import Result, Script, pgbench, table, wrk
from dialogs import sql
from dialogs.ids import dialog_key, uuid7
from tests.support.citus import CitusCluster
from tests.support.postgres import citus_installed
from tests.support.processes import INTERNAL_TOKEN, dialogs_process, migrate

DIALOG_SIZE = 10_000
DEEP_DIALOG_SIZE = 100_000
SEED_DIALOG_ROWS = 10_000  # rows in the seed's unindexed dialogs table
PAGE = 50
TEXT = "Neque porro quisquam est qui dolorem ipsum quia dolor sit amet"


PGBENCH_CLIENTS = 16


class Inline(str):
    """An argument written into the statement as SQL, not bound (e.g. gen_random_uuid())."""


def bound(sql_text: str, *args: str | int, tag: str = "") -> Script:
    """One of the service's statements as a pgbench script whose ``$n`` are bind parameters,
    as asyncpg sends them: returns the script and its variables (``-D pn<tag>=value``; a
    tag per script keeps the values of several scripts in one run apart)."""
    variables: dict[str, str] = {}
    for number in range(len(args), 0, -1):
        value = args[number - 1]
        if isinstance(value, Inline):
            replacement = str(value)
        else:
            replacement = f":p{number}{tag}"
            variables[f"p{number}{tag}"] = str(value)
        sql_text = sql_text.replace(f"${number}", replacement)
    without_comments = re.sub(r"--[^\n]*", "", sql_text)
    # pgbench reads ":name" as a variable, also inside a string ('HH24:MI:SS'): spell those
    # colons as chr(58), which the planner folds into the same constant.
    no_stray_variables = re.sub(
        r"'[^']*'",
        lambda m: m.group(0).replace(":", "' || chr(58) || '"),
        without_comments,
    )
    # pgbench reads one line a statement.
    return " ".join(no_stray_variables.split()) + ";\n", variables


def inlined(sql_text: str, *args: str | int) -> Script:
    """The same script with every value written into the statement as a constant."""
    constants = [a if isinstance(a, Inline | int) else f"'{a}'" for a in args]
    return bound(sql_text, *(Inline(str(c)) for c in constants))


async def seed_dialog(dsn: str, alice: uuid.UUID, bob: uuid.UUID, size: int) -> list[str]:
    """Store ``size`` messages in the dialog, oldest first; returns their ids newest first."""
    dialog_id, low, high = dialog_key(alice, bob)
    ids = [uuid7() for _ in range(size)]
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql.CREATE_DIALOG, dialog_id, low, high)
        await conn.copy_records_to_table(
            "dialog_messages",
            records=[(dialog_id, i, alice if n % 2 else bob, TEXT) for n, i in enumerate(ids)],
            columns=["dialog_id", "id", "user_id", "content"],
        )
    finally:
        await conn.close()
    return [str(i) for i in reversed(ids)]


async def seed_the_seeds_schema(dsn: str, alice: uuid.UUID, bob: uuid.UUID) -> str:
    """The seed's tables: a local dialogs table with no key, messages with random v4 ids."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            """
            CREATE TABLE seed_dialogs (id uuid DEFAULT gen_random_uuid(), user_id1 uuid,
                                       user_id2 uuid);
            CREATE TABLE seed_dialog_messages (id uuid DEFAULT gen_random_uuid(),
                dialog_id uuid, user_id uuid, content text, PRIMARY KEY (id, dialog_id));
            SELECT create_distributed_table('seed_dialog_messages', 'dialog_id');
            INSERT INTO seed_dialogs (user_id1, user_id2)
                SELECT gen_random_uuid(), gen_random_uuid() FROM generate_series(2, $1);
            """.replace("$1", str(SEED_DIALOG_ROWS))
        )
        dialog_id = await conn.fetchval(
            "INSERT INTO seed_dialogs (user_id1, user_id2) VALUES ($1, $2) RETURNING id",
            alice,
            bob,
        )
        await conn.execute(
            "INSERT INTO seed_dialog_messages (dialog_id, user_id, content) "
            "SELECT $1, $2, $3 FROM generate_series(1, $4)",
            dialog_id,
            alice,
            TEXT,
            DEEP_DIALOG_SIZE,
        )
        await conn.execute("ANALYZE")
        return str(dialog_id)
    finally:
        await conn.close()


def fmt(result: Result) -> list[str]:
    return [f"{result.rps:,.0f}", f"{result.p50_ms:.2f}", f"{result.p99_ms:.2f}"]


@dataclass(frozen=True)
class Comparison:
    """One round of table (b): pgbench (values bound, values written in), then the service."""

    pgbench_bound: Result
    pgbench_inlined: Result
    service: Result

    @property
    def ratio(self) -> float:
        return self.service.rps / self.pgbench_bound.rps

    @property
    def ratio_inlined(self) -> float:
        return self.service.rps / self.pgbench_inlined.rps


def comparison_row(op: str, rounds: list[Comparison]) -> list[str]:
    """Medians over the rounds; the ratio also with its lowest and highest round."""
    ratios = [r.ratio for r in rounds]
    return [
        op,
        f"{median(r.pgbench_bound.rps for r in rounds):,.0f}",
        f"{median(r.pgbench_inlined.rps for r in rounds):,.0f}",
        f"{median(r.service.rps for r in rounds):,.0f}",
        f"{median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})",
        f"{median(r.ratio_inlined for r in rounds):.2f}",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=8, help="duration of each load step")
    parser.add_argument("--workers", type=int, default=2, help="dialogs worker processes")
    # Small pools suit 2 cores shared with the database: with 16 per worker (32 backends
    # on the coordinator, each with a connection per worker) the service served about
    # 10% less on this machine.
    parser.add_argument("--pool-size", type=int, default=4, help="pool size per worker")
    parser.add_argument("--concurrency", default="1,16,64", help="wrk connections per step")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of table (b)")
    args = parser.parse_args()
    if not citus_installed():
        raise SystemExit("citus extension not installed: this benchmark needs a Citus cluster")
    concurrencies = [int(c) for c in args.concurrency.split(",")]

    cluster = CitusCluster.start(worker_count=2)
    service = None
    try:
        migrate(cluster.dsn)
        alice, bob = uuid.uuid4(), uuid.uuid4()
        asyncio.run(seed_dialog(cluster.dsn, alice, bob, DIALOG_SIZE))
        deep_alice, deep_bob = uuid.uuid4(), uuid.uuid4()
        deep_ids = asyncio.run(seed_dialog(cluster.dsn, deep_alice, deep_bob, DEEP_DIALOG_SIZE))
        asyncio.run(seed_the_seeds_schema(cluster.dsn, deep_alice, deep_bob))
        cluster.sql("ANALYZE")
        service = dialogs_process(
            cluster.dsn,
            DIALOGS_WORKERS=str(args.workers),
            DIALOGS_POOL_MAX_SIZE=str(args.pool_size),
        ).start()
        dialog_id = str(dialog_key(alice, bob)[0])

        list_body = json.dumps({"user_id": str(alice), "peer_id": str(bob), "limit": PAGE})
        senders = [uuid.uuid4() for _ in range(64)]
        send_bodies = [json.dumps({"from": str(s), "to": str(bob), "text": TEXT}) for s in senders]
        internal = {"X-Internal-Token": INTERNAL_TOKEN, "Content-Type": "application/json"}
        with httpx.Client(base_url=service.url, headers=internal) as client:
            for body in send_bodies:  # create the dialogs first: measure the steady state
                client.post("/internal/v1/messages/send", content=body).raise_for_status()

        # pgbench sends to the same 64 dialogs as the service's load: spread over the
        # shards of both workers, which costs more than one dialog on one shard would.
        send_args = [
            (
                str(dialog_key(sender, bob)[0]),
                Inline("gen_random_uuid()"),
                str(sender),
                TEXT,
                Inline("NULL"),
            )
            for sender in senders
        ]
        # The service asks for one row more than the page, to learn whether there is more.
        list_args = (dialog_id, str(alice), str(bob), PAGE + 1)

        def measure(*scripts: Script) -> Result:
            return pgbench(cluster.dsn, list(scripts), PGBENCH_CLIENTS, args.seconds)

        pgbench_scripts = {  # op -> (values bound as parameters, values written in the SQL)
            "list": (
                [bound(sql.LIST_FIRST_PAGE, *list_args)],
                [inlined(sql.LIST_FIRST_PAGE, *list_args)],
            ),
            "send": (
                [bound(sql.SEND, *a, tag=f"_{n}") for n, a in enumerate(send_args)],
                [inlined(sql.SEND, *a) for a in send_args],
            ),
        }
        requests = {  # op -> (path, bodies)
            "list": ("/internal/v1/messages/list", [list_body]),
            "send": ("/internal/v1/messages/send", send_bodies),
        }

        def through_service(op: str, connections: int) -> Result:
            path, bodies = requests[op]
            return wrk(
                service.url + path,
                headers=internal,
                bodies=bodies,
                connections=connections,
                seconds=args.seconds,
            )

        service_rows = []
        for op in requests:
            for connections in concurrencies:
                result = through_service(op, connections)
                service_rows.append([op, str(connections), *fmt(result), str(result.errors)])

        # pgbench and the service take turns, round after round, so that the machine's drift
        # (caches, WAL, autovacuum) falls on both sides alike. Each ratio compares one
        # round's neighbouring measurements; the table gives the median and the range.
        rounds: dict[str, list[Comparison]] = {op: [] for op in requests}
        for _ in range(args.rounds):
            for op, (with_params, with_values) in pgbench_scripts.items():
                rounds[op].append(
                    Comparison(
                        measure(*with_params),
                        measure(*with_values),
                        through_service(op, PGBENCH_CLIENTS),
                    )
                )
        ratio_rows = [comparison_row(op, comparisons) for op, comparisons in rounds.items()]

        depth_rows = []
        deep_dialog = str(dialog_key(deep_alice, deep_bob)[0])
        for depth in (1_000, 10_000, 100_000):
            ours = measure(
                bound(
                    sql.LIST_NEXT_PAGE,
                    deep_dialog,
                    str(deep_alice),
                    str(deep_bob),
                    PAGE + 1,
                    deep_ids[depth - PAGE - 1],
                )
            )
            seeds = measure(
                (
                    "SELECT id AS did FROM seed_dialogs WHERE (user_id1 = :a AND user_id2 = :b)"
                    " OR (user_id1 = :b AND user_id2 = :a) \\gset\n"
                    "SELECT id, dialog_id, user_id, content FROM seed_dialog_messages "
                    f"WHERE dialog_id = :did ORDER BY id OFFSET {depth - PAGE} LIMIT {PAGE};\n",
                    {"a": str(deep_alice), "b": str(deep_bob)},
                )
            )
            depth_rows.append(
                [f"{depth:,}", *fmt(seeds), *fmt(ours), f"{ours.rps / seeds.rps:.1f}x"]
            )
    finally:
        if service is not None:
            service.stop()
        cluster.destroy()

    print(
        f"# dialogs benchmark: {platform.node()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {args.workers} service workers "
        f"(pool of {args.pool_size} each), "
        f"{args.seconds}s per step, wrk/pgbench on the same host"
    )
    print("\n(a) through the dialogs service (wrk)\n")
    print(table(["op", "conns", "req/s", "p50 ms", "p99 ms", "errors"], service_rows))
    print(
        f"\n(b) the service at {PGBENCH_CLIENTS} connections vs pgbench running the same SQL on"
        f"\n    the coordinator ({PGBENCH_CLIENTS} clients), values bound as parameters (as the"
        "\n    service sends them) or written into the SQL; they take turns for"
        f" {args.rounds} rounds:\n    medians, and the ratio's lowest and highest round\n"
    )
    print(
        table(
            [
                "op",
                "pgbench tps",
                "tps, values in SQL",
                "service req/s",
                "service/pgbench",
                "service/values in SQL",
            ],
            ratio_rows,
        )
    )
    print(
        "\n(c) a page 50 deep at depth N: the seed's lookup + OFFSET vs our keyset (pgbench, 16)\n"
    )
    print(
        table(
            ["depth", "seed tps", "p50 ms", "p99 ms", "ours tps", "p50 ms", "p99 ms", "ours/seed"],
            depth_rows,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
