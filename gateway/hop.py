"""A small HTTP/1.1 client for the one internal hop, gateway -> dialogs.

Why not a general client: measured on the benchmark machine, httpcore (h11 and anyio) cost
about 300 µs of CPU per forwarded request and aiohttp's connector about 150 µs, against a
budget of 150 µs for the whole gateway request (see docs/benchmarks.md). This client does
only what the hop needs: one request at a time per keep-alive connection, a body of known
length, and the answer parsed by httptools (llhttp, the parser Sanic itself uses), straight
from asyncio's protocol callbacks: no streams, no task and one timer per exchange.

Failures are classified the way the forwarder counts them: ConnectFailed (the instance
could not be reached), HopTimeout (no complete answer in time) and HopError (the connection
broke, or the answer is not HTTP).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from typing import cast

import httptools

# An idle connection is dropped after this long, well before servers close theirs
# (Sanic: KEEP_ALIVE_TIMEOUT, 120 s by default), so a reused connection is rarely one the
# server is about to close; when it is, the request is sent again on a new connection.
KEEPALIVE_EXPIRY_S = 5.0


class HopError(Exception):
    """The connection broke, or the answer was not HTTP."""

    outcome = "protocol_error"


class ConnectFailed(HopError):
    outcome = "connect_error"


class HopTimeout(HopError):
    outcome = "timeout"


class _Stale(HopError):
    """A reused connection closed before any byte of the answer: the server had closed it
    while idle, so the request never reached the application. Safe to send again."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    headers: dict[str, str]  # lower-case names


class _Connection(asyncio.Protocol):
    """One keep-alive connection; also the httptools parser's callback object."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[Answer] | None = None
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._received = False
        self.closed = False
        self.reusable = False
        self.idle_since = 0.0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP transport (uvloop's does not subclass asyncio.Transport, so no isinstance).
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._received = True
        if self._waiter is None:  # bytes nobody asked for: the connection is not sane
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(HopError(f"malformed answer: {error}"))
            self.close()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            if self._received:
                self._fail(HopError("the connection closed before the answer ended"))
            else:
                self._fail(_Stale("the connection closed before the answer began"))

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        self.reusable = self._parser.should_keep_alive()
        status = self._parser.get_status_code()
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        waiter.set_result(Answer(status, body, self._headers))

    # use

    async def exchange(self, request: bytes, timeout_s: float) -> Answer:
        """Send ``request`` (a complete HTTP/1.1 request) and wait for the whole answer."""
        if self.closed or self._transport is None:
            raise _Stale("the connection is closed")
        self._headers = {}
        self._body = []
        self._received = False
        self.reusable = False
        waiter: asyncio.Future[Answer] = self._loop.create_future()
        self._waiter = waiter
        self._transport.write(request)
        try:
            async with asyncio.timeout(timeout_s):
                return await waiter
        except TimeoutError:
            self.close()
            raise HopTimeout(f"no complete answer within {timeout_s} s") from None
        except BaseException:
            self.close()  # cancelled or failed half-way: the connection's state is unknown
            raise
        finally:
            self._waiter = None

    def _fail(self, error: HopError) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error)

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.abort()


class Origin:
    """One dialogs instance: its address, its idle connections, its request heads."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None,
        fixed_headers: bytes,
        connect_timeout_s: float,
        max_idle: int,
    ) -> None:
        self.host = host
        self.port = port
        self._ssl = ssl_context
        self._connect_timeout_s = connect_timeout_s
        self._max_idle = max_idle
        default_port = 443 if ssl_context else 80
        authority = host if port == default_port else f"{host}:{port}"
        self._host_line = b"Host: " + authority.encode("idna") + b"\r\n"
        self._fixed_headers = fixed_headers
        self._post_heads: dict[str, bytes] = {}
        self.idle: list[_Connection] = []  # most recently used last

    def post_request(self, path: str, body: bytes, extra_headers: bytes) -> bytes:
        """A POST of ``body`` to ``path``; ``extra_headers`` are complete header lines."""
        head = self._post_heads.get(path)
        if head is None:
            head = self._post_heads[path] = (
                b"POST " + path.encode() + b" HTTP/1.1\r\n" + self._host_line + self._fixed_headers
            )
        return b"%bContent-Length: %d\r\n%b\r\n%b" % (head, len(body), extra_headers, body)

    def get_request(self, path: str) -> bytes:
        # No Content-Length on a bodyless GET: Sanic would expect a body there and log
        # "body not consumed" at error level on every probe.
        return b"GET " + path.encode() + b" HTTP/1.1\r\n" + self._host_line + b"\r\n"

    async def request(self, request: bytes, timeout_s: float) -> Answer:
        """Send ``request`` on an idle connection, or a new one, and return the answer."""
        connection = self._idle_connection()
        if connection is not None:
            try:
                answer = await connection.exchange(request, timeout_s)
            except _Stale:
                pass  # closed by the server while idle: once more, on a new connection
            else:
                self._release(connection)
                return answer
        connection = await self._connect()
        try:
            answer = await connection.exchange(request, timeout_s)
        except _Stale:
            raise HopError("the connection closed before the answer began") from None
        self._release(connection)
        return answer

    def _idle_connection(self) -> _Connection | None:
        now = time.monotonic()
        while self.idle:
            connection = self.idle.pop()
            if not connection.closed and now - connection.idle_since < KEEPALIVE_EXPIRY_S:
                return connection
            connection.close()
        return None

    def _release(self, connection: _Connection) -> None:
        if connection.reusable and not connection.closed and len(self.idle) < self._max_idle:
            connection.idle_since = time.monotonic()
            self.idle.append(connection)
        else:
            connection.close()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        connection = _Connection(loop)
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                await loop.create_connection(
                    lambda: connection, self.host, self.port, ssl=self._ssl
                )
        except TimeoutError:
            connection.close()
            raise ConnectFailed(f"connect timed out after {self._connect_timeout_s} s") from None
        except OSError as error:
            raise ConnectFailed(f"{type(error).__name__}: {error}") from None
        return connection

    def close(self) -> None:
        idle, self.idle = self.idle, []
        for connection in idle:
            connection.close()
