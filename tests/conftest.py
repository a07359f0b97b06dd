"""Test tiers and the real servers they run against.

Tiers follow the directory: tests/unit, tests/pg, tests/citus, tests/ha, tests/lab. A tier
whose needs are missing skips with one line saying what is missing.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ha, postgres
from tests.support.citus import CitusCluster
from tests.support.postgres import PgServer

TIERS = ("unit", "pg", "citus", "ha", "lab")


def _docker_engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


def _missing(tier: str) -> str | None:
    """Why ``tier`` cannot run here, or None when it can."""
    if tier in ("pg", "citus") and postgres.bindir() is None:
        return "PostgreSQL 15 server binaries not installed"
    if tier == "citus" and not postgres.citus_installed():
        return "citus extension not installed"
    if tier == "ha":
        return ha.missing()
    if tier == "lab" and not _docker_engine_answers():
        return "no docker engine answers (docker info failed)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reasons: dict[str, str | None] = {}
    for item in items:
        parts = Path(str(item.fspath)).parts
        tier = next((t for t in TIERS if t in parts), None)
        if tier is None:
            continue
        item.add_marker(getattr(pytest.mark, tier))
        if tier not in reasons:
            reasons[tier] = _missing(tier)
        reason = reasons[tier]
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    server = PgServer("pg").start()
    yield server
    server.destroy()


@pytest.fixture
def pg_database(pg_server: PgServer) -> Iterator[str]:
    """A fresh, empty database on the shared server; its URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    pg_server.psql(f"CREATE DATABASE {name}")
    yield pg_server.dsn_for(name)
    pg_server.psql(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def citus_cluster() -> Iterator[CitusCluster]:
    cluster = CitusCluster.start(worker_count=2)
    yield cluster
    cluster.destroy()
