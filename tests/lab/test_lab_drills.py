"""End-to-end drills on the lab: `bin/lab up` once for this module, the drills in order
against it, `bin/lab down` at the end. Each drill asserts; the figures it prints go to
docs/benchmarks.md.

Running this module replaces a lab that is already up (the containers have fixed names).
With LAB_TEST_REUSE=1 it runs the drills against the lab that is up instead (gateway on
LAB_GATEWAY_PORT, default 8080; state in .lab/) and leaves it up: for working on drills.

The wheelhouse is built once, before `bin/lab up`, and every deploy of the module uses it:
the drills test the deployment, not whatever the working tree holds at that moment.
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest
import yaml

from lab.topology import (
    APP,
    CITUS_IMAGE,
    CITUS_VERSION_LABEL,
    COORDINATOR,
    DIALOGS_PORTS,
    EDGE_NETWORK,
    LABEL,
    PRIVATE_NETWORK,
)
from tests.lab.lab_support import (
    REPO_ROOT,
    Lab,
    Traffic,
    User,
    auth,
    build_wheelhouse,
    docker_exec,
    make_pairs,
    probe_ports,
    reconcile,
    register,
    run,
    send,
)
from tests.support.postgres import free_port


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, citus_image: str) -> Iterator[Lab]:
    """The lab brought up once for the module; its cluster image carries Citus."""
    if os.environ.get("LAB_TEST_REUSE") == "1":
        port = int(os.environ.get("LAB_GATEWAY_PORT", "8080"))
        yield Lab(port=port, state_dir=REPO_ROOT / ".lab")
        return
    state_dir = tmp_path_factory.mktemp("lab-state")
    lab = Lab(port=free_port(), state_dir=state_dir)
    lab.wheelhouse = build_wheelhouse(state_dir / "pinned")
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
    with httpx.Client(base_url=lab.url, timeout=30) as client:
        yield client


def test_up_prints_the_url_and_an_example_that_works(lab: Lab) -> None:
    if not lab.up_output:
        pytest.skip("LAB_TEST_REUSE=1: this run did not bring the lab up")
    assert f"gateway at {lab.url}" in lab.up_output
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
    assert "HTTP/1.1 200" in result.stdout
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


def test_second_site_run_changes_nothing(lab: Lab) -> None:
    """Drill 6: the deployment is idempotent end to end."""
    started = time.monotonic()
    result = lab.playbook("site.yml")
    print(f"\n[lab] second site.yml run: {time.monotonic() - started:.0f} s")
    changed = {host: counts["changed"] for host, counts in result.items() if counts["changed"]}
    assert changed == {}, f"a second site.yml run changed something: {changed}"
    assert {"lab-coordinator", "lab-worker1", "lab-worker2", APP} <= set(result)


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


def test_seed_checks_explain_and_shards_per_node(lab: Lab, client: httpx.Client) -> None:
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

    per_node = lab.shards_per_node()
    print(f"\n[lab] dialog_messages shards per node: {per_node}")
    assert set(per_node) == set(lab.active_workers()) == {"lab-worker1", "lab-worker2"}
    assert sum(per_node.values()) == shard_count
    assert all(count > 0 for count in per_node.values())


def test_only_the_gateway_is_exposed(lab: Lab) -> None:
    """Drill 7: dialogs and PostgreSQL are out of reach from outside the private network,
    and PostgreSQL refuses a wrong password and an unknown host."""
    # Published ports: only the gateway, only on loopback.
    published = run(["docker", "port", APP], timeout=30).stdout.split()
    assert published == ["8080/tcp", "->", f"127.0.0.1:{lab.port}"]
    for node in (COORDINATOR, "lab-worker1"):
        assert run(["docker", "port", node], timeout=30).stdout.strip() == ""

    app_edge = lab.container_address(APP, EDGE_NETWORK)
    app_private = lab.container_address(APP, PRIVATE_NETWORK)
    coordinator = lab.container_address(COORDINATOR, PRIVATE_NETWORK)
    worker = lab.container_address("lab-worker1", PRIVATE_NETWORK)
    # A client on the app host's public side: the gateway answers, nothing else does.
    seen = probe_ports(
        EDGE_NETWORK,
        [
            (app_edge, 8080),
            *((app_edge, port) for port in DIALOGS_PORTS),
            *((app_private, port) for port in DIALOGS_PORTS),
            (coordinator, 5432),
            (worker, 5432),
        ],
        CITUS_IMAGE,
    )
    assert seen[f"{app_edge}:8080"] == "open"
    for port in DIALOGS_PORTS:
        assert seen[f"{app_edge}:{port}"] == "refused"  # dialogs binds the private address only
        assert seen[f"{app_private}:{port}"] == "unreachable"
    assert seen[f"{coordinator}:5432"] == "unreachable"
    assert seen[f"{worker}:5432"] == "unreachable"
    # The private network has no route out: the app host reaches the Debian mirror through
    # its public side, a worker reaches nothing outside (checked when the mirror answers).
    mirror = ("deb.debian.org", 80)
    if _connect_from(APP, *mirror) == "open":
        assert _connect_from("lab-worker1", *mirror) == "unreachable"

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
    traffic = Traffic(lab.url, make_pairs(client, 6)).start()
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


def test_a_stopped_worker_affects_only_its_dialogs(lab: Lab, client: httpx.Client) -> None:
    """Drill 4b: with a worker down, dialogs on the other workers are served and the
    affected ones answer 503 with Retry-After; when it is back, everything is served
    without touching the services."""
    placement: dict[int, str] = {}
    pairs = make_pairs(client, 8)
    for index, (a, b) in enumerate(pairs):
        reply = send(client, a, b, "before the outage")
        assert reply.status_code == 200
        placement[index] = lab.worker_of(reply.json()["dialog_id"])
    while len(set(placement.values())) < 2 and len(pairs) < 40:
        a, b = register(client, "extra-a"), register(client, "extra-b")
        reply = send(client, a, b, "before the outage")
        placement[len(pairs)] = lab.worker_of(reply.json()["dialog_id"])
        pairs.append((a, b))
    assert len(set(placement.values())) == 2, f"all dialogs on one worker: {placement}"
    victim = placement[0]
    units = [f"dialogs@{port}" for port in DIALOGS_PORTS] + ["gateway@8080"]
    starts = {unit: lab.unit_start(unit) for unit in units}

    run(["docker", "stop", victim], timeout=120)
    try:
        answers: dict[int, httpx.Response] = {}
        for index, (a, b) in enumerate(pairs):
            answers[index] = client.get(f"/dialog/{b.user_id}/list", headers=auth(a))
        sends = {
            index: send(client, a, b, "during the outage") for index, (a, b) in enumerate(pairs)
        }
    finally:
        run(["docker", "start", victim], timeout=120)
        # Recovery is waited for first, so the drills after this one find a whole cluster.
        served: set[int] = set()
        back = time.monotonic()
        for _ in range(120):
            for index, (a, b) in enumerate(pairs):
                if index not in served:
                    reply = client.get(f"/dialog/{b.user_id}/list", headers=auth(a))
                    if reply.status_code == 200:
                        served.add(index)
            if len(served) == len(pairs):
                break
            time.sleep(1)
        recovery_s = time.monotonic() - back

    affected = sum(1 for node in placement.values() if node == victim)
    print(
        f"\n[lab] worker outage: {affected} of {len(pairs)} dialogs on {victim}; all served "
        f"again {recovery_s:.0f} s after docker start"
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


def test_redeploy_with_a_changed_setting_under_load(lab: Lab, client: httpx.Client) -> None:
    """Drill 5: a rolling restart of the dialogs instances drops no request."""
    starts = {port: lab.unit_start(f"dialogs@{port}") for port in DIALOGS_PORTS}
    gateway_start = lab.unit_start("gateway@8080")
    traffic = Traffic(lab.url, make_pairs(client, 6)).start()
    try:
        traffic.wait_requests(100)
        started = time.monotonic()
        result = lab.playbook("services.yml", "-e", "dialogs_pool_max_size=8")
        took = time.monotonic() - started
        traffic.wait_requests(200)
    finally:
        traffic.stop()
    print(
        f"\n[lab] redeploy under load: services.yml {took:.0f} s, "
        f"{traffic.requests} requests, {len(traffic.failures)} failed"
    )
    assert result[APP]["changed"] > 0
    assert all(lab.unit_start(f"dialogs@{port}") != starts[port] for port in DIALOGS_PORTS)
    assert lab.unit_start("gateway@8080") == gateway_start
    setting = docker_exec(APP, "grep", "^DIALOGS_POOL_MAX_SIZE=", "/etc/dialogs/dialogs.env")
    assert setting.strip() == 'DIALOGS_POOL_MAX_SIZE="8"'
    assert not traffic.failures, traffic.failures[:5]
    tally = reconcile(client, traffic)
    assert (tally.missing, tally.duplicated, tally.unexpected) == (0, 0, 0)


def test_scale_out_from_two_to_four_workers_under_load(lab: Lab, client: httpx.Client) -> None:
    """Drill 3: `bin/lab scale 2` while a client keeps sending and listing: every
    acknowledged message is there exactly once, no request failed, shards on 4 workers."""
    before = lab.shards_per_node()
    traffic = Traffic(lab.url, make_pairs(client, 8)).start()
    try:
        traffic.wait_requests(100)
        started = time.monotonic()
        output = lab.bin_lab("scale", "2", timeout=1800)
        took = time.monotonic() - started
        traffic.wait_requests(100)
    finally:
        traffic.stop()
    after = lab.shards_per_node()
    tally = reconcile(client, traffic)
    print(
        f"\n[lab] scale 2 -> 4 workers: {took:.0f} s; shards {before} -> {after}; "
        f"{traffic.requests} requests, {len(traffic.failures)} failed; "
        f"{tally.acknowledged} acknowledged messages, {tally.missing} missing, "
        f"{tally.duplicated} duplicated"
    )
    assert "scaled from 2 to 4 workers" in output
    assert not traffic.failures, traffic.failures[:5]
    assert tally.acknowledged > 0
    assert (tally.missing, tally.duplicated, tally.unexpected) == (0, 0, 0)
    assert set(after) == {f"lab-worker{i}" for i in range(1, 5)}
    assert sum(after.values()) == sum(before.values())
    assert max(after.values()) - min(after.values()) <= 2  # spread evenly
    assert set(lab.active_workers()) == set(after)


def test_status_shows_nodes_shards_and_instances(lab: Lab) -> None:
    output = lab.bin_lab("status", timeout=120)
    for name in ("lab-coordinator", "lab-worker4", APP):
        assert name in output
    shards = output.split("== shards per node", 1)[1].split("==", 1)[0]
    assert len(re.findall(r"lab-worker\d", shards)) == 4
    for unit in ("dialogs@8081.service", "dialogs@8082.service", "gateway@8080.service"):
        assert re.search(rf"{re.escape(unit)}\s+loaded\s+active\s+running", output)
    assert '"status":"ready"' in output.replace(" ", "")
