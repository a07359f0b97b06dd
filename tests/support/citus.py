"""A real Citus cluster on loopback: a coordinator and workers, each a PgServer."""

from __future__ import annotations

from dataclasses import dataclass, field

from tests.support.postgres import PgServer

DATABASE = "dialogs"
CITUS_SETTINGS = {
    "shared_preload_libraries": "'citus'",
    "wal_level": "logical",  # shard moves use logical replication
    # Not the test servers' "off": a shard move waits for its subscription to reach the
    # source's WAL *write* position, which an asynchronous commit may not have reached
    # yet, and the last writes before the switch were lost (docs/architecture.md).
    "synchronous_commit": "on",
    "max_prepared_transactions": "100",
    "max_wal_senders": "20",
    "max_replication_slots": "20",
    "citus.max_background_task_executors_per_node": "2",
}


def start_node(name: str) -> PgServer:
    node = PgServer(name, settings=CITUS_SETTINGS).start()
    node.psql(f"CREATE DATABASE {DATABASE}")
    node.psql("CREATE EXTENSION citus", DATABASE)
    return node


@dataclass
class CitusCluster:
    coordinator: PgServer
    workers: list[PgServer] = field(default_factory=list)

    @classmethod
    def start(cls, worker_count: int = 2) -> CitusCluster:
        cluster = cls(start_node("coordinator"))
        cluster.coordinator.psql(
            f"SELECT citus_set_coordinator_host('127.0.0.1', {cluster.coordinator.port})",
            DATABASE,
        )
        for _ in range(worker_count):
            cluster.add_worker()
        return cluster

    def add_worker(self) -> PgServer:
        worker = start_node(f"worker{len(self.workers) + 1}")
        self.sql(f"SELECT citus_add_node('127.0.0.1', {worker.port})")
        self.workers.append(worker)
        return worker

    @property
    def nodes(self) -> list[PgServer]:
        return [self.coordinator, *self.workers]

    @property
    def dsn(self) -> str:
        return self.coordinator.dsn_for(DATABASE)

    def sql(self, statement: str) -> str:
        return self.coordinator.psql(statement, DATABASE)

    def destroy(self) -> None:
        for node in [*self.workers, self.coordinator]:
            node.destroy()
