"""Driving the lab (bin/lab) from tests: commands, SQL on the coordinator, the public API
through the gateway, and a bounded background load that records every acknowledged
message and every failed request."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
import yaml

from lab.tls import CA_CERT
from lab.topology import APP, COORDINATOR, LABEL, PATRONI_BIN, PATRONI_CONFIG

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN_LAB = REPO_ROOT / "bin" / "lab"


class CommandFailed(AssertionError):
    pass


def run(
    args: list[str],
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    check: bool = True,
    cwd: Path = REPO_ROOT,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else os.environ | env,
        cwd=cwd,
    )
    if check and result.returncode != 0:
        raise CommandFailed(
            f"{' '.join(args)} exited {result.returncode}\n"
            f"--- stdout (tail)\n{result.stdout[-6000:]}\n"
            f"--- stderr (tail)\n{result.stderr[-4000:]}"
        )
    return result


def build_wheelhouse(output: Path) -> Path:
    """The project's wheelhouse for the lab hosts (Debian 12), as the roles build it."""
    script = REPO_ROOT / "roles" / "python_app" / "files" / "build-wheelhouse.sh"
    python = REPO_ROOT / ".venv" / "bin" / "python"
    result = run(
        [str(script), str(REPO_ROOT), str(output), str(python), "3.11", "2.36", "x86_64"],
        timeout=600,
    )
    return Path(result.stdout.strip().splitlines()[-1])


def docker_exec(container: str, *args: str, timeout: float = 60, check: bool = True) -> str:
    return run(["docker", "exec", container, *args], timeout=timeout, check=check).stdout


def recap(output: str) -> dict[str, dict[str, int]]:
    """The PLAY RECAP of an ansible-playbook run: host -> {ok, changed, failed, ...}."""
    hosts: dict[str, dict[str, int]] = {}
    for line in output.split("PLAY RECAP")[-1].splitlines():
        match = re.match(r"^(\S+)\s+:\s+(.*)$", line.strip())
        if match:
            counts = dict(re.findall(r"(\w+)=(\d+)", match.group(2)))
            hosts[match.group(1)] = {key: int(value) for key, value in counts.items()}
    return hosts


@dataclass
class Lab:
    """The lab that ``bin/lab up`` brought up, with the edge's HTTPS on 127.0.0.1:``port``."""

    port: int
    state_dir: Path
    topology: str = "ha"  # LAB_TOPOLOGY
    wheelhouse: Path | None = None
    up_seconds: float = 0.0
    up_output: str = ""

    @property
    def env(self) -> dict[str, str]:
        env = {
            "LAB_HTTPS_PORT": str(self.port),
            "LAB_STATE_DIR": str(self.state_dir),
            "LAB_TOPOLOGY": self.topology,
        }
        if self.wheelhouse is not None:
            env["LAB_WHEELHOUSE_DIR"] = str(self.wheelhouse)
        return env

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    @property
    def virtual_address(self) -> str:
        """The edge's virtual address (keepalived), as bin/lab wrote it into the inventory."""
        inventory = yaml.safe_load((self.state_dir / "inventory.yml").read_text())
        return str(inventory["all"]["vars"]["lab_edge_virtual_address"])

    @property
    def ca_file(self) -> Path:
        """The lab CA's certificate, which clients verify the edge against."""
        return self.state_dir / "tls" / CA_CERT

    def client(self) -> httpx.Client:
        """A client of the public API through the edge, verifying its certificate."""
        return httpx.Client(base_url=self.url, verify=str(self.ca_file), timeout=30)

    def bin_lab(self, *args: str, timeout: float = 900, check: bool = True) -> str:
        result = run([str(BIN_LAB), *args], timeout=timeout, env=self.env, check=check)
        return result.stdout + result.stderr

    def playbook(
        self, playbook: str, *args: str, timeout: float = 900
    ) -> dict[str, dict[str, int]]:
        """Runs playbooks/``playbook`` against the lab; its recap (asserted to have no failure)."""
        output = self.bin_lab("playbook", playbook, *args, timeout=timeout)
        result = recap(output)
        assert result, f"no PLAY RECAP in the output of {playbook}:\n{output[-3000:]}"
        failed = {host: c for host, c in result.items() if c.get("failed") or c.get("unreachable")}
        assert not failed, f"{playbook} failed on {failed}:\n{output[-3000:]}"
        return result

    def sql(self, statement: str, host: str = "") -> str:
        """``statement`` run by psql (as postgres) on ``host``, by default the coordinator's
        primary; unaligned output."""
        return docker_exec(
            host or self.coordinator(),
            "runuser", "-u", "postgres", "--",
            "psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", "dialogs", "-c", statement,
        )  # fmt: skip

    def inventory_hosts(self, group: str) -> dict[str, dict]:
        """The hosts of inventory ``group`` in the inventory bin/lab wrote, with their vars."""
        inventory = yaml.safe_load((self.state_dir / "inventory.yml").read_text())
        return inventory["all"]["children"].get(group, {}).get("hosts") or {}

    def host_of_address(self, address: str) -> str:
        """The container whose private address is ``address`` (surrounding blanks ignored)."""
        address = address.strip()
        for group in ("coordinator", "workers", "patroni"):
            for name, settings in self.inventory_hosts(group).items():
                if settings.get("lab_private_address") == address:
                    return name
        raise AssertionError(f"no lab host has the address {address}")

    def coordinator(self) -> str:
        """The container of the coordinator's primary server."""
        if self.topology == "single":
            return COORDINATOR
        members = [
            name for name, settings in self.inventory_hosts("patroni").items()
            if settings["patroni_citus_group"] == 0
        ]  # fmt: skip
        for name in members:
            answer = run(
                ["docker", "exec", name, "runuser", "-u", "postgres", "--",
                 "psql", "-XAtc", "SELECT pg_is_in_recovery()"],
                timeout=30, check=False,
            )  # fmt: skip
            if answer.stdout.strip() == "f":
                return name
        raise AssertionError(f"no primary among the coordinator's servers {members}")

    def patroni_members(self) -> list[dict]:
        """patronictl list (JSON) from the first database host that answers: every Citus
        group's members with Group, Member, Host, Role, State, TL, Lag in MB."""
        for name in self.inventory_hosts("patroni"):
            listed = run(
                ["docker", "exec", name, f"{PATRONI_BIN}/patronictl", "-c", PATRONI_CONFIG,
                 "list", "-f", "json"],
                timeout=60, check=False,
            )  # fmt: skip
            if listed.returncode == 0:
                members: list[dict] = yaml.safe_load(listed.stdout)
                return members
        raise AssertionError("no database host could run patronictl list")

    def shards_per_group(self, table: str = "dialog_messages") -> dict[int, int]:
        """Citus group -> how many of ``table``'s shards it holds."""
        rows = self.sql(
            "SELECT p.groupid, count(*) FROM pg_dist_shard s JOIN pg_dist_placement p"
            f" USING (shardid) WHERE s.logicalrelid = '{table}'::regclass GROUP BY 1 ORDER BY 1"
        )
        return {int(group): int(count) for group, count in (row.split("|") for row in rows.split())}

    def worker_groups(self) -> list[int]:
        """The worker groups pg_dist_node lists as active primaries that take shards."""
        rows = self.sql(
            "SELECT groupid FROM pg_dist_node WHERE noderole = 'primary' AND isactive "
            "AND shouldhaveshards AND groupid <> 0 ORDER BY 1"
        )
        return [int(group) for group in rows.split()]

    def group_of(self, dialog_id: str) -> int:
        """The Citus group holding the shard of ``dialog_id``."""
        return int(
            self.sql(
                "SELECT groupid FROM pg_dist_placement WHERE shardid = "
                f"get_shard_id_for_distribution_column('dialogs', '{dialog_id}')"
            ).strip()
        )

    def unit_start(self, unit: str) -> str:
        """When ``unit`` on the app host last started (changes on every restart)."""
        return docker_exec(
            APP, "systemctl", "show", "-p", "ExecMainStartTimestampMonotonic", "--value", unit
        ).strip()

    def container_address(self, container: str, network: str) -> str:
        template = f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}'
        return run(["docker", "inspect", "-f", template, container], timeout=30).stdout.strip()


# --- the public API ------------------------------------------------------------------------


@dataclass
class User:
    user_id: str
    token: str


def register(client: httpx.Client, name: str) -> User:
    password = f"{name}-password-{uuid.uuid4().hex[:8]}"
    reply = client.post("/user/register", json={"password": password, "first_name": name})
    assert reply.status_code == 200, reply.text
    user_id = reply.json()["user_id"]
    login = client.post("/login", json={"id": user_id, "password": password})
    assert login.status_code == 200, login.text
    return User(user_id, login.json()["token"])


def auth(user: User) -> dict[str, str]:
    return {"Authorization": f"Bearer {user.token}"}


def send(
    client: httpx.Client, sender: User, recipient: User, text: str, key: str | None = None
) -> httpx.Response:
    return client.post(
        f"/dialog/{recipient.user_id}/send",
        json={"text": text},
        headers=auth(sender) | {"Idempotency-Key": key or uuid.uuid4().hex},
    )


def list_all(client: httpx.Client, reader: User, peer: User, page: int = 100) -> list[dict]:
    """Every message of the dialog, newest first, paging with the cursor header."""
    messages: list[dict] = []
    cursor: str | None = None
    for _ in range(10_000):
        params: dict[str, str | int] = {"limit": page}
        if cursor:
            params["cursor"] = cursor
        reply = client.get(f"/dialog/{peer.user_id}/list", params=params, headers=auth(reader))
        assert reply.status_code == 200, reply.text
        messages.extend(reply.json())
        cursor = reply.headers.get("X-Next-Cursor")
        if not cursor:
            return messages
    raise AssertionError("paging did not end")


def make_pairs(client: httpx.Client, count: int) -> list[tuple[User, User]]:
    return [(register(client, f"a{i}"), register(client, f"b{i}")) for i in range(count)]


# --- background load -----------------------------------------------------------------------


@dataclass
class Traffic:
    """Threads that send and list through the edge until stopped (bounded in time and
    count). Every acknowledged send and every failed request is recorded.

    With ``retries``, a careful client: a request answered 502/503/504 or not answered is
    sent again (a send with the same Idempotency-Key) after a pause that grows to 2 s;
    only a request that still fails then counts as failed; ``retried`` counts the requests
    that needed a retry."""

    url: str
    pairs: list[tuple[User, User]]
    verify: str | bool = True  # the CA file clients verify the edge against
    retries: int = 0
    threads: int = 4
    pause_s: float = 0.02  # between requests of one thread: leaves the 2-core lab some room
    max_seconds: float = 900
    max_requests: int = 200_000
    acked: dict[int, list[str]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    requests: int = 0
    retried: int = 0
    latencies: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Traffic:
        self.acked = {index: [] for index in range(len(self.pairs))}
        for number in range(self.threads):
            thread = threading.Thread(target=self._run, args=(number,), daemon=True)
            thread.start()
            self._workers.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._workers:
            thread.join(60)

    def wait_requests(self, count: int, timeout: float = 300) -> None:
        """Until ``count`` more requests have completed (bounded by ``timeout``)."""
        target = self.requests + count
        deadline = time.monotonic() + timeout
        while self.requests < target and time.monotonic() < deadline:
            time.sleep(0.2)
        assert self.requests >= target, f"the load stalled at {self.requests} requests"

    def _record(self, ok: bool, what: str, seconds: float = 0.0, retried: bool = False) -> None:
        with self._lock:
            self.requests += 1
            self.retried += retried
            self.latencies.append(seconds)
            if not ok:
                self.failures.append(what)

    def p99_ms(self) -> float:
        with self._lock:
            ordered = sorted(self.latencies)
        return 1000 * ordered[int(0.99 * (len(ordered) - 1))] if ordered else 0.0

    def _attempt(self, call: Callable[[], httpx.Response]) -> tuple[httpx.Response | str, int]:
        """The answer (or the error) of ``call`` after the retries, and the retries made."""
        outcome: httpx.Response | str = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(2.0, 0.25 * 2**attempt))
            try:
                outcome = call()
            except httpx.HTTPError as error:
                outcome = f"{type(error).__name__}: {error}"
                continue
            if outcome.status_code not in (502, 503, 504):
                return outcome, attempt
        return outcome, self.retries

    def _run(self, number: int) -> None:
        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(base_url=self.url, timeout=30, verify=self.verify) as client:
            step = 0
            while (
                not self._stop.is_set()
                and time.monotonic() < deadline
                and self.requests < self.max_requests
            ):
                index = (number + step * self.threads) % len(self.pairs)
                a, b = self.pairs[index]
                sender, recipient = (a, b) if step % 2 == 0 else (b, a)
                step += 1
                key, text = uuid.uuid4().hex, f"load {number}-{step}"
                path = f"/dialog/{recipient.user_id}/list"
                call: Callable[[], httpx.Response] = (
                    partial(client.get, path, params={"limit": 20}, headers=auth(sender))
                    if step % 3 == 0
                    else partial(send, client, sender, recipient, text, key)
                )
                started = time.monotonic()
                reply, retries = self._attempt(call)
                seconds = time.monotonic() - started
                time.sleep(self.pause_s)
                if isinstance(reply, str) or reply.status_code != 200:
                    what = reply if isinstance(reply, str) else (
                        f"{reply.request.method} {reply.status_code} {reply.text}"
                    )  # fmt: skip
                    self._record(False, what, seconds, retries > 0)
                    continue
                if reply.request.method == "POST":
                    with self._lock:
                        self.acked[index].append(reply.json()["id"])
                self._record(True, "", seconds, retries > 0)


@dataclass
class Tally:
    """Acknowledged messages versus what the dialogs hold afterwards."""

    acknowledged: int
    missing: int
    duplicated: int
    unexpected: int


def reconcile(client: httpx.Client, traffic: Traffic) -> Tally:
    acknowledged = missing = duplicated = unexpected = 0
    for index, (a, b) in enumerate(traffic.pairs):
        listed = Counter(message["id"] for message in list_all(client, a, b))
        acked = set(traffic.acked[index])
        acknowledged += len(acked)
        missing += len(acked - set(listed))
        duplicated += sum(1 for count in listed.values() if count > 1)
        unexpected += len(set(listed) - acked)
    return Tally(acknowledged, missing, duplicated, unexpected)


def probe_ports(network: str, targets: list[tuple[str, int]], image: str) -> dict[str, str]:
    """From a throw-away container on ``network``: host:port -> open | refused | unreachable."""
    script = (
        "import socket, sys\n"
        "for target in sys.argv[1:]:\n"
        "    host, port = target.rsplit(':', 1)\n"
        "    try:\n"
        "        socket.create_connection((host, int(port)), timeout=3).close()\n"
        "        print(target, 'open')\n"
        "    except ConnectionRefusedError:\n"
        "        print(target, 'refused')\n"
        "    except OSError:\n"
        "        print(target, 'unreachable')\n"
    )
    output = run(
        [
            "docker", "run", "--rm", "--label", LABEL, "--network", network,
            "--entrypoint", "python3", image, "-c", script,
            *(f"{host}:{port}" for host, port in targets),
        ],
        timeout=120,
    ).stdout  # fmt: skip
    return dict(line.split(" ", 1) for line in output.splitlines() if line.strip())


@contextlib.contextmanager
def under_load(
    lab: Lab, client: httpx.Client, pairs: int = 8, settle: int = 100, retries: int = 0
) -> Iterator[Traffic]:
    """Clients sending and listing through the edge around the body (without retries unless
    told), with ``settle`` requests completed before it starts and after it ends."""
    traffic = Traffic(
        lab.url, make_pairs(client, pairs), verify=str(lab.ca_file), retries=retries
    ).start()
    try:
        traffic.wait_requests(settle)
        yield traffic
        traffic.wait_requests(settle)
    finally:
        traffic.stop()
