"""A database URL naming several servers with target_session_attrs=read-write (how the
services follow a Patroni failover): the service uses whichever server accepts writes,
answers 503 with Retry-After while none does, and its pool recovers by itself."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.support.dialogs_client import DialogsClient, new_user
from tests.support.postgres import PgServer, free_port
from tests.support.processes import dialogs_process


def _database_of(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def _multi_host(url: str, *ports: int) -> str:
    parts = urlsplit(url)
    hosts = ",".join(f"127.0.0.1:{port}" for port in ports)
    return f"postgresql://{parts.username}@{hosts}{parts.path}?target_session_attrs=read-write"


@pytest.fixture
def read_only_database(pg_server: PgServer, dialogs_db: str) -> Iterator[str]:
    yield _database_of(dialogs_db)
    pg_server.psql(f"ALTER DATABASE {_database_of(dialogs_db)} RESET default_transaction_read_only")


def test_a_dead_first_host_is_skipped(pg_server: PgServer, dialogs_db: str) -> None:
    url = _multi_host(dialogs_db, free_port(), pg_server.port)
    service = dialogs_process(url).start()
    try:
        api = DialogsClient(service.url)
        alice, bob = new_user(), new_user()
        for i in range(3):
            response = api.send(alice, bob, f"hello {i}")
            assert response.status_code == 200, response.text
        assert [m["text"] for m in api.list(alice, bob).json()] == [
            "hello 2",
            "hello 1",
            "hello 0",
        ]
        api.close()
    finally:
        service.stop()


def test_no_writable_server_is_503_with_retry_after_and_the_pool_recovers(
    pg_server: PgServer, dialogs_db: str, read_only_database: str
) -> None:
    # The only server turns read-only, as a demoted primary does: no host matches.
    service = dialogs_process(_multi_host(dialogs_db, pg_server.port)).start()
    api = DialogsClient(service.url)
    try:
        alice, bob = new_user(), new_user()
        assert api.send(alice, bob, "before").status_code == 200
        pg_server.psql(
            f"ALTER DATABASE {read_only_database} SET default_transaction_read_only = on"
        )
        pg_server.psql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{read_only_database}' AND application_name = 'dialogs'"
        )
        # The first request may meet the connection the server just ended, later ones
        # reconnect and find no writable server: both are 503s, never a 500.
        statuses = []
        deadline = time.monotonic() + 10
        while True:
            response = api.send(alice, bob, "during", client_message_id=str(uuid.uuid4()))
            statuses.append(response.status_code)
            assert response.status_code in (200, 503), response.text + service.log()
            if response.status_code == 503:
                assert response.json()["code"] == "db_unavailable"
                assert int(response.headers["Retry-After"]) >= 1
                if "None of the hosts match" in service.log():
                    break
            assert time.monotonic() < deadline, f"no host-match refusal: {statuses}"
            time.sleep(0.1)

        pg_server.psql(f"ALTER DATABASE {read_only_database} RESET default_transaction_read_only")
        deadline = time.monotonic() + 10
        while (response := api.send(alice, bob, "after")).status_code != 200:
            assert response.status_code == 503, response.text
            assert time.monotonic() < deadline, "the pool did not recover"
            time.sleep(0.1)
        texts = [m["text"] for m in api.list(alice, bob).json()]
        assert texts[0] == "after" and texts[-1] == "before"
    finally:
        api.close()
        service.stop()
