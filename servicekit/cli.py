"""The `serve` and `migrate` commands, shared by both services' command lines."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import json
import logging.config
from typing import Any

from servicekit.logs import log_config
from servicekit.migrate import Migration, apply


def serve(service: str, settings: Any, factory: str) -> int:
    """Run ``factory`` ("module:function") with ``settings`` until SIGTERM."""
    from servicekit import metrics

    metrics.prepare_multiprocess_dir(service)
    # Imported after the metrics directory is set: prometheus_client reads it on import.
    module, name = factory.split(":")
    create_app = getattr(importlib.import_module(module), name)
    from servicekit.serve import run

    run(create_app, settings, host=settings.host, port=settings.port, workers=settings.workers)
    return 0


def migrate(service: str, dsn: str, migration: Migration) -> int:
    """Apply ``migration``; print its report as one JSON object on stdout (logs go to
    stderr), e.g. ``{"service": "dialogs", "citus": false, "created": [], "distributed": [],
    "changed": false}``: deploy tools read ``changed`` from it."""
    logging.config.dictConfig(log_config("INFO"))
    report = asyncio.run(apply(dsn, migration))
    print(json.dumps({"service": service, **dataclasses.asdict(report)}))
    return 0
