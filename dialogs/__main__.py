"""Command line: ``dialogs serve`` runs the service, ``dialogs migrate`` creates the schema.

Both read their settings from DIALOGS_* environment variables (see docs/configuration.md).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.config
import sys

from servicekit.config import ConfigError
from servicekit.logs import log_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dialogs", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the HTTP service")
    migrate = sub.add_parser("migrate", help="create or update the schema (idempotent)")
    migrate.add_argument("--database-url", help="defaults to DIALOGS_DATABASE_URL", default=None)
    args = parser.parse_args(argv)
    try:
        if args.command == "migrate":
            return _migrate(args.database_url)
        return _serve()
    except ConfigError as error:
        print(f"dialogs: configuration error: {error}", file=sys.stderr)
        return 2


def _serve() -> int:
    from dialogs.config import Settings
    from servicekit import metrics

    settings = Settings.from_env()
    metrics.prepare_multiprocess_dir("dialogs")
    # Imported after the metrics directory is set: prometheus_client reads it on import.
    from dialogs.app import create_app
    from servicekit.serve import run

    run(create_app, settings, host=settings.host, port=settings.port, workers=settings.workers)
    return 0


def _migrate(database_url: str | None) -> int:
    import os

    from dialogs.schema import MIGRATION
    from servicekit.config import Env
    from servicekit.migrate import apply

    logging.config.dictConfig(log_config("INFO"))
    dsn = database_url or Env(os.environ).text("DIALOGS_DATABASE_URL")
    report = asyncio.run(apply(dsn, MIGRATION))
    mode = "citus" if report.citus else "plain postgresql"
    print(
        f"dialogs schema ready ({mode}); created: {', '.join(report.created) or 'nothing'}; "
        f"distributed: {', '.join(report.distributed) or 'nothing'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
