"""The public path end to end, on one machine without containers: wrk -> gateway -> dialogs
x2 -> Citus (a coordinator and 2 workers on loopback), against pgbench running the service's
own statements on the coordinator.

Prints, from one run:
  (a) list (the 50 newest of a 10,000-message dialog) and send (64 dialogs in turn) through
      the gateway at 1, 16 and 64 connections: req/s, p50, p99, and the CPU each component
      spent per request (gateway, dialogs, each PostgreSQL server, the load generator),
      read from /proc;
  (b) pgbench (16 clients, values bound, prepared) and the public path at 16 connections
      taking turns for --rounds rounds: medians, and the ratio public/pgbench with its
      lowest and highest round;
  (c) what the gateway adds at 1 connection: the same request straight to one dialogs
      instance (internal API) and through the gateway.

Usage: .venv/bin/python -m bench.public_path [--seconds 5] [--rounds 3]
           [--gateway-workers 1] [--dialogs-workers 1] [--pool-size 4] [--citus-workers 2]
Needs PostgreSQL 15 with Citus, wrk and pgbench; loopback only; starts and removes
everything itself (about 3 minutes with the defaults).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

import httpx

from bench._load import (
    Result,
    Script,
    connection_counts,
    cpu_ticks,
    machine,
    pgbench,
    stolen_since,
    table,
    wait_for_both_upstreams,
    wrk,
)
from bench.dialogs_bench import TEXT, Inline, bound, seed_dialog
from dialogs import sql
from dialogs.ids import dialog_key
from servicekit import contract
from tests.support.citus import CitusCluster
from tests.support.gateway import (
    descendants,
    gateway_process,
    login,
    migrate_gateway,
    register,
)
from tests.support.postgres import PgServer, citus_installed
from tests.support.processes import INTERNAL_TOKEN, ServiceProcess, dialogs_process, migrate

DIALOG_SIZE = 10_000
PAGE = 50
SEND_DIALOGS = 64
PGBENCH_CLIENTS = 16
TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system) of ``root`` and every process below it, including the
    children they have already reaped (PostgreSQL backends that ended, say)."""
    total = 0
    for pid in [root, *descendants(root)]:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return total / TICKS


def pid_of(service: ServiceProcess) -> int:
    assert service.process is not None
    return service.process.pid


def postmaster_pid(server: PgServer) -> int:
    return int((server.datadir / "postmaster.pid").read_text().split()[0])


def postgres_cpu(server: PgServer) -> Callable[[], float]:
    return lambda: tree_cpu_s(postmaster_pid(server))


def load_generator_cpu_s() -> float:
    """CPU of this process's finished children: wrk and pgbench, run to completion."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Measured:
    result: Result
    requests: int
    cpu_us: dict[str, float]  # component -> CPU µs per request

    def cpu(self, *names: str) -> float:
        return sum(self.cpu_us[name] for name in names)


class Meter:
    """CPU per component around a load step."""

    def __init__(self, components: dict[str, Callable[[], float]]) -> None:
        self.components = components

    def snapshot(self) -> dict[str, float]:
        return {name: read() for name, read in self.components.items()}

    def measure(self, step: Callable[[], Result], seconds: int) -> Measured:
        before = self.snapshot()
        result = step()
        after = self.snapshot()
        # pgbench reports tps only: its count is tps x duration.
        requests = result.requests or max(1, round(result.rps * seconds))
        cpu = {name: (after[name] - before[name]) / requests * 1e6 for name in after}
        return Measured(result, requests, cpu)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="per load step (1..30)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of table (b) (1..10)")
    parser.add_argument("--concurrency", default="1,16,64", help="wrk connections, table (a)")
    parser.add_argument("--gateway-workers", type=int, default=1)
    parser.add_argument("--dialogs-workers", type=int, default=1, help="per instance")
    parser.add_argument("--pool-size", type=int, default=4, help="per dialogs worker")
    parser.add_argument("--citus-workers", type=int, default=2, help="Citus worker nodes")
    args = parser.parse_args(argv)
    concurrencies = connection_counts(args.concurrency)
    if not 1 <= args.seconds <= 30 or not 1 <= args.rounds <= 10:
        raise SystemExit("--seconds must be 1..30 and --rounds 1..10")
    if not 1 <= args.citus_workers <= 8:
        raise SystemExit("--citus-workers must be 1..8")
    if not citus_installed():
        raise SystemExit("citus extension not installed: this benchmark needs a Citus cluster")

    print(machine(), flush=True)
    started, ticks = time.monotonic(), cpu_ticks()
    cluster = CitusCluster.start(worker_count=args.citus_workers)
    services: list[ServiceProcess] = []
    try:
        migrate(cluster.dsn)
        migrate_gateway(cluster.dsn)
        instances = [
            dialogs_process(
                cluster.dsn,
                DIALOGS_WORKERS=str(args.dialogs_workers),
                DIALOGS_POOL_MAX_SIZE=str(args.pool_size),
                DIALOGS_LOG_LEVEL="WARNING",
            ).start()
            for _ in range(2)
        ]
        services.extend(instances)
        gateway = gateway_process(
            cluster.dsn,
            [instance.url for instance in instances],
            GATEWAY_WORKERS=str(args.gateway_workers),
            GATEWAY_LOG_LEVEL="WARNING",
            # A deployment's defaults: the bench never fails an instance.
            GATEWAY_UPSTREAM_COOLDOWN_S="5",
            GATEWAY_UPSTREAM_PROBE_INTERVAL_S="1",
        ).start()
        services.append(gateway)
        wait_for_both_upstreams(gateway.url)

        with httpx.Client(base_url=gateway.url, timeout=10) as api:
            alice, bob = register(api), register(api)
            peers = [register(api) for _ in range(SEND_DIALOGS)]
            bearer = {"Authorization": f"Bearer {login(api, alice)}"}
            json_type = {"Content-Type": "application/json"}
            for peer in peers:  # create the dialogs first: measure the steady state
                api.post(
                    f"/dialog/{peer}/send", json={"text": TEXT}, headers=bearer
                ).raise_for_status()
        asyncio.run(seed_dialog(cluster.dsn, uuid.UUID(alice), uuid.UUID(bob), DIALOG_SIZE))
        cluster.sql("ANALYZE")

        meter = Meter(
            {
                "gateway": lambda: tree_cpu_s(pid_of(gateway)),
                "dialogs": lambda: sum(tree_cpu_s(pid_of(i)) for i in instances),
                "coordinator": postgres_cpu(cluster.coordinator),
                **{
                    f"worker {n}": postgres_cpu(worker)
                    for n, worker in enumerate(cluster.workers, 1)
                },
                "load generator": load_generator_cpu_s,
            }
        )
        pg_names = ["coordinator", *(f"worker {n}" for n in range(1, len(cluster.workers) + 1))]

        public: dict[str, dict[str, Any]] = {
            "list": dict(
                url=f"{gateway.url}/dialog/{bob}/list?limit={PAGE}",
                method="GET",
                headers=bearer,
            ),
            "send": dict(
                url=gateway.url,
                method="POST",
                headers=bearer | json_type,
                bodies=[json.dumps({"text": TEXT})],
                paths=[f"/dialog/{peer}/send" for peer in peers],
            ),
        }
        internal = {contract.INTERNAL_TOKEN_HEADER: INTERNAL_TOKEN} | json_type
        direct: dict[str, dict[str, Any]] = {
            "list": dict(
                url=instances[0].url + contract.LIST_PATH,
                headers=internal,
                bodies=[json.dumps({"user_id": alice, "peer_id": bob, "limit": PAGE})],
            ),
            "send": dict(
                url=instances[0].url + contract.SEND_PATH,
                headers=internal,
                bodies=[json.dumps({"from": alice, "to": peer, "text": TEXT}) for peer in peers],
            ),
        }
        # The gateway always sends a client message id (its own when the client gives
        # none), so pgbench's send stores one too.
        send_scripts: list[Script] = [
            bound(
                sql.SEND,
                str(dialog_key(uuid.UUID(alice), uuid.UUID(peer))[0]),
                Inline("gen_random_uuid()"),
                alice,
                TEXT,
                Inline("gen_random_uuid()::text"),
                tag=f"_{n}",
            )
            for n, peer in enumerate(peers)
        ]
        list_dialog = str(dialog_key(uuid.UUID(alice), uuid.UUID(bob))[0])
        # The service asks for one row more than the page, to learn whether there is more.
        list_scripts = [bound(sql.LIST_FIRST_PAGE, list_dialog, alice, bob, PAGE + 1)]
        scripts = {"list": list_scripts, "send": send_scripts}

        def load(spec: dict[str, Any], connections: int) -> Callable[[], Result]:
            return lambda: wrk(connections=connections, seconds=args.seconds, **spec)

        def sql_load(op: str) -> Callable[[], Result]:
            return lambda: pgbench(cluster.dsn, scripts[op], PGBENCH_CLIENTS, args.seconds)

        for op in public:  # warm up: connections, prepared statements, caches
            wrk(connections=4, seconds=1, **public[op])
            wrk(connections=4, seconds=1, **direct[op])

        sweep: list[tuple[str, int, Measured]] = []
        for op in public:
            for connections in concurrencies:
                sweep.append(
                    (op, connections, meter.measure(load(public[op], connections), args.seconds))
                )

        rounds: dict[str, list[tuple[Measured, Measured]]] = {op: [] for op in public}
        for _ in range(args.rounds):
            for op in public:
                by_sql = meter.measure(sql_load(op), args.seconds)
                through = meter.measure(load(public[op], PGBENCH_CLIENTS), args.seconds)
                rounds[op].append((by_sql, through))

        added = []
        for op in public:
            straight = meter.measure(load(direct[op], 1), args.seconds)
            via = meter.measure(load(public[op], 1), args.seconds)
            added.append((op, straight, via))
    finally:
        for service in reversed(services):
            service.stop()
        cluster.destroy()

    print(
        f"\ngateway {args.gateway_workers} worker(s); dialogs x2, {args.dialogs_workers} "
        f"worker(s) each, pool of {args.pool_size}; Citus coordinator + "
        f"{args.citus_workers} workers; "
        f"{args.seconds} s per step; {time.monotonic() - started:.0f} s in all; "
        f"load average at the end {os.getloadavg()[0]:.2f}; {stolen_since(ticks)}"
    )
    print("\n(a) through the gateway (wrk, closed loop); CPU µs per request\n")
    cpu_headers = ["gateway", "dialogs", *pg_names, "PG total", "load gen"]
    print(
        table(
            ["op", "conns", "req/s", "p50 ms", "p99 ms", "errors", *cpu_headers],
            [
                [
                    op,
                    str(connections),
                    f"{m.result.rps:,.0f}",
                    f"{m.result.p50_ms:.2f}",
                    f"{m.result.p99_ms:.2f}",
                    str(m.result.errors),
                    *cpu_cells(m, pg_names),
                ]
                for op, connections, m in sweep
            ],
        )
    )
    print(
        f"\n(b) pgbench ({PGBENCH_CLIENTS} clients, the service's statements, values bound, "
        f"prepared) and the public path ({PGBENCH_CLIENTS} connections) taking turns, "
        f"{args.rounds} rounds: medians; the ratio's lowest and highest round; PostgreSQL "
        "CPU µs per transaction / per request\n"
    )
    rows = []
    for op, pairs in rounds.items():
        ratios = [through.result.rps / by_sql.result.rps for by_sql, through in pairs]
        rows.append(
            [
                op,
                f"{median(b.result.rps for b, _ in pairs):,.0f}",
                f"{median(t.result.rps for _, t in pairs):,.0f}",
                f"{median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})",
                f"{median(b.cpu(*pg_names) for b, _ in pairs):.0f}",
                f"{median(b.cpu('load generator') for b, _ in pairs):.0f}",
                f"{median(t.cpu(*pg_names) for _, t in pairs):.0f}",
                f"{median(t.cpu('gateway') for _, t in pairs):.0f}",
                f"{median(t.cpu('dialogs') for _, t in pairs):.0f}",
            ]
        )
    print(
        table(
            [
                "op",
                "pgbench tps",
                "public req/s",
                "public/pgbench",
                "PG µs/tx",
                "pgbench µs/tx",
                "PG µs/req",
                "gateway µs/req",
                "dialogs µs/req",
            ],
            rows,
        )
    )
    print("\n(c) one connection: straight to one dialogs instance, and through the gateway\n")
    print(
        table(
            ["op", "direct req/s", "direct p50", "public req/s", "public p50", "added p50 ms"],
            [
                [
                    op,
                    f"{straight.result.rps:,.0f}",
                    f"{straight.result.p50_ms:.2f}",
                    f"{via.result.rps:,.0f}",
                    f"{via.result.p50_ms:.2f}",
                    f"{via.result.p50_ms - straight.result.p50_ms:+.2f}",
                ]
                for op, straight, via in added
            ],
        )
    )
    errors = sum(m.result.errors for _, _, m in sweep)
    errors += sum(t.result.errors for pairs in rounds.values() for _, t in pairs)
    if errors:
        print(f"\n{errors} requests failed (non-2xx or socket errors)")
        return 1
    return 0


def cpu_cells(measured: Measured, pg_names: list[str]) -> list[str]:
    return [
        f"{measured.cpu('gateway'):.0f}",
        f"{measured.cpu('dialogs'):.0f}",
        *(f"{measured.cpu(name):.0f}" for name in pg_names),
        f"{measured.cpu(*pg_names):.0f}",
        f"{measured.cpu('load generator'):.0f}",
    ]


if __name__ == "__main__":
    raise SystemExit(main())
