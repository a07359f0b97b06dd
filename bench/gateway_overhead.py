"""What the gateway adds: list and send straight to one dialogs instance versus through the
gateway in front of that same instance, in one run on one machine.

Prints requests/s, p50 and p99 for both paths at a few concurrencies, and the latency the
gateway adds at p50 and p99. Everything runs on loopback: a throw-away PostgreSQL (plain,
no Citus: the database is the same for both paths, so it cancels out), one dialogs
instance, one gateway, and wrk (closed loop, bounded by --seconds per measurement).

Usage: .venv/bin/python -m bench.gateway_overhead [--seconds 5] [--concurrency 1,16,64]
Needs PostgreSQL 15 and wrk (apt-get install wrk); starts and removes everything itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

from bench._load import Result, machine, wrk
from tests.support.gateway import (
    descendants,
    gateway_process,
    login,
    migrate_gateway,
    register,
    wait_until,
)
from tests.support.gateway import ready_upstreams as gateway_ready_upstreams
from tests.support.postgres import PgServer
from tests.support.processes import INTERNAL_TOKEN, ServiceProcess, dialogs_process, migrate

TEXT = "Neque porro quisquam est qui dolorem ipsum quia dolor sit amet"
PAGE = 50


def cpu_seconds(process: ServiceProcess) -> float:
    """CPU time (user + system) used so far by a service and the processes it started."""
    assert process.process is not None
    total = 0
    for pid in [process.process.pid, *descendants(process.process.pid)]:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def machine_and_versions() -> str:
    pg = subprocess.run(
        ["/usr/lib/postgresql/15/bin/postgres", "--version"], capture_output=True, text=True
    ).stdout.strip()
    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout
    return f"{machine()}; {pg}, {wrk_version.split(' Copyright')[0].strip()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="per measurement (default 5)")
    parser.add_argument("--concurrency", default="1,16,64", help="connections, comma list")
    parser.add_argument("--dialog-size", type=int, default=300, help="messages seeded")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    if not all(1 <= c <= 256 for c in concurrencies) or not 1 <= args.seconds <= 30:
        print("--concurrency values must be 1..256 and --seconds 1..30", file=sys.stderr)
        return 2

    print(machine_and_versions(), flush=True)
    server = PgServer("bench-gateway").start()
    services: list[ServiceProcess] = []
    try:
        server.psql("CREATE DATABASE dialogs")
        dsn = server.dsn_for("dialogs")
        migrate(dsn)
        migrate_gateway(dsn)
        dialogs = dialogs_process(dsn, DIALOGS_WORKERS="1", DIALOGS_LOG_LEVEL="WARNING")
        services.append(dialogs.start())
        gateway = gateway_process(
            dsn,
            [dialogs.url],
            GATEWAY_WORKERS="1",
            GATEWAY_LOG_LEVEL="WARNING",
            # The bench never fails an instance; keep the defaults of a deployment here.
            GATEWAY_UPSTREAM_COOLDOWN_S="5",
            GATEWAY_UPSTREAM_PROBE_INTERVAL_S="1",
        )
        services.append(gateway.start())
        wait_until(lambda: gateway_ready_upstreams(gateway.url))

        with httpx.Client(base_url=gateway.url, timeout=10) as api:
            alice, bob = register(api), register(api)
            bearer = {"Authorization": f"Bearer {login(api, alice)}"}
        internal = {"X-Internal-Token": INTERNAL_TOKEN, "Content-Type": "application/json"}
        with httpx.Client(base_url=dialogs.url, headers=internal, timeout=10) as direct:
            for i in range(args.dialog_size):
                sender, recipient = (alice, bob) if i % 2 else (bob, alice)
                message = {"from": sender, "to": recipient, "text": f"{TEXT} {i}"}
                assert direct.post("/internal/v1/messages/send", json=message).status_code == 200

        json_type = {"Content-Type": "application/json"}
        paths = {
            ("list", "direct"): (
                f"{dialogs.url}/internal/v1/messages/list",
                "POST",
                internal,
                [json.dumps({"user_id": alice, "peer_id": bob, "limit": PAGE})],
            ),
            ("list", "gateway"): (
                f"{gateway.url}/dialog/{bob}/list?limit={PAGE}",
                "GET",
                bearer,
                [],
            ),
            ("send", "direct"): (
                f"{dialogs.url}/internal/v1/messages/send",
                "POST",
                internal,
                [json.dumps({"from": alice, "to": bob, "text": TEXT})],
            ),
            ("send", "gateway"): (
                f"{gateway.url}/dialog/{bob}/send",
                "POST",
                bearer | json_type,
                [json.dumps({"text": TEXT})],
            ),
        }
        # Warm both paths (connections, prepared statements, caches) before measuring.
        for url, method, headers, body in paths.values():
            wrk(url, method=method, headers=headers, bodies=body, connections=4, seconds=1)

        rows = []
        for operation in ("list", "send"):
            for connections in concurrencies:
                url, method, headers, body = paths[(operation, "direct")]
                direct_result = wrk(
                    url,
                    method=method,
                    headers=headers,
                    bodies=body,
                    connections=connections,
                    seconds=args.seconds,
                )
                before = cpu_seconds(gateway)
                url, method, headers, body = paths[(operation, "gateway")]
                via = wrk(
                    url,
                    method=method,
                    headers=headers,
                    bodies=body,
                    connections=connections,
                    seconds=args.seconds,
                )
                cpu_us = (cpu_seconds(gateway) - before) / max(via.requests, 1) * 1e6
                rows.append((operation, connections, direct_result, via, cpu_us))
                print(f"  measured {operation} c={connections}", file=sys.stderr, flush=True)
        print_table(rows, args.seconds)
        errors = sum(m.errors for _, _, d, g, _ in rows for m in (d, g))
        if errors:
            print(f"\n{errors} requests failed (non-2xx or socket errors)", file=sys.stderr)
            return 1
        return 0
    finally:
        for service in reversed(services):
            service.stop()
        server.destroy()


def print_table(rows: list[tuple[str, int, Result, Result, float]], seconds: int) -> None:
    print(f"\nwrk closed loop, 1 thread, {seconds} s per cell; dialogs 1 worker, gateway 1 worker")
    header = (
        "| op | conns | direct req/s | direct p50 ms | direct p99 ms | gateway req/s "
        "| gateway p50 ms | gateway p99 ms | added p50 ms | added p99 ms | gateway CPU/req |"
    )
    print(header)
    print("|" + "---|" * 11)
    for operation, connections, direct, via, cpu_us in rows:
        print(
            f"| {operation} | {connections} | {direct.rps:,.0f} | {direct.p50_ms:.2f} "
            f"| {direct.p99_ms:.2f} | {via.rps:,.0f} | {via.p50_ms:.2f} | {via.p99_ms:.2f} "
            f"| {via.p50_ms - direct.p50_ms:+.2f} | {via.p99_ms - direct.p99_ms:+.2f} "
            f"| {cpu_us:.0f} us |"
        )


if __name__ == "__main__":
    sys.exit(main())
