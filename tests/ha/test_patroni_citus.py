"""Patroni in Citus mode on loopback (etcd x3, two groups of primary + synchronous
standby): the cluster forms, a killed primary of either group fails over to its standby
with pg_dist_node following, a planned switchover pauses writes without failing them, and
a careful client loses no acknowledged write."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.support.ha import SUPERUSER, HaCluster, PatroniNode, wait_for
from tests.support.ha_load import Loss, SqlWriter, Tally, check_writes, create_probe_table


def _patronictl(node: PatroniNode, *args: str) -> str:
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "patronictl"),
            "-c",
            str(node.root / "patroni.yml"),
            *args,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout


def _report(what: str, tally: Tally, loss: Loss, figures: dict[str, float | None]) -> None:
    timings = ", ".join(
        f"{name} {value:.2f} s" if value is not None else f"{name} never"
        for name, value in figures.items()
    )
    print(
        f"\n[ha] {what}: {timings}; writes acknowledged {loss.acknowledged}, "
        f"lost {len(loss.lost)}, duplicated {loss.duplicated}, failed after retries "
        f"{loss.failed}, retried {tally.retried} (committed but unacknowledged "
        f"{loss.unacknowledged_found}); longest pause {tally.longest_pause():.2f} s; "
        f"errors seen {dict(tally.errors)}"
    )
    for kind, message in tally.samples.items():
        print(f"[ha]   {kind}: {message}")


def _wait_acks(writer: SqlWriter, more: int, timeout: float = 60) -> None:
    target = len(writer.tally.acknowledged) + more
    wait_for(
        f"{more} more acknowledged writes",
        lambda: len(writer.tally.acknowledged) >= target,
        timeout,
        step=0.05,
    )


def _new_leader(cluster: HaCluster, group: int, old: PatroniNode) -> PatroniNode:
    def promoted() -> PatroniNode | None:
        leader = cluster.leader(group)
        return leader if leader is not None and leader.name != old.name else None

    return wait_for(f"a new leader in group {group}", promoted, 60, step=0.05)


def test_the_cluster_forms(healthy: HaCluster) -> None:
    for group in healthy.groups:
        roles = sorted(member.role for member in healthy.members(group))
        assert roles == ["leader", "sync_standby"], (group, roles)
    # patronictl sees the whole Citus formation, each member with its group.
    listed = json.loads(_patronictl(healthy.nodes[0], "list", "-f", "json"))
    assert sorted((m["Group"], m["Role"]) for m in listed) == [
        (0, "Leader"),
        (0, "Sync Standby"),
        (1, "Leader"),
        (1, "Sync Standby"),
    ]
    # Patroni registered each group's primary in the coordinator's pg_dist_node.
    leaders = {group: healthy.leader(group) for group in healthy.groups}
    assert healthy.registered_primaries() == {
        group: leader.pg_port for group, leader in leaders.items() if leader is not None
    }
    coordinator = leaders[0]
    assert coordinator is not None
    settings = dict(
        line.split("|")
        for line in healthy.psql(
            coordinator,
            "SELECT name, setting FROM pg_settings WHERE name IN ('wal_level', "
            "'synchronous_commit', 'synchronous_standby_names', 'shared_preload_libraries', "
            "'max_prepared_transactions')",
        ).splitlines()
    )
    assert settings["wal_level"] == "logical"
    assert settings["synchronous_commit"] == "on"
    assert "citus" in settings["shared_preload_libraries"]
    assert int(settings["max_prepared_transactions"]) > 0
    standby = healthy.standbys(0)[0]
    assert standby.name in settings["synchronous_standby_names"]
    # No trust over TCP: a wrong password is refused.
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(
            host="127.0.0.1",
            port=coordinator.pg_port,
            user=SUPERUSER,
            password="wrong",
            dbname="dialogs",
            connect_timeout=5,
        )


@dataclass
class _Kill:
    """A group's primary killed (kill -9 of its postmaster) while a careful client writes."""

    table: str
    old: PatroniNode
    standby: PatroniNode
    new: PatroniNode
    killed_at: float
    promoted_s: float
    writer: SqlWriter

    def finish(self, cluster: HaCluster) -> tuple[Tally, Loss, float | None]:
        """More writes after the failover, then what the client lost and when it was
        served again."""
        _wait_acks(self.writer, 30)
        tally = self.writer.finish()
        loss = check_writes(cluster.coordinator_sql, self.table, tally)
        return tally, loss, tally.served_again_after(self.killed_at)


def _kill_primary_under_writes(cluster: HaCluster, group: int, table: str) -> _Kill:
    create_probe_table(cluster.coordinator_sql, table)
    old, standby = cluster.leader(group), cluster.standbys(group)[0]
    assert old is not None
    # postgresql://…@h1:p1,h2:p2/dialogs?target_session_attrs=read-write
    writer = SqlWriter(cluster.coordinator_url(), table)
    writer.start()
    _wait_acks(writer, 30)
    killed_at = time.monotonic()
    old.kill_postmaster()
    new = _new_leader(cluster, group, old)
    return _Kill(table, old, standby, new, killed_at, time.monotonic() - killed_at, writer)


def test_worker_primary_killed_fails_over_to_its_standby(healthy: HaCluster) -> None:
    kill = _kill_primary_under_writes(healthy, 1, "ha_probe_worker_kill")
    old, standby, new, promoted = kill.old, kill.standby, kill.new, kill.promoted_s
    wait_for(
        "pg_dist_node names group 1's new primary",
        lambda: healthy.registered_primaries().get(1) == new.pg_port,
        60,
        step=0.05,
    )
    registered = time.monotonic() - kill.killed_at
    tally, loss, served = kill.finish(healthy)
    _report(
        "worker primary killed (kill -9 postmaster)",
        tally,
        loss,
        {"promoted": promoted, "pg_dist_node updated": registered, "writes served again": served},
    )
    assert new.name == standby.name
    assert (loss.lost, loss.duplicated, loss.failed) == ([], 0, 0)
    assert served is not None
    # The old primary comes back as the new primary's synchronous standby (pg_rewind).
    healthy.wait_healthy(90)
    assert [n.name for n in healthy.standbys(1)] == [old.name]


def test_coordinator_primary_killed_clients_follow_with_a_multi_host_url(
    healthy: HaCluster,
) -> None:
    worker_before = healthy.registered_primaries()[1]
    kill = _kill_primary_under_writes(healthy, 0, "ha_probe_coordinator_kill")
    old, standby, new, promoted = kill.old, kill.standby, kill.new, kill.promoted_s
    tally, loss, served = kill.finish(healthy)
    _report(
        "coordinator primary killed (kill -9 postmaster)",
        tally,
        loss,
        {"promoted": promoted, "writes served again": served},
    )
    assert new.name == standby.name
    assert (loss.lost, loss.duplicated, loss.failed) == ([], 0, 0)
    assert served is not None
    # The new coordinator's pg_dist_node names it as group 0's primary; group 1 unchanged.
    wait_for(
        "pg_dist_node names the new coordinator",
        lambda: healthy.registered_primaries() == {0: new.pg_port, 1: worker_before},
        60,
        step=0.05,
    )
    print(f"[ha]   pg_dist_node updated {time.monotonic() - kill.killed_at:.2f} s after the kill")
    healthy.wait_healthy(90)
    assert [n.name for n in healthy.standbys(0)] == [old.name]


def test_planned_worker_switchover_under_writes_fails_none(healthy: HaCluster) -> None:
    table = "ha_probe_switchover"
    create_probe_table(healthy.coordinator_sql, table)
    old, candidate = healthy.leader(1), healthy.standbys(1)[0]
    assert old is not None
    writer = SqlWriter(healthy.coordinator_url(), table)
    writer.start()
    _wait_acks(writer, 30)

    started = time.monotonic()
    response = healthy.switchover(1, candidate)
    assert response.status_code == 200, response.text
    switched = time.monotonic() - started
    new = _new_leader(healthy, 1, old)
    wait_for(
        "pg_dist_node names group 1's new primary",
        lambda: healthy.registered_primaries().get(1) == new.pg_port,
        60,
        step=0.05,
    )
    _wait_acks(writer, 30)
    tally = writer.finish()
    loss = check_writes(healthy.coordinator_sql, table, tally)
    _report(
        "planned switchover of group 1",
        tally,
        loss,
        {"switchover call": switched, "writes served again": tally.served_again_after(started)},
    )
    assert new.name == candidate.name
    assert (loss.lost, loss.duplicated, loss.failed) == ([], 0, 0)
