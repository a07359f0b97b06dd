"""Failover times and what synchronous replication costs a send, on the lab's HA topology.

Runs against the lab that is up (`bin/lab up` first, the HA topology; LAB_STATE_DIR and
LAB_HTTPS_PORT as for bin/lab), through the edge, and prints from one run:

(a) for worker group 1's primary and the coordinator's primary, --runs times each: kill -9
    of its postmaster while clients send and list through the edge (the drill of
    tests/lab/test_lab_drills.py, a careful client with up to 6 retries), the seconds until a
    dialog of that group takes a send again, and what the users lost; then min, median and
    max per drill;
(b) sends through the edge (wrk over HTTPS, 16 connections, one user writing to 64 dialogs
    in turn) with Patroni's synchronous_mode on, off, and on again, --seconds each: req/s,
    p50 and p99.

Usage: .venv/bin/python -m bench.ha_lab [--runs 5] [--seconds 15]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from statistics import median
from typing import Any

from bench._load import cpu_ticks, machine, stolen_since, table, wrk
from lab.topology import DEFAULT_PUBLISHED_PORT, PATRONI_BIN, PATRONI_CONFIG
from tests.lab.ha_drills import Drill, groups_of, kill_primary_under_load
from tests.lab.lab_support import REPO_ROOT, Lab, auth, docker_exec, register

DRILLS = {1: "worker group 1's primary killed", 0: "the coordinator's primary killed"}
CONNECTIONS = 16
DIALOGS = 64


def the_lab() -> Lab:
    state_dir = Path(os.environ.get("LAB_STATE_DIR") or REPO_ROOT / ".lab")
    port = int(os.environ.get("LAB_HTTPS_PORT") or DEFAULT_PUBLISHED_PORT)
    if not (state_dir / "inventory.yml").exists():
        raise SystemExit(f"no lab is up ({state_dir}): run bin/lab up first")
    lab = Lab(port=port, state_dir=state_dir, topology="ha")
    if not lab.inventory_hosts("patroni"):
        raise SystemExit("the lab that is up is not the ha topology: bin/lab down, then"
                         " bin/lab up (LAB_TOPOLOGY=ha)")  # fmt: skip
    return lab


def set_synchronous_mode(lab: Lab, on: bool) -> None:
    """Patroni's synchronous_mode for every Citus group (each keeps its own configuration),
    then waits until every group's standby has the matching role."""
    groups = groups_of(lab)
    host = next(iter(lab.inventory_hosts("patroni")))
    for group in groups:
        docker_exec(
            host, f"{PATRONI_BIN}/patronictl", "-c", PATRONI_CONFIG, "edit-config",
            "--group", str(group), "--force", "--set", f"synchronous_mode={str(on).lower()}",
        )  # fmt: skip
    wanted = "Sync Standby" if on else "Replica"
    deadline = time.monotonic() + 60
    while True:
        standbys = [
            m["Role"] for ms in groups_of(lab).values() for m in ms if m["Role"] != "Leader"
        ]
        if standbys and all(role == wanted for role in standbys):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"the standbys did not become {wanted}: {standbys}")
        time.sleep(1)


def failover_table(drills: dict[int, list[Drill]]) -> str:
    rows = []
    for group, runs in drills.items():
        for number, drill in enumerate(runs, 1):
            rows.append([
                DRILLS[group], str(number), f"{drill.served_again_s:.2f}", str(drill.requests),
                str(drill.tally.acknowledged), str(drill.tally.missing),
                str(drill.tally.duplicated), str(len(drill.failed)), str(drill.retried),
            ])  # fmt: skip
    headers = ["drill", "run", "writes again s", "requests", "acked", "missing",
               "duplicated", "failed after retries", "retried"]  # fmt: skip
    return table(headers, rows)


def summary_table(drills: dict[int, list[Drill]]) -> str:
    rows = []
    for group, runs in drills.items():
        times = [drill.served_again_s for drill in runs]
        rows.append([DRILLS[group], str(len(times)), f"{min(times):.2f}",
                     f"{median(times):.2f}", f"{max(times):.2f}"])  # fmt: skip
    return table(["drill", "runs", "min s", "median s", "max s"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, choices=range(1, 21), metavar="1..20")
    parser.add_argument("--seconds", type=int, default=15, choices=range(3, 61), metavar="3..60")
    args = parser.parse_args()
    lab = the_lab()
    print(machine())
    started, ticks = time.monotonic(), cpu_ticks()

    drills: dict[int, list[Drill]] = {group: [] for group in DRILLS}
    with lab.client() as client:
        for _ in range(args.runs):
            for group, name in DRILLS.items():
                drills[group].append(kill_primary_under_load(lab, client, group, name))
        writer = register(client, "bench-writer")
        peers = [register(client, f"bench-peer{n}").user_id for n in range(DIALOGS)]

    print("\n(a) kill -9 of a group's primary under load, through the edge\n")
    print(failover_table(drills))
    print()
    print(summary_table(drills))

    send: dict[str, Any] = dict(
        url=lab.url,
        method="POST",
        headers=auth(writer) | {"Content-Type": "application/json"},
        bodies=[json.dumps({"text": "a message of the synchronous replication bench"})],
        paths=[f"/dialog/{peer}/send" for peer in peers],
    )
    wrk(connections=4, seconds=2, **send)  # warm up
    rows = []
    for on in (True, False, True):
        set_synchronous_mode(lab, on)
        result = wrk(connections=CONNECTIONS, seconds=args.seconds, **send)
        rows.append([
            "on" if on else "off", f"{result.rps:,.0f}", f"{result.p50_ms:.2f}",
            f"{result.p99_ms:.2f}", str(result.errors),
        ])  # fmt: skip
    print(f"\n(b) sends through the edge, {CONNECTIONS} connections, {DIALOGS} dialogs in turn\n")
    print(table(["synchronous_mode", "req/s", "p50 ms", "p99 ms", "errors"], rows))
    print(f"\n{time.monotonic() - started:.0f} s in all; {stolen_since(ticks)}")


if __name__ == "__main__":
    main()
