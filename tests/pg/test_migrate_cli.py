"""`dialogs migrate` and `gateway migrate` as deploy tools run them: a real process against a
real PostgreSQL, whose stdout is one JSON report that says whether the schema changed (the
python_app role decides "changed" from it) and whose logs go to stderr."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.support.postgres import PgServer


@pytest.fixture
def database(pg_server: PgServer, pg_database: str) -> Iterator[tuple[PgServer, str, str]]:
    """The server, the fresh database's name and its URL."""
    yield pg_server, pg_database.rsplit("/", 1)[1], pg_database


def run_migrate(service: str, database_url: str) -> tuple[dict[str, object], str]:
    result = subprocess.run(
        [sys.executable, "-m", service, "migrate", "--database-url", database_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    # The whole of stdout is the report: a tool may parse it without picking lines.
    report = json.loads(result.stdout)
    assert result.stdout.count("\n") == 1
    return report, result.stderr


@pytest.mark.parametrize(
    ("service", "tables"), [("dialogs", ["dialog_messages", "dialogs"]), ("gateway", ["users"])]
)
def test_first_run_reports_the_tables_it_created_then_no_change(
    service: str, tables: list[str], database: tuple[PgServer, str, str]
) -> None:
    _, _, url = database
    first, first_log = run_migrate(service, url)
    assert first == {
        "service": service,
        "citus": False,
        "created": tables,
        "distributed": [],
        "changed": True,
    }
    # The structured log line goes to stderr, not into the report.
    assert "migration applied" in first_log

    second, _ = run_migrate(service, url)
    assert second == first | {"created": [], "changed": False}


def test_a_restored_constraint_is_a_change_though_no_table_was_created(
    database: tuple[PgServer, str, str],
) -> None:
    server, name, url = database
    run_migrate("dialogs", url)
    server.psql("ALTER TABLE dialog_messages DROP CONSTRAINT dialog_messages_dialog_fkey", name)

    restored, _ = run_migrate("dialogs", url)
    assert (restored["changed"], restored["created"]) == (True, [])
    count = "SELECT count(*) FROM pg_constraint WHERE conname = 'dialog_messages_dialog_fkey'"
    assert server.psql(count, name) == "1"
    assert run_migrate("dialogs", url)[0]["changed"] is False


def test_a_bad_setting_fails_with_no_report() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "migrate"],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert "GATEWAY_DATABASE_URL" in result.stderr
