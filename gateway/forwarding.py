"""Calls from the gateway to the dialogs instances.

One client per worker process (gateway.hop): keep-alive connections per instance, reused
most recently used first, with timeouts on connecting and on the whole answer. The client's
own headers are never copied: a forwarded request carries only the body the gateway built,
the internal credential and the request id.

History: the first version used httpx.AsyncClient, whose pool (httpcore's
AsyncConnectionPool) rescans every connection and queued request on each request
(encode/httpcore#1035): 0.44 ms of client CPU per request with 1 in flight, 2.1 ms with 64.
The second kept httpcore's connections with an idle list of its own (about 0.3 ms per
request at any concurrency). See docs/benchmarks.md, "Gateway overhead".

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

from gateway.hop import KEEPALIVE_EXPIRY_S, HopError, Origin
from gateway.upstreams import Balancer, Upstream
from servicekit import contract
from servicekit.contract import INTERNAL_TOKEN_HEADER, REQUEST_ID_HEADER
from servicekit.http import ApiError

__all__ = ["INTERNAL_TOKEN_HEADER", "KEEPALIVE_EXPIRY_S", "Forwarder", "Reply"]

log = logging.getLogger("gateway.forwarding")

DB_UNAVAILABLE_CODE = b'"%s"' % contract.DB_UNAVAILABLE.encode()

# outcome of one attempt: ok, status_5xx, connect_error, timeout, protocol_error
Recorder = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes
    # Lower-case names.
    headers: dict[str, str]


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
        self._connect_timeout_s = connect_timeout_s
        self._timeout_s = timeout_s
        self._probe_timeout_s = min(timeout_s, 2.0)
        # Headers every forwarded request carries, encoded once.
        self._fixed_headers = (
            b"Content-Type: application/json\r\n"
            + INTERNAL_TOKEN_HEADER.encode()
            + b": "
            + internal_token.encode()
            + b"\r\n"
        )
        self._request_id_name = REQUEST_ID_HEADER.encode() + b": "
        # Waiting for a free connection counts as connecting.
        self._pool_timeout_s = connect_timeout_s
        # Requests in flight at once per worker process (each on its own connection), over
        # all instances; and idle connections kept per instance.
        self._slots = asyncio.Semaphore(pool_size)
        self._max_idle = pool_size
        self._ssl_context: ssl.SSLContext | None = None
        self._origins: dict[str, Origin] = {}
        for upstream in balancer.upstreams:
            self._origin(upstream.url)

    def _origin(self, base_url: str) -> Origin:
        found = self._origins.get(base_url)
        if found is None:
            parts = urlsplit(base_url)
            secure = parts.scheme == "https"
            if secure and self._ssl_context is None:
                self._ssl_context = ssl.create_default_context()
            found = self._origins[base_url] = Origin(
                parts.hostname or "",
                parts.port or (443 if secure else 80),
                ssl_context=self._ssl_context if secure else None,
                fixed_headers=self._fixed_headers,
                connect_timeout_s=self._connect_timeout_s,
                max_idle=self._max_idle,
            )
        return found

    async def aclose(self) -> None:
        for origin in self._origins.values():
            origin.close()

    async def _request(self, base_url: str, request: bytes, timeout_s: float) -> Reply:
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
            answer = await origin.request(request, timeout_s)
        finally:
            self._slots.release()
        return Reply(answer.status, answer.body, answer.headers)

    async def post(self, path: str, payload: bytes, request_id: str, *, attempts: int) -> Reply:
        """POST ``payload`` to ``path`` on up to ``attempts`` different instances.

        Returns the first answer that is not a 5xx, or dialogs' own 503 db_unavailable;
        raises ApiError(503) when no instance serves.
        """
        # The request id was checked (or made) by servicekit.http: safe in a header.
        request_id_line = self._request_id_name + request_id.encode() + b"\r\n"
        tried: list[Upstream] = []
        for _ in range(attempts):
            upstream = self._balancer.pick(tried)
            if upstream is None:
                break
            tried.append(upstream)
            self._balancer.started(upstream)
            origin = self._origin(upstream.url)
            request = origin.post_request(path, payload, request_id_line)
            try:
                reply = await self._request(upstream.url, request, self._timeout_s)
            except HopError as error:
                self._fail(upstream, error.outcome, error)
                continue
            finally:
                self._balancer.finished(upstream)
            status, body = reply.status, reply.body
            if status == 503 and DB_UNAVAILABLE_CODE in body:
                # The instance is fine; the database (or the worker holding this dialog)
                # is not. Another instance would hit the same shard: pass the 503 on, and
                # keep the instance in rotation for the dialogs that still work.
                self._count(upstream, "db_unavailable")
                return reply
            if status >= 500:
                self._balancer.failed(upstream, f"status {status}")
                self._count(upstream, "status_5xx")
                continue
            if not upstream.healthy:
                self._balancer.recovered(upstream)  # tried while out (panic mode) and served
            self._count(upstream, "ok")
            return reply
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
        request = self._origin(base_url).get_request("/readyz")
        try:
            reply = await self._request(base_url, request, self._probe_timeout_s)
        except HopError as error:
            return f"{error.outcome}: {error}"
        return None if reply.status == 200 else f"status {reply.status}"

    def _fail(self, upstream: Upstream, outcome: str, error: Exception) -> None:
        self._balancer.failed(upstream, f"{outcome}: {type(error).__name__}")
        self._count(upstream, outcome)

    def _count(self, upstream: Upstream, outcome: str) -> None:
        if self._record is not None:
            self._record(upstream.url, outcome)
