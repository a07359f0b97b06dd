"""Calls from the gateway to the dialogs instances.

One HTTP client per worker process: httpcore (the HTTP/1.1 engine of httpx) connections,
kept alive and reused, with timeouts on connecting, reading and writing. The client's own
headers are never copied: a forwarded request carries only the body the gateway built, the
internal credential and the request id.

Why not ``httpx.AsyncClient`` and its pool: that pool (httpcore.AsyncConnectionPool) rescans
every connection and every queued request on each request (encode/httpcore#1035). Measured
on the benchmark machine against one dialogs instance, its client CPU per request grew from
0.44 ms with 1 request in flight to 0.92 ms with 16 and 2.1 ms with 64, which made the
gateway, not dialogs, the bottleneck. The idle list below costs the same at any concurrency
(about 0.3 ms per request there). See docs/benchmarks.md, "Gateway overhead".

Retry rules: a request is retried on another instance (never the same one) after a
connection error, a timeout or a 5xx. That is safe for ``list`` (it reads) and for ``send``
only because every send carries a client message id, so a retry that reaches an instance
after the first attempt was stored returns the stored message instead of a second copy.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpcore

from gateway.upstreams import Balancer, Upstream
from servicekit import contract
from servicekit.contract import INTERNAL_TOKEN_HEADER, REQUEST_ID_HEADER
from servicekit.http import ApiError

log = logging.getLogger("gateway.forwarding")

__all__ = ["INTERNAL_TOKEN_HEADER", "Forwarder", "Reply"]
# An idle connection is dropped after this long, well before servers close theirs
# (Sanic: 120 s), so a reused connection is not one the server is about to close.
KEEPALIVE_EXPIRY_S = 5.0

DB_UNAVAILABLE_CODE = b'"%s"' % contract.DB_UNAVAILABLE.encode()

# outcome of one attempt: ok, status_5xx, connect_error, timeout, protocol_error
Recorder = Callable[[str, str], None]


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    # Lower-case names.
    headers: dict[str, str]


class _Origin:
    """One dialogs instance: where it is, and its idle keep-alive connections."""

    def __init__(self, base_url: str, ssl_context: ssl.SSLContext | None) -> None:
        parts = urlsplit(base_url)
        scheme = parts.scheme.encode()
        port = parts.port or (443 if parts.scheme == "https" else 80)
        host = (parts.hostname or "").encode()
        self.origin = httpcore.Origin(scheme, host, port)
        self.host_header = parts.netloc.encode()
        self.ssl_context = ssl_context if parts.scheme == "https" else None
        self.idle: list[httpcore.AsyncHTTPConnection] = []  # most recently used last
        self._urls: dict[str, httpcore.URL] = {}

    def url(self, path: str) -> httpcore.URL:
        found = self._urls.get(path)
        if found is None:
            found = self._urls[path] = httpcore.URL(
                scheme=self.origin.scheme,
                host=self.origin.host,
                port=self.origin.port,
                target=path.encode(),
            )
        return found

    async def connection(self) -> httpcore.AsyncHTTPConnection:
        """A live idle connection, or a new one (it connects on first use)."""
        while self.idle:
            connection = self.idle.pop()
            # Expired, or the server closed it while idle (the socket reads as EOF).
            if not connection.has_expired():
                return connection
            await connection.aclose()
        return httpcore.AsyncHTTPConnection(
            self.origin, ssl_context=self.ssl_context, keepalive_expiry=KEEPALIVE_EXPIRY_S
        )


class Forwarder:
    def __init__(
        self,
        balancer: Balancer,
        *,
        internal_token: str,
        connect_timeout_s: float,
        timeout_s: float,
        pool_size: int,
        retry_after_s: int,
        record: Recorder | None = None,
    ) -> None:
        self._balancer = balancer
        self._retry_after_s = retry_after_s
        self._record = record
        self._internal_token = internal_token.encode()
        # Waiting for a free connection counts as connecting.
        self._pool_timeout_s = connect_timeout_s
        self._timeouts = {
            "connect": connect_timeout_s,
            "read": timeout_s,
            "write": timeout_s,
            "pool": connect_timeout_s,
        }
        probe_read = min(timeout_s, 2.0)
        self._probe_timeouts = self._timeouts | {"read": probe_read, "write": probe_read}
        # Requests in flight at once per worker process (each on its own connection), over
        # all instances; and idle connections kept per instance.
        self._slots = asyncio.Semaphore(pool_size)
        self._max_idle = pool_size
        self._ssl_context: ssl.SSLContext | None = None
        self._origins: dict[str, _Origin] = {}
        for upstream in balancer.upstreams:
            self._origin(upstream.url)

    def _origin(self, base_url: str) -> _Origin:
        found = self._origins.get(base_url)
        if found is None:
            if base_url.startswith("https:") and self._ssl_context is None:
                self._ssl_context = ssl.create_default_context()
            found = self._origins[base_url] = _Origin(base_url, self._ssl_context)
        return found

    async def aclose(self) -> None:
        for origin in self._origins.values():
            idle, origin.idle = origin.idle, []
            for connection in idle:
                await connection.aclose()

    async def _request(
        self,
        base_url: str,
        method: bytes,
        path: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        timeouts: dict[str, float],
    ) -> tuple[int, bytes, dict[str, str]]:
        origin = self._origin(base_url)
        if self._slots.locked():
            try:
                await asyncio.wait_for(self._slots.acquire(), self._pool_timeout_s)
            except TimeoutError:
                # Our own connection limit is reached: not the instance's fault.
                log.warning("upstream connection limit reached")
                raise self.unavailable() from None
        else:
            await self._slots.acquire()
        try:
            return await self._exchange(origin, method, path, headers, body, timeouts)
        finally:
            self._slots.release()

    async def _exchange(
        self,
        origin: _Origin,
        method: bytes,
        path: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        timeouts: dict[str, float],
    ) -> tuple[int, bytes, dict[str, str]]:
        connection = await origin.connection()
        reusable = False
        try:
            # No Content-Length on a bodyless GET: Sanic would expect a body there and log
            # "body not consumed" at error level on every probe.
            length = [(b"Content-Length", str(len(body)).encode())] if body else []
            request = httpcore.Request(
                method,
                origin.url(path),
                headers=[(b"Host", origin.host_header), *length, *headers],
                content=body,
                extensions={"timeout": timeouts},
            )
            response = await connection.handle_async_request(request)
            try:
                content = await response.aread()
            finally:
                await response.aclose()
            reusable = connection.is_idle()
            reply_headers = {
                name.decode("latin-1").lower(): value.decode("latin-1")
                for name, value in response.headers
            }
            return response.status, content, reply_headers
        finally:
            if reusable and len(origin.idle) < self._max_idle:
                origin.idle.append(connection)
            else:
                await connection.aclose()

    async def post(self, path: str, payload: bytes, request_id: str, *, attempts: int) -> Reply:
        """POST ``payload`` to ``path`` on up to ``attempts`` different instances.

        Returns the first answer that is not a 5xx, or dialogs' own 503 db_unavailable;
        raises ApiError(503) when no instance serves.
        """
        headers = [
            (b"Content-Type", b"application/json"),
            (INTERNAL_TOKEN_HEADER.encode(), self._internal_token),
            (REQUEST_ID_HEADER.encode(), request_id.encode()),
        ]
        tried: list[Upstream] = []
        for _ in range(attempts):
            upstream = self._balancer.pick(tried)
            if upstream is None:
                break
            tried.append(upstream)
            self._balancer.started(upstream)
            try:
                status, body, reply_headers = await self._request(
                    upstream.url, b"POST", path, headers, payload, self._timeouts
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout, OSError) as error:
                self._fail(upstream, "connect_error", error)
                continue
            except httpcore.TimeoutException as error:
                self._fail(upstream, "timeout", error)
                continue
            except (
                httpcore.ProtocolError,
                httpcore.NetworkError,
                httpcore.ConnectionNotAvailable,
            ) as error:
                self._fail(upstream, "protocol_error", error)
                continue
            finally:
                self._balancer.finished(upstream)
            if status == 503 and DB_UNAVAILABLE_CODE in body:
                # The instance is fine; the database (or the worker holding this dialog)
                # is not. Another instance would hit the same shard: pass the 503 on, and
                # keep the instance in rotation for the dialogs that still work.
                self._count(upstream, "db_unavailable")
                return Reply(status, body, reply_headers)
            if status >= 500:
                self._balancer.failed(upstream, f"status {status}")
                self._count(upstream, "status_5xx")
                continue
            if not upstream.healthy:
                self._balancer.recovered(upstream)  # tried while out (panic mode) and served
            self._count(upstream, "ok")
            return Reply(status, body, reply_headers)
        raise self.unavailable()

    def unavailable(self) -> ApiError:
        return ApiError(
            503,
            "no message service instance can serve the request, try again later",
            "upstream_unavailable",
            retry_after=self._retry_after_s,
        )

    async def check(self, base_url: str) -> str | None:
        """None when the instance at ``base_url`` answers /readyz with 200, else why not."""
        try:
            status, _, _ = await self._request(
                base_url, b"GET", "/readyz", [], b"", self._probe_timeouts
            )
        except (httpcore.ConnectError, httpcore.ConnectTimeout, OSError) as error:
            return f"connect_error: {type(error).__name__}"
        except httpcore.TimeoutException as error:
            return f"timeout: {type(error).__name__}"
        except (
            httpcore.ProtocolError,
            httpcore.NetworkError,
            httpcore.ConnectionNotAvailable,
        ) as error:
            return f"protocol_error: {type(error).__name__}"
        return None if status == 200 else f"status {status}"

    def _fail(self, upstream: Upstream, outcome: str, error: Exception) -> None:
        self._balancer.failed(upstream, f"{outcome}: {type(error).__name__}")
        self._count(upstream, outcome)

    def _count(self, upstream: Upstream, outcome: str) -> None:
        if self._record is not None:
            self._record(upstream.url, outcome)
