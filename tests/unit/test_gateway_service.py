"""The real gateway process in front of recording HTTP servers (no database needed):
what reaches dialogs, how answers are translated, and the edges of the public API."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
import yaml

from servicekit.contract import NEXT_CURSOR_HEADER
from tests.support.gateway import (
    FakeUpstream,
    Recorded,
    dialogs_like,
    gateway_process,
    make_token,
    ready_upstreams,
    wait_until,
)
from tests.support.postgres import free_port
from tests.support.processes import INTERNAL_TOKEN, ServiceProcess

# Nothing listens there: login and register meet a database that is down.
DOWN_DATABASE = f"postgresql://gateway@127.0.0.1:{free_port()}/dialogs"
USER = str(uuid.uuid4())
PEER = str(uuid.uuid4())
AUTH = {"Authorization": f"Bearer {make_token({'sub': USER})}"}


class Script:
    """What the fake instances answer; tests change it."""

    def __init__(self) -> None:
        self.send_status: dict[str, int] = {}

    def responder(self, name: str) -> object:
        def respond(request: Recorded) -> tuple[int, bytes]:
            status = self.send_status.get(name)
            if status is not None and request.path.endswith("/send"):
                return status, b'{"message":"scripted","request_id":"x","code":"scripted"}'
            return dialogs_like(request)

        return respond


@pytest.fixture(scope="module")
def script() -> Script:
    return Script()


@pytest.fixture(scope="module")
def upstreams(script: Script) -> Iterator[list[FakeUpstream]]:
    servers = [FakeUpstream(script.responder("a")), FakeUpstream(script.responder("b"))]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def gateway(upstreams: list[FakeUpstream]) -> Iterator[ServiceProcess]:
    process = gateway_process(DOWN_DATABASE, [u.url for u in upstreams]).start()
    wait_until(lambda: len(ready_upstreams(process.url)) == 2)
    yield process
    process.stop()


@pytest.fixture
def api(
    gateway: ServiceProcess, upstreams: list[FakeUpstream], script: Script
) -> Iterator[httpx.Client]:
    for upstream in upstreams:
        upstream.requests.clear()
    script.send_status.clear()
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        yield client


def forwarded(upstreams: list[FakeUpstream], suffix: str) -> list[Recorded]:
    return [r for u in upstreams for r in u.calls(suffix)]


def test_forwarded_send_carries_the_credential_not_the_client_token(
    api: httpx.Client, upstreams: list[FakeUpstream]
) -> None:
    response = api.post(
        f"/dialog/{PEER}/send",
        json={"text": "hello"},
        headers=AUTH | {"X-Request-ID": "trace-42", "Cookie": "session=secret"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["X-Request-ID"] == "trace-42"
    (request,) = forwarded(upstreams, "/send")
    assert request.headers["x-internal-token"] == INTERNAL_TOKEN
    assert request.headers["x-request-id"] == "trace-42"
    assert "authorization" not in request.headers and "cookie" not in request.headers
    body = request.json()
    assert (body["from"], body["to"], body["text"]) == (USER, PEER, "hello")
    assert body["client_message_id"]  # made by the gateway when the client gives none


def test_idempotency_key_becomes_the_client_message_id(
    api: httpx.Client, upstreams: list[FakeUpstream]
) -> None:
    response = api.post(
        f"/dialog/{PEER}/send", json={"text": "once"}, headers=AUTH | {"Idempotency-Key": "k-1"}
    )
    assert response.status_code == 200
    assert forwarded(upstreams, "/send")[0].json()["client_message_id"] == "k-1"


def test_retry_after_a_5xx_goes_elsewhere_with_the_same_client_message_id(
    api: httpx.Client, upstreams: list[FakeUpstream], script: Script, gateway: ServiceProcess
) -> None:
    script.send_status["a"] = 500
    for i in range(4):
        response = api.post(f"/dialog/{PEER}/send", json={"text": f"m{i}"}, headers=AUTH)
        assert response.status_code == 200, response.text
    first, second = upstreams
    assert first.calls("/send"), "instance a was never tried"
    assert len(second.calls("/send")) == 4
    retried = {r.json()["client_message_id"] for r in first.calls("/send")}
    assert retried <= {r.json()["client_message_id"] for r in second.calls("/send")}
    script.send_status.clear()
    wait_until(lambda: len(ready_upstreams(gateway.url)) == 2)


def test_no_instance_can_serve_means_503_with_retry_after(
    api: httpx.Client, script: Script, gateway: ServiceProcess
) -> None:
    script.send_status.update(a=503, b=503)
    response = api.post(f"/dialog/{PEER}/send", json={"text": "lost"}, headers=AUTH)
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) >= 1
    body = response.json()
    assert body["code"] == "upstream_unavailable"
    assert body["request_id"] == response.headers["X-Request-ID"]
    script.send_status.clear()
    wait_until(lambda: len(ready_upstreams(gateway.url)) == 2)


def test_unexpected_upstream_answer_is_a_502(
    api: httpx.Client, script: Script, gateway: ServiceProcess
) -> None:
    # e.g. dialogs refusing the internal credential: a deployment error, not the client's.
    script.send_status.update(a=401, b=401)
    response = api.post(f"/dialog/{PEER}/send", json={"text": "x"}, headers=AUTH)
    assert response.status_code == 502
    assert set(response.json()) == {"message", "request_id", "code"}


def test_upstream_400_reaches_the_client(api: httpx.Client, script: Script) -> None:
    script.send_status.update(a=400, b=400)
    response = api.post(f"/dialog/{PEER}/send", json={"text": "x"}, headers=AUTH)
    assert response.status_code == 400
    assert response.json()["code"] == "scripted"


def test_list_answer_becomes_an_array_and_a_cursor_header(
    api: httpx.Client, upstreams: list[FakeUpstream], script: Script
) -> None:
    def page(request: Recorded) -> tuple[int, bytes] | tuple[int, bytes, dict[str, str]]:
        if request.path.endswith("/list"):
            return 200, b'[{"from":"a","to":"b","text":"t"}]', {NEXT_CURSOR_HEADER: "Cur_-1"}
        return dialogs_like(request)

    saved = [u.respond for u in upstreams]
    for upstream in upstreams:
        upstream.respond = page
    try:
        response = api.get(f"/dialog/{PEER}/list", params={"limit": 1}, headers=AUTH)
    finally:
        for upstream, respond in zip(upstreams, saved, strict=True):
            upstream.respond = respond
    assert response.status_code == 200
    assert response.json() == [{"from": "a", "to": "b", "text": "t"}]
    assert response.headers["X-Next-Cursor"] == "Cur_-1"
    body = forwarded(upstreams, "/list")[0].json()
    assert body == {"user_id": USER, "peer_id": PEER, "limit": 1}


def test_last_page_has_no_cursor_header(api: httpx.Client, upstreams: list[FakeUpstream]) -> None:
    response = api.get(f"/dialog/{PEER}/list", params={"cursor": "abc"}, headers=AUTH)
    assert response.status_code == 200
    assert response.json() == []
    assert "X-Next-Cursor" not in response.headers
    assert forwarded(upstreams, "/list")[0].json()["cursor"] == "abc"


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("POST", f"/dialog/{PEER}/send", {"json": {"text": ""}}, 400),
        ("POST", f"/dialog/{PEER}/send", {"json": {"text": "   \n"}}, 400),
        ("POST", f"/dialog/{PEER}/send", {"json": {"text": "a" * 4097}}, 400),
        ("POST", f"/dialog/{PEER}/send", {"json": {"text": "nul \x00"}}, 400),
        ("POST", f"/dialog/{PEER}/send", {"json": {"text": 5}}, 400),
        ("POST", f"/dialog/{PEER}/send", {"json": ["text"]}, 400),
        ("POST", f"/dialog/{PEER}/send", {"content": b"{not json"}, 400),
        ("POST", f"/dialog/{USER}/send", {"json": {"text": "to myself"}}, 400),
        ("POST", "/dialog/42/send", {"json": {"text": "x"}}, 400),
        ("POST", f"/dialog/{PEER}%0A/send", {"json": {"text": "x"}}, 400),
        ("POST", f"/dialog/{PEER}/send", {"content": b'{"text":"x"}'}, 415),
        ("POST", f"/dialog/{PEER}/send", {"json": {"text": "x" * 70_000}}, 413),
        ("GET", f"/dialog/{PEER}/list?limit=0", {}, 400),
        ("GET", f"/dialog/{PEER}/list?limit=101", {}, 400),
        ("GET", f"/dialog/{PEER}/list?limit=ten", {}, 400),
        ("GET", f"/dialog/{PEER}/list?cursor=not%20base64", {}, 400),
        ("GET", f"/dialog/{PEER}/list?cursor={'A' * 65}", {}, 400),
        ("GET", f"/dialog/{USER}/list", {}, 400),
        (
            "POST",
            f"/dialog/{PEER}/send",
            {"json": {"text": "x"}, "headers": {"Idempotency-Key": "a b"}},
            400,
        ),
    ],
)
def test_bad_requests_never_reach_dialogs(
    api: httpx.Client,
    upstreams: list[FakeUpstream],
    method: str,
    path: str,
    kwargs: dict[str, object],
    status: int,
) -> None:
    headers = AUTH | dict(kwargs.pop("headers", {}))  # type: ignore[call-overload]
    if "content" in kwargs and status == 400:
        headers["Content-Type"] = "application/json"
    response = api.request(method, path, headers=headers, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"message", "request_id", "code"}
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert forwarded(upstreams, "/send") == forwarded(upstreams, "/list") == []


def test_missing_token_gets_a_challenge_and_reaches_nobody(
    api: httpx.Client, upstreams: list[FakeUpstream]
) -> None:
    response = api.post(f"/dialog/{PEER}/send", json={"text": "x"})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="dialogs"'
    bad = api.get(f"/dialog/{PEER}/list", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401
    assert 'error="invalid_token"' in bad.headers["WWW-Authenticate"]
    assert forwarded(upstreams, "/send") == forwarded(upstreams, "/list") == []


def test_database_down_means_503_for_login_and_register(api: httpx.Client) -> None:
    for path, body in (
        ("/login", {"id": USER, "password": "whatever-password"}),
        ("/user/register", {"password": "long-enough-password"}),
    ):
        response = api.post(path, json=body)
        assert response.status_code == 503, response.text
        assert int(response.headers["Retry-After"]) >= 1
        assert response.json()["code"] == "db_unavailable"


def test_request_id_is_taken_only_when_safe(api: httpx.Client) -> None:
    assert api.get("/healthz", headers={"X-Request-ID": "abc-1"}).headers["X-Request-ID"] == "abc-1"
    made = api.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert made.headers["X-Request-ID"] != "bad id\twith spaces"
    assert len(made.headers["X-Request-ID"]) == 32


def test_wrong_method_is_405_with_allow(api: httpx.Client) -> None:
    response = api.delete("/login")
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert "X-Request-ID" in response.headers


def test_openapi_document_is_served(api: httpx.Client) -> None:
    response = api.get("/openapi.yaml")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/yaml")
    document = yaml.safe_load(response.text)
    assert document["openapi"].startswith("3.")
    assert {"/login", "/user/register", "/dialog/{user_id}/send", "/dialog/{user_id}/list"} <= set(
        document["paths"]
    )


def test_metrics_count_routes_and_show_upstreams(api: httpx.Client) -> None:
    api.get(f"/dialog/{PEER}/list", headers=AUTH)
    text = api.get("/metrics").text
    assert 'gateway_http_requests_total{route="list",status="200"}' in text
    assert "gateway_http_request_duration_seconds_bucket" in text
    assert "gateway_upstream_healthy{" in text
    assert "gateway_upstream_in_flight{" in text
    assert 'gateway_upstream_attempts_total{outcome="ok"' in text


def test_readyz_turns_503_when_every_instance_is_gone() -> None:
    lonely = FakeUpstream()
    process = gateway_process(DOWN_DATABASE, [lonely.url]).start()
    try:
        wait_until(lambda: len(ready_upstreams(process.url)) == 1)
        lonely.stop()
        response = wait_until(
            lambda: (r := httpx.get(f"{process.url}/readyz")).status_code == 503 and r
        )
        assert int(response.headers["Retry-After"]) >= 1
        assert list(response.json()["upstreams"].values()) == ["out"]
        sent = httpx.post(f"{process.url}/dialog/{PEER}/send", json={"text": "x"}, headers=AUTH)
        assert sent.status_code == 503
        assert "Retry-After" in sent.headers
    finally:
        process.stop()
