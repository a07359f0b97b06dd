"""High availability on loopback, without containers: a 3-member etcd cluster and Patroni
nodes in Citus mode, each a plain process with its data in a temp dir and its output in a
log file, always stopped at the end (SIGTERM, then SIGKILL; also at exit after a failure).

The topology the ha tier uses: group 0 (the coordinator) and group 1 (one worker group),
each a primary and a synchronous standby. Patroni registers the groups' primaries in the
coordinator's pg_dist_node and updates them on failover and switchover.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tests.support import postgres
from tests.support.postgres import free_port

DATABASE = "dialogs"
SUPERUSER = "postgres"
REPLICATION_USER = "replicator"
REST_USER = "patroni"
# The settings Patroni owns (its dynamic configuration, the same for every member).
# Citus mode adds citus to shared_preload_libraries by itself; it is named anyway so the
# configuration says what the servers run.
PG_PARAMETERS: dict[str, Any] = {
    "shared_preload_libraries": "citus",
    "wal_level": "logical",  # shard moves use logical replication
    "max_connections": 100,
    "max_prepared_transactions": 200,  # Citus's 2PC for multi-shard writes
    "max_wal_senders": 10,
    "max_replication_slots": 10,
    "wal_keep_size": "128MB",
    "wal_sender_timeout": "5s",  # as roles/patroni: a hung sync standby holds commits 5 s
    "synchronous_commit": "on",  # with synchronous_mode: a commit is on two servers
    "shared_buffers": "32MB",
    "password_encryption": "scram-sha-256",
    # The servers are killed, never the machine: the page cache keeps what was written, so
    # fsync only costs time here. (full_page_writes stays on: pg_rewind needs it.)
    "fsync": "off",
    "log_min_messages": "warning",
}

_T = TypeVar("_T")


def etcd_binary() -> str | None:
    return shutil.which("etcd") or ("/usr/bin/etcd" if Path("/usr/bin/etcd").exists() else None)


def patroni_binary() -> Path | None:
    # The virtualenv's Patroni (PyPI 4.x, see pyproject.toml), next to this interpreter.
    path = Path(sys.executable).parent / "patroni"
    return path if path.exists() else None


def missing() -> str | None:
    """Why the ha tier cannot run here, or None when it can."""
    if postgres.bindir() is None:
        return "PostgreSQL 15 server binaries not installed"
    if not postgres.citus_installed():
        return "citus extension not installed"
    if etcd_binary() is None:
        return "etcd not installed (Debian package etcd-server)"
    if patroni_binary() is None:
        return "patroni not installed in the virtualenv (pip install -e '.[dev]')"
    return None


class GiveUp(RuntimeError):
    """Raised by a check polled by wait_for when waiting longer cannot help."""


def wait_for(what: str, check: Callable[[], _T | None], timeout: float, step: float = 0.2) -> _T:
    """``check()``'s first truthy result; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except GiveUp:
            raise
        except Exception as error:  # the thing polled is still coming up
            last_error = error
        time.sleep(step)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last error: {last_error})")


@dataclass
class Daemon:
    """A detached process (its own session) writing to a log file; stop() always ends it."""

    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self.env or None,
                start_new_session=True,
                user=self.user,
                group=self.user,
                extra_groups=[] if self.user else None,
            )
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal_group(self, sig: signal.Signals) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, sig)

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        self.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)

    def log(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""


_cleanups: list[Callable[[], None]] = []


@atexit.register
def _stop_leftovers() -> None:
    for cleanup in reversed(list(_cleanups)):
        with contextlib.suppress(Exception):
            cleanup()


@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    datadir: Path
    daemon: Daemon | None = None

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def healthy(self) -> bool:
        response = httpx.get(f"{self.client_url}/health", timeout=2)
        return response.status_code == 200 and response.json().get("health") == "true"


@dataclass
class EtcdCluster:
    """Three members on free loopback ports: losing one keeps a quorum."""

    root: Path
    members: list[EtcdMember]

    @classmethod
    def start(cls, size: int = 3, timeout: float = 30.0) -> EtcdCluster:
        binary = etcd_binary()
        if binary is None:
            raise RuntimeError("etcd not installed")
        root = Path(tempfile.mkdtemp(prefix="hatest-etcd-"))
        members = [
            EtcdMember(f"etcd{i}", free_port(), free_port(), root / f"etcd{i}")
            for i in range(1, size + 1)
        ]
        cluster = cls(root, members)
        _cleanups.append(cluster.destroy)
        initial = ",".join(f"{m.name}={m.peer_url}" for m in members)
        token = f"hatest-{secrets.token_hex(4)}"
        for member in members:
            member.daemon = Daemon(
                [
                    binary,
                    f"--name={member.name}",
                    f"--data-dir={member.datadir}",
                    f"--listen-client-urls={member.client_url}",
                    f"--advertise-client-urls={member.client_url}",
                    f"--listen-peer-urls={member.peer_url}",
                    f"--initial-advertise-peer-urls={member.peer_url}",
                    f"--initial-cluster={initial}",
                    f"--initial-cluster-token={token}",
                    "--initial-cluster-state=new",
                    # Two shared cores under test load: a slower beat than the 100 ms
                    # default keeps the members from calling elections for nothing.
                    "--heartbeat-interval=200",
                    "--election-timeout=2000",
                ],
                root / f"{member.name}.log",
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            ).start()
        for member in members:
            wait_for(f"etcd member {member.name} healthy", member.healthy, timeout)
        return cluster

    @property
    def hosts(self) -> list[str]:
        return [f"127.0.0.1:{m.client_port}" for m in self.members]

    def destroy(self) -> None:
        for member in self.members:
            if member.daemon is not None:
                member.daemon.stop(10)
        shutil.rmtree(self.root, ignore_errors=True)
        with contextlib.suppress(ValueError):
            _cleanups.remove(self.destroy)


@dataclass(frozen=True)
class Credentials:
    """Generated for each run: the superuser (Patroni's and Citus's node-to-node user), the
    replication user and the REST API's user for its unsafe endpoints (switchover)."""

    superuser_password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    replication_password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    rest_password: str = field(default_factory=lambda: secrets.token_urlsafe(18))


def _as_postgres_user() -> str | None:
    # PostgreSQL refuses to run as root; Patroni then runs as the server's owner.
    return "postgres" if os.geteuid() == 0 else None


@dataclass
class PatroniNode:
    name: str
    group: int
    root: Path
    pg_port: int = field(default_factory=free_port)
    rest_port: int = field(default_factory=free_port)
    daemon: Daemon | None = None

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def config(self, scope: str, etcd_hosts: list[str], creds: Credentials) -> dict[str, Any]:
        bindir = postgres.bindir()
        return {
            "scope": scope,
            "namespace": "/dialogs-hatest/",
            "name": self.name,
            "log": {"level": "INFO"},
            "restapi": {
                "listen": f"127.0.0.1:{self.rest_port}",
                "connect_address": f"127.0.0.1:{self.rest_port}",
                # The same on every node: workers call the coordinator's REST API.
                "authentication": {"username": REST_USER, "password": creds.rest_password},
            },
            "etcd3": {"hosts": etcd_hosts},
            "citus": {"group": self.group, "database": DATABASE},
            "bootstrap": {
                "dcs": {
                    # Patroni's minimum ttl; a 1 s loop notices a crashed server quickly.
                    "ttl": 20,
                    "loop_wait": 1,
                    "retry_timeout": 5,
                    "maximum_lag_on_failover": 1048576,
                    # A crashed primary fails over to its synchronous standby at once
                    # instead of being restarted in place (Patroni's default waits 300 s).
                    "primary_start_timeout": 0,
                    # Citus mode would default to quorum; with one standby per group plain
                    # synchronous mode says the same: a commit is acknowledged on both.
                    "synchronous_mode": True,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "use_slots": True,
                        "parameters": PG_PARAMETERS,
                    },
                },
                "initdb": [{"encoding": "UTF8"}, "data-checksums"],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{self.pg_port}",
                "connect_address": f"127.0.0.1:{self.pg_port}",
                "data_dir": str(self.datadir),
                "bin_dir": str(bindir),
                "pgpass": str(self.root / "pgpass"),
                # A new standby's pg_basebackup would otherwise wait for a spread
                # checkpoint (minutes on an idle server).
                "basebackup": [{"checkpoint": "fast"}],
                "authentication": {
                    "superuser": {"username": SUPERUSER, "password": creds.superuser_password},
                    "replication": {
                        "username": REPLICATION_USER,
                        "password": creds.replication_password,
                    },
                },
                "parameters": {"unix_socket_directories": str(self.root)},
                # No trust: every TCP connection, replication included, proves a password.
                "pg_hba": [
                    "local all postgres peer",
                    f"host replication {REPLICATION_USER} 127.0.0.1/32 scram-sha-256",
                    "host all all 127.0.0.1/32 scram-sha-256",
                ],
            },
        }

    def start(self, scope: str, etcd_hosts: list[str], creds: Credentials) -> PatroniNode:
        binary = patroni_binary()
        if binary is None:
            raise RuntimeError("patroni not installed")
        config_path = self.root / "patroni.yml"
        # JSON is YAML: Patroni reads it as is.
        config_path.write_text(json.dumps(self.config(scope, etcd_hosts, creds), indent=1))
        config_path.chmod(0o600)
        user = _as_postgres_user()
        if user is not None:
            uid = pwd.getpwnam(user).pw_uid
            for path in (self.root, config_path):
                os.chown(path, uid, uid)
        self.daemon = Daemon(
            [str(binary), str(config_path)],
            self.root / "patroni.log",
            env={
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(self.root),
                "LANG": "C.UTF-8",
                "LC_ALL": "C.UTF-8",
            },
            user=user,
        ).start()
        return self

    def rest(self, path: str) -> Any:
        response = httpx.get(f"{self.rest_url}{path}", timeout=3)
        return response.json()

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.datadir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def kill_postmaster(self) -> int:
        """SIGKILL the server (not Patroni): a crashed PostgreSQL. Returns its pid."""
        pid = self.postmaster_pid()
        assert pid is not None, f"{self.name}: no postmaster.pid"
        os.kill(pid, signal.SIGKILL)
        return pid

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop(30)
        # Patroni stops its server on SIGTERM. The server is not in Patroni's process group
        # (Patroni detaches it): one left behind (Patroni killed first) is killed here.
        pid = self.postmaster_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@dataclass
class Member:
    """One row of Patroni's /cluster view."""

    name: str
    role: str  # leader, sync_standby, replica, quorum_standby
    state: str
    port: int
    timeline: int | None
    lag: int | str | None


@dataclass
class HaCluster:
    """etcd + Patroni groups in Citus mode: group 0 is the coordinator."""

    etcd: EtcdCluster
    root: Path
    scope: str
    creds: Credentials
    groups: dict[int, list[PatroniNode]]
    restarts: list[str] = field(default_factory=list)  # Patroni nodes supervise() restarted

    @classmethod
    def start(cls, group_sizes: Iterable[int] = (2, 2), timeout: float = 150.0) -> HaCluster:
        etcd = EtcdCluster.start()
        root = Path(tempfile.mkdtemp(prefix="hatest-patroni-"))
        root.chmod(0o755)  # each node's own directory below is the server owner's, 0700
        cluster = cls(etcd, root, f"hatest-{secrets.token_hex(3)}", Credentials(), {})
        _cleanups.append(cluster.destroy)
        try:
            for group, size in enumerate(group_sizes):
                nodes = []
                for index in range(size):
                    name = f"g{group}-{'abcdefgh'[index]}"
                    node_root = root / name
                    node_root.mkdir(mode=0o700)
                    nodes.append(PatroniNode(name, group, node_root))
                cluster.groups[group] = nodes
            for nodes in cluster.groups.values():
                for node in nodes:
                    node.start(cluster.scope, etcd.hosts, cluster.creds)
            # Two restarts at most while bootstrapping (see supervise); none later.
            cluster.wait_healthy(timeout, restarts_allowed=2)
        except BaseException:
            print(cluster.logs())
            cluster.destroy()
            raise
        return cluster

    @property
    def nodes(self) -> list[PatroniNode]:
        return [node for nodes in self.groups.values() for node in nodes]

    def node(self, name: str) -> PatroniNode:
        return next(node for node in self.nodes if node.name == name)

    def members(self, group: int) -> list[Member]:
        """The group's members as Patroni sees them (asking any of its nodes that answers)."""
        last: Exception | None = None
        for node in self.groups[group]:
            try:
                view = node.rest("/cluster")
            except (httpx.HTTPError, ValueError) as error:
                last = error
                continue
            return [
                Member(
                    m["name"],
                    m["role"],
                    m["state"],
                    int(m["port"]),
                    m.get("timeline"),
                    m.get("lag"),
                )
                for m in view.get("members", [])
            ]
        raise RuntimeError(f"no node of group {group} answers: {last}")

    def leader(self, group: int) -> PatroniNode | None:
        for member in self.members(group):
            if member.role == "leader" and member.state == "running":
                return self.node(member.name)
        return None

    def standbys(self, group: int) -> list[PatroniNode]:
        return [
            self.node(m.name)
            for m in self.members(group)
            if m.role in ("sync_standby", "quorum_standby") and m.state == "streaming"
        ]

    def group_healthy(self, group: int) -> bool:
        """A running leader and every other member a streaming synchronous standby."""
        members = self.members(group)
        leaders = [m for m in members if m.role == "leader" and m.state == "running"]
        syncs = [
            m
            for m in members
            if m.role in ("sync_standby", "quorum_standby") and m.state == "streaming"
        ]
        return len(leaders) == 1 and len(syncs) == len(self.groups[group]) - 1

    def registered_primaries(self) -> dict[int, int]:
        """pg_dist_node on the coordinator's primary: group id -> the primary's port."""
        rows = self.coordinator_sql(
            "SELECT groupid, nodeport FROM pg_dist_node "
            "WHERE noderole = 'primary' AND isactive ORDER BY groupid"
        )
        return {int(g): int(p) for g, p in (line.split("|") for line in rows.splitlines())}

    def registration_matches(self) -> bool:
        """pg_dist_node names every group's current leader as its primary."""
        registered = self.registered_primaries()
        for group in self.groups:
            leader = self.leader(group)
            if leader is None or registered.get(group) != leader.pg_port:
                return False
        return True

    def supervise(self, restarts_allowed: int) -> None:
        """What systemd's Restart= does for Patroni in production: a Patroni that exited
        (it does after a failed bootstrap) is started again, at most ``restarts_allowed``
        times in all; then GiveUp with its log."""
        for node in self.nodes:
            if node.daemon is None or node.daemon.running:
                continue
            if len(self.restarts) >= restarts_allowed:
                raise GiveUp(f"patroni {node.name} exited:\n{node.daemon.log()}")
            print(f"[ha] patroni {node.name} exited, restarting it:\n{node.daemon.log(1500)}")
            self.restarts.append(node.name)
            node.daemon.start()

    def _group_healthy_supervised(self, group: int, restarts_allowed: int) -> bool:
        self.supervise(restarts_allowed)
        return self.group_healthy(group)

    def wait_healthy(self, timeout: float = 90.0, restarts_allowed: int = 0) -> None:
        for group in self.groups:
            wait_for(
                f"group {group} has a leader and a sync standby",
                functools.partial(self._group_healthy_supervised, group, restarts_allowed),
                timeout,
            )
        wait_for("pg_dist_node names every group's leader", self.registration_matches, timeout)

    # -- clients -----------------------------------------------------------------------

    def dsn(self, node: PatroniNode, database: str = DATABASE) -> str:
        return (
            f"postgresql://{SUPERUSER}:{self.creds.superuser_password}"
            f"@127.0.0.1:{node.pg_port}/{database}"
        )

    def coordinator_url(
        self, database: str = DATABASE, user: str = SUPERUSER, password: str | None = None
    ) -> str:
        """A multi-host URL over the coordinator group: the client finds the primary."""
        hosts = ",".join(f"127.0.0.1:{node.pg_port}" for node in self.groups[0])
        password = self.creds.superuser_password if password is None else password
        return f"postgresql://{user}:{password}@{hosts}/{database}?target_session_attrs=read-write"

    def psql(self, node: PatroniNode, sql: str, database: str = DATABASE) -> str:
        bindir = postgres.bindir()
        return subprocess.run(
            [
                str(bindir / "psql" if bindir else "psql"),
                "-X",
                "-v",
                "ON_ERROR_STOP=1",
                "-qAt",
                self.dsn(node, database),
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()

    def coordinator_sql(self, sql: str) -> str:
        leader = self.leader(0)
        if leader is None:
            raise RuntimeError("the coordinator group has no leader")
        return self.psql(leader, sql)

    def switchover(self, group: int, candidate: PatroniNode | None = None) -> httpx.Response:
        """A planned switchover through the leader's REST API (what patronictl does)."""
        leader = self.leader(group)
        assert leader is not None, f"group {group} has no leader"
        body: dict[str, str] = {"leader": leader.name}
        if candidate is not None:
            body["candidate"] = candidate.name
        return httpx.post(
            f"{leader.rest_url}/switchover",
            json=body,
            auth=(REST_USER, self.creds.rest_password),
            timeout=60,
        )

    def logs(self) -> str:
        parts = []
        for node in self.nodes:
            if node.daemon is not None:
                parts.append(f"--- patroni {node.name} ---\n{node.daemon.log(3000)}")
        return "\n".join(parts)

    def destroy(self) -> None:
        # All at once: each Patroni stops its own server on SIGTERM.
        for node in self.nodes:
            if node.daemon is not None and node.daemon.running:
                node.daemon.signal_group(signal.SIGTERM)
        for node in self.nodes:
            node.stop()
        self.etcd.destroy()
        shutil.rmtree(self.root, ignore_errors=True)
        with contextlib.suppress(ValueError):
            _cleanups.remove(self.destroy)
