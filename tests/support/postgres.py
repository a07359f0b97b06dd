"""Real PostgreSQL servers for tests: initdb in a temp dir, a free loopback port, and a
guaranteed stop (pg_ctl, then SIGKILL) so that no postgres outlives the run."""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


def bindir() -> Path | None:
    """The PostgreSQL 15 server binaries, or None when they are not installed."""
    candidates = [Path("/usr/lib/postgresql/15/bin")]
    try:
        out = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=True
        ).stdout.strip()
        candidates.insert(0, Path(out))
    except (OSError, subprocess.CalledProcessError):
        pass
    for path in candidates:
        if (path / "initdb").exists() and (path / "pg_ctl").exists():
            return path
    return None


def pkglibdir() -> Path | None:
    found = bindir()
    if found is None:
        return None
    out = subprocess.run(
        [str(found / "pg_config"), "--pkglibdir"], capture_output=True, text=True
    ).stdout.strip()
    return Path(out) if out else None


def citus_installed() -> bool:
    lib = pkglibdir()
    return lib is not None and (lib / "citus.so").exists()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_postgres() -> list[str]:
    # initdb refuses to run as root.
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


_running: list[PgServer] = []


@dataclass
class PgServer:
    name: str
    settings: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    root: Path = field(init=False)

    def __post_init__(self) -> None:
        found = bindir()
        if found is None:
            raise RuntimeError("PostgreSQL 15 server binaries not found")
        self.bin = found
        self.root = Path(tempfile.mkdtemp(prefix=f"pgtest-{self.name}-"))
        self.datadir = self.root / "data"
        self.logfile = self.root / "server.log"
        if os.geteuid() == 0:
            uid = pwd.getpwnam("postgres").pw_uid
            os.chown(self.root, uid, uid)
        self._run(
            "initdb",
            "-D",
            str(self.datadir),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        base = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "shared_buffers": "64MB",
            "log_min_messages": "warning",
        }
        with (self.datadir / "postgresql.conf").open("a") as conf:
            for key, value in (base | self.settings).items():
                conf.write(f"{key} = {value}\n")

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    def dsn_for(self, database: str, user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*_as_postgres(), str(self.bin / tool), *args],
            capture_output=True,
            text=True,
            check=True,
        )

    def start(self) -> PgServer:
        self._run(
            "pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-w", "-t", "60", "start"
        )
        if self not in _running:
            _running.append(self)
        return self

    def stop(self, mode: str = "fast") -> None:
        if not (self.datadir / "postmaster.pid").exists():
            return
        try:
            self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "-t", "30", "stop")
        except subprocess.CalledProcessError:
            self._kill()

    def _kill(self) -> None:
        pidfile = self.datadir / "postmaster.pid"
        if pidfile.exists():
            pid = int(pidfile.read_text().split()[0])
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)

    def psql(self, sql: str, database: str = "postgres") -> str:
        return subprocess.run(
            [
                str(self.bin / "psql"),
                "-X",
                "-v",
                "ON_ERROR_STOP=1",
                "-qAt",
                self.dsn_for(database),
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    def destroy(self) -> None:
        self.stop("immediate")
        if self in _running:
            _running.remove(self)
        shutil.rmtree(self.root, ignore_errors=True)


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_running):
        server.destroy()
