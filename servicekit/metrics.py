"""Prometheus metrics that stay correct when Sanic runs several worker processes.

Each worker writes its samples to files in PROMETHEUS_MULTIPROC_DIR, and /metrics merges
them. The directory must be set before prometheus_client is imported, so the entry points
call ``prepare_multiprocess_dir`` first thing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any

from sanic import HTTPResponse, Request, Sanic
from sanic.response import BaseHTTPResponse, raw

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess_dir(service: str) -> str:
    """Use (and empty) PROMETHEUS_MULTIPROC_DIR, or make a private one for this process tree."""
    path = os.environ.get(MULTIPROC_ENV) or tempfile.mkdtemp(prefix=f"{service}-metrics-")
    # Samples of a previous run would be summed into this one's.
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, exist_ok=True)
    os.environ[MULTIPROC_ENV] = path
    return path


def install(app: Sanic, service: str) -> None:
    """Request counters, a latency histogram and the /metrics route for ``app``."""
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        REGISTRY,
        CollectorRegistry,
        Counter,
        Histogram,
        generate_latest,
        multiprocess,
    )

    requests_total = Counter(
        f"{service}_http_requests_total", "HTTP requests served", ["route", "status"]
    )
    latency = Histogram(
        f"{service}_http_request_duration_seconds",
        "Time from request to response",
        ["route"],
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    )

    @app.middleware("request", priority=90)
    async def start_timer(request: Request) -> None:
        request.ctx.started = time.perf_counter()

    # Children looked up once per (route, status): labels() costs microseconds per call.
    counters: dict[tuple[str | None, int], Any] = {}
    histograms: dict[str | None, Any] = {}

    def children(route_name: str | None, status: int) -> tuple[Any, Any]:
        counter = counters.get((route_name, status))
        histogram = histograms.get(route_name)
        if counter is None or histogram is None:
            route = route_name.rsplit(".", 1)[-1] if route_name else "unmatched"
            counter = counters[(route_name, status)] = requests_total.labels(route, str(status))
            histogram = histograms[route_name] = latency.labels(route)
        return counter, histogram

    @app.middleware("response", priority=90)
    async def observe(request: Request, response: BaseHTTPResponse) -> None:
        started = getattr(request.ctx, "started", None)
        counter, histogram = children(
            request.route.name if request.route else None, response.status
        )
        counter.inc()
        if started is not None:
            histogram.observe(time.perf_counter() - started)

    @app.get("/metrics", name="metrics")
    async def metrics(request: Request) -> HTTPResponse:
        if os.environ.get(MULTIPROC_ENV):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        else:
            registry = REGISTRY
        return raw(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

    @app.main_process_stop
    async def forget_dead_workers(app: Sanic) -> None:
        path = os.environ.get(MULTIPROC_ENV)
        if path and path.startswith(tempfile.gettempdir()):
            shutil.rmtree(path, ignore_errors=True)
