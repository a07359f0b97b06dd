from __future__ import annotations

from collections.abc import Iterator

import pytest

from dialogs.schema import SERVICE_GRANTS
from tests.support.citus import DATABASE, CitusCluster
from tests.support.dialogs_client import DialogsClient
from tests.support.processes import ServiceProcess, dialogs_process, migrate

SERVICE_ROLE = "dialogs_svc"


@pytest.fixture(scope="session")
def migrated_cluster(citus_cluster: CitusCluster) -> CitusCluster:
    migrate(citus_cluster.dsn)
    # The service runs as its own role, whose every statement the coordinator logs (the
    # single-shard test reads them back). Citus propagates the role and grants to workers.
    citus_cluster.sql(f"CREATE ROLE {SERVICE_ROLE} LOGIN")
    citus_cluster.sql(f"ALTER ROLE {SERVICE_ROLE} SET log_statement = 'all'")
    for grant in SERVICE_GRANTS:
        citus_cluster.sql(grant.format(role=SERVICE_ROLE))
    return citus_cluster


@pytest.fixture(scope="session")
def citus_service(migrated_cluster: CitusCluster) -> Iterator[ServiceProcess]:
    url = migrated_cluster.coordinator.dsn_for(DATABASE, user=SERVICE_ROLE)
    service = dialogs_process(url).start()
    yield service
    service.stop()


@pytest.fixture
def client(citus_service: ServiceProcess) -> Iterator[DialogsClient]:
    api = DialogsClient(citus_service.url)
    yield api
    api.close()
