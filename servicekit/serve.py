"""Running a Sanic app factory with N worker processes, the way both services start."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from sanic import Sanic
from sanic.worker.loader import AppLoader


def run(
    factory: Callable[..., Sanic], settings: Any, *, host: str, port: int, workers: int
) -> None:
    """Serve ``factory(settings)`` until SIGTERM/SIGINT, then drain in-flight requests."""
    loader = AppLoader(factory=partial(factory, settings))
    app = loader.load()
    app.prepare(
        host=host,
        port=port,
        workers=workers,
        access_log=False,  # per-request log lines cost throughput; metrics count requests
        motd=False,
        single_process=workers == 1,
    )
    Sanic.serve(primary=app, app_loader=loader)
