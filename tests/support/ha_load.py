"""What a careful client loses across a failover: a writer that retries each write until it
is acknowledged (idempotently: a retried write is the same row), and the tally checked
against what the database holds afterwards."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg

# A client's patience for one write: retried for this long before it counts as failed.
RETRY_FOR_S = 30.0
RETRY_PAUSE_S = 0.1


@dataclass
class Tally:
    """One writer's record. Times are time.monotonic()."""

    acknowledged: list[int] = field(default_factory=list)
    ack_times: list[float] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)  # given up after RETRY_FOR_S
    retried: int = 0  # writes that needed more than one attempt
    errors: Counter[str] = field(default_factory=Counter)
    error_times: list[float] = field(default_factory=list)
    samples: dict[str, str] = field(default_factory=dict)  # one message per kind of error

    def served_again_after(self, event_at: float) -> float | None:
        """Seconds from ``event_at`` until the first acknowledgement after the last error
        (0 when no write failed)."""
        later_errors = [t for t in self.error_times if t >= event_at]
        if not later_errors:
            return 0.0
        last_error = max(later_errors)
        acks = [t for t in self.ack_times if t > last_error]
        return (min(acks) - event_at) if acks else None

    def longest_pause(self) -> float:
        """The longest time between two acknowledgements."""
        gaps = [b - a for a, b in zip(self.ack_times, self.ack_times[1:], strict=False)]
        return max(gaps, default=0.0)


class SqlWriter(threading.Thread):
    """Inserts keys 1, 2, ... into ``table`` (k bigint primary key) through ``dsn``,
    one at a time, retrying each on a new connection until it is acknowledged."""

    def __init__(self, dsn: str, table: str, pause_s: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.table = table
        self.pause_s = pause_s
        self.tally = Tally()
        self._stopping = threading.Event()
        self._conn: psycopg.Connection | None = None

    def _connection(self) -> psycopg.Connection:
        if self._conn is None:
            self._conn = psycopg.connect(
                self.dsn,
                autocommit=True,
                connect_timeout=2,
                # Never a hang: a write held longer than this is an error, then a retry.
                options="-c statement_timeout=10000",
            )
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def write(self, key: int) -> bool:
        deadline = time.monotonic() + RETRY_FOR_S
        attempt = 0
        while True:
            attempt += 1
            try:
                self._connection().execute(
                    f"INSERT INTO {self.table} (k, attempts) VALUES (%s, %s) "
                    "ON CONFLICT (k) DO NOTHING",
                    (key, attempt),
                )
                self.tally.acknowledged.append(key)
                self.tally.ack_times.append(time.monotonic())
                if attempt > 1:
                    self.tally.retried += 1
                return True
            except psycopg.Error as error:
                kind = f"{type(error).__name__} {error.sqlstate or ''}".strip()
                self.tally.errors[kind] += 1
                self.tally.samples.setdefault(kind, str(error).strip().splitlines()[0])
                self.tally.error_times.append(time.monotonic())
                self._drop()
                if time.monotonic() > deadline:
                    self.tally.failed.append(key)
                    return False
                time.sleep(RETRY_PAUSE_S)

    def run(self) -> None:
        key = 0
        while not self._stopping.is_set():
            key += 1
            self.write(key)
            time.sleep(self.pause_s)
        self._drop()

    def finish(self, timeout: float = RETRY_FOR_S + 10) -> Tally:
        self._stopping.set()
        self.join(timeout)
        assert not self.is_alive(), "the writer did not finish"
        return self.tally


def create_probe_table(sql: Callable[[str], str], table: str) -> None:
    sql(
        f"CREATE TABLE {table} (k bigint PRIMARY KEY, attempts int NOT NULL, "
        "at timestamptz NOT NULL DEFAULT now())"
    )
    sql(f"SELECT create_distributed_table('{table}', 'k')")


@dataclass(frozen=True)
class Loss:
    acknowledged: int
    lost: list[int]  # acknowledged, not found
    duplicated: int  # rows beyond one per key
    unacknowledged_found: int  # committed, but the client saw an error (its retry was a no-op)
    failed: int


def check_writes(sql: Callable[[str], str], table: str, tally: Tally) -> Loss:
    rows = sql(f"SELECT k FROM {table}")
    found = [int(k) for k in rows.split()]
    acknowledged = set(tally.acknowledged)
    return Loss(
        acknowledged=len(acknowledged),
        lost=sorted(acknowledged - set(found)),
        duplicated=len(found) - len(set(found)),
        unacknowledged_found=len(set(found) - acknowledged),
        failed=len(tally.failed),
    )
