"""The gateway behind its edge proxy: whose X-Forwarded-For the login throttle believes, and
connections that stall in a request head or body are cut (the real gateway process, a real
PostgreSQL)."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.support.gateway import PASSWORD, Stack, gateway_process, login, register, running_stack
from tests.support.postgres import PgServer
from tests.support.processes import ServiceProcess

PER_ADDRESS = 3
REQUEST_TIMEOUT_S = 2  # and the keep-alive timeout
# Far above the 2 s configured, far below Sanic's own 60 s default.
CUT_WITHIN_S = 20


@pytest.fixture(scope="module")
def database(pg_server: PgServer) -> Iterator[str]:
    name = f"gwedge_{uuid.uuid4().hex[:12]}"
    pg_server.psql(f"CREATE DATABASE {name}")
    yield pg_server.dsn_for(name)
    pg_server.psql(f"DROP DATABASE {name} WITH (FORCE)")


LIMITS = {
    "GATEWAY_LOGIN_MAX_FAILURES": "100",  # the per-address limit is the one under test
    "GATEWAY_LOGIN_MAX_FAILURES_PER_ADDRESS": str(PER_ADDRESS),
    "GATEWAY_REQUEST_TIMEOUT_S": str(REQUEST_TIMEOUT_S),
    "GATEWAY_KEEP_ALIVE_TIMEOUT_S": str(REQUEST_TIMEOUT_S),
}


@pytest.fixture(scope="module")
def stack(database: str) -> Iterator[Stack]:
    """One dialogs instance and a gateway that trusts the tests' loopback address as its edge."""
    env = LIMITS | {"GATEWAY_TRUSTED_PROXIES": "127.0.0.1"}
    with running_stack(database, dialogs_count=1, gateway_env=env) as running:
        yield running


@pytest.fixture(scope="module")
def untrusting(stack: Stack, database: str) -> Iterator[ServiceProcess]:
    """A second gateway on the same instance and database that trusts no proxy."""
    process = gateway_process(database, [d.url for d in stack.dialogs], **LIMITS).start()
    yield process
    process.stop()


def fail_login(url: str, forwarded_for: str) -> httpx.Response:
    return httpx.post(
        f"{url}/login",
        json={"id": str(uuid.uuid4()), "password": "guess-guess"},
        headers={"X-Forwarded-For": forwarded_for},
        timeout=10,
    )


def good_login(url: str, user: str, forwarded_for: str) -> httpx.Response:
    return httpx.post(
        f"{url}/login",
        json={"id": user, "password": PASSWORD},
        headers={"X-Forwarded-For": forwarded_for},
        timeout=10,
    )


def random_address() -> str:
    number = uuid.uuid4().int
    return f"10.{number % 250}.{(number >> 8) % 250}.{(number >> 16) % 250 + 1}"


def test_behind_a_trusted_edge_each_forwarded_client_has_its_own_count(stack: Stack) -> None:
    with httpx.Client(base_url=stack.url, timeout=10) as api:
        user = register(api)
    address_a, address_b = "198.51.100.10", "198.51.100.20"
    for _ in range(PER_ADDRESS):
        assert fail_login(stack.url, address_a).status_code == 404
    throttled = good_login(stack.url, user, address_a)
    assert throttled.status_code == 429, throttled.text
    assert throttled.json()["code"] == "too_many_attempts"
    # What the client wrote itself comes first; the edge appends the address it saw.
    assert good_login(stack.url, user, f"{address_b}, {address_a}").status_code == 429
    assert good_login(stack.url, user, address_b).status_code == 200


def test_without_a_trusted_proxy_a_forged_forwarded_for_does_not_escape(
    untrusting: ServiceProcess,
) -> None:
    with httpx.Client(base_url=untrusting.url, timeout=10) as api:
        user = register(api)
    # Every attempt claims another client: all count against the one real peer.
    for _ in range(PER_ADDRESS):
        assert fail_login(untrusting.url, random_address()).status_code == 404
    throttled = good_login(untrusting.url, user, random_address())
    assert throttled.status_code == 429, throttled.text
    assert "Retry-After" in throttled.headers


def stalled(url: str, data: bytes) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    conn = socket.create_connection((host, int(port)), timeout=CUT_WITHIN_S)
    conn.sendall(data)
    return conn


def answer_until_closed(conn: socket.socket) -> tuple[bytes, float]:
    """What the gateway sends before it closes the connection, and how long that took."""
    started = time.monotonic()
    received = b""
    with conn:
        while True:
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                pytest.fail(f"the stalled connection was still open after {CUT_WITHIN_S} s")
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    return received, time.monotonic() - started


def test_a_stalled_request_head_or_body_is_cut_while_others_are_served(stack: Stack) -> None:
    host = stack.url.removeprefix("http://")
    silent = stalled(stack.url, b"")
    half_head = stalled(stack.url, f"POST /login HTTP/1.1\r\nHost: {host}\r\nContent-Ty".encode())
    short_body = stalled(
        stack.url,
        (
            f"POST /login HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            "Content-Length: 200\r\n\r\n"
            '{"id": "'
        ).encode(),
    )
    # Meanwhile a normal client is served, the database included.
    with httpx.Client(base_url=stack.url, timeout=10) as api:
        user = register(api)
        assert login(api, user)
        assert api.get("/healthz").status_code == 200
    for conn in (half_head, short_body):
        answer, waited = answer_until_closed(conn)
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b"connection: close" in answer.lower()
        assert b'"code":"request_timeout"' in answer
        assert waited < CUT_WITHIN_S
    # A connection that never sends a byte is closed after the keep-alive timeout, unanswered.
    answer, waited = answer_until_closed(silent)
    assert answer == b""
    assert waited < CUT_WITHIN_S
