"""The lab's HA topology (LAB_TOPOLOGY=ha), for real: every Citus group a Patroni primary
and synchronous standby in containers of their own, 3 etcd members, the services and the
edge in front, all deployed by playbooks/site.yml. The drills of issue 11 run through the
edge with a careful client (an Idempotency-Key on every send, up to 6 retries over about
10 s), and count what users lose: requests acknowledged, missing afterwards, duplicated,
failed after the retries, and the time until the killed group takes writes again."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lab.topology import DEFAULT_PUBLISHED_PORT, HA_GROUP_HOSTS
from tests.lab.ha_drills import Drill, kill_primary_under_load, wait_until_every_group_is_healthy
from tests.lab.lab_support import REPO_ROOT, Lab
from tests.support.postgres import free_port

# The bound for a killed primary's group to take writes again.
SERVED_AGAIN_WITHIN_S = 15.0


@pytest.fixture(scope="module")
def lab(
    tmp_path_factory: pytest.TempPathFactory, citus_image: str, wheelhouse: Path
) -> Iterator[Lab]:
    """The HA lab brought up once for the module (LAB_TEST_REUSE=1: the one that is up)."""
    if os.environ.get("LAB_TEST_REUSE") == "1":
        port = int(os.environ.get("LAB_HTTPS_PORT", str(DEFAULT_PUBLISHED_PORT)))
        yield Lab(port=port, state_dir=REPO_ROOT / ".lab", topology="ha")
        return
    state_dir = tmp_path_factory.mktemp("lab-ha-state")
    lab = Lab(port=free_port(), state_dir=state_dir, topology="ha")
    lab.wheelhouse = wheelhouse
    lab.bin_lab("down", check=False, timeout=300)
    started = time.monotonic()
    try:
        lab.up_output = lab.bin_lab("up", timeout=1800)
    except BaseException:
        lab.bin_lab("down", check=False, timeout=300)
        raise
    lab.up_seconds = time.monotonic() - started
    print(f"\n[lab ha] bin/lab up: {lab.up_seconds:.0f} s")
    yield lab
    lab.bin_lab("down", timeout=300)


@pytest.fixture
def client(lab: Lab) -> Iterator[httpx.Client]:
    with lab.client() as client:
        yield client


def test_every_group_has_a_primary_and_a_synchronous_standby(lab: Lab) -> None:
    groups = wait_until_every_group_is_healthy(lab)
    assert sorted(groups) == [0, 1, 2]
    for members in groups.values():
        assert len(members) == HA_GROUP_HOSTS
    # Patroni registered each group's leader as its primary in pg_dist_node.
    registered = dict(
        row.split("|")
        for row in lab.sql(
            "SELECT groupid, nodename FROM pg_dist_node WHERE noderole = 'primary' ORDER BY 1"
        ).split()
    )
    leaders = {
        str(group): next(m["Host"] for m in members if m["Role"] == "Leader")
        for group, members in groups.items()
    }
    assert registered == leaders
    # Synchronous replication is on and never weakened below "on".
    settings = lab.sql(
        "SELECT current_setting('synchronous_commit') || ' ' || "
        "current_setting('synchronous_standby_names')"
    )
    commit, names = settings.split(" ", 1)
    assert commit in ("on", "remote_apply") and names.strip(), settings


def test_status_shows_each_groups_leader_standby_lag_and_timeline(lab: Lab) -> None:
    output = lab.bin_lab("status", timeout=120)
    listing = output.split("== Citus groups", 1)[1].split("== Citus nodes", 1)[0]
    for heading in ("Group", "Member", "Role", "State", "TL", "Lag"):
        assert heading in listing, listing
    assert listing.count("Leader") == 3 and listing.count("Sync Standby") == 3, listing
    assert "the coordinator's primary" in output


def _assert_nothing_lost(drill: Drill) -> None:
    assert drill.tally.acknowledged > 0
    assert drill.tally.missing == 0, drill.report()
    assert drill.tally.duplicated == 0, drill.report()
    assert drill.tally.unexpected == 0, drill.report()
    assert drill.failed == [], drill.failed[:5]
    assert drill.served_again_s <= SERVED_AGAIN_WITHIN_S, drill.report()


def test_a_killed_worker_primary_loses_nothing(lab: Lab, client: httpx.Client) -> None:
    """Drill 1: kill -9 a worker group's primary under load, twice: the second time the
    primary is the former standby, and the first victim must have rejoined as its sync
    standby (rewound when its WAL went past the fork)."""
    for attempt in (1, 2):
        name = f"worker group 1's primary killed ({attempt} of 2)"
        _assert_nothing_lost(kill_primary_under_load(lab, client, 1, name))


def test_a_killed_coordinator_primary_loses_nothing(lab: Lab, client: httpx.Client) -> None:
    """Drill 2: kill -9 the coordinator's primary under load."""
    _assert_nothing_lost(
        kill_primary_under_load(lab, client, 0, "the coordinator's primary killed")
    )


def test_second_site_run_changes_nothing_and_check_mode_works(lab: Lab) -> None:
    """Drill 6: after the drills, a second site.yml changes nothing; check mode works."""
    for args in ((), ("--check",)):
        result = lab.playbook("site.yml", *args, timeout=1500)
        changed = {host: counts["changed"] for host, counts in result.items() if counts["changed"]}
        assert changed == {}, (args, changed)
