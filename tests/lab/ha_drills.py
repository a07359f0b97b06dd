"""HA drills on the lab's HA topology, shared by tests/lab/test_lab_drills.py and
bench/ha_lab.py: Patroni's view of the groups, and a primary killed under the public API's
load with what the users lost counted."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import httpx

from tests.lab.lab_support import (
    Lab,
    Tally,
    Traffic,
    User,
    docker_exec,
    make_pairs,
    reconcile,
    register,
    run,
    send,
)

POSTMASTER_PID = "/var/lib/postgresql/15/patroni/postmaster.pid"


def groups_of(lab: Lab) -> dict[int, list[dict]]:
    """patronictl list by Citus group."""
    groups: dict[int, list[dict]] = {}
    for member in lab.patroni_members():
        groups.setdefault(int(member["Group"]), []).append(member)
    return groups


def _healthy(members: list[dict], expected: int) -> bool:
    """A running leader and every other member of the inventory a streaming sync standby
    (a member whose key expired is missing from patronictl list: it counts as unhealthy)."""
    leaders = [m for m in members if m["Role"] == "Leader" and m["State"] == "running"]
    syncs = [m for m in members if m["Role"] == "Sync Standby" and m["State"] == "streaming"]
    return len(leaders) == 1 and len(syncs) == expected - 1


def wait_until_every_group_is_healthy(lab: Lab, timeout: float = 120) -> dict[int, list[dict]]:
    expected = Counter(
        int(host["patroni_citus_group"]) for host in lab.inventory_hosts("patroni").values()
    )
    deadline = time.monotonic() + timeout
    groups = groups_of(lab)
    while not all(_healthy(groups.get(group, []), size) for group, size in expected.items()):
        assert time.monotonic() < deadline, f"a group stayed unhealthy: {groups}"
        time.sleep(1)
        groups = groups_of(lab)
    return groups


@dataclass
class Drill:
    """What the users of one drill saw, as each drill prints and asserts it."""

    name: str
    requests: int
    tally: Tally
    failed: list[str]
    retried: int
    served_again_s: float

    def report(self) -> str:
        return (
            f"\n[lab] {self.name}: {self.requests} requests, {self.tally.acknowledged}"
            f" sends acknowledged, {self.tally.missing} missing, {self.tally.duplicated}"
            f" duplicated, {len(self.failed)} failed after the client's retries"
            f" ({self.retried} needed a retry); the group took writes again after"
            f" {self.served_again_s:.1f} s"
        )


def pair_on_group(lab: Lab, client: httpx.Client, group: int) -> tuple[User, User, str]:
    """A dialog whose shard is on Citus group ``group`` (any dialog for group 0: every
    request goes through the coordinator), and the message that found it."""
    for _ in range(40):
        a, b = register(client, "probe-a"), register(client, "probe-b")
        reply = send(client, a, b, "where does this dialog live?")
        assert reply.status_code == 200, reply.text
        if group == 0 or lab.group_of(reply.json()["dialog_id"]) == group:
            return a, b, reply.json()["id"]
    raise AssertionError(f"no dialog landed on group {group} in 40 tries")


def kill_primary_under_load(lab: Lab, client: httpx.Client, group: int, name: str) -> Drill:
    """kill -9 of group ``group``'s primary postmaster while clients send and list through
    the edge; a probe sends to a dialog of that group until one is acknowledged."""
    wait_until_every_group_is_healthy(lab)
    probe_a, probe_b, first = pair_on_group(lab, client, group)
    pairs = [*make_pairs(client, 6), (probe_a, probe_b)]
    primary = lab.host_of_address(
        lab.sql(
            f"SELECT nodename FROM pg_dist_node WHERE groupid = {group} AND noderole = 'primary'"
        ).strip()
    )
    traffic = Traffic(lab.url, pairs, verify=str(lab.ca_file), retries=6, max_seconds=300)
    traffic.start()
    try:
        traffic.wait_requests(60)
        killed_at = time.monotonic()  # before docker exec: its own latency counts too
        docker_exec(primary, "sh", "-c", f'kill -9 "$(head -n 1 {POSTMASTER_PID})"')
        served_again_s = float("inf")
        probes = [first]
        while time.monotonic() - killed_at < 60:
            try:
                reply = send(client, probe_a, probe_b, "probe after the kill")
            except httpx.HTTPError:
                reply = None
            if reply is not None and reply.status_code == 200:
                served_again_s = time.monotonic() - killed_at
                probes.append(reply.json()["id"])
                break
            if reply is not None:
                # A failover answers 503 with Retry-After, never a 500 or a hang.
                assert reply.status_code == 503, (reply.status_code, reply.text)
                assert int(reply.headers["Retry-After"]) >= 1
            time.sleep(0.2)
        traffic.wait_requests(60)
    finally:
        traffic.stop()
    wait_until_every_group_is_healthy(lab)
    traffic.acked[len(pairs) - 1].extend(probes)
    drill = Drill(
        name, traffic.requests, reconcile(client, traffic), traffic.failures, traffic.retried,
        served_again_s,
    )  # fmt: skip
    print(drill.report())
    return drill


def leader_of(lab: Lab, group: int) -> dict:
    """Group ``group``'s leader as patronictl lists it (Member, Host, TL, ...)."""
    members = wait_until_every_group_is_healthy(lab)[group]
    return next(m for m in members if m["Role"] == "Leader")


def _in_netns(container: str, *command: str) -> None:
    """``command`` run in ``container``'s network namespace with this machine's tools (the
    database hosts have no NET_ADMIN of their own)."""
    pid = run(["docker", "inspect", "-f", "{{.State.Pid}}", container], timeout=30).stdout
    run(["nsenter", "-t", pid.strip(), "-n", *command], timeout=30)


def cut_off(container: str, peer: str, ports: str) -> None:
    """Drops ``container``'s traffic to and from ``peer`` (an address) and on the TCP
    ``ports`` (e.g. etcd's "2379:2380") either way; everything else still flows."""
    for chain, direction in (("OUTPUT", "-d"), ("INPUT", "-s")):
        _in_netns(container, "iptables", "-I", chain, direction, peer, "-j", "DROP")
        for side in ("--dport", "--sport"):
            _in_netns(container, "iptables", "-I", chain, "-p", "tcp", side, ports, "-j", "DROP")


def heal(container: str) -> None:
    """Removes what cut_off added (the lab's database hosts have no rules of their own)."""
    for chain in ("OUTPUT", "INPUT"):
        _in_netns(container, "iptables", "-F", chain)
