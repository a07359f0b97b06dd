from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.dialogs_client import DialogsClient
from tests.support.postgres import PgServer
from tests.support.processes import ServiceProcess, dialogs_process, migrate


@pytest.fixture(scope="module")
def dialogs_db(pg_server: PgServer) -> Iterator[str]:
    """A migrated database shared by one test module; its URL."""
    import uuid

    name = f"m_{uuid.uuid4().hex[:12]}"
    pg_server.psql(f"CREATE DATABASE {name}")
    url = pg_server.dsn_for(name)
    migrate(url)
    yield url
    pg_server.psql(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def dialogs_service(dialogs_db: str) -> Iterator[ServiceProcess]:
    service = dialogs_process(dialogs_db).start()
    yield service
    service.stop()


@pytest.fixture
def client(dialogs_service: ServiceProcess) -> Iterator[DialogsClient]:
    api = DialogsClient(dialogs_service.url)
    yield api
    api.close()
