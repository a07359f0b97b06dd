"""Forwarding against real HTTP servers on loopback: retry rules, timeouts, what is sent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from gateway.forwarding import INTERNAL_TOKEN_HEADER, Forwarder, Reply
from gateway.upstreams import Balancer
from servicekit.http import ApiError
from tests.support.gateway import FakeUpstream, Recorded, dialogs_like
from tests.support.postgres import free_port

PAYLOAD = b'{"from":"a","to":"b","text":"hi","client_message_id":"k1"}'
TOKEN = "internal-token-0123456789"


def always(status: int, body: bytes = b'{"message":"x"}') -> object:
    def respond(request: Recorded) -> tuple[int, bytes]:
        if request.path == "/readyz":
            return 200, b"{}"
        return status, body

    return respond


@pytest.fixture
def servers() -> Iterator[list[FakeUpstream]]:
    started: list[FakeUpstream] = []
    yield started
    for server in started:
        server.stop()


def start(
    servers: list[FakeUpstream], respond: object = dialogs_like, *, keep_alive: bool = False
) -> FakeUpstream:
    server = FakeUpstream(respond, keep_alive=keep_alive)
    servers.append(server)
    return server


async def call(
    urls: list[str],
    path: str = "/internal/v1/messages/send",
    balancer: Balancer | None = None,
    **options: float,
) -> Reply:
    if balancer is None:
        balancer = Balancer(urls, cooldown_s=30)
        for upstream in balancer.upstreams:
            balancer.recovered(upstream)
    forwarder = Forwarder(
        balancer,
        internal_token=TOKEN,
        connect_timeout_s=options.get("connect_timeout_s", 0.5),
        timeout_s=options.get("timeout_s", 2.0),
        pool_size=4,
        retry_after_s=7,
    )
    try:
        return await forwarder.post(path, PAYLOAD, "req-123", attempts=2)
    finally:
        await forwarder.aclose()


def test_sends_only_the_body_the_credential_and_the_request_id(
    servers: list[FakeUpstream],
) -> None:
    upstream = start(servers)
    reply = asyncio.run(call([upstream.url]))
    assert reply.status == 200
    (request,) = upstream.calls("/send")
    assert request.method == "POST"
    assert request.body == PAYLOAD
    assert request.headers[INTERNAL_TOKEN_HEADER.lower()] == TOKEN
    assert request.headers["x-request-id"] == "req-123"
    assert request.headers["content-type"] == "application/json"
    assert "authorization" not in request.headers


def test_5xx_is_retried_once_on_another_instance_with_the_same_body(
    servers: list[FakeUpstream],
) -> None:
    failing, healthy = start(servers, always(500)), start(servers)
    for _ in range(4):
        reply = asyncio.run(call([failing.url, healthy.url]))
        assert reply.status == 200
    assert failing.calls("/send")  # round-robin put it first at least once
    assert {r.body for r in failing.calls("/send") + healthy.calls("/send")} == {PAYLOAD}
    assert len(healthy.calls("/send")) == 4


def test_connection_refused_is_retried_on_another_instance(servers: list[FakeUpstream]) -> None:
    healthy = start(servers)
    dead = f"http://127.0.0.1:{free_port()}"
    for _ in range(4):
        assert asyncio.run(call([dead, healthy.url])).status == 200
    assert len(healthy.calls("/send")) == 4


def test_timeout_is_retried_on_another_instance(servers: list[FakeUpstream]) -> None:
    def slow(request: Recorded) -> tuple[int, bytes]:
        time.sleep(1.0)
        return dialogs_like(request)

    stuck, healthy = start(servers, slow), start(servers)
    for _ in range(2):
        assert asyncio.run(call([stuck.url, healthy.url], timeout_s=0.3)).status == 200
    assert len(healthy.calls("/send")) == 2


def test_client_errors_are_answers_not_failures(servers: list[FakeUpstream]) -> None:
    first, second = start(servers, always(400)), start(servers, always(400))
    reply = asyncio.run(call([first.url, second.url]))
    assert reply.status == 400
    assert len(first.calls("/send")) + len(second.calls("/send")) == 1


def test_nobody_can_serve_means_503_with_retry_after(servers: list[FakeUpstream]) -> None:
    first, second = start(servers, always(503)), start(servers, always(500))
    with pytest.raises(ApiError) as raised:
        asyncio.run(call([first.url, second.url]))
    assert (raised.value.status, raised.value.retry_after) == (503, 7)
    assert len(first.calls("/send")) == 1 and len(second.calls("/send")) == 1


def test_when_every_instance_is_out_they_are_tried_anyway(servers: list[FakeUpstream]) -> None:
    """Both instances were taken out (say, by a rolling restart) but one serves again before
    its cool-down ends: the request reaches it, and it is back in rotation at once."""
    dead, back = f"http://127.0.0.1:{free_port()}", start(servers)
    balancer = Balancer([dead, back.url], cooldown_s=30)
    for upstream in balancer.upstreams:
        balancer.failed(upstream, "connect_error")
    assert asyncio.run(call([], balancer=balancer)).status == 200
    assert len(back.calls("/send")) == 1
    assert [u.healthy for u in balancer.upstreams] == [False, True]


def test_at_most_two_attempts(servers: list[FakeUpstream]) -> None:
    failing = [start(servers, always(500)) for _ in range(3)]
    with pytest.raises(ApiError):
        asyncio.run(call([s.url for s in failing]))
    assert sum(len(s.calls("/send")) for s in failing) == 2


def test_probe_reports_why_an_instance_is_not_ready(servers: list[FakeUpstream]) -> None:
    ready = start(servers)
    not_ready = start(servers, lambda request: (503, b"{}"))
    dead = f"http://127.0.0.1:{free_port()}"

    async def probe() -> list[str | None]:
        forwarder = Forwarder(
            Balancer([ready.url], cooldown_s=1),
            internal_token=TOKEN,
            connect_timeout_s=0.5,
            timeout_s=1,
            pool_size=2,
            retry_after_s=1,
        )
        try:
            return [await forwarder.check(url) for url in (ready.url, not_ready.url, dead)]
        finally:
            await forwarder.aclose()

    ok, unready, refused = asyncio.run(probe())
    assert ok is None
    assert unready == "status 503"
    assert refused is not None and refused.startswith("connect_error")


def test_connections_are_kept_alive_and_reused(servers: list[FakeUpstream]) -> None:
    upstream = start(servers, keep_alive=True)

    async def scenario() -> list[int]:
        balancer = Balancer([upstream.url], cooldown_s=30)
        balancer.recovered(balancer.upstreams[0])
        forwarder = Forwarder(
            balancer,
            internal_token=TOKEN,
            connect_timeout_s=0.5,
            timeout_s=2,
            pool_size=4,
            retry_after_s=1,
        )
        try:
            statuses = [
                (
                    await forwarder.post("/internal/v1/messages/send", PAYLOAD, "r", attempts=2)
                ).status
                for _ in range(5)
            ]
            # The server closes its side; the next request must see a fresh connection,
            # not a failure that would take a healthy instance out.
            upstream.close_after_answer = True
            statuses.append(
                (
                    await forwarder.post("/internal/v1/messages/send", PAYLOAD, "r", attempts=1)
                ).status
            )
            await asyncio.sleep(0.1)
            upstream.close_after_answer = False
            statuses.append(
                (
                    await forwarder.post("/internal/v1/messages/send", PAYLOAD, "r", attempts=1)
                ).status
            )
            assert balancer.upstreams[0].healthy
            return statuses
        finally:
            await forwarder.aclose()

    assert asyncio.run(scenario()) == [200] * 7
    ports = [r.client_port for r in upstream.calls("/send")]
    assert len(set(ports[:6])) == 1, ports  # one connection for the first six
    assert ports[6] != ports[5]  # a new one after the server closed it


def test_connection_limit_per_worker_queues_then_gives_503(servers: list[FakeUpstream]) -> None:
    def slow(request: Recorded) -> tuple[int, bytes]:
        time.sleep(0.5)
        return dialogs_like(request)

    upstream = start(servers, slow)

    async def scenario() -> list[int]:
        balancer = Balancer([upstream.url], cooldown_s=30)
        balancer.recovered(balancer.upstreams[0])
        forwarder = Forwarder(
            balancer,
            internal_token=TOKEN,
            connect_timeout_s=0.2,  # also the wait for a free connection
            timeout_s=2,
            pool_size=1,
            retry_after_s=1,
        )

        async def one() -> int:
            try:
                return (await forwarder.post("/x/send", PAYLOAD, "r", attempts=1)).status
            except ApiError as error:
                return error.status

        try:
            statuses = sorted(await asyncio.gather(one(), one()))
            assert balancer.upstreams[0].healthy
            return statuses
        finally:
            await forwarder.aclose()

    # One request holds the only connection for 0.5 s; the other gets none within 0.2 s:
    # 503, without blaming the instance.
    assert asyncio.run(scenario()) == [200, 503]
    assert len(upstream.calls("/send")) == 1
