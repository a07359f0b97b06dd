"""Command line: ``gateway serve`` runs the service, ``gateway migrate`` creates the users
table, ``gateway issue-token --sub <user id>`` prints a bearer token (for operators).

All read their settings from GATEWAY_* environment variables (see docs/api.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid

from servicekit import cli
from servicekit.config import ConfigError, Env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the HTTP service")
    migrate = sub.add_parser("migrate", help="create or update the users table (idempotent)")
    migrate.add_argument("--database-url", help="defaults to GATEWAY_DATABASE_URL", default=None)
    issue = sub.add_parser(
        "issue-token", help="print a bearer token for a user id (needs the signing key)"
    )
    issue.add_argument("--sub", required=True, help="the user id (a UUID)")
    issue.add_argument("--ttl", type=int, default=None, help="seconds; default GATEWAY_TOKEN_TTL_S")
    args = parser.parse_args(argv)
    try:
        if args.command == "migrate":
            return _migrate(args.database_url)
        if args.command == "issue-token":
            return _issue_token(args.sub, args.ttl)
        return _serve()
    except ConfigError as error:
        print(f"gateway: configuration error: {error}", file=sys.stderr)
        return 2


def _serve() -> int:
    from gateway.config import Settings

    return cli.serve("gateway", Settings.from_env(), "gateway.app:create_app")


def _migrate(database_url: str | None) -> int:
    from gateway.schema import MIGRATION

    dsn = database_url or Env(os.environ).text("GATEWAY_DATABASE_URL")
    return cli.migrate("gateway", dsn, MIGRATION)


def _issue_token(subject: str, ttl: int | None) -> int:
    from gateway.config import TokenSettings
    from gateway.tokens import TokenService

    try:
        user_id = str(uuid.UUID(subject))
    except ValueError:
        raise ConfigError(f"--sub must be a user id (a UUID), got {subject!r}") from None
    if ttl is not None and ttl < 1:
        raise ConfigError("--ttl must be a positive number of seconds")
    service = TokenService(TokenSettings.from_env())
    if not service.can_issue:
        raise ConfigError("issuing needs GATEWAY_JWT_SECRET or GATEWAY_JWT_PRIVATE_KEY(_FILE)")
    print(service.issue(user_id, ttl_s=ttl))
    return 0


if __name__ == "__main__":
    sys.exit(main())
