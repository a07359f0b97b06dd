from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.ha import HaCluster

_start_failed: list[str] = []


@pytest.fixture(scope="session")
def ha_cluster() -> Iterator[HaCluster]:
    """3 etcd members; group 0 (the coordinator) and group 1 (a worker group), each a
    Patroni primary and a synchronous standby."""
    # pytest sets a failed session fixture up again for each test: fail once, not each time.
    if _start_failed:
        pytest.fail(f"the ha cluster did not start (see the first error): {_start_failed[0]}")
    try:
        cluster = HaCluster.start(group_sizes=(2, 2))
    except Exception as error:
        _start_failed.append(str(error).splitlines()[0])
        raise
    yield cluster
    cluster.destroy()


@pytest.fixture
def healthy(ha_cluster: HaCluster) -> HaCluster:
    """The cluster as each test expects it: every group a leader and a streaming sync
    standby (a test's killed primary has rejoined), pg_dist_node naming the leaders."""
    ha_cluster.wait_healthy(90)
    return ha_cluster
