"""The gateway's own CPU per request, with nothing else on the machine's cores: the gateway
(1 worker) in front of two stand-ins for dialogs that answer at once with canned bodies
(bench/_fake_dialogs.py), no database, wrk as the client. Issue 12's budget: at most 150 µs
per request, all included (Sanic, token check, validation, forwarding, metrics).

Prints, for /healthz (Sanic and the shared middlewares only), list (a 50-message page
relayed) and send, at 1, 16 and 64 connections: req/s, p50 and the CPU (user + system, from
/proc) of the gateway's processes per request.

Usage: .venv/bin/python -m bench.gateway_alone [--seconds 4] [--rounds 2]
Loopback only; starts and stops everything itself (about 40 s per round).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

from bench._load import connection_counts, cpu_ticks, machine, stolen_since, table, wrk
from bench.public_path import pid_of, tree_cpu_s
from tests.support.gateway import gateway_process, make_token, ready_upstreams
from tests.support.postgres import free_port

USER = "0b0f4c36-7b2f-4a43-9d6e-2f5d3a1c9e77"
PEER = "1b0f4c36-7b2f-4a43-9d6e-2f5d3a1c9e77"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=4, help="per step (1..30)")
    parser.add_argument("--rounds", type=int, default=2, help="1..5")
    parser.add_argument("--concurrency", default="1,16,64")
    args = parser.parse_args(argv)
    concurrencies = connection_counts(args.concurrency)
    if not 1 <= args.seconds <= 30 or not 1 <= args.rounds <= 5:
        raise SystemExit("--seconds must be 1..30 and --rounds 1..5")
    print(machine(), flush=True)
    ticks = cpu_ticks()
    ports = [free_port(), free_port()]
    fakes = [
        subprocess.Popen(
            [sys.executable, "-m", "bench._fake_dialogs", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in ports
    ]
    gateway = None
    rows = []
    try:
        # The users database is never reached: the token is made here, and the pool
        # opens no connection before it is used.
        gateway = gateway_process(
            f"postgresql://postgres@127.0.0.1:{free_port()}/unused",
            [f"http://127.0.0.1:{port}" for port in ports],
            GATEWAY_LOG_LEVEL="WARNING",
            GATEWAY_UPSTREAM_COOLDOWN_S="5",
            GATEWAY_UPSTREAM_PROBE_INTERVAL_S="1",
        ).start()
        deadline = time.monotonic() + 20
        while len(ready_upstreams(gateway.url)) < 2:
            if time.monotonic() > deadline:
                raise SystemExit("the gateway did not see both stand-ins ready")
            time.sleep(0.2)
        bearer = {"Authorization": f"Bearer {make_token({'sub': USER})}"}
        cells: dict[str, dict[str, Any]] = {
            "healthz": dict(url=f"{gateway.url}/healthz", method="GET"),
            "list": dict(
                url=f"{gateway.url}/dialog/{PEER}/list?limit=50", method="GET", headers=bearer
            ),
            "send": dict(
                url=f"{gateway.url}/dialog/{PEER}/send",
                method="POST",
                headers=bearer | {"Content-Type": "application/json"},
                bodies=[json.dumps({"text": "hello there"})],
            ),
        }
        for spec in cells.values():  # warm up
            wrk(connections=4, seconds=1, **spec)
        for round_number in range(1, args.rounds + 1):
            for connections in concurrencies:
                for name, spec in cells.items():
                    before = tree_cpu_s(pid_of(gateway))
                    result = wrk(connections=connections, seconds=args.seconds, **spec)
                    used = tree_cpu_s(pid_of(gateway)) - before
                    rows.append(
                        [
                            str(round_number),
                            name,
                            str(connections),
                            f"{result.rps:,.0f}",
                            f"{result.p50_ms:.2f}",
                            f"{used / max(result.requests, 1) * 1e6:.0f}",
                            str(result.errors),
                        ]
                    )
    finally:
        if gateway is not None:
            gateway.stop()
        for fake in fakes:
            fake.terminate()
            fake.wait(10)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}; {stolen_since(ticks)}\n")
    print(
        table(
            ["round", "request", "conns", "req/s", "p50 ms", "gateway CPU µs/req", "errors"], rows
        )
    )
    return 1 if any(row[-1] != "0" for row in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
