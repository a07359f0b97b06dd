"""The gateway's client for its one internal hop (gateway.hop) against the real dialogs
service: connection reuse, a server closing idle connections, partial and slow answers,
timeouts, a dead instance."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest

from gateway.hop import Answer, ConnectFailed, HopError, HopTimeout, Origin
from servicekit import contract
from tests.support.dialogs_client import new_user
from tests.support.gateway import descendants
from tests.support.netfault import FreezableProxy
from tests.support.postgres import free_port
from tests.support.processes import INTERNAL_TOKEN, ServiceProcess, dialogs_process

T = TypeVar("T")
ALICE, BOB = new_user(), new_user()
FIXED = (
    b"Content-Type: application/json\r\n"
    + contract.INTERNAL_TOKEN_HEADER.encode()
    + b": "
    + INTERNAL_TOKEN.encode()
    + b"\r\n"
)


def origin(port: int, *, connect_timeout_s: float = 1.0) -> Origin:
    return Origin(
        "127.0.0.1",
        port,
        ssl_context=None,
        fixed_headers=FIXED,
        connect_timeout_s=connect_timeout_s,
        max_idle=4,
    )


def send_request(target: Origin, text: str, request_id: str = "hop-test") -> bytes:
    body = orjson.dumps({"from": ALICE, "to": BOB, "text": text})
    return target.post_request(
        contract.SEND_PATH, body, f"{contract.REQUEST_ID_HEADER}: {request_id}\r\n".encode()
    )


def run(scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(scenario())


def port_of(service: ServiceProcess) -> int:
    return service.port


def test_answers_come_whole_and_one_connection_is_reused(
    dialogs_service: ServiceProcess,
) -> None:
    target = origin(port_of(dialogs_service))

    async def scenario() -> list[Answer]:
        answers = []
        for i in range(5):
            answers.append(await target.request(send_request(target, f"hop {i}"), 2.0))
            assert len(target.idle) == 1
            if i == 0:
                first = target.idle[0]
            assert target.idle[0] is first
        page = target.post_request(
            contract.LIST_PATH,
            orjson.dumps({"user_id": ALICE, "peer_id": BOB, "limit": 2}),
            b"",
        )
        answers.append(await target.request(page, 2.0))
        assert target.idle == [first]
        target.close()
        return answers

    answers = run(scenario)
    assert [a.status for a in answers] == [200] * 6
    assert orjson.loads(answers[0].body)["text"] == "hop 0"
    assert answers[0].headers[contract.REQUEST_ID_HEADER.lower()] == "hop-test"
    listed = orjson.loads(answers[5].body)
    assert [m["text"] for m in listed] == ["hop 4", "hop 3"]
    assert answers[5].headers[contract.NEXT_CURSOR_HEADER.lower()]


def test_concurrent_requests_use_a_connection_each(dialogs_service: ServiceProcess) -> None:
    target = origin(port_of(dialogs_service))

    async def scenario() -> list[int]:
        answers = await asyncio.gather(
            *(target.request(send_request(target, f"c{i}"), 2.0) for i in range(4))
        )
        assert len(target.idle) == 4
        target.close()
        return [a.status for a in answers]

    assert run(scenario) == [200] * 4


def test_a_connection_the_server_closed_while_idle_is_not_used(dialogs_db: str) -> None:
    """dialogs closes keep-alive connections idle for SANIC_KEEP_ALIVE_TIMEOUT."""
    service = dialogs_process(dialogs_db, SANIC_KEEP_ALIVE_TIMEOUT="1").start()
    target = origin(service.port)

    async def scenario() -> list[int]:
        statuses = [(await target.request(send_request(target, "before"), 2.0)).status]
        first = target.idle[0]
        await asyncio.sleep(2.0)
        assert first.closed  # the server closed it; the client noticed
        statuses.append((await target.request(send_request(target, "after"), 2.0)).status)
        assert target.idle[0] is not first
        target.close()
        return statuses

    try:
        assert run(scenario) == [200, 200]
    finally:
        service.stop()


class ScriptedServer:
    """A loopback server that answers each request of a connection with the next item of
    ``script``: bytes to send (None: close without answering, "stall": send nothing), and
    closes the connection after each answer when ``close_after_answer``."""

    def __init__(self, script: list[bytes | str | None], close_after_answer: bool) -> None:
        self.script = script
        self.close_after_answer = close_after_answer
        self.connections = 0
        self.requests = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._sockets.append(client)
            self.connections += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while client.recv(65536):
                step = self.script[min(self.requests, len(self.script) - 1)]
                self.requests += 1
                if step is None:
                    break
                if step == "stall":
                    time.sleep(5)
                    break
                assert isinstance(step, bytes)
                client.sendall(step)
                if self.close_after_answer:
                    break
        client.close()

    def close(self) -> None:
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()


Scripted = Callable[..., ScriptedServer]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    servers: list[ScriptedServer] = []

    def start(script: list[bytes | str | None], close_after_answer: bool = False) -> ScriptedServer:
        servers.append(ScriptedServer(script, close_after_answer))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_a_kept_connection_closed_before_the_answer_is_retried_once_on_a_new_one(
    scripted: Scripted,
) -> None:
    """The server closed the idle connection just as the request was sent (nothing of an
    answer arrived): the request is sent again on a new connection, not failed."""
    server = scripted([OK, None, OK])
    target = origin(server.port)

    async def scenario() -> list[int]:
        statuses = [(await target.request(b"GET / HTTP/1.1\r\n\r\n", 1.0)).status]
        statuses.append((await target.request(b"GET / HTTP/1.1\r\n\r\n", 1.0)).status)
        target.close()
        return statuses

    assert run(scenario) == [200, 200]
    assert (server.connections, server.requests) == (2, 3)


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial', "before the answer ended"),
        (b"HTTP/1.1 200 OK\r\nContent-Le", "before the answer ended"),
        (b"SSH-2.0-OpenSSH_9.6\r\n", "malformed answer"),
    ],
)
def test_a_partial_or_malformed_answer_is_an_error_and_the_connection_is_dropped(
    scripted: Scripted, answer: bytes, problem: str
) -> None:
    server = scripted([answer], close_after_answer=True)
    target = origin(server.port)

    async def scenario() -> None:
        with pytest.raises(HopError, match=problem) as raised:
            await target.request(b"GET / HTTP/1.1\r\n\r\n", 1.0)
        assert raised.value.outcome == "protocol_error"
        assert target.idle == []

    run(scenario)


def test_a_slow_answer_ends_at_the_timeout(
    scripted: Scripted,
) -> None:
    server = scripted([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{", "stall"])
    target = origin(server.port)

    async def scenario() -> float:
        started = time.monotonic()
        with pytest.raises(HopTimeout) as raised:
            await target.request(b"GET / HTTP/1.1\r\n\r\n", 0.3)
        assert raised.value.outcome == "timeout"
        assert target.idle == []
        return time.monotonic() - started

    assert 0.3 <= run(scenario) < 1.0


def test_a_silent_dialogs_instance_times_out_and_a_new_connection_serves_after(
    dialogs_service: ServiceProcess,
) -> None:
    proxy = FreezableProxy(dialogs_service.port)
    target = origin(proxy.port)

    async def scenario() -> list[str]:
        outcomes = [str((await target.request(send_request(target, "x"), 2.0)).status)]
        proxy.freeze()
        try:
            await target.request(send_request(target, "frozen"), 0.3)
        except HopTimeout as error:
            outcomes.append(error.outcome)
        proxy.thaw()
        outcomes.append(str((await target.request(send_request(target, "y"), 2.0)).status))
        target.close()
        return outcomes

    try:
        assert run(scenario) == ["200", "timeout", "200"]
    finally:
        proxy.close()


def test_connecting_is_bounded_by_the_connect_timeout() -> None:
    """A listener whose accept queue is full: the handshake gets no answer."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):  # fill the accept queue (its length is the backlog + 1)
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.1)
    target = origin(port, connect_timeout_s=0.3)

    async def scenario() -> float:
        started = time.monotonic()
        with pytest.raises(ConnectFailed, match="timed out"):
            await target.request(b"GET / HTTP/1.1\r\n\r\n", 1.0)
        return time.monotonic() - started

    try:
        assert 0.3 <= run(scenario) < 1.0
    finally:
        for sock in [*fillers, listener]:
            sock.close()


def kill_all(service: ServiceProcess) -> None:
    """SIGKILL, and wait until every process of the service is gone."""
    assert service.process is not None
    group = [service.process.pid, *descendants(service.process.pid)]
    service.kill()
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in group):
        assert time.monotonic() < deadline, "the killed service's processes remain"
        time.sleep(0.02)


def test_a_dead_instance_is_a_connect_error_also_once_it_served(
    dialogs_db: str,
) -> None:
    dead = origin(free_port())

    async def refused() -> str:
        with pytest.raises(ConnectFailed) as raised:
            await dead.request(b"GET /readyz HTTP/1.1\r\n\r\n", 1.0)
        return raised.value.outcome

    assert run(refused) == "connect_error"

    service = dialogs_process(dialogs_db).start()
    target = origin(service.port)

    async def killed() -> str:
        assert (await target.request(send_request(target, "alive"), 2.0)).status == 200
        # The kept connection dies with the processes: the next request finds it closed,
        # and connecting again is refused. (Sanic's worker process holds the listening
        # socket and may outlive the main one by a moment: wait until every one is gone.)
        await asyncio.get_running_loop().run_in_executor(None, kill_all, service)
        with pytest.raises(HopError) as raised:
            await target.request(send_request(target, "dead"), 2.0)
        target.close()
        return f"{raised.value.outcome}: {raised.value}"

    try:
        assert run(killed).startswith("connect_error")
    finally:
        service.stop()
