"""End-to-end drills on the lab: `bin/lab up` once for this module (the HA topology:
every Citus group a Patroni primary and synchronous standby, 3 etcd members, the services
and the edge in front), the drills in order against it, `bin/lab down` at the end. Each
drill asserts; the figures it prints go to docs/benchmarks.md. The failure drills run
through the edge with a careful client (an Idempotency-Key on every send, up to 6 retries
over about 10 s) and count what users lose: requests acknowledged, missing afterwards,
duplicated, failed after the retries, and the time until served again.

Running this module replaces a lab that is already up (the containers have fixed names).
With LAB_TEST_REUSE=1 it runs the drills against the lab that is up instead (HTTPS on
LAB_HTTPS_PORT, default 8443; state in .lab/) and leaves it up: for working on drills.

The wheelhouse is built once, before `bin/lab up`, and every deploy of the module uses it:
the drills test the deployment, not whatever the working tree holds at that moment.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from lab.cli import EDGE_VIEW, edge_addresses
from lab.topology import (
    APP,
    BASE_IMAGE,
    CITUS_IMAGE,
    CITUS_VERSION_LABEL,
    DEFAULT_PUBLISHED_PORT,
    DIALOGS_PORTS,
    EDGE,
    EDGE2,
    EDGE_NETWORK,
    EDGES,
    GATEWAY_PORTS,
    HA_GROUP_HOSTS,
    HTTPS_PORT,
    LABEL,
    METRICS_PORT,
    PATRONI_BIN,
    PATRONI_CONFIG,
    PRIVATE_NETWORK,
    ha_host,
)
from tests.lab.ha_drills import (
    Drill,
    cut_off,
    groups_of,
    heal,
    kill_primary_under_load,
    leader_of,
    pair_on_group,
    wait_until_every_group_is_healthy,
)
from tests.lab.lab_support import (
    REPO_ROOT,
    Lab,
    Traffic,
    User,
    auth,
    docker_exec,
    make_pairs,
    probe_ports,
    recap,
    reconcile,
    register,
    run,
    send,
    under_load,
)
from tests.support.postgres import free_port


@pytest.fixture(scope="module")
def lab(
    tmp_path_factory: pytest.TempPathFactory, citus_image: str, wheelhouse: Path
) -> Iterator[Lab]:
    """The lab brought up once for the module; its cluster image carries Citus."""
    if os.environ.get("LAB_TEST_REUSE") == "1":
        port = int(os.environ.get("LAB_HTTPS_PORT", str(DEFAULT_PUBLISHED_PORT)))
        yield Lab(port=port, state_dir=REPO_ROOT / ".lab")
        return
    state_dir = tmp_path_factory.mktemp("lab-state")
    lab = Lab(port=free_port(), state_dir=state_dir)
    lab.wheelhouse = wheelhouse
    lab.bin_lab("down", check=False, timeout=300)
    started = time.monotonic()
    try:
        lab.up_output = lab.bin_lab("up", timeout=1800)
    except BaseException:
        lab.bin_lab("down", check=False, timeout=300)
        raise
    lab.up_seconds = time.monotonic() - started
    print(f"\n[lab] bin/lab up: {lab.up_seconds:.0f} s")
    yield lab
    lab.bin_lab("down", timeout=300)


@pytest.fixture
def client(lab: Lab) -> Iterator[httpx.Client]:
    with lab.client() as client:
        yield client


GATEWAY_UNITS = [f"gateway@{port}" for port in GATEWAY_PORTS]
PATRONI_REST_PORT = 8008  # roles/patroni's default, the lab's
ETCD_CLIENT_PORT = 2379  # roles/etcd's defaults, the lab's
ETCD_PEER_PORT = 2380
PATRONI_TTL_S = 20  # roles/patroni's patroni_ttl, the lab's
# etcdctl on an etcd member, with the member's own client certificate (roles/etcd).
ETCDCTL_TLS = (
    "--cacert=/etc/etcd/tls/ca.crt --cert=/etc/etcd/tls/etcd.crt --key=/etc/etcd/tls/etcd.key"
)
# The bound for a killed primary's group to take writes again.
SERVED_AGAIN_WITHIN_S = 15.0


def test_up_prints_the_url_and_an_example_that_works(lab: Lab) -> None:
    if not lab.up_output:
        pytest.skip("LAB_TEST_REUSE=1: this run did not bring the lab up")
    assert f"the API at {lab.url}" in lab.up_output
    assert f"--cacert {lab.ca_file}" in lab.up_output
    example = lab.up_output.split("Try it (copy and paste):", 1)[1].split("More:", 1)[0]
    assert "curl" in example
    # The example, pasted into a shell, registers, logs in, sends and lists.
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", example],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"^HTTP/(1.1|2) 200", result.stdout, re.MULTILINE), result.stdout  # h2: ALPN
    assert result.stdout.count("Hello, Bob!") == 2  # the send's answer and the list


def test_the_cluster_runs_the_citus_release_of_its_image(lab: Lab) -> None:
    """bin/lab took the release from the image's label: no role default was needed."""
    label = run(
        ["docker", "image", "inspect", "-f",
         f'{{{{index .Config.Labels "{CITUS_VERSION_LABEL}"}}}}', CITUS_IMAGE],
        timeout=60,
    ).stdout.strip()  # fmt: skip
    assert re.fullmatch(r"\d+\.\d+", label), f"{CITUS_IMAGE} has no {CITUS_VERSION_LABEL}"
    inventory = yaml.safe_load((lab.state_dir / "inventory.yml").read_text())
    assert inventory["all"]["vars"]["citus_node_citus_version"] == label
    assert lab.sql("SELECT extversion FROM pg_extension WHERE extname = 'citus'").startswith(
        f"{label}-"
    )


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


def test_public_api_end_to_end(lab: Lab, client: httpx.Client) -> None:
    """Drill 1: register, log in, send both ways, list, page through 500 messages."""
    alice, bob = register(client, "alice"), register(client, "bob")

    assert send(client, alice, bob, "hi Bob").status_code == 200
    assert send(client, bob, alice, "hi Alice").status_code == 200
    for reader, peer in ((alice, bob), (bob, alice)):
        reply = client.get(f"/dialog/{peer.user_id}/list", headers=auth(reader))
        assert reply.status_code == 200
        assert [(m["from"], m["to"], m["text"]) for m in reply.json()] == [
            (bob.user_id, alice.user_id, "hi Alice"),
            (alice.user_id, bob.user_id, "hi Bob"),
        ]

    sent = []
    for number in range(500):
        sender, recipient = (alice, bob) if number % 2 else (bob, alice)
        reply = send(client, sender, recipient, f"message {number}")
        assert reply.status_code == 200, reply.text
        sent.append(reply.json()["id"])

    pages = 0
    cursor = None
    listed: list[dict] = []
    while True:
        params = {"limit": 50} | ({"cursor": cursor} if cursor else {})
        reply = client.get(f"/dialog/{alice.user_id}/list", params=params, headers=auth(bob))
        assert reply.status_code == 200
        pages += 1
        listed.extend(reply.json())
        cursor = reply.headers.get("X-Next-Cursor")
        if not cursor:
            break
    assert pages == 11  # 502 messages, 50 a page
    ids = [m["id"] for m in listed]
    assert len(ids) == len(set(ids)) == 502
    assert ids[:500] == sent[::-1]  # newest first, nothing skipped or repeated
    assert [m["text"] for m in listed[-2:]] == ["hi Alice", "hi Bob"]

    # The gateway answers for the caller only: a missing or foreign token is refused.
    assert client.get(f"/dialog/{alice.user_id}/list").status_code == 401
    forged = User(bob.user_id, alice.token[:-4] + "AAAA")
    assert client.get(f"/dialog/{alice.user_id}/list", headers=auth(forged)).status_code == 401


def test_seed_checks_explain_and_shards_per_group(lab: Lab, client: httpx.Client) -> None:
    """Drill 2: without the distribution key a query fans out to every shard; with it, one."""
    alice, bob = register(client, "explain-a"), register(client, "explain-b")
    reply = send(client, alice, bob, "explain me")
    assert reply.status_code == 200
    dialog_id = reply.json()["dialog_id"]
    shard_count = int(
        lab.sql(
            "SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = 'dialog_messages'::regclass"
        )
    )
    assert shard_count > 1

    fan_out = lab.sql(f"EXPLAIN SELECT * FROM dialog_messages WHERE user_id = '{alice.user_id}'")
    assert f"Task Count: {shard_count}" in fan_out

    router = lab.sql(
        f"EXPLAIN SELECT * FROM dialog_messages WHERE dialog_id = '{dialog_id}' "
        "ORDER BY id DESC LIMIT 50"
    )
    assert "Task Count: 1" in router
    insert = lab.sql(
        "EXPLAIN INSERT INTO dialog_messages (dialog_id, id, user_id, content) "
        f"VALUES ('{dialog_id}', gen_random_uuid(), '{alice.user_id}', 'x')"
    )
    assert "Task Count: 1" in insert

    per_group = lab.shards_per_group()
    print(f"\n[lab] dialog_messages shards per worker group: {per_group}")
    assert set(per_group) == set(lab.worker_groups()) == {1, 2}
    assert sum(per_group.values()) == shard_count
    assert all(count > 0 for count in per_group.values())


def test_only_the_edge_is_exposed(lab: Lab) -> None:
    """Drill 7: only the edge's HTTPS is published; the gateways, dialogs, PostgreSQL,
    Patroni's REST API, etcd and the edge's metrics are out of reach from the public side,
    and PostgreSQL refuses a wrong password and an unknown host."""
    coordinator_host, worker_host = lab.coordinator(), ha_host(1, 1)  # an etcd member too
    # Published ports: only the edge's HTTPS, only on loopback.
    published = run(["docker", "port", EDGE], timeout=30).stdout.split()
    assert published == [f"{HTTPS_PORT}/tcp", "->", f"127.0.0.1:{lab.port}"]
    for node in (coordinator_host, worker_host, APP, EDGE2):
        assert run(["docker", "port", node], timeout=30).stdout.strip() == ""

    edge_public = lab.container_address(EDGE, EDGE_NETWORK)
    edge_private = lab.container_address(EDGE, PRIVATE_NETWORK)
    app_edge = lab.container_address(APP, EDGE_NETWORK)
    app_private = lab.container_address(APP, PRIVATE_NETWORK)
    coordinator = lab.container_address(coordinator_host, PRIVATE_NETWORK)
    worker = lab.container_address(worker_host, PRIVATE_NETWORK)
    service_ports = [*GATEWAY_PORTS, *DIALOGS_PORTS]
    # A client on the public side: the edge's HTTPS answers, nothing else does.
    seen = probe_ports(
        EDGE_NETWORK,
        [
            (edge_public, HTTPS_PORT),
            (lab.virtual_address, HTTPS_PORT),
            (edge_public, 80),
            (edge_public, METRICS_PORT),
            *((app_edge, port) for port in service_ports),
            *((app_private, port) for port in service_ports),
            (edge_private, METRICS_PORT),
            (coordinator, 5432),
            (worker, 5432),
            (coordinator, PATRONI_REST_PORT),
            (worker, ETCD_CLIENT_PORT),
        ],
        CITUS_IMAGE,
    )
    assert seen[f"{edge_public}:{HTTPS_PORT}"] == "open"
    assert seen[f"{lab.virtual_address}:{HTTPS_PORT}"] == "open"
    assert seen[f"{edge_public}:80"] == "refused"  # edge_http_mode: refuse
    assert seen[f"{edge_public}:{METRICS_PORT}"] == "refused"  # the private address only
    for port in service_ports:
        assert seen[f"{app_edge}:{port}"] == "refused"  # they bind the private address only
        assert seen[f"{app_private}:{port}"] == "unreachable"
    assert seen[f"{edge_private}:{METRICS_PORT}"] == "unreachable"
    assert seen[f"{coordinator}:5432"] == "unreachable"
    assert seen[f"{worker}:5432"] == "unreachable"
    assert seen[f"{coordinator}:{PATRONI_REST_PORT}"] == "unreachable"
    assert seen[f"{worker}:{ETCD_CLIENT_PORT}"] == "unreachable"
    # On the private network, the edge's metrics answer (for Prometheus).
    metrics = docker_exec(
        APP, "python3", "-c",
        f"import urllib.request; print(urllib.request.urlopen('http://{edge_private}:"
        f"{METRICS_PORT}/metrics', timeout=10).read().decode())",
    )  # fmt: skip
    assert 'haproxy_backend_active_servers{proxy="gateways"} 2' in metrics
    # The private network has no route out: the app host reaches the Debian mirror through
    # its public side, a worker reaches nothing outside (checked when the mirror answers).
    mirror = ("deb.debian.org", 80)
    if _connect_from(APP, *mirror) == "open":
        assert _connect_from(worker_host, *mirror) == "unreachable"

    # From the app host, which pg_hba admits: a wrong password is refused.
    wrong_password = docker_exec(
        APP,
        "/opt/dialogs/venv/bin/python",
        "-c",
        "import asyncio, asyncpg, sys\n"
        "async def main():\n"
        "    try:\n"
        f"        await asyncpg.connect(host='{coordinator}', user='dialogs', database='dialogs',"
        " password='not-the-password', ssl='require', timeout=10)\n"
        "    except Exception as error:\n"
        "        print(type(error).__name__, error)\n"
        "    else:\n"
        "        print('connected')\n"
        "asyncio.run(main())\n",
    )
    assert "InvalidPasswordError" in wrong_password
    assert 'password authentication failed for user "dialogs"' in wrong_password

    # From an address on the private network that is no cluster or app host: no entry.
    subnet = ipaddress.ip_network(
        run(
            ["docker", "network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}}{{end}}",
             PRIVATE_NETWORK],
            timeout=30,
        ).stdout.strip()
    )  # fmt: skip
    stranger = str(subnet[250])
    refused = run(
        [
            "docker", "run", "--rm", "--label", LABEL, "--network", PRIVATE_NETWORK,
            "--ip", stranger, "-e", "PGCONNECT_TIMEOUT=10", "--entrypoint", "psql", CITUS_IMAGE,
            f"host={coordinator} user=dialogs dbname=dialogs password=x sslmode=require",
            "-c", "SELECT 1",
        ],
        timeout=120,
        check=False,
    )  # fmt: skip
    assert refused.returncode != 0
    assert f'no pg_hba.conf entry for host "{stranger}"' in refused.stderr


def _connect_from(container: str, host: str, port: int) -> str:
    """open | unreachable: a TCP connection from inside ``container``."""
    return docker_exec(
        container,
        "python3",
        "-c",
        "import socket\n"
        "try:\n"
        f"    socket.create_connection(('{host}', {port}), timeout=5).close()\n"
        "    print('open')\n"
        "except OSError:\n"
        "    print('unreachable')\n",
    ).strip()


def test_stopping_a_dialogs_instance_under_load_is_invisible(
    lab: Lab, client: httpx.Client
) -> None:
    """Drill 4a: one dialogs instance stops and comes back; clients see no error."""
    traffic = Traffic(lab.url, make_pairs(client, 6), verify=str(lab.ca_file)).start()
    try:
        traffic.wait_requests(100)
        docker_exec(APP, "systemctl", "stop", "dialogs@8081")
        stopped_at = traffic.requests
        upstream_out = False
        for _ in range(60):
            ready = client.get("/readyz").json()
            if any(u.endswith(":8081") and s == "out" for u, s in ready["upstreams"].items()):
                upstream_out = True
                break
            time.sleep(0.5)
        traffic.wait_requests(300)
        docker_exec(APP, "systemctl", "start", "dialogs@8081")
        for _ in range(60):
            ready = client.get("/readyz").json()
            if all(state == "ready" for state in ready["upstreams"].values()):
                break
            time.sleep(0.5)
        traffic.wait_requests(300)
    finally:
        traffic.stop()
    print(
        f"\n[lab] instance stop: {traffic.requests} requests, "
        f"{traffic.requests - stopped_at} after the stop, {len(traffic.failures)} failed"
    )
    assert upstream_out, "the gateway never took the stopped instance out"
    assert not traffic.failures, traffic.failures[:5]
    tally = reconcile(client, traffic)
    assert (tally.missing, tally.duplicated, tally.unexpected) == (0, 0, 0)


def test_a_stopped_worker_group_affects_only_its_dialogs(lab: Lab, client: httpx.Client) -> None:
    """Drill 4b: with both servers of a worker group down (more than HA covers), dialogs on
    the other groups are served and the affected ones answer 503 with Retry-After; when the
    servers are back, Patroni elects a leader and everything is served without touching
    the services."""
    wait_until_every_group_is_healthy(lab)
    placement: dict[int, int] = {}
    pairs = make_pairs(client, 8)
    for index, (a, b) in enumerate(pairs):
        reply = send(client, a, b, "before the outage")
        assert reply.status_code == 200
        placement[index] = lab.group_of(reply.json()["dialog_id"])
    while len(set(placement.values())) < 2 and len(pairs) < 40:
        a, b = register(client, "extra-a"), register(client, "extra-b")
        reply = send(client, a, b, "before the outage")
        placement[len(pairs)] = lab.group_of(reply.json()["dialog_id"])
        pairs.append((a, b))
    assert len(set(placement.values())) == 2, f"all dialogs in one group: {placement}"
    victim = placement[0]
    servers = [ha_host(victim, member) for member in range(1, HA_GROUP_HOSTS + 1)]
    units = [f"dialogs@{port}" for port in DIALOGS_PORTS] + GATEWAY_UNITS
    starts = {unit: lab.unit_start(unit) for unit in units}

    run(["docker", "stop", *servers], timeout=180)
    try:
        answers: dict[int, httpx.Response] = {}
        for index, (a, b) in enumerate(pairs):
            answers[index] = client.get(f"/dialog/{b.user_id}/list", headers=auth(a))
        sends = {
            index: send(client, a, b, "during the outage") for index, (a, b) in enumerate(pairs)
        }
    finally:
        run(["docker", "start", *servers], timeout=180)
        # Recovery is waited for first, so the drills after this one find a whole cluster.
        served: set[int] = set()
        back = time.monotonic()
        for _ in range(180):
            for index, (a, b) in enumerate(pairs):
                if index not in served:
                    reply = client.get(f"/dialog/{b.user_id}/list", headers=auth(a))
                    if reply.status_code == 200:
                        served.add(index)
            if len(served) == len(pairs):
                break
            time.sleep(1)
        recovery_s = time.monotonic() - back

    affected = sum(1 for group in placement.values() if group == victim)
    print(
        f"\n[lab] worker group {victim} down ({', '.join(servers)}): {affected} of {len(pairs)}"
        f" dialogs in it; all served again {recovery_s:.0f} s after docker start"
    )
    for index in range(len(pairs)):
        for reply in (answers[index], sends[index]):
            if placement[index] == victim:
                assert reply.status_code == 503, (index, reply.status_code, reply.text)
                assert int(reply.headers["Retry-After"]) >= 1
                assert reply.json()["code"]
            else:
                assert reply.status_code == 200, (index, reply.status_code, reply.text)
    assert served == set(range(len(pairs)))
    assert {unit: lab.unit_start(unit) for unit in units} == starts  # no service restarted
    wait_until_every_group_is_healthy(lab)


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


def test_a_lost_etcd_member_changes_nothing(lab: Lab, client: httpx.Client) -> None:
    """Drill 4, its first half: one of the 3 etcd members stops for longer than Patroni's
    leader ttl while clients send and list without retries: no request fails, nothing is
    lost, every group keeps its leader; started again, the member rejoins."""
    leaders = {group: _leader(lab, group) for group in wait_until_every_group_is_healthy(lab)}
    member = next(iter(lab.inventory_hosts("etcd")))
    endpoint = f"https://{lab.inventory_hosts('patroni')[member]['lab_private_address']}:2379"
    traffic = Traffic(lab.url, make_pairs(client, 6), verify=str(lab.ca_file)).start()
    try:
        traffic.wait_requests(60)
        docker_exec(member, "systemctl", "stop", "etcd")
        stopped_at = traffic.requests
        time.sleep(PATRONI_TTL_S + 5)  # a leader that could not refresh its key would lose it
        during = {group: _leader(lab, group) for group in leaders}
        traffic.wait_requests(stopped_at + 60)
    finally:
        docker_exec(member, "systemctl", "start", "etcd")
        traffic.stop()
    tally = reconcile(client, traffic)
    # The member rejoins within seconds of its start; on a loaded machine, a few more.
    deadline = time.monotonic() + 60
    while True:
        health = docker_exec(
            member, "sh", "-c",
            f"ETCDCTL_API=3 etcdctl --endpoints={endpoint} {ETCDCTL_TLS}"
            " endpoint health --cluster 2>&1",
            check=False, timeout=60,
        )  # fmt: skip
        if health.count("is healthy") == 3 or time.monotonic() > deadline:
            break
        time.sleep(1)
    print(
        f"\n[lab] etcd on {member} stopped for {PATRONI_TTL_S + 5} s: {traffic.requests}"
        f" requests ({traffic.requests - stopped_at} after the stop), {len(traffic.failures)}"
        f" failed; {tally.acknowledged} acknowledged, {tally.missing} missing,"
        f" {tally.duplicated} duplicated; leaders {leaders} -> {during}"
    )
    assert during == leaders
    assert not traffic.failures, traffic.failures[:5]
    assert tally.acknowledged > 0
    assert (tally.missing, tally.duplicated, tally.unexpected) == (0, 0, 0)
    assert health.count("is healthy") == 3, health


def test_a_hung_sync_standby_holds_its_groups_writes_only_briefly(
    lab: Lab, client: httpx.Client
) -> None:
    """Worker group 2's sync standby hangs (docker pause: its processes frozen, its
    connections left open) for longer than Patroni's ttl while a careful client sends and
    lists, a dialog of that group among them: the primary's commits wait for it only until
    its walsender gives up (wal_sender_timeout 5 s, then Patroni drops it from
    synchronous_standby_names), not for the ttl: no request failed after the retries,
    nothing lost; resumed, it streams as the sync standby again."""
    standby = next(
        m["Member"]
        for m in wait_until_every_group_is_healthy(lab)[2]
        if m["Role"] == "Sync Standby"
    )
    probe_a, probe_b, located = pair_on_group(lab, client, 2)
    pairs = [*make_pairs(client, 5), (probe_a, probe_b)]
    traffic = Traffic(lab.url, pairs, verify=str(lab.ca_file), retries=6, max_seconds=300)
    traffic.start()
    try:
        traffic.wait_requests(60)
        run(["docker", "pause", standby], timeout=30)
        paused_at = traffic.requests
        time.sleep(PATRONI_TTL_S + 5)
        during = traffic.requests - paused_at
    finally:
        run(["docker", "unpause", standby], timeout=30, check=False)
    try:
        traffic.wait_requests(60)
    finally:
        traffic.stop()
    traffic.acked[len(pairs) - 1].append(located)  # the send that found the dialog's group
    tally = reconcile(client, traffic)
    started = time.monotonic()
    wait_until_every_group_is_healthy(lab)
    slowest = max(traffic.latencies)
    print(
        f"\n[lab] {standby} (worker group 2's sync standby) hung for {PATRONI_TTL_S + 5} s:"
        f" {traffic.requests} requests ({during} while hung), {traffic.retried} retried,"
        f" {len(traffic.failures)} failed after the retries, the slowest {slowest:.2f} s;"
        f" {tally.acknowledged} acknowledged, {tally.missing} missing, {tally.duplicated}"
        f" duplicated; healthy again {time.monotonic() - started:.0f} s after it resumed"
    )
    assert not traffic.failures, traffic.failures[:5]
    assert tally.acknowledged > 0
    assert (tally.missing, tally.duplicated, tally.unexpected) == (0, 0, 0)
    assert slowest < PATRONI_TTL_S / 2, slowest  # not held until the standby's key expired


def test_a_primary_cut_off_from_etcd_and_its_standby_is_no_split_brain(
    lab: Lab, client: httpx.Client
) -> None:
    """Drill 4, its second half: worker group 1's primary loses etcd and its standby (the
    coordinator still reaches it) while clients send and list with retries. It stops
    accepting writes before its standby is promoted; no acknowledged send exists only on it
    (every one is found afterwards, once); the group takes writes again, and when the
    network heals the old primary rejoins as the new one's sync standby."""
    old = leader_of(lab, 1)
    standby = next(m for m in groups_of(lab)[1] if m["Member"] != old["Member"])
    victim = lab.host_of_address(old["Host"])
    probe_a, probe_b, first = pair_on_group(lab, client, 1)
    pairs = [*make_pairs(client, 6), (probe_a, probe_b)]
    traffic = Traffic(lab.url, pairs, verify=str(lab.ca_file), retries=6, max_seconds=300)
    traffic.start()
    read_only_s = promoted_s = served_again_s = float("inf")
    probes = [first]
    try:
        traffic.wait_requests(60)
        cut_at = time.monotonic()
        cut_off(victim, standby["Host"], f"{ETCD_CLIENT_PORT}:{ETCD_PEER_PORT}")
        while time.monotonic() - cut_at < 90 and served_again_s == float("inf"):
            now = time.monotonic() - cut_at
            if read_only_s == float("inf"):
                answer = run(
                    ["docker", "exec", victim, "runuser", "-u", "postgres", "--",
                     "psql", "-XAtc", "SELECT pg_is_in_recovery()"],
                    timeout=30, check=False,
                )  # fmt: skip
                if answer.stdout.strip() != "f":  # read-only, or not running
                    read_only_s = now
            if promoted_s == float("inf"):
                leaders = [m for m in groups_of(lab)[1] if m["Role"] == "Leader"]
                if leaders and leaders[0]["Member"] == standby["Member"]:
                    promoted_s = now
            if promoted_s < float("inf"):
                reply = send(client, probe_a, probe_b, "probe after the cut")
                if reply.status_code == 200:
                    served_again_s = time.monotonic() - cut_at
                    probes.append(reply.json()["id"])
            time.sleep(0.5)
        traffic.wait_requests(60)
    finally:
        heal(victim)
        healed_at = time.monotonic()
        traffic.stop()
    # Its demotion waits for its WAL sender to time out on the cut-off standby first.
    wait_until_every_group_is_healthy(lab, timeout=180)
    rejoined_s = time.monotonic() - healed_at
    traffic.acked[len(pairs) - 1].extend(probes)
    tally = reconcile(client, traffic)
    print(
        f"\n[lab] {victim} (worker group 1's primary) cut off from etcd and {standby['Member']}:"
        f" read-only after {read_only_s:.1f} s, {standby['Member']} promoted after"
        f" {promoted_s:.1f} s, writes served again after {served_again_s:.1f} s;"
        f" {traffic.requests} requests, {len(traffic.failures)} failed after the retries"
        f" ({traffic.retried} retried); {tally.acknowledged} acknowledged, {tally.missing}"
        f" missing, {tally.duplicated} duplicated; {victim} streamed as the sync standby"
        f" {rejoined_s:.0f} s after the network healed"
    )
    assert read_only_s < promoted_s < float("inf"), "the old primary wrote while cut off"
    assert served_again_s < float("inf")
    assert tally.acknowledged > 0
    assert (tally.missing, tally.duplicated, tally.unexpected) == (0, 0, 0)
    assert leader_of(lab, 1)["Member"] == standby["Member"]


def test_a_planned_switchover_under_load_fails_nothing(lab: Lab, client: httpx.Client) -> None:
    """Drill 3: playbooks/switchover.yml moves worker group 1's primary to its sync standby
    while clients send and list without retries: no request fails, nothing is lost; a second
    run naming the new leader changes nothing; a candidate from another group is refused."""
    wait_until_every_group_is_healthy(lab)
    old_leader = _leader(lab, 1)
    with under_load(lab, client) as traffic:
        started = time.monotonic()
        first = lab.playbook("switchover.yml", "-e", "switchover_group=1")
        took = time.monotonic() - started
    new_leader = _leader(lab, 1)
    tally = reconcile(client, traffic)
    slowest = max(traffic.latencies)
    print(
        f"\n[lab] switchover of worker group 1 ({old_leader} -> {new_leader}): {took:.0f} s;"
        f" {traffic.requests} requests, {len(traffic.failures)} failed, the slowest"
        f" {slowest:.2f} s, p99 {traffic.p99_ms():.0f} ms; {tally.acknowledged} acknowledged,"
        f" {tally.missing} missing, {tally.duplicated} duplicated"
    )
    assert new_leader != old_leader
    assert sum(counts["changed"] for counts in first.values()) == 1  # the one POST
    assert not traffic.failures, traffic.failures[:5]
    assert tally.acknowledged > 0
    assert (tally.missing, tally.duplicated, tally.unexpected) == (0, 0, 0)
    again = lab.playbook(
        "switchover.yml", "-e", "switchover_group=1", "-e", f"switchover_candidate={new_leader}"
    )
    assert {host: c["changed"] for host, c in again.items() if c["changed"]} == {}
    # A member of another group is no candidate: refused with the reason, nothing changed.
    refused = lab.bin_lab(
        "playbook", "switchover.yml", "-e", "switchover_group=1",
        "-e", "switchover_candidate=lab-pg0-1", check=False,
    )  # fmt: skip
    assert "switchover_candidate 'lab-pg0-1' is no streaming sync standby of group 1" in " ".join(
        refused.split()
    ), refused[-2000:]
    assert _leader(lab, 1) == new_leader


def _leader(lab: Lab, group: int) -> str:
    return str(leader_of(lab, group)["Member"])


def test_a_rolling_restart_applies_a_pending_setting_under_load(
    lab: Lab, client: httpx.Client
) -> None:
    """rolling_restart.yml applies a setting that needs a restart (shared_buffers, changed
    with patronictl edit-config in every group) one server at a time, standbys first, then
    a switchover, then the former primary, while a careful client sends and lists: nothing
    lost or duplicated, no request failed after the retries; every group ends with its
    primary moved and nothing pending; a second run changes nothing."""
    wait_until_every_group_is_healthy(lab)
    member = next(iter(lab.inventory_hosts("patroni")))
    groups = sorted({int(m["Group"]) for m in lab.patroni_members()})
    leaders = {group: _leader(lab, group) for group in groups}
    # A setting that needs a restart, other than the one running (a reused lab ran this).
    shared_buffers = "176MB" if lab.sql("SHOW shared_buffers").strip() == "160MB" else "160MB"
    for group in groups:
        docker_exec(
            member, f"{PATRONI_BIN}/patronictl", "-c", PATRONI_CONFIG, "edit-config",
            "--group", str(group), "--force",
            "-s", f"postgresql.parameters.shared_buffers={shared_buffers}",
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while not all(m.get("Pending restart") for m in lab.patroni_members()):
        assert time.monotonic() < deadline, lab.patroni_members()
        time.sleep(1)
    with under_load(lab, client, pairs=6, retries=6) as traffic:
        started = time.monotonic()
        first = lab.playbook("rolling_restart.yml", timeout=900)
        took = time.monotonic() - started
    tally = reconcile(client, traffic)
    print(
        f"\n[lab] rolling restart of {len(lab.patroni_members())} servers in {len(groups)}"
        f" groups: {took:.0f} s; {traffic.requests} requests, {traffic.retried} retried,"
        f" {len(traffic.failures)} failed after the retries, the slowest"
        f" {max(traffic.latencies):.2f} s, p99 {traffic.p99_ms():.0f} ms; {tally.acknowledged}"
        f" acknowledged, {tally.missing} missing, {tally.duplicated} duplicated"
    )
    assert sum(counts["changed"] for counts in first.values()) > 0
    assert not traffic.failures, traffic.failures[:5]
    assert tally.acknowledged > 0
    assert (tally.missing, tally.duplicated, tally.unexpected) == (0, 0, 0)
    wait_until_every_group_is_healthy(lab)
    members = lab.patroni_members()
    assert not [m["Member"] for m in members if m.get("Pending restart")], members
    for name in (m["Member"] for m in members):
        shown = docker_exec(
            name, "runuser", "-u", "postgres", "--", "psql", "-XAtc", "SHOW shared_buffers"
        )
        assert shown.strip() == shared_buffers, (name, shown)
    assert all(_leader(lab, group) != leaders[group] for group in groups), leaders
    again = lab.playbook("rolling_restart.yml")
    assert {host: c["changed"] for host, c in again.items() if c["changed"]} == {}
    refused = lab.bin_lab("playbook", "rolling_restart.yml", "-e", "rolling_restart_groups=1,7",
                          check=False)  # fmt: skip
    assert "rolling_restart_groups must list Citus groups of the inventory, each once" in " ".join(
        refused.split()
    ), refused[-2000:]


# --- the edge ------------------------------------------------------------------------------

# Run by python3 in a throw-away container on the public network (its own address): opens
# COUNT TLS connections to the edge, each sending half a request head and nothing more, and
# reports as JSON what became of them.
PARTIAL_REQUESTS = r"""
import asyncio, json, ssl, sys, time
host, count, hold_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
context = ssl.create_default_context(cafile="/ca.crt")
outcomes = {"refused": 0, "408": 0, "closed": 0, "held": 0}
cut_after = []

async def one():
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            host, 443, ssl=context, server_hostname="lab-edge1"), 20)
        writer.write(b"POST /login HTTP/1.1\r\nHost: lab-edge1\r\nContent-Le")
        await writer.drain()
    except (OSError, asyncio.TimeoutError):
        outcomes["refused"] += 1
        return
    sent = time.monotonic()
    try:
        answer = await asyncio.wait_for(reader.read(200), hold_s)
    except asyncio.TimeoutError:
        outcomes["held"] += 1
        return
    except OSError:
        answer = b""
    cut_after.append(time.monotonic() - sent)
    outcomes["408" if answer.startswith(b"HTTP/1.1 408") else "closed"] += 1
    writer.close()

async def main():
    limit = asyncio.Semaphore(500)
    async def bounded():
        async with limit:
            await one()
    await asyncio.gather(*(bounded() for _ in range(count)))
    print(json.dumps(outcomes | {"max_cut_s": max(cut_after, default=0.0)}))

asyncio.run(main())
"""


def _from_public_side(lab: Lab, script: str, *args: str, timeout: float = 300) -> str:
    """Runs ``script`` with python3 in a throw-away container on the public network (an
    address of its own, not this machine's), the lab's CA at /ca.crt."""
    return run(
        [
            "docker", "run", "--rm", "--label", LABEL, "--network", EDGE_NETWORK,
            "-v", f"{lab.ca_file}:/ca.crt:ro", "--entrypoint", "python3", BASE_IMAGE,
            "-c", script, *args,
        ],
        timeout=timeout,
    ).stdout  # fmt: skip


def test_edge_cuts_partial_requests_while_others_are_served(lab: Lab, client: httpx.Client) -> None:
    """Edge drill 1: 3,000 requests whose head never ends, from one address, while a careful
    client sends and lists through the edge: the careful client sees no failure; the
    partial requests are refused beyond the per-address bound or cut with a 408 within the
    request timeout (edge_timeout_http_request_s, 5 s)."""
    edge = lab.container_address(EDGE, EDGE_NETWORK)
    traffic = Traffic(lab.url, make_pairs(client, 6), verify=str(lab.ca_file), retries=6)
    traffic.start()
    try:
        traffic.wait_requests(50)
        before = traffic.requests
        started = time.monotonic()
        outcome = json.loads(_from_public_side(lab, PARTIAL_REQUESTS, edge, "3000", "20"))
        took = time.monotonic() - started
        during = traffic.requests - before
        traffic.wait_requests(50)
    finally:
        traffic.stop()
    print(
        f"\n[lab] 3000 partial requests from one address in {took:.1f} s: {outcome}; careful "
        f"client: {traffic.requests} requests ({during} during), {len(traffic.failures)} "
        f"failed, {traffic.retried} retried, p99 {traffic.p99_ms():.0f} ms"
    )
    assert not traffic.failures, traffic.failures[:5]
    assert during > 0, "the careful client was not served during the attack"
    assert sum(outcome[key] for key in ("refused", "408", "closed", "held")) == 3000
    assert outcome["held"] == 0, "a partial request was held longer than 20 s"
    # At most edge_max_connections_per_client (100) got in; each was cut with a 408.
    assert 0 < outcome["408"] <= 100
    assert outcome["refused"] >= 2900
    assert outcome["max_cut_s"] < 10
    tally = reconcile(client, traffic)
    assert (tally.missing, tally.duplicated, tally.unexpected) == (0, 0, 0)


def _edge_view() -> dict[str, str]:
    """gateway instance address -> HAProxy's state of it (UP, DOWN, ...), as bin/lab
    status shows it."""
    view = docker_exec(EDGE, "python3", "-c", EDGE_VIEW)
    return {row.split()[0]: row.split()[1] for row in view.splitlines() if row[:1].isdigit()}


def test_a_killed_gateway_instance_costs_nothing_through_the_edge(
    lab: Lab, client: httpx.Client
) -> None:
    """Edge drill 2: one gateway instance is killed (SIGKILL) under load; the edge takes it
    out and, once systemd restarted it, back in; the careful client loses nothing."""
    victim = f"gateway@{GATEWAY_PORTS[0]}"
    start = lab.unit_start(victim)
    traffic = Traffic(lab.url, make_pairs(client, 6), verify=str(lab.ca_file), retries=6)
    traffic.start()
    try:
        traffic.wait_requests(100)
        docker_exec(APP, "systemctl", "kill", "--signal=SIGKILL", victim)
        killed = time.monotonic()
        back_s = None
        for _ in range(120):
            if lab.unit_start(victim) != start and all(
                state == "UP" for state in _edge_view().values()
            ):
                back_s = time.monotonic() - killed
                break
            time.sleep(0.5)
        traffic.wait_requests(100)
    finally:
        traffic.stop()
    tally = reconcile(client, traffic)
    print(
        f"\n[lab] gateway instance killed: back in the edge after {back_s} s; "
        f"{traffic.requests} requests, {traffic.retried} retried, {len(traffic.failures)} "
        f"failed; {tally.acknowledged} acknowledged, {tally.missing} missing, "
        f"{tally.duplicated} duplicated"
    )
    assert back_s is not None, "the killed instance did not come back into the edge"
    assert not traffic.failures, traffic.failures[:5]
    assert (tally.missing, tally.duplicated, tally.unexpected) == (0, 0, 0)


def test_tls_is_verified_and_old_protocols_and_plain_http_are_refused(lab: Lab) -> None:
    """Edge drill 3: a client verifies the certificate against the lab CA and gets TLS 1.2+
    with HSTS; TLS 1.0 and 1.1, plain HTTP and a wrong host name fail."""
    with lab.client() as client:
        reply = client.get("/readyz")
    assert reply.status_code == 200
    assert reply.headers["Strict-Transport-Security"] == "max-age=63072000"

    def handshake(name: str, versions: tuple[ssl.TLSVersion, ssl.TLSVersion] | None = None) -> str:
        context = ssl.create_default_context(cafile=str(lab.ca_file))
        if versions:
            context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer old versions
            context.minimum_version, context.maximum_version = versions
        try:
            with (
                socket.create_connection(("127.0.0.1", lab.port), timeout=10) as raw,
                context.wrap_socket(raw, server_hostname=name) as tls,
            ):
                return str(tls.version())
        except ssl.SSLError as error:
            return f"refused: {error}"

    assert handshake("localhost") in ("TLSv1.2", "TLSv1.3")
    assert handshake("localhost", (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2)) == "TLSv1.2"
    for old in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        outcome = handshake("localhost", (old, old))
        assert outcome.startswith("refused"), outcome
        assert "protocol version" in outcome.lower() or "alert" in outcome.lower(), outcome
    wrong_name = handshake("api.wrong.example")
    assert "certificate verify failed" in wrong_name, wrong_name
    assert "Hostname mismatch" in wrong_name or "match" in wrong_name, wrong_name
    # Plain HTTP to the HTTPS port gets no HTTP answer.
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{lab.port}/readyz", timeout=10)


# Run in a throw-away container on the public network: failed logins for random user ids,
# each with a forged X-Forwarded-For, until a 429; prints the attempts made and the last
# statuses.
FAILED_LOGINS = r"""
import http.client, json, ssl, sys, uuid
most = int(sys.argv[1])
context = ssl.create_default_context(cafile="/ca.crt")
statuses = []
for attempt in range(most):
    connection = http.client.HTTPSConnection("lab-edge1", 443, context=context, timeout=30)
    connection.request(
        "POST", "/login",
        body=json.dumps({"id": str(uuid.uuid4()), "password": "not-the-password"}),
        headers={"Content-Type": "application/json",
                 "X-Forwarded-For": f"198.51.100.{attempt % 250}"},
    )
    statuses.append(connection.getresponse().status)
    connection.close()
    if statuses[-4:] == [429] * 4:
        break
print(json.dumps({"attempts": len(statuses), "last": statuses[-4:]}))
"""


def test_login_throttling_counts_the_client_behind_the_edge(lab: Lab) -> None:
    """Edge drill 4: failed logins from one address are throttled (429) even when it forges
    X-Forwarded-For; a client at another address is not."""
    # Both instances throttle an address after 50 failures each (GATEWAY_LOGIN_MAX_FAILURES_
    # PER_ADDRESS); the edge balances between them.
    outcome = json.loads(_from_public_side(lab, FAILED_LOGINS, "160"))
    with lab.client() as client:
        other = client.post("/login", json={"id": str(uuid.uuid4()), "password": "x" * 12})
    print(
        f"\n[lab] failed logins from one address: {outcome}; another address: {other.status_code}"
    )
    assert outcome["last"] == [429] * 4, outcome
    assert outcome["attempts"] <= 130, outcome  # 2 instances x 50 (balanced), then throttled
    assert other.status_code == 404, other.text  # not throttled: just an unknown user


def _holders(lab: Lab) -> list[str]:
    """The edge hosts holding the virtual address now."""
    return [name for name in EDGES if lab.virtual_address in edge_addresses(name)]


def _wait_for_holder(lab: Lab, others_than: str, timeout: float = 30) -> tuple[str, float]:
    """The one edge host other than ``others_than`` that holds the virtual address and
    answers /readyz on it, and the seconds that took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        holders = _holders(lab)
        if len(holders) == 1 and holders[0] != others_than:
            try:
                answer = httpx.get(
                    f"https://{lab.virtual_address}/readyz", verify=str(lab.ca_file), timeout=1
                )
                if answer.status_code == 200:
                    return holders[0], time.monotonic() - started
            except httpx.HTTPError:
                pass
        time.sleep(0.1)
    raise AssertionError(f"the virtual address did not move off {others_than}: {_holders(lab)}")


def _wait_until_active(container: str, unit: str, timeout: float = 120) -> None:
    """Until ``unit`` runs in ``container`` (which may still be booting)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = run(
            ["docker", "exec", container, "systemctl", "is-active", unit], timeout=30, check=False
        ).stdout.strip()
        if state == "active":
            return
        time.sleep(0.5)
    raise AssertionError(f"{unit} did not start in {container}")


def test_the_virtual_address_moves_when_an_edge_fails(lab: Lab, client: httpx.Client) -> None:
    """Edge drill 6 (VRRP): a careful client on the edge's virtual address. The holder's
    HAProxy stops: keepalived moves the address to the other edge host; that HAProxy back,
    the address stays (nopreempt). Then the new holder dies (docker kill) and the address
    moves back; once that host has booted again, the address stays where it is. The client
    loses nothing."""
    [first] = _holders(lab)
    traffic = Traffic(
        f"https://{lab.virtual_address}", make_pairs(client, 6), verify=str(lab.ca_file),
        retries=6,
    ).start()  # fmt: skip
    try:
        traffic.wait_requests(100)
        docker_exec(first, "systemctl", "stop", "haproxy")
        try:
            second, haproxy_stopped_s = _wait_for_holder(lab, others_than=first)
            traffic.wait_requests(100)
        finally:
            docker_exec(first, "systemctl", "start", "haproxy")
        time.sleep(5)  # several adverts and health checks: no move back
        stays = _holders(lab)
        run(["docker", "kill", second], timeout=60)
        try:
            third, host_killed_s = _wait_for_holder(lab, others_than=second)
            traffic.wait_requests(100)
        finally:
            run(["docker", "start", second], timeout=60)
        _wait_until_active(second, "keepalived")
        _wait_until_active(second, "haproxy")
        time.sleep(5)  # several adverts: the host that came back stays a backup
        after_reboot = _holders(lab)
        traffic.wait_requests(100)
    finally:
        traffic.stop()
    tally = reconcile(client, traffic)
    print(
        f"\n[lab] virtual address {lab.virtual_address}: HAProxy stopped on {first}, served by "
        f"{second} after {haproxy_stopped_s:.1f} s; {second} killed, served by {third} after "
        f"{host_killed_s:.1f} s; {traffic.requests} requests, {traffic.retried} retried, "
        f"{len(traffic.failures)} failed; {tally.acknowledged} acknowledged, {tally.missing} "
        f"missing, {tally.duplicated} duplicated"
    )
    assert stays == [second], f"the address moved back when {first}'s HAProxy returned: {stays}"
    assert third == first
    assert after_reboot == [first], f"after {second} came back, the address is on {after_reboot}"
    assert haproxy_stopped_s < 10 and host_killed_s < 15
    assert not traffic.failures, traffic.failures[:5]
    assert (tally.missing, tally.duplicated, tally.unexpected) == (0, 0, 0)


def test_scale_out_by_one_worker_group_under_load(lab: Lab, client: httpx.Client) -> None:
    """Drill 5, its first half: `bin/lab scale 1` adds worker group 3 (a primary and a sync
    standby; Patroni registers it) and rebalances while clients send and list, without
    retries: nothing lost, no request failed, the shards spread over 3 worker groups."""
    before = lab.shards_per_group()
    with under_load(lab, client) as traffic:
        started = time.monotonic()
        output = lab.bin_lab("scale", "1", timeout=1800)
        took = time.monotonic() - started
    after = lab.shards_per_group()
    tally = reconcile(client, traffic)
    print(
        f"\n[lab] scale 1: worker groups 2 -> 3 in {took:.0f} s; shards per group {before}"
        f" -> {after}; {traffic.requests} requests, {len(traffic.failures)} failed, the"
        f" slowest {max(traffic.latencies):.2f} s, p99 {traffic.p99_ms():.0f} ms;"
        f" {tally.acknowledged} acknowledged, {tally.missing} missing,"
        f" {tally.duplicated} duplicated"
    )
    assert "scaled from 2 to 3 workers" in output
    assert not traffic.failures, traffic.failures[:5]
    assert tally.acknowledged > 0
    assert (tally.missing, tally.duplicated, tally.unexpected) == (0, 0, 0)
    assert sorted(wait_until_every_group_is_healthy(lab)) == [0, 1, 2, 3]
    assert set(after) == {1, 2, 3}
    assert sum(after.values()) == sum(before.values())
    assert max(after.values()) - min(after.values()) <= 2  # spread evenly
    assert lab.worker_groups() == [1, 2, 3]


def test_removing_a_worker_group_under_load(lab: Lab, client: httpx.Client) -> None:
    """Drill 5, its second half: remove_worker.yml drains worker group 3, stops Patroni on
    its members and removes the group from pg_dist_node and etcd while clients send and
    list, without retries: nothing lost, no request failed. Then `bin/lab scale -1` runs it
    again (nothing changes), takes the hosts away and runs ha_cluster.yml's configure
    phase (pg_hba forgets them): the shards are back on 2 worker groups."""
    before = lab.shards_per_group()
    with under_load(lab, client) as traffic:
        started = time.monotonic()
        first = lab.playbook("remove_worker.yml", "-e", "remove_worker_group=3")
        took = time.monotonic() - started
    tally = reconcile(client, traffic)
    output = lab.bin_lab("scale", "-1", timeout=1800)
    after = lab.shards_per_group()
    print(
        f"\n[lab] remove_worker.yml -e remove_worker_group=3: {took:.0f} s; shards per group"
        f" {before} -> {after}; {traffic.requests} requests, {len(traffic.failures)} failed,"
        f" the slowest {max(traffic.latencies):.2f} s, p99 {traffic.p99_ms():.0f} ms;"
        f" {tally.acknowledged} acknowledged, {tally.missing} missing,"
        f" {tally.duplicated} duplicated"
    )
    assert sum(counts["changed"] for counts in first.values()) > 0
    assert not traffic.failures, traffic.failures[:5]
    assert tally.acknowledged > 0
    assert (tally.missing, tally.duplicated, tally.unexpected) == (0, 0, 0)
    # The second run's recap is the first in the output (cluster.yml's comes after it).
    again = recap("PLAY RECAP" + output.split("PLAY RECAP")[1].split("\n\n")[0])
    assert again and all(counts["changed"] == 0 for counts in again.values()), again
    assert "scaled from 3 to 2 workers" in output
    assert lab.worker_groups() == [1, 2]
    assert sorted(wait_until_every_group_is_healthy(lab)) == [0, 1, 2]  # etcd forgot group 3
    assert set(after) == {1, 2}
    assert sum(after.values()) == sum(before.values())


def test_second_site_run_changes_nothing_and_check_mode_works(lab: Lab) -> None:
    """Drill 6: after the drills, a second site.yml changes nothing; check mode works."""
    for args in ((), ("--check",)):
        started = time.monotonic()
        result = lab.playbook("site.yml", *args, timeout=1500)
        took = time.monotonic() - started
        print(f"\n[lab] site.yml {' '.join(args)} after the drills: {took:.0f} s")
        changed = {host: counts["changed"] for host, counts in result.items() if counts["changed"]}
        assert changed == {}, (args, changed)
        assert {*lab.inventory_hosts("patroni"), APP, *EDGES} <= set(result)


# --- redeploys with a changed setting (after the idempotence check: they leave the lab
# with settings of their own) -------------------------------------------------------------


def test_redeploy_with_a_changed_setting_under_load(lab: Lab, client: httpx.Client) -> None:
    """Drill 5: a rolling restart of the dialogs instances drops no request."""
    starts = {port: lab.unit_start(f"dialogs@{port}") for port in DIALOGS_PORTS}
    gateway_starts = [lab.unit_start(unit) for unit in GATEWAY_UNITS]
    with under_load(lab, client, pairs=6) as traffic:
        started = time.monotonic()
        result = lab.playbook("services.yml", "-e", "dialogs_pool_max_size=8")
        took = time.monotonic() - started
    print(
        f"\n[lab] redeploy under load: services.yml {took:.0f} s, "
        f"{traffic.requests} requests, {len(traffic.failures)} failed"
    )
    assert result[APP]["changed"] > 0
    assert all(lab.unit_start(f"dialogs@{port}") != starts[port] for port in DIALOGS_PORTS)
    assert [lab.unit_start(unit) for unit in GATEWAY_UNITS] == gateway_starts
    setting = docker_exec(APP, "grep", "^DIALOGS_POOL_MAX_SIZE=", "/etc/dialogs/dialogs.env")
    assert setting.strip() == 'DIALOGS_POOL_MAX_SIZE="8"'
    assert not traffic.failures, traffic.failures[:5]
    tally = reconcile(client, traffic)
    assert (tally.missing, tally.duplicated, tally.unexpected) == (0, 0, 0)


def test_a_rolling_restart_of_the_gateways_drains_through_the_edge(
    lab: Lab, client: httpx.Client
) -> None:
    """Edge drill 2b: a changed gateway setting restarts both gateway instances one at a
    time under load; through the edge, no request fails (no client retry)."""
    starts = [lab.unit_start(unit) for unit in GATEWAY_UNITS]
    with under_load(lab, client, pairs=6) as traffic:
        started = time.monotonic()
        lab.playbook("services.yml", "--tags", "gateway", "-e", "gateway_upstream_timeout_s=8")
        took = time.monotonic() - started
    print(
        f"\n[lab] gateways' rolling restart through the edge: services.yml {took:.0f} s, "
        f"{traffic.requests} requests, {len(traffic.failures)} failed"
    )
    restarted = [
        lab.unit_start(unit) != start for unit, start in zip(GATEWAY_UNITS, starts, strict=True)
    ]
    assert all(restarted), dict(zip(GATEWAY_UNITS, restarted, strict=True))
    assert not traffic.failures, traffic.failures[:5]
    tally = reconcile(client, traffic)
    assert (tally.missing, tally.duplicated, tally.unexpected) == (0, 0, 0)


def test_status_shows_groups_shards_and_instances(lab: Lab) -> None:
    """bin/lab status: each group's leader, sync standby, timeline and
    lag (patronictl list), the shards per group, the instances and the edge's view."""
    output = lab.bin_lab("status", timeout=120)
    for name in (*lab.inventory_hosts("patroni"), APP, *EDGES):
        assert name in output
    listing = output.split("== Citus groups", 1)[1].split("== Citus nodes", 1)[0]
    for heading in ("Group", "Member", "Role", "State", "TL", "Lag"):
        assert heading in listing, listing
    groups = {int(host["patroni_citus_group"]) for host in lab.inventory_hosts("patroni").values()}
    assert listing.count("Leader") == len(groups), listing
    assert listing.count("Sync Standby") == len(groups), listing
    assert "the coordinator's primary" in output
    assert re.search(
        rf"the virtual address {lab.virtual_address}: held by lab-edge\d$", output, re.M
    )
    shards = output.split("== shards per Citus group", 1)[1].split("==", 1)[0]
    rows = re.findall(r"^\s*\d+\s*\|.*$", shards, re.M)
    assert [int(row.split("|")[0]) for row in rows] == sorted(groups - {0}), shards
    for unit in [f"dialogs@{port}" for port in DIALOGS_PORTS] + GATEWAY_UNITS:
        assert re.search(rf"{re.escape(unit)}.service\s+loaded\s+active\s+running", output)
    # The edge's view: every gateway instance up, its health check passing.
    view = output.split("== the edge's view of the gateway instances", 1)[1].split("==", 1)[0]
    for port in GATEWAY_PORTS:
        assert re.search(rf":{port}\s+UP\s+L7OK", view), view
    assert '"status":"ready"' in output.replace(" ", "")
