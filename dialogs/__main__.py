"""Command line: ``dialogs serve`` runs the service, ``dialogs migrate`` creates the schema.

Both read their settings from DIALOGS_* environment variables (see docs/dialogs.md).
"""

from __future__ import annotations

import argparse
import os
import sys

from servicekit import cli
from servicekit.config import ConfigError, Env


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

    return cli.serve("dialogs", Settings.from_env(), "dialogs.app:create_app")


def _migrate(database_url: str | None) -> int:
    from dialogs.schema import MIGRATION

    dsn = database_url or Env(os.environ).text("DIALOGS_DATABASE_URL")
    return cli.migrate("dialogs", dsn, MIGRATION)


if __name__ == "__main__":
    sys.exit(main())
