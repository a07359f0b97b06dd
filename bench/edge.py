"""What the public edge adds per request: HAProxy (roles/edge, Debian's 2.6) terminating TLS
in front of the gateway, on one machine without containers. The stack is public_path's:
PostgreSQL (Citus, a coordinator and 2 workers, when installed; else one plain PostgreSQL
15), dialogs x2, the gateway (1 worker), and HAProxy in front of it with the configuration
rendered from the role's own template by ansible-playbook.

Prints, from one run, for list (the 50 newest of a 10,000-message dialog) and send (64
dialogs in turn) at 1, 16 and 64 connections, straight to the gateway over HTTP and
through the edge over HTTPS, one right after the other: req/s, p50, p99, the client
connections the edge accepted, the CPU each component spent per request (HAProxy, the
gateway, dialogs, PostgreSQL, wrk; from /proc), and the difference edge - direct in p50
and in the total CPU per request.

Usage: .venv/bin/python -m bench.edge [--seconds 5] [--concurrency 1,16,64] [--plain]
Needs PostgreSQL 15 (Citus optional), HAProxy (/usr/sbin/haproxy) and wrk built with
OpenSSL; loopback only; starts and removes everything itself (about 2 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import ipaddress
import json
import os
import re
import resource
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench._load import (
    Result,
    connection_counts,
    cpu_ticks,
    machine,
    require,
    stolen_since,
    table,
    wait_for_both_upstreams,
    wrk,
)
from bench.dialogs_bench import TEXT, seed_dialog
from bench.public_path import (
    Measured,
    Meter,
    load_generator_cpu_s,
    pid_of,
    postmaster_pid,
    tree_cpu_s,
)
from tests.support.citus import CitusCluster
from tests.support.gateway import (
    gateway_process,
    login,
    migrate_gateway,
    register,
)
from tests.support.postgres import PgServer, citus_installed, free_port
from tests.support.processes import ServiceProcess, dialogs_process, migrate

ROOT = Path(__file__).resolve().parent.parent
ROLE = ROOT / "roles" / "edge"
DIALOG_SIZE = 10_000
PAGE = 50
SEND_DIALOGS = 64
SERVER_VERSION = "SELECT split_part(current_setting('server_version'), ' ', 1)"

# The lines of the rendered file that cannot work unprivileged or on a host that runs
# another HAProxy (the role's are for the edge host's systemd unit), and what the
# benchmark runs instead. Each must be found exactly once: a change in the template shows
# here rather than in a silently different configuration.
#   chroot, user, group: need root, and drop the bench's files out of reach.
#   log /dev/log: no syslog socket here. The log line is still built and written (to
#     HAProxy's stdout, sent to /dev/null), so its cost stays in HAProxy's CPU; a syslog
#     daemon's own CPU is not counted in either case.
#   stats socket /run/haproxy/admin.sock: root's, and another HAProxy's on a shared host.
REWRITES: list[tuple[str, str]] = [
    (r"^[ \t]*chroot /var/lib/haproxy\n", ""),
    (r"^[ \t]*user haproxy\n", ""),
    (r"^[ \t]*group haproxy\n", ""),
    (r"^([ \t]*)log /dev/log (local0 info)$", r"\1log stdout format raw \2"),
    (r"^([ \t]*)stats socket /run/haproxy/admin\.sock ", r"\1stats socket {workdir}/admin.sock "),
]


def self_signed_pem(path: Path) -> None:
    """A throw-away ECDSA P-256 certificate for 127.0.0.1 and its key, in one file as
    HAProxy reads it (``crt``)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def render_role_config(workdir: Path, overrides: dict[str, Any]) -> Path:
    """roles/edge/templates/haproxy.cfg.j2 rendered by ansible-playbook on localhost, with
    the role's defaults and vars loaded and ``overrides`` as extra vars (the highest
    precedence)."""
    output = workdir / "haproxy.role.cfg"
    playbook = [  # JSON is YAML
        {
            "name": "Render the edge role's HAProxy configuration for bench/edge.py",
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars_files": [str(ROLE / "defaults" / "main.yml"), str(ROLE / "vars" / "main.yml")],
            "tasks": [
                {
                    "name": "Render haproxy.cfg.j2",
                    "ansible.builtin.template": {
                        "src": str(ROLE / "templates" / "haproxy.cfg.j2"),
                        "dest": "{{ bench_output }}",
                        "mode": "0600",
                    },
                }
            ],
        }
    ]
    (workdir / "render.yml").write_text(json.dumps(playbook, indent=2))
    extra = overrides | {"bench_output": str(output), "ansible_python_interpreter": sys.executable}
    (workdir / "extra.json").write_text(json.dumps(extra))
    ansible_playbook = Path(sys.executable).parent / "ansible-playbook"
    done = subprocess.run(
        [
            str(ansible_playbook),
            "-i",
            "localhost,",
            "-e",
            f"@{workdir / 'extra.json'}",
            str(workdir / "render.yml"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=os.environ | {"ANSIBLE_LOCALHOST_WARNING": "False", "ANSIBLE_NOCOLOR": "1"},
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"ansible-playbook could not render the template:\n{done.stdout}")
    return output


def haproxy_check(config: Path) -> None:
    done = subprocess.run(
        ["haproxy", "-c", "-f", str(config)], capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0:
        raise RuntimeError(f"haproxy -c refused {config}:\n{done.stdout}{done.stderr}")


def local_copy(rendered: Path, workdir: Path) -> Path:
    """The rendered file with REWRITES applied, and only them."""
    text = rendered.read_text()
    for pattern, replacement in REWRITES:
        text, count = re.subn(
            pattern, replacement.replace("{workdir}", str(workdir)), text, flags=re.MULTILINE
        )
        if count != 1:
            raise RuntimeError(f"the rendered configuration has {count} lines like {pattern!r}")
    copy = workdir / "haproxy.cfg"
    copy.write_text(text)
    return copy


@dataclass
class Edge:
    url: str
    metrics_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    tls: str  # the protocol and cipher an OpenSSL client gets

    @property
    def pid(self) -> int:
        return self.process.pid

    def threads(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(r"^Threads:\s+(\d+)", status, re.MULTILINE)
        return int(match.group(1)) if match else 0

    def accepted_connections(self) -> int:
        """Client connections the public frontend has accepted since it started."""
        text = httpx.get(f"{self.metrics_url}/metrics", timeout=5).text
        match = re.search(
            r'^haproxy_frontend_connections_total\{proxy="public"\} (\d+)', text, re.MULTILINE
        )
        if match is None:
            raise RuntimeError("the edge's metrics have no connection count for 'public'")
        return int(match.group(1))


@contextmanager
def running_edge(gateway_url: str, max_connections: int) -> Iterator[Edge]:
    """HAProxy in the foreground (``-db``) with the role's configuration; always stopped."""
    require("haproxy", "haproxy")
    workdir = Path(tempfile.mkdtemp(prefix="bench-edge-"))
    process: subprocess.Popen[bytes] | None = None
    try:
        pem = workdir / "edge.pem"
        self_signed_pem(pem)
        https_port, metrics_port = free_port(), free_port()
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        nofile = min(200_000, hard if hard != resource.RLIM_INFINITY else 200_000)
        rendered = render_role_config(
            workdir,
            {
                "edge_backends": [gateway_url.removeprefix("http://")],
                "edge_bind_address": "127.0.0.1",  # loopback only
                "edge_https_port": https_port,
                "edge_metrics_address": "127.0.0.1",
                "edge_metrics_port": metrics_port,
                "edge_limit_nofile": nofile,
                "edge_max_connections_per_client": max_connections,
                "_edge_pem_path": str(pem),
            },
        )
        haproxy_check(rendered)  # the role's file as it is
        config = local_copy(rendered, workdir)
        haproxy_check(config)
        log_path = workdir / "haproxy.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                ["haproxy", "-db", "-f", str(config)],
                stdout=subprocess.DEVNULL,  # the request log (see REWRITES)
                stderr=log,
                start_new_session=True,
            )
        url = f"https://127.0.0.1:{https_port}"
        # The bench's own clients check the edge's certificate; wrk does not check any.
        trusting = ssl.create_default_context(cafile=str(pem))
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"haproxy exited at start:\n{log_path.read_text()}")
            try:
                if httpx.get(f"{url}/readyz", verify=trusting, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the edge did not pass requests:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield Edge(
            url, f"http://127.0.0.1:{metrics_port}", process, log_path, tls_of(https_port, trusting)
        )
    finally:
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def tls_of(port: int, context: ssl.SSLContext) -> str:
    """The TLS version and cipher an OpenSSL client (Python's, as wrk's) gets."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        cipher = tls.cipher()
        return f"{tls.version()} {cipher[0] if cipher else '?'}"


def version_of(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    return (done.stdout or done.stderr).splitlines()[0].strip()


@dataclass
class Database:
    dsn: str
    servers: list[PgServer]
    description: str
    destroy: Callable[[], None]

    def sql(self, statement: str) -> str:
        return self.servers[0].psql(statement, "dialogs")


def start_database(plain: bool) -> Database:
    if not plain and citus_installed():
        cluster = CitusCluster.start(worker_count=2)
        try:
            version = cluster.sql("SELECT split_part(citus_version(), ' ', 2)")
            server_version = cluster.sql(SERVER_VERSION)
        except BaseException:
            cluster.destroy()
            raise
        return Database(
            cluster.dsn,
            cluster.nodes,
            f"PostgreSQL {server_version} with Citus {version} (a coordinator and 2 workers)",
            cluster.destroy,
        )
    server = PgServer("bench-edge").start()
    try:
        server.psql("CREATE DATABASE dialogs")
        server_version = server.psql(SERVER_VERSION)
    except BaseException:
        server.destroy()
        raise
    reason = "--plain" if plain else "Citus is not installed"
    return Database(
        server.dsn_for("dialogs"),
        [server],
        f"plain PostgreSQL {server_version}, no Citus ({reason})",
        server.destroy,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="per load step (1..30)")
    parser.add_argument("--concurrency", default="1,16,64", help="wrk connections")
    parser.add_argument("--plain", action="store_true", help="plain PostgreSQL, not Citus")
    args = parser.parse_args(argv)
    concurrencies = connection_counts(args.concurrency)
    if not 1 <= args.seconds <= 30:
        raise SystemExit("--seconds must be 1..30")
    require("wrk", "wrk")
    require("haproxy", "haproxy")

    print(machine(), flush=True)
    started, ticks = time.monotonic(), cpu_ticks()
    database = start_database(args.plain)
    services: list[ServiceProcess] = []
    try:
        migrate(database.dsn)
        migrate_gateway(database.dsn)
        instances = [
            dialogs_process(database.dsn, DIALOGS_WORKERS="1", DIALOGS_LOG_LEVEL="WARNING").start()
            for _ in range(2)
        ]
        services.extend(instances)
        gateway = gateway_process(
            database.dsn,
            [instance.url for instance in instances],
            GATEWAY_WORKERS="1",
            GATEWAY_LOG_LEVEL="WARNING",
            # A deployment's defaults: the bench never fails an instance.
            GATEWAY_UPSTREAM_COOLDOWN_S="5",
            GATEWAY_UPSTREAM_PROBE_INTERVAL_S="1",
        ).start()
        services.append(gateway)
        wait_for_both_upstreams(gateway.url)

        with httpx.Client(base_url=gateway.url, timeout=10) as api:
            alice, bob = register(api), register(api)
            peers = [register(api) for _ in range(SEND_DIALOGS)]
            bearer = {"Authorization": f"Bearer {login(api, alice)}"}
            for peer in peers:  # create the dialogs first: measure the steady state
                api.post(
                    f"/dialog/{peer}/send", json={"text": TEXT}, headers=bearer
                ).raise_for_status()
        asyncio.run(seed_dialog(database.dsn, uuid.UUID(alice), uuid.UUID(bob), DIALOG_SIZE))
        database.sql("ANALYZE")

        # The benchmark's own connections all come from 127.0.0.1: the per-address bound
        # must let them in.
        with running_edge(gateway.url, max(concurrencies) + 100) as edge:
            meter = Meter(
                {
                    "haproxy": lambda: tree_cpu_s(edge.pid),
                    "gateway": lambda: tree_cpu_s(pid_of(gateway)),
                    "dialogs": lambda: sum(tree_cpu_s(pid_of(i)) for i in instances),
                    "PostgreSQL": lambda: sum(
                        tree_cpu_s(postmaster_pid(s)) for s in database.servers
                    ),
                    "wrk": load_generator_cpu_s,
                }
            )

            def spec(op: str, base: str) -> dict[str, Any]:
                if op == "list":
                    return dict(
                        url=f"{base}/dialog/{bob}/list?limit={PAGE}",
                        method="GET",
                        headers=bearer,
                    )
                return dict(
                    url=base,
                    method="POST",
                    headers=bearer | {"Content-Type": "application/json"},
                    bodies=[json.dumps({"text": TEXT})],
                    paths=[f"/dialog/{peer}/send" for peer in peers],
                )

            bases = {"direct": gateway.url, "edge": edge.url}
            for op in ("list", "send"):  # warm up: connections, statements, caches
                for base in bases.values():
                    wrk(connections=4, seconds=1, **spec(op, base))

            def load(s: dict[str, Any], connections: int) -> Callable[[], Result]:
                return lambda: wrk(connections=connections, seconds=args.seconds, **s)

            rows: list[tuple[str, int, str, Measured, int]] = []
            for op in ("list", "send"):
                for connections in concurrencies:
                    for path, base in bases.items():
                        accepted = edge.accepted_connections()
                        measured = meter.measure(load(spec(op, base), connections), args.seconds)
                        accepted = edge.accepted_connections() - accepted
                        rows.append((op, connections, path, measured, accepted))
            edge_log = edge.log_path.read_text(errors="replace").strip()
            haproxy_version = version_of(["haproxy", "-v"]).split(" - ")[0]
            tls = edge.tls
            threads = edge.threads()
    finally:
        for service in reversed(services):
            service.stop()
        database.destroy()

    print(
        f"\n{haproxy_version}, {threads} threads; its configuration rendered from "
        "roles/edge's template\n(haproxy -c accepts it as rendered; chroot, user/group, "
        "syslog and the admin socket\nrewritten for an unprivileged run); TLS "
        f"{tls}, ECDSA P-256 certificate;\n{version_of(['wrk', '-v'])}"
    )
    print(
        f"gateway 1 worker; dialogs x2, 1 worker each; {database.description}; "
        f"{args.seconds} s per step; {time.monotonic() - started:.0f} s in all; "
        f"load average at the end {os.getloadavg()[0]:.2f}; {stolen_since(ticks)}"
    )
    print(
        "wrk keeps its connections open (HTTP/1.1 keep-alive): each connection's TLS handshake"
        "\nis paid once per step, so the edge's figures are TLS records and HAProxy's HTTP work,"
        "\nnot handshakes ('edge conns': client connections the edge accepted in the step, wrk's"
        "\nconnections and the one it opens first to test the address)."
    )
    print("\nstraight to the gateway (HTTP) and through the edge (HTTPS); CPU µs per request\n")
    names = ["haproxy", "gateway", "dialogs", "PostgreSQL", "wrk"]
    print(
        table(
            [
                "op",
                "conns",
                "path",
                "req/s",
                "p50 ms",
                "p99 ms",
                "errors",
                "edge conns",
                *names,
                "total",
            ],
            [
                [
                    op,
                    str(connections),
                    path,
                    f"{m.result.rps:,.0f}",
                    f"{m.result.p50_ms:.2f}",
                    f"{m.result.p99_ms:.2f}",
                    str(m.result.errors),
                    str(accepted) if path == "edge" else "-",
                    *(f"{m.cpu(name):.0f}" for name in names),
                    f"{m.cpu(*names):.0f}",
                ]
                for op, connections, path, m, accepted in rows
            ],
        )
    )
    print("\nedge - direct (the neighbouring steps above)\n")
    pairs = [(a, b) for a, b in zip(rows[::2], rows[1::2], strict=True)]
    print(
        table(
            ["op", "conns", "added p50 ms", "added CPU µs/req", "of which haproxy", "req/s ratio"],
            [
                [
                    direct[0],
                    str(direct[1]),
                    f"{via[3].result.p50_ms - direct[3].result.p50_ms:+.2f}",
                    f"{via[3].cpu(*names) - direct[3].cpu(*names):+.0f}",
                    f"{via[3].cpu('haproxy'):.0f}",
                    f"{via[3].result.rps / direct[3].result.rps:.2f}",
                ]
                for direct, via in pairs
            ],
        )
    )
    if edge_log:
        print(f"\nHAProxy said:\n{edge_log}")
    errors = sum(m.result.errors for _, _, _, m, _ in rows)
    if errors:
        print(f"\n{errors} requests failed (non-2xx or socket errors)")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
