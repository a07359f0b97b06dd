"""Service processes for tests: the real `dialogs` / `gateway` entry points, started as
subprocesses on free loopback ports, waited on until healthy and always stopped."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.postgres import free_port

INTERNAL_TOKEN = "test-internal-token-0123456789"


@dataclass
class ServiceProcess:
    """``python -m <module> serve`` with ``env``; its output goes to a log file."""

    module: str
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.log_path = Path(tempfile.mkstemp(prefix=f"{self.module}-", suffix=".log")[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> ServiceProcess:
        prefix = self.module.upper()
        env = (
            os.environ
            | self.env
            | {f"{prefix}_PORT": str(self.port), f"{prefix}_HOST": "127.0.0.1"}
        )
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        with self.log_path.open("ab") as log:
            # A session of its own: kill() can reach Sanic's worker processes too.
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module, "serve"],
                env=env,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.module} exited at start:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.module} did not become healthy:\n{self.log()}")

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, as systemd would: Sanic drains and stops its workers. Returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.terminate()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.process.returncode

    def kill(self) -> None:
        """SIGKILL to the whole process group: a crash, with no worker left behind."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]


def dialogs_process(database_url: str, **extra_env: str) -> ServiceProcess:
    env = {
        "DIALOGS_DATABASE_URL": database_url,
        "DIALOGS_INTERNAL_TOKEN": INTERNAL_TOKEN,
        "DIALOGS_STATEMENT_TIMEOUT_MS": "2000",
        "DIALOGS_CONNECT_TIMEOUT_S": "1",
    } | extra_env
    return ServiceProcess("dialogs", env)


def migrate(database_url: str, service: str = "dialogs") -> dict[str, Any]:
    """Run ``<service> migrate``; the report it prints (one JSON object on stdout)."""
    stdout = subprocess.run(
        [sys.executable, "-m", service, "migrate", "--database-url", database_url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    report: dict[str, Any] = json.loads(stdout)
    return report
