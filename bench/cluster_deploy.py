"""Time the Citus automation on local containers and print a table.

1. a full cluster deploy (playbooks/cluster.yml) from fresh containers: coordinator + 2 workers;
2. the same playbook again (nothing to do: changed=0);
3. 100,000 rows loaded into a distributed dialog_messages-like table;
4. a scale-out from 2 to 4 workers (playbooks/scale_out.yml: install the new workers, update
   every node's pg_hba/.pgpass, register, citus_rebalance_start, poll until finished);
5. checks that every row is still there (count and checksum) and counts shards per node.

    .venv/bin/python -m bench.cluster_deploy [--rows 100000] [--keep]

Needs docker and the lab images (lab/images/build.sh, run when missing). Containers and the
network are named citus-bench-*; they are removed at the end unless --keep. Secrets are
generated per run into .lab/bench-cluster/ (git-ignored, mode 0600), never printed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

from lab.topology import BUILD_SCRIPT, CITUS_IMAGE, citus_version, systemd_container

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = REPO_ROOT / ".venv" / "bin"
STATE = REPO_ROOT / ".lab" / "bench-cluster"
NETWORK = "citus-bench"
PREFIX = "citus-bench"
TABLE = "bench_dialog_messages"
BENCH_LABEL = "org.dialogs-lab.bench=1"


def sh(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)
    if check and result.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def start_container(name: str) -> None:
    sh(*systemd_container(name, CITUS_IMAGE, "--network", NETWORK, "--label", BENCH_LABEL))


def wait_booted(name: str) -> None:
    sh("docker", "exec", name, "systemctl", "is-system-running", "--wait", check=False)


def psql(sql: str) -> str:
    return sh(
        "docker",
        "exec",
        f"{PREFIX}-coordinator",
        "runuser",
        "-u",
        "postgres",
        "--",
        "psql",
        "-d",
        "dialogs",
        "-AtX",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        sql,
    ).stdout.strip()


def write_inventory(workers: list[str]) -> Path:
    inventory = {
        "all": {
            "vars": {
                "ansible_connection": "community.docker.docker",
                "ansible_python_interpreter": "/usr/bin/python3",
                "citus_node_install_method": "preinstalled",
                "citus_node_citus_version": citus_version(CITUS_IMAGE),
                "citus_node_max_connections": 200,
                "citus_node_max_prepared_transactions": 200,
                "citus_node_shared_buffers": "64MB",
                "citus_node_rebalance_executors_per_node": 2,
                "citus_cluster_rebalance_poll_interval": 2,
                "citus_node_superuser_password": "{{ vault_db_superuser_password }}",
                "citus_node_app_db_password": "{{ vault_db_app_password }}",
            },
            "children": {
                "coordinator": {"hosts": {f"{PREFIX}-coordinator": {}}},
                "workers": {"hosts": {w: {} for w in workers}},
            },
        }
    }
    path = STATE / "hosts.yml"
    path.write_text(json.dumps(inventory, indent=2))
    return path


def write_secrets() -> Path:
    path = STATE / "secrets.yml"
    if not path.exists():
        values = {
            "vault_db_superuser_password": secrets.token_urlsafe(24),
            "vault_db_app_password": secrets.token_urlsafe(24),
        }
        path.touch(mode=0o600)
        path.write_text(json.dumps(values))
    return path


def playbook(name: str, inventory: Path, secrets_file: Path, log: Path) -> tuple[float, str]:
    env = os.environ | {
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_CONFIG": str(REPO_ROOT / "ansible.cfg"),
        # ansible.cfg turns pipelining on for ssh; the docker connection reads this instead.
        "ANSIBLE_PIPELINING": "True",
    }
    start = time.monotonic()
    result = subprocess.run(
        [
            str(VENV_BIN / "ansible-playbook"),
            "-i",
            str(inventory),
            "-e",
            f"@{secrets_file}",
            str(REPO_ROOT / "playbooks" / name),
        ],
        capture_output=True,
        text=True,
        timeout=3600,
        cwd=REPO_ROOT,
        env=env,
    )
    elapsed = time.monotonic() - start
    log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        sys.exit(f"{name} failed (log: {log}):\n{result.stdout[-4000:]}")
    return elapsed, result.stdout


def changed_total(output: str) -> int:
    recap = output.split("PLAY RECAP")[-1]
    return sum(int(n) for n in re.findall(r"changed=(\d+)", recap))


def cleanup() -> None:
    names = sh("docker", "ps", "-aq", "--filter", f"label={BENCH_LABEL}").stdout.split()
    if names:
        sh("docker", "rm", "-f", *names)
    sh("docker", "network", "rm", NETWORK, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--keep", action="store_true", help="keep the containers afterwards")
    args = parser.parse_args()

    sh(str(REPO_ROOT / BUILD_SCRIPT), timeout=1800)
    STATE.mkdir(parents=True, exist_ok=True)
    cleanup()
    sh("docker", "network", "create", "--label", BENCH_LABEL, NETWORK)
    rows: list[tuple[str, str, str]] = []
    try:
        initial = [f"{PREFIX}-worker{i}" for i in (1, 2)]
        added = [f"{PREFIX}-worker{i}" for i in (3, 4)]
        start = time.monotonic()
        for name in [f"{PREFIX}-coordinator", *initial]:
            start_container(name)
        for name in [f"{PREFIX}-coordinator", *initial]:
            wait_booted(name)
        rows.append(("start 3 containers (systemd booted)", f"{time.monotonic() - start:.1f}", ""))

        secrets_file = write_secrets()
        inventory = write_inventory(initial)
        elapsed, out = playbook("cluster.yml", inventory, secrets_file, STATE / "deploy.log")
        rows.append(
            ("deploy: cluster.yml, coordinator + 2 workers", f"{elapsed:.1f}", "fresh containers")
        )
        elapsed, out = playbook("cluster.yml", inventory, secrets_file, STATE / "again.log")
        rows.append(("cluster.yml again", f"{elapsed:.1f}", f"changed={changed_total(out)}"))

        start = time.monotonic()
        psql(
            f"CREATE TABLE {TABLE} (dialog_id uuid NOT NULL, id uuid NOT NULL,"
            " user_id bigint NOT NULL, content text NOT NULL,"
            " created_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (dialog_id, id));"
            f" SELECT create_distributed_table('{TABLE}', 'dialog_id');"
        )
        psql(
            f"INSERT INTO {TABLE} (dialog_id, id, user_id, content)"
            " SELECT md5('dialog-' || (g % 1000))::uuid, md5('message-' || g)::uuid, g % 5000,"
            " repeat('hello ', 1 + g % 20) || g"
            f" FROM generate_series(1, {args.rows}) AS g"
        )
        before = psql(
            f"SELECT count(*) || ' ' || sum(hashtext(id::text || content)::numeric) FROM {TABLE}"
        )
        size = psql(f"SELECT pg_size_pretty(citus_table_size('{TABLE}'))")
        rows.append(
            (
                f"load {args.rows:,} messages",
                f"{time.monotonic() - start:.1f}",
                f"{size}, 32 shards",
            )
        )

        start = time.monotonic()
        for name in added:
            start_container(name)
        for name in added:
            wait_booted(name)
        rows.append(("start 2 more containers", f"{time.monotonic() - start:.1f}", ""))
        inventory = write_inventory(initial + added)
        elapsed, out = playbook("scale_out.yml", inventory, secrets_file, STATE / "scale_out.log")
        moves = re.findall(r"rebalance job \d+: (\d+)/(\d+) moves done \(finished\)", out)
        job_seconds = psql(
            "SELECT round(extract(epoch FROM finished_at - started_at)::numeric, 1)"
            " FROM pg_dist_background_job WHERE job_type = 'rebalance' ORDER BY job_id DESC LIMIT 1"
        )
        rows.append(
            (
                "scale-out: scale_out.yml, 2 -> 4 workers",
                f"{elapsed:.1f}",
                (f"{moves[-1][0]} shard moves" if moves else "no moves?")
                + f"; the rebalance job itself took {job_seconds} s",
            )
        )
        after = psql(
            f"SELECT count(*) || ' ' || sum(hashtext(id::text || content)::numeric) FROM {TABLE}"
        )
        per_node = psql(
            "SELECT string_agg(n || '=' || c, ', ' ORDER BY n) FROM (SELECT"
            f" replace(nodename, '{PREFIX}-', '') AS n, count(*) AS c FROM citus_shards"
            f" WHERE table_name = '{TABLE}'::regclass GROUP BY 1) s"
        )
        if after != before:
            sys.exit(f"rows changed during the scale-out: before {before}, after {after}")
        rows.append(("rows after scale-out", "", f"all {args.rows:,} present; shards {per_node}"))
        elapsed, out = playbook("scale_out.yml", inventory, secrets_file, STATE / "again2.log")
        rows.append(("scale_out.yml again", f"{elapsed:.1f}", f"changed={changed_total(out)}"))
    finally:
        if not args.keep:
            cleanup()

    width = max(len(r[0]) for r in rows)
    print(f"| {'step':<{width}} | seconds | notes |")
    print(f"|{'-' * (width + 2)}|--------:|-------|")
    for step, seconds, notes in rows:
        print(f"| {step:<{width}} | {seconds:>7} | {notes} |")


if __name__ == "__main__":
    main()
