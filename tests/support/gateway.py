"""The gateway in tests: its process, a whole stack (dialogs instances + gateway on one
database), tokens made by hand, and small client helpers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt

from tests.support.processes import INTERNAL_TOKEN, ServiceProcess, dialogs_process, migrate

JWT_SECRET = "test-jwt-secret-0123456789-abcdefghij"
PASSWORD = "correct horse battery staple"

# Fast argon2 in tests (the minimum the gateway accepts); production keeps the defaults.
FAST_HASHING = {"GATEWAY_ARGON2_MEMORY_KIB": "8192", "GATEWAY_ARGON2_TIME_COST": "1"}


def gateway_process(database_url: str, upstreams: list[str], **extra_env: str) -> ServiceProcess:
    env = {
        "GATEWAY_DATABASE_URL": database_url,
        "GATEWAY_UPSTREAMS": ",".join(upstreams),
        "GATEWAY_INTERNAL_TOKEN": INTERNAL_TOKEN,
        "GATEWAY_JWT_SECRET": JWT_SECRET,
        "GATEWAY_DB_CONNECT_TIMEOUT_S": "1",
        "GATEWAY_UPSTREAM_CONNECT_TIMEOUT_S": "0.5",
        "GATEWAY_UPSTREAM_TIMEOUT_S": "5",
        "GATEWAY_UPSTREAM_COOLDOWN_S": "0.5",
        "GATEWAY_UPSTREAM_PROBE_INTERVAL_S": "0.2",
    } | FAST_HASHING
    return ServiceProcess("gateway", env | extra_env)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), children first listed first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after its ")".
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def kill_service(service: ServiceProcess) -> None:
    """SIGKILL a service and every process it started, at once: a crash of the whole
    instance. (SIGKILL to Sanic's main process alone leaves its worker serving.)"""
    assert service.process is not None
    tree = [service.process.pid, *descendants(service.process.pid)]
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    service.process.wait(10)


def migrate_gateway(database_url: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "migrate", "--database-url", database_url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def wait_until(predicate: Any, timeout: float = 15.0, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; that value, or AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def ready_upstreams(gateway_url: str) -> dict[str, str]:
    try:
        body = httpx.get(f"{gateway_url}/readyz", timeout=2).json()
    except (httpx.TransportError, ValueError):
        return {}
    upstreams: dict[str, str] = body.get("upstreams", {})
    return {url: state for url, state in upstreams.items() if state == "ready"}


@dataclass
class Stack:
    """``dialogs_count`` dialogs instances and one gateway on ``database_url``."""

    database_url: str
    dialogs_count: int = 2
    gateway_env: dict[str, str] = field(default_factory=dict)
    dialogs: list[ServiceProcess] = field(default_factory=list)
    gateway: ServiceProcess | None = None

    def start(self) -> Stack:
        migrate(self.database_url)
        migrate_gateway(self.database_url)
        try:
            for _ in range(self.dialogs_count):
                self.dialogs.append(dialogs_process(self.database_url).start())
            self.gateway = gateway_process(
                self.database_url, [d.url for d in self.dialogs], **self.gateway_env
            ).start()
            self.wait_ready(self.dialogs_count)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def url(self) -> str:
        assert self.gateway is not None
        return self.gateway.url

    def wait_ready(self, count: int, timeout: float = 15.0) -> None:
        """Until the gateway sees exactly ``count`` ready instances."""
        wait_until(lambda: len(ready_upstreams(self.url)) == count, timeout)

    def stop(self) -> None:
        for process in [self.gateway, *self.dialogs]:
            if process is not None:
                process.stop()

    def logs(self) -> str:
        parts = [p.log() for p in [self.gateway, *self.dialogs] if p is not None]
        return "\n----\n".join(parts)


@contextmanager
def running_stack(database_url: str, **kwargs: Any) -> Iterator[Stack]:
    stack = Stack(database_url, **kwargs).start()
    try:
        yield stack
    finally:
        stack.stop()


def register(client: httpx.Client, password: str = PASSWORD, **fields: Any) -> str:
    response = client.post("/user/register", json={"password": password, **fields})
    assert response.status_code == 200, response.text
    user_id: str = response.json()["user_id"]
    return user_id


def login(client: httpx.Client, user_id: str, password: str = PASSWORD) -> str:
    response = client.post("/login", json={"id": user_id, "password": password})
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


def new_user(client: httpx.Client) -> tuple[str, dict[str, str]]:
    """A registered, logged-in user: its id and the headers that authenticate it."""
    user_id = register(client)
    return user_id, {"Authorization": f"Bearer {login(client, user_id)}"}


def make_token(
    claims: dict[str, Any] | None = None,
    *,
    key: Any = JWT_SECRET,
    algorithm: str = "HS256",
    headers: dict[str, Any] | None = None,
    drop: tuple[str, ...] = (),
) -> str:
    """A JWT for ``sub`` (a fresh user id unless given), valid for an hour unless overridden."""
    now = int(time.time())
    payload: dict[str, Any] = {"sub": str(uuid.uuid4()), "iat": now, "exp": now + 3600}
    payload |= claims or {}
    for claim in drop:
        payload.pop(claim, None)
    return jwt.encode(payload, key, algorithm=algorithm, headers=headers)


def unsigned_token(claims: dict[str, Any]) -> str:
    """A token with ``alg: none`` and an empty signature (RFC 7519 "unsecured JWT")."""
    import base64
    import json

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    client_port: int = 0

    def json(self) -> Any:
        import json

        return json.loads(self.body)


# Callable[[Recorded], tuple[int, bytes] | tuple[int, bytes, dict[str, str]]]: status,
# body and, optionally, more headers.
Responder = Any


def dialogs_like(request: Recorded) -> tuple[int, bytes]:
    """Answers the way a healthy dialogs instance does, without storing anything."""
    import json

    if request.path == "/readyz":
        return 200, b'{"status":"ready"}'
    if request.path.endswith("/send"):
        body = request.json()
        message = {
            "id": "01a2166f-aa61-7154-b14e-ba4ac1ceab99",
            "dialog_id": "83e738f9-dc0b-58ad-bc4b-859da575ad13",
            "from": body["from"],
            "to": body["to"],
            "text": body["text"],
            "created_at": "2025-01-01T00:00:00+00:00",
        }
        return 200, json.dumps(message).encode()
    if request.path.endswith("/list"):
        return 200, b"[]"  # the last page: no next-cursor header
    return 404, b'{"message":"not found"}'


class FakeUpstream:
    """A real HTTP server on loopback that records what it receives and answers with
    ``respond(request) -> (status, body[, headers])`` (a dialogs-like answer by default)."""

    def __init__(self, respond: Responder = dialogs_like, *, keep_alive: bool = False) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.respond = respond
        self.requests: list[Recorded] = []
        # Set to close each kept-alive connection right after its next answer.
        self.close_after_answer = False
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                recorded = Recorded(
                    self.command,
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    self.rfile.read(length),
                    self.client_address[1],
                )
                upstream.requests.append(recorded)
                status, body, *more = upstream.respond(recorded)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for name, value in (more[0] if more else {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                if upstream.close_after_answer:
                    self.close_connection = True

            do_GET = do_POST = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def calls(self, suffix: str) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith(suffix)]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
