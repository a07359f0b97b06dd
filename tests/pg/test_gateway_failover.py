"""dialogs instances dying and coming back under a running gateway (real processes,
real PostgreSQL): clients see no error while one instance is left, 503 with Retry-After
when none is, and traffic again once one returns."""

from __future__ import annotations

import subprocess
import threading
import uuid
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from tests.support.gateway import (
    Stack,
    kill_service,
    new_user,
    ready_upstreams,
    running_stack,
    wait_until,
)
from tests.support.postgres import PgServer


@pytest.fixture
def database(pg_server: PgServer) -> Iterator[str]:
    name = f"gwf_{uuid.uuid4().hex[:12]}"
    pg_server.psql(f"CREATE DATABASE {name}")
    yield name
    pg_server.psql(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def stack(pg_server: PgServer, database: str) -> Iterator[Stack]:
    with running_stack(pg_server.dsn_for(database)) as running:
        yield running


def test_one_instance_killed_while_clients_send_and_list(
    stack: Stack, pg_server: PgServer, database: str
) -> None:
    api = httpx.Client(base_url=stack.url, timeout=15)
    alice, alice_auth = new_user(api)
    bob, bob_auth = new_user(api)
    total = 200
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    sent_half = threading.Event()
    done = threading.Event()

    def sender() -> None:
        with httpx.Client(base_url=stack.url, timeout=15) as client:
            for i in range(total):
                # Half with the client's own Idempotency-Key, half with the gateway's.
                headers = alice_auth | ({"Idempotency-Key": f"k-{i}"} if i % 2 else {})
                response = client.post(
                    f"/dialog/{bob}/send", json={"text": f"msg {i}"}, headers=headers
                )
                statuses[response.status_code] += 1
                if response.status_code != 200:
                    failures.append(f"send {i}: {response.status_code} {response.text}")
                if i == total // 4:
                    sent_half.set()
        done.set()

    def lister() -> None:
        with httpx.Client(base_url=stack.url, timeout=15) as client:
            while not done.is_set():
                response = client.get(f"/dialog/{alice}/list", headers=bob_auth)
                statuses[response.status_code] += 1
                if response.status_code != 200:
                    failures.append(f"list: {response.status_code} {response.text}")

    threads = [threading.Thread(target=sender), threading.Thread(target=lister)]
    for thread in threads:
        thread.start()
    assert sent_half.wait(60)
    kill_service(stack.dialogs[0])  # SIGKILL: no graceful drain, connections just die
    for thread in threads:
        thread.join(120)
    assert not failures, failures[:5]
    assert statuses[200] > total

    counts = pg_server.psql(
        "SELECT content, count(*) FROM dialog_messages GROUP BY content HAVING count(*) > 1",
        database,
    )
    assert counts == "", f"stored twice: {counts}"
    assert pg_server.psql("SELECT count(*) FROM dialog_messages", database) == str(total)
    assert list(ready_upstreams(stack.url)) == [stack.dialogs[1].url]
    # The gateway noticed (by traffic or by probe) and took the dead instance out.
    assert stack.gateway is not None
    taken_out = [
        line
        for line in stack.gateway.log().splitlines()
        if "upstream taken out" in line and stack.dialogs[0].url in line
    ]
    assert taken_out, stack.gateway.log()


def test_no_instance_left_is_503_and_a_restarted_one_serves_again(stack: Stack) -> None:
    api = httpx.Client(base_url=stack.url, timeout=15)
    alice, alice_auth = new_user(api)
    bob, bob_auth = new_user(api)
    assert (
        api.post(f"/dialog/{bob}/send", json={"text": "before"}, headers=alice_auth).status_code
        == 200
    )
    gateway_pid = stack.gateway.process.pid  # type: ignore[union-attr]

    for instance in stack.dialogs:
        kill_service(instance)
    for response in (
        api.post(f"/dialog/{bob}/send", json={"text": "during"}, headers=alice_auth),
        api.get(f"/dialog/{alice}/list", headers=bob_auth),
    ):
        assert response.status_code == 503, response.text
        assert int(response.headers["Retry-After"]) >= 1
        assert response.json()["code"] == "upstream_unavailable"
        assert response.json()["request_id"] == response.headers["X-Request-ID"]
    assert wait_until(lambda: api.get("/readyz").status_code == 503)

    stack.dialogs[1].start()  # same port: the gateway's configuration did not change
    sent = wait_until(
        lambda: (
            (
                r := api.post(f"/dialog/{bob}/send", json={"text": "after"}, headers=alice_auth)
            ).status_code
            == 200
            and r
        )
    )
    assert sent.json()["text"] == "after"
    listed = api.get(f"/dialog/{alice}/list", headers=bob_auth)
    assert [m["text"] for m in listed.json()] == ["after", "before"]
    assert stack.gateway.process.pid == gateway_pid  # type: ignore[union-attr]
    assert api.get("/readyz").status_code == 200
    # The gateway's /readyz probes brought it back; they are clean requests, not errors
    # (a Content-Length on the bodyless GET once made Sanic log each one as an error).
    assert '"level":"error"' not in stack.dialogs[1].log_path.read_text()


def test_request_id_reaches_the_dialogs_logs(
    stack: Stack, pg_server: PgServer, database: str
) -> None:
    api = httpx.Client(base_url=stack.url, timeout=15)
    _, alice_auth = new_user(api)
    bob, _ = new_user(api)
    assert (
        api.post(f"/dialog/{bob}/send", json={"text": "warm"}, headers=alice_auth).status_code
        == 200
    )
    # Hold a lock that makes every send wait past dialogs' statement timeout: each instance
    # logs the database trouble, with the request id it was given.
    holder = subprocess.Popen(
        [
            str(pg_server.bin / "psql"),
            "-X",
            "-q",
            pg_server.dsn_for(database),
            "-c",
            "BEGIN; LOCK TABLE dialog_messages IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(8);",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(
            lambda: (
                pg_server.psql(
                    "SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock'"
                    " AND relation = 'dialog_messages'::regclass",
                    database,
                )
                == "1"
            )
        )
        response = api.post(
            f"/dialog/{bob}/send",
            json={"text": "blocked"},
            headers=alice_auth | {"X-Request-ID": "trace-lock-0042"},
        )
    finally:
        holder.terminate()
        holder.wait(10)
    assert response.status_code == 503
    assert response.headers["X-Request-ID"] == "trace-lock-0042"
    assert "Retry-After" in response.headers
    assert response.json()["code"] == "db_unavailable"
    # The instance that answered logged the trouble under the client's id. A database
    # outage is not retried on the other instance: it would reach the same shard.
    logged = [i for i in stack.dialogs if '"request_id":"trace-lock-0042"' in i.log()]
    assert len(logged) == 1
    # Both instances stay in rotation: the instance was healthy, the database was not.
    stack.wait_ready(2)
