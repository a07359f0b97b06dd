"""Operating the dialogs service: outages, start-up checks, migrations, metrics, shutdown."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support.dialogs_client import DialogsClient, new_user
from tests.support.netfault import FreezableProxy
from tests.support.postgres import PgServer
from tests.support.processes import dialogs_process, migrate


@pytest.fixture
def own_server() -> Iterator[PgServer]:
    """A PostgreSQL that this test may stop and start."""
    server = PgServer("outage").start()
    yield server
    server.destroy()


def test_database_outage_gives_503_then_recovers(own_server: PgServer) -> None:
    url = own_server.dsn
    migrate(url)
    service = dialogs_process(url, DIALOGS_RETRY_AFTER_S="3").start()
    client = DialogsClient(service.url)
    try:
        alice, bob = new_user(), new_user()
        assert client.send(alice, bob, "before").status_code == 200

        own_server.stop()
        for attempt in (client.send(alice, bob, "during"), client.list(alice, bob)):
            assert attempt.status_code == 503, attempt.text
            assert attempt.headers["Retry-After"] == "3"
            body = attempt.json()
            assert body["code"] == "db_unavailable"
            assert body["request_id"] == attempt.headers["X-Request-ID"]
            # The request id reaches the service's own log line about the failure.
            assert body["request_id"] in service.log()
        assert httpx.get(f"{service.url}/readyz").status_code == 503
        assert httpx.get(f"{service.url}/healthz").status_code == 200

        own_server.start()
        deadline = time.monotonic() + 15
        while client.send(alice, bob, "after").status_code != 200:
            assert time.monotonic() < deadline, "service did not recover"
            time.sleep(0.2)
        assert [m["text"] for m in client.list(alice, bob).json()][-1] == "before"
        assert httpx.get(f"{service.url}/readyz").status_code == 200
    finally:
        client.close()
        service.stop()


def test_a_silent_network_to_the_database_gives_503_not_a_hang(
    pg_server: PgServer, dialogs_db: str
) -> None:
    """The database stops answering without closing anything (a partition, or a Citus
    coordinator stuck resolving a dead worker's name): every request still gets its answer,
    503 once the statement timeout has passed, and nothing is half-written."""
    proxy = FreezableProxy(pg_server.port)
    url = dialogs_db.replace(f":{pg_server.port}/", f":{proxy.port}/")
    service = dialogs_process(url, DIALOGS_POOL_MAX_SIZE="2").start()
    # The service's statement timeout is 2 s; this client waits 2 s more, the margin the
    # gateway's upstream timeout (5 s) leaves over dialogs' default statement timeout (3 s).
    client = DialogsClient(service.url, timeout=4)
    try:
        alice, bob = new_user(), new_user()
        assert client.send(alice, bob, "before").status_code == 200

        proxy.freeze()
        # More requests than pooled connections: the waiting ones must not hang either.
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda n: client.send(alice, bob, f"during {n}"), range(4)))
        for answer in answers:
            assert answer.status_code == 503, answer.text
            assert answer.json()["code"] == "db_unavailable"

        proxy.thaw()
        deadline = time.monotonic() + 15
        while client.send(alice, bob, "after").status_code != 200:
            assert time.monotonic() < deadline, "service did not recover"
            time.sleep(0.2)
        texts = [m["text"] for m in client.list(alice, bob).json()]
        assert texts[0] == "after" and texts[-1] == "before"
        assert set(texts) <= {"before", "after", *(f"during {n}" for n in range(4))}
    finally:
        client.close()
        service.stop()
        proxy.close()


def test_service_starts_while_the_database_is_down(own_server: PgServer) -> None:
    own_server.stop()
    service = dialogs_process(own_server.dsn).start()
    try:
        response = httpx.get(f"{service.url}/readyz")
        assert response.status_code == 503
        assert response.json()["code"] == "db_unavailable"
    finally:
        service.stop()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DIALOGS_INTERNAL_TOKEN": "short"}, "DIALOGS_INTERNAL_TOKEN must be at least 16"),
        ({"DIALOGS_PORT": "eighty"}, "DIALOGS_PORT must be an integer"),
        ({"DIALOGS_DATABASE_URL": ""}, "DIALOGS_DATABASE_URL is required"),
    ],
)
def test_bad_configuration_stops_the_service_naming_the_variable(
    env: dict[str, str], message: str
) -> None:
    base = {
        "DIALOGS_DATABASE_URL": "postgresql://x@127.0.0.1:1/x",
        "DIALOGS_INTERNAL_TOKEN": "0123456789abcdef0123",
    }
    result = subprocess.run(
        [sys.executable, "-m", "dialogs", "serve"],
        env=base | env | {"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert message in result.stderr


def test_migration_is_idempotent_and_safe_to_run_concurrently(pg_database: str) -> None:
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "dialogs", "migrate", "--database-url", pg_database],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [run.communicate(timeout=60) for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], outputs
    reports = [json.loads(out) for out, _ in outputs]
    # Exactly one run created the tables; the others, serialised behind it, found them.
    assert sorted(report["changed"] for report in reports) == [False, False, True], reports
    assert [r["created"] for r in reports if r["changed"]] == [["dialog_messages", "dialogs"]]
    assert migrate(pg_database) == {
        "service": "dialogs",
        "citus": False,
        "created": [],
        "distributed": [],
        "changed": False,
    }


def test_metrics_add_up_across_worker_processes(dialogs_db: str) -> None:
    service = dialogs_process(dialogs_db, DIALOGS_WORKERS="2").start()
    client = DialogsClient(service.url)
    try:
        alice, bob = new_user(), new_user()
        # Fresh connections spread over both workers.
        for i in range(40):
            with httpx.Client(base_url=service.url, headers=client.http.headers) as fresh:
                response = fresh.post(
                    "/internal/v1/messages/send", json={"from": alice, "to": bob, "text": str(i)}
                )
                assert response.status_code == 200
        text = httpx.get(f"{service.url}/metrics").text
        served = re.search(
            r'^dialogs_http_requests_total\{route="send",status="200"\} (\S+)$', text, re.M
        )
        assert served is not None, text
        assert float(served.group(1)) == 40
        pids = set(re.findall(r"Starting worker \[(\d+)\]", service.log()))
        assert len(pids) == 2
    finally:
        client.close()
        service.stop()


def test_graceful_shutdown_answers_what_it_accepted(dialogs_db: str) -> None:
    service = dialogs_process(dialogs_db).start()
    alice, bob = new_user(), new_user()
    statuses: list[int] = []

    def keep_sending() -> None:
        client = DialogsClient(service.url)
        try:
            for _ in range(5000):
                statuses.append(client.send(alice, bob, "x").status_code)
        except httpx.TransportError:
            pass  # the listener closed: the service stopped taking new requests
        finally:
            client.close()

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(keep_sending) for _ in range(4)]
        time.sleep(1.0)
        assert service.stop() == 0
        for future in futures:
            future.result()
    # Every request that got an answer got a real one; nothing failed on the way down.
    assert len(statuses) > 10
    assert set(statuses) == {200}
    assert '"level":"error"' not in service.log()
