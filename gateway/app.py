"""The gateway HTTP service: an app factory wiring routes, resources and the plumbing.

Per worker process: one asyncpg pool (users), one pooled HTTP client and one balancer
(dialogs instances), a login throttle, and the prober that lets instances back in.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import logging
from typing import Any

import orjson
from sanic import HTTPResponse, Request, Sanic
from sanic.exceptions import RequestTimeout
from sanic.http import Http
from sanic.response import raw

from gateway import payloads
from gateway.client_address import ClientAddresses
from gateway.config import Settings
from gateway.forwarding import Forwarder, Reply
from gateway.passwords import Passwords
from gateway.throttle import LoginThrottle
from gateway.tokens import MissingToken, SigningUnavailable, TokenError, TokenService, bearer_token
from gateway.upstreams import Balancer, Upstream
from gateway.users import UserStore
from servicekit import contract, database, http, metrics
from servicekit.http import ApiError, json_response
from servicekit.logs import log_config
from servicekit.unique import unique_id

log = logging.getLogger("gateway")

REALM = "dialogs"
JSON = "application/json"
# Header names as the forwarder's replies give them (lower case).
REPLAYED = contract.REPLAYED_HEADER.lower()
NEXT_CURSOR = contract.NEXT_CURSOR_HEADER.lower()
REPLAYED_HEADERS = {contract.REPLAYED_HEADER: "true"}
# list: retried once on another instance. send: the same, made safe by its client message id.
ATTEMPTS = 2


class Unauthorized(ApiError):
    """401 with the RFC 6750 challenge in WWW-Authenticate."""

    def __init__(self, message: str, *, invalid_token: bool) -> None:
        super().__init__(401, message, "unauthorized")
        self.challenge = f'Bearer realm="{REALM}"'
        if invalid_token:
            self.challenge += f', error="invalid_token", error_description="{message}"'


class BodyTimeoutRequest(Request):
    """A request whose body must arrive within REQUEST_TIMEOUT.

    Sanic's REQUEST_TIMEOUT covers the request head only: it reads the body once the
    handler stage has begun, where only RESPONSE_TIMEOUT (60 s) would cut a client that
    stops short of its Content-Length.
    """

    async def receive_body(self) -> None:
        try:
            async with asyncio.timeout(self.app.config.REQUEST_TIMEOUT):
                await super().receive_body()  # type: ignore[no-untyped-call]
        except TimeoutError:
            stream = self.stream
            if isinstance(stream, Http):  # HTTP/1.1, the only protocol the gateway serves
                # Read nothing more from this client: no draining of the rest, no next
                # request on the connection; it closes after the 408.
                stream.request_body = None
                stream.keep_alive = False
            raise RequestTimeout("the request body was not received in time") from None


def openapi_document() -> bytes:
    return importlib.resources.files("gateway").joinpath("openapi.yaml").read_bytes()


def create_app(settings: Settings) -> Sanic:
    app = Sanic(
        "gateway", log_config=log_config(settings.log_level), request_class=BodyTimeoutRequest
    )
    app.config.REQUEST_MAX_SIZE = settings.max_body_bytes
    app.config.GRACEFUL_SHUTDOWN_TIMEOUT = 10.0
    app.config.NOISY_EXCEPTIONS = False
    # Sanic reads no client address from headers (not even from SANIC_* variables): only
    # gateway/client_address.py does, and only from GATEWAY_TRUSTED_PROXIES.
    app.config.PROXIES_COUNT = 0
    app.config.REAL_IP_HEADER = None
    app.config.FORWARDED_SECRET = None
    app.config.REQUEST_TIMEOUT = settings.request_timeout_s
    app.config.KEEP_ALIVE_TIMEOUT = settings.keep_alive_timeout_s
    app.ctx.settings = settings
    http.install(app)
    metrics.install(app, "gateway")
    _install_errors(app, settings)
    _install_resources(app, settings)
    _install_routes(app, settings)
    return app


def _install_errors(app: Sanic, settings: Settings) -> None:
    @app.exception(Unauthorized)
    async def on_unauthorized(request: Request, error: Unauthorized) -> HTTPResponse:
        response = http.error_response(request, error)
        response.headers["WWW-Authenticate"] = error.challenge
        return response

    database.install_error_handlers(
        app, store="the user store", retry_after_s=settings.retry_after_s
    )


def _upstream_metrics() -> tuple[Any, Any]:
    """An observer of upstream state and a recorder of attempt outcomes, for Prometheus."""
    from prometheus_client import Counter, Gauge

    healthy = Gauge(
        "gateway_upstream_healthy",
        "1 when every live worker sees the dialogs instance as healthy",
        ["upstream"],
        multiprocess_mode="livemin",
    )
    in_flight = Gauge(
        "gateway_upstream_in_flight",
        "Requests in flight to the dialogs instance, summed over workers",
        ["upstream"],
        multiprocess_mode="livesum",
    )
    attempts = Counter(
        "gateway_upstream_attempts_total",
        "Calls to dialogs instances by outcome (ok, status_5xx, connect_error, timeout, ...)",
        ["upstream", "outcome"],
    )

    # Children looked up once: labels() costs a few microseconds per call on the hot path.
    children: dict[tuple[str, ...], Any] = {}

    def child(metric: Any, *labels: str) -> Any:
        key = (metric._name, *labels)
        found = children.get(key)
        if found is None:
            found = children[key] = metric.labels(*labels)
        return found

    def observe(upstream: Upstream, change: str) -> None:
        if change == "in_flight":
            child(in_flight, upstream.url).set(upstream.in_flight)
        else:
            child(healthy, upstream.url).set(1 if upstream.healthy else 0)

    def record(url: str, outcome: str) -> None:
        child(attempts, url, outcome).inc()

    return observe, record


def _install_resources(app: Sanic, settings: Settings) -> None:
    @app.before_server_start
    async def open_resources(app: Sanic) -> None:
        observe, record = _upstream_metrics()
        app.ctx.database = await database.Database.open(
            settings.database_url,
            application_name="gateway",
            max_size=settings.db_pool_max_size,
            connect_timeout_s=settings.db_connect_timeout_s,
            statement_timeout_ms=settings.db_statement_timeout_ms,
        )
        app.ctx.users = UserStore(app.ctx.database)
        app.ctx.passwords = Passwords(
            time_cost=settings.argon2_time_cost,
            memory_kib=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
        )
        app.ctx.tokens = TokenService(settings.tokens)
        app.ctx.throttle = LoginThrottle(
            max_failures=settings.login_max_failures,
            max_failures_per_address=settings.login_max_failures_per_address,
            window_s=settings.login_window_s,
        )
        balancer = Balancer(
            settings.upstreams, cooldown_s=settings.upstream_cooldown_s, observer=observe
        )
        forwarder = Forwarder(
            balancer,
            internal_token=settings.internal_token,
            connect_timeout_s=settings.upstream_connect_timeout_s,
            timeout_s=settings.upstream_timeout_s,
            pool_size=settings.upstream_pool_size,
            retry_after_s=settings.retry_after_s,
            record=record,
        )
        app.ctx.balancer = balancer
        app.ctx.forwarder = forwarder
        # Know which instances answer before the first request; then keep probing.
        await balancer.probe(forwarder.check, settings.upstream_probe_interval_s)
        for upstream in balancer.upstreams:
            observe(upstream, "health")
            observe(upstream, "in_flight")
        log.info(
            "upstreams probed",
            extra={"fields": {"healthy": [u.url for u in balancer.upstreams if u.healthy]}},
        )
        app.ctx.prober = asyncio.get_running_loop().create_task(
            balancer.probe_forever(forwarder.check, settings.upstream_probe_interval_s)
        )

    @app.after_server_stop
    async def close_resources(app: Sanic) -> None:
        app.ctx.prober.cancel()
        await asyncio.gather(app.ctx.prober, return_exceptions=True)
        await app.ctx.forwarder.aclose()
        await app.ctx.database.close()


def _authenticate(request: Request) -> str:
    """The id of the user the request's bearer token was issued to."""
    try:
        token = bearer_token(request.headers.get("authorization"))
        user: str = request.app.ctx.tokens.verify(token)
    except MissingToken as error:
        raise Unauthorized(str(error), invalid_token=False) from None
    except TokenError as error:
        raise Unauthorized(str(error), invalid_token=True) from None
    return user


def _peer(user: str, path_user_id: str) -> str:
    peer = payloads.user_id(path_user_id, "user_id in the path")
    if peer == user:
        raise http.bad_request("user_id in the path must be another user than the token's")
    return peer


def _upstream_error(reply: Reply) -> HTTPResponse:
    """A dialogs answer other than 200 (other 5xx never get here: retried, then 503)."""
    if reply.status in contract.RELAYED_STATUSES:
        # dialogs' body is already {message, request_id, code} with our request id; a 503
        # (database unavailable for this dialog) keeps its Retry-After.
        headers = {"Retry-After": reply.headers["retry-after"]} if reply.status == 503 else None
        return raw(
            reply.body, status=reply.status, headers=headers, content_type="application/json"
        )
    body = reply.body[:200].decode(errors="replace")
    log.error(
        "unexpected answer from dialogs", extra={"fields": {"status": reply.status, "body": body}}
    )
    raise ApiError(502, "the message service gave an unexpected answer", "bad_gateway")


def _install_routes(app: Sanic, settings: Settings) -> None:
    document = openapi_document()
    clients = ClientAddresses(settings.trusted_proxies)

    @app.post("/login", name="login")
    async def login(request: Request) -> HTTPResponse:
        ctx = request.app.ctx
        if not ctx.tokens.can_issue:
            raise ApiError(
                501, "tokens are issued by the identity provider, not here", "login_disabled"
            )
        body = payloads.parse_login(request)
        # request.ip: the socket's peer, never a header.
        address = clients.of(request.ip, request.headers.getall("x-forwarded-for", []))
        wait = ctx.throttle.retry_after(body.user_id, address)
        if wait is not None:
            raise ApiError(
                429,
                "too many failed logins, try again later",
                "too_many_attempts",
                retry_after=wait,
            )
        stored_hash = await ctx.users.password_hash(body.user_id)
        if not await ctx.passwords.verify(stored_hash, body.password):
            ctx.throttle.failed(body.user_id, address)
            raise ApiError(404, "unknown user or wrong password", "not_found")
        ctx.throttle.succeeded(body.user_id)
        if ctx.passwords.needs_rehash(stored_hash):
            new_hash = await ctx.passwords.hash(body.password)
            await ctx.users.replace_password_hash(body.user_id, stored_hash, new_hash)
        try:
            token = ctx.tokens.issue(body.user_id)
        except SigningUnavailable:  # pragma: no cover - checked above
            raise ApiError(501, "tokens are issued elsewhere", "login_disabled") from None
        return json_response({"token": token})

    @app.post("/user/register", name="register")
    async def register(request: Request) -> HTTPResponse:
        ctx = request.app.ctx
        body = payloads.parse_registration(request)
        password_hash = await ctx.passwords.hash(body.password)
        user_id = await ctx.users.create(body.user, password_hash)
        return json_response({"user_id": user_id})

    @app.post("/dialog/<user_id:str>/send", name="send")
    async def send(request: Request, user_id: str) -> HTTPResponse:
        user = _authenticate(request)
        peer = _peer(user, user_id)
        text = payloads.message_text(request, settings.max_text_length)
        given_key = payloads.idempotency_key(request)
        # Without the client's key the gateway makes one, so its own retry is safe.
        client_message_id = given_key or unique_id()
        payload = orjson.dumps(
            {"from": user, "to": peer, "text": text, "client_message_id": client_message_id}
        )
        reply = await request.app.ctx.forwarder.post(
            contract.SEND_PATH, payload, http.request_id(request), attempts=ATTEMPTS
        )
        if reply.status != 200:
            return _upstream_error(reply)  # a reused key with another text: dialogs' 409
        # A replay of the gateway's own key (its retry) is no news to the client.
        replayed = given_key is not None and reply.headers.get(REPLAYED) == "true"
        return raw(reply.body, headers=REPLAYED_HEADERS if replayed else None, content_type=JSON)

    @app.get("/dialog/<user_id:str>/list", name="list")
    async def list_messages(request: Request, user_id: str) -> HTTPResponse:
        user = _authenticate(request)
        peer = _peer(user, user_id)
        page = payloads.page(request)
        query: dict[str, Any] = {"user_id": user, "peer_id": peer, "limit": page.limit}
        if page.cursor is not None:
            query["cursor"] = page.cursor
        reply = await request.app.ctx.forwarder.post(
            contract.LIST_PATH, orjson.dumps(query), http.request_id(request), attempts=ATTEMPTS
        )
        if reply.status != 200:
            return _upstream_error(reply)
        # dialogs' page is the public answer already: relayed as bytes.
        next_cursor = reply.headers.get(NEXT_CURSOR)
        headers = {contract.NEXT_CURSOR_HEADER: next_cursor} if next_cursor else None
        return raw(reply.body, headers=headers, content_type=JSON)

    @app.get("/healthz", name="healthz")
    async def healthz(request: Request) -> HTTPResponse:
        return json_response({"status": "ok"})

    @app.get("/readyz", name="readyz")
    async def readyz(request: Request) -> HTTPResponse:
        balancer: Balancer = request.app.ctx.balancer
        upstreams = {u.url: "ready" if u.healthy else "out" for u in balancer.upstreams}
        if not balancer.any_healthy():
            return json_response(
                {
                    "message": "no dialogs instance is ready",
                    "request_id": http.request_id(request),
                    "code": "no_upstream",
                    "upstreams": upstreams,
                },
                status=503,
                headers={"Retry-After": str(settings.retry_after_s)},
            )
        return json_response({"status": "ready", "upstreams": upstreams})

    @app.get("/openapi.yaml", name="openapi")
    async def openapi(request: Request) -> HTTPResponse:
        return raw(document, content_type="application/yaml")
