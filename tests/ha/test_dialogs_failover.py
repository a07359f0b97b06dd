"""The real dialogs service follows the primaries: its database URL names both servers of
the Patroni coordinator group with target_session_attrs=read-write, and Citus follows the
worker group's through pg_dist_node. Killing either group's primary under sends (each with
its Idempotency-Key, retried by the client) answers 503 with Retry-After until a primary
is back, never a 500 or a hang, and the pool recovers by itself: nothing acknowledged is
lost or duplicated."""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from dialogs.schema import SERVICE_GRANTS
from tests.support.dialogs_client import DialogsClient, new_user
from tests.support.ha import HaCluster, wait_for
from tests.support.ha_load import RETRY_FOR_S, Tally
from tests.support.processes import ServiceProcess, dialogs_process, migrate

CLIENTS = 2


SERVICE_ROLE = "dialogs_svc"


@pytest.fixture(scope="module")
def dialogs_service(ha_cluster: HaCluster) -> Iterator[ServiceProcess]:
    ha_cluster.wait_healthy(90)
    migrate(ha_cluster.coordinator_url())
    # The service's own role, not the superuser. Citus creates it on the workers too; the
    # coordinator reaches them as that role with the password in pg_dist_authinfo (no
    # trust anywhere), which Patroni maintains for the superuser only.
    password = secrets.token_urlsafe(18)
    ha_cluster.coordinator_sql(f"CREATE ROLE {SERVICE_ROLE} LOGIN PASSWORD '{password}'")
    for grant in SERVICE_GRANTS:
        ha_cluster.coordinator_sql(grant.format(role=SERVICE_ROLE))
    ha_cluster.coordinator_sql(
        "INSERT INTO pg_dist_authinfo (nodeid, rolename, authinfo) "
        f"VALUES (0, '{SERVICE_ROLE}', 'password={password}')"
    )
    url = ha_cluster.coordinator_url(user=SERVICE_ROLE, password=password)
    service = dialogs_process(url, DIALOGS_RETRY_AFTER_S="1").start()
    yield service
    service.stop()


class Sender(threading.Thread):
    """Sends messages 1, 2, ... in one dialog, each retried (same Idempotency-Key) on a
    503 after its Retry-After, until acknowledged or RETRY_FOR_S has passed."""

    def __init__(self, url: str, name: str) -> None:
        super().__init__(daemon=True)
        self.api = DialogsClient(url, timeout=10)
        self.sender, self.recipient = new_user(), new_user()
        self.name = name
        self.tally = Tally()
        self.statuses: Counter[str] = Counter()
        self.retry_after_missing = 0
        self.message_ids: dict[str, str] = {}
        self._stopping = threading.Event()

    def key(self, number: int) -> str:
        return f"{self.name}-{number}"

    def send(self, number: int) -> None:
        key = self.key(number)
        deadline = time.monotonic() + RETRY_FOR_S
        attempt = 0
        while True:
            attempt += 1
            pause = 0.1
            try:
                response = self.api.send(self.sender, self.recipient, key, client_message_id=key)
                self.statuses[str(response.status_code)] += 1
                if response.status_code == 200:
                    self.message_ids[key] = response.json()["id"]
                    self.tally.acknowledged.append(number)
                    self.tally.ack_times.append(time.monotonic())
                    self.tally.retried += attempt > 1
                    return
                kind = str(response.status_code)
                if response.status_code == 503:
                    retry_after = response.headers.get("Retry-After")
                    if retry_after is None:
                        self.retry_after_missing += 1
                    else:
                        pause = float(retry_after)
                self.tally.samples.setdefault(kind, response.text[:200])
            except httpx.TimeoutException:
                kind = "timeout"  # a hang: the service must answer within its deadlines
                self.statuses[kind] += 1
            except httpx.TransportError as error:
                kind = f"transport {type(error).__name__}"
                self.statuses[kind] += 1
            self.tally.errors[kind] += 1
            self.tally.error_times.append(time.monotonic())
            if time.monotonic() > deadline:
                self.tally.failed.append(number)
                return
            time.sleep(pause)

    def run(self) -> None:
        number = 0
        while not self._stopping.is_set():
            number += 1
            self.send(number)
            time.sleep(0.02)

    def finish(self) -> None:
        self._stopping.set()
        self.join(RETRY_FOR_S + 10)
        assert not self.is_alive(), "a sender did not finish"


@pytest.mark.parametrize(
    ("group", "what"),
    [(1, "worker primary"), (0, "coordinator primary")],
    ids=["worker", "coordinator"],
)
def test_primary_killed_under_sends_through_dialogs(
    ha_cluster: HaCluster, dialogs_service: ServiceProcess, group: int, what: str
) -> None:
    ha_cluster.wait_healthy(90)
    old = ha_cluster.leader(group)
    assert old is not None
    senders = [Sender(dialogs_service.url, f"c{i}") for i in range(CLIENTS)]
    for sender in senders:
        sender.start()

    def acks() -> int:
        return sum(len(s.tally.acknowledged) for s in senders)

    wait_for("sends acknowledged before the kill", lambda: acks() >= 40, 60, step=0.05)
    killed_at = time.monotonic()
    old.kill_postmaster()
    wait_for(
        f"a new leader in group {group}",
        lambda: (leader := ha_cluster.leader(group)) is not None and leader.name != old.name,
        60,
        step=0.05,
    )
    promoted = time.monotonic() - killed_at
    after = acks()
    wait_for("sends acknowledged after the failover", lambda: acks() >= after + 40, 60, step=0.05)
    for sender in senders:
        sender.finish()

    reader = DialogsClient(dialogs_service.url)
    acknowledged = lost = duplicated = failed = 0
    statuses: Counter[str] = Counter()
    served: list[float] = []
    for sender in senders:
        stored = reader.all_messages(sender.sender, sender.recipient)
        texts = [m["text"] for m in stored]
        ids = {m["text"]: m["id"] for m in stored}
        acked = {sender.key(n) for n in sender.tally.acknowledged}
        acknowledged += len(acked)
        lost += len(acked - set(texts))
        duplicated += len(texts) - len(set(texts))
        failed += len(sender.tally.failed)
        statuses += sender.statuses
        # The id acknowledged is the stored message's (a retry replayed it, not a copy).
        assert all(ids.get(key) == sender.message_ids[key] for key in acked)
        assert sender.retry_after_missing == 0
        again = sender.tally.served_again_after(killed_at)
        assert again is not None, f"{sender.name} was not served again"
        served.append(again)
    reader.close()
    samples = {k: v for s in senders for k, v in s.tally.samples.items()}
    print(
        f"\n[ha] dialogs, {what} killed: promoted {promoted:.2f} s, sends served "
        f"again {max(served):.2f} s (per client {', '.join(f'{t:.2f}' for t in served)}); "
        f"sends acknowledged {acknowledged}, lost {lost}, duplicated {duplicated}, failed "
        f"after retries {failed}; answers {dict(statuses)}; {samples}"
    )
    assert (lost, duplicated, failed) == (0, 0, 0)
    # A request meeting the failover is a 503 with Retry-After, never a 500 or a hang.
    assert set(statuses) <= {"200", "503"}, statuses
