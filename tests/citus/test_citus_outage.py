"""A worker goes down: dialogs on other workers keep working, the affected ones get 503."""

from __future__ import annotations

import time

from tests.support.citus import CitusCluster
from tests.support.dialogs_client import DialogsClient, new_user


def _worker_port_of(cluster: CitusCluster, dialog_id: str) -> int:
    return int(
        cluster.sql(
            "SELECT nodeport FROM citus_shards WHERE table_name = 'dialog_messages'::regclass "
            "AND shardid = get_shard_id_for_distribution_column("
            f"'dialog_messages', '{dialog_id}'::uuid)"
        )
    )


def test_worker_outage_affects_only_its_dialogs(
    migrated_cluster: CitusCluster, client: DialogsClient
) -> None:
    down, up = migrated_cluster.workers[0], migrated_cluster.workers[1]
    pairs: dict[int, tuple[str, str]] = {}
    while len(pairs) < 2:
        alice, bob = new_user(), new_user()
        dialog_id = client.send(alice, bob, "before").json()["dialog_id"]
        pairs.setdefault(_worker_port_of(migrated_cluster, dialog_id), (alice, bob))
    affected, healthy = pairs[down.port], pairs[up.port]

    down.stop()
    try:
        assert client.send(*healthy, "still works").status_code == 200
        assert client.list(*healthy).status_code == 200
        for response in (client.send(*affected, "lost?"), client.list(*affected)):
            assert response.status_code == 503, response.text
            assert response.headers["Retry-After"]
            assert response.json()["code"] == "db_unavailable"
    finally:
        down.start()

    deadline = time.monotonic() + 20
    while client.send(*affected, "after").status_code != 200:
        assert time.monotonic() < deadline, "affected dialog did not recover"
        time.sleep(0.5)
    texts = [m["text"] for m in client.list(*affected).json()]
    # The send refused during the outage stored nothing.
    assert "lost?" not in texts
    assert texts[-1] == "before"
