"""The etcd role's bad inputs fail in preflight, with a message that names the fix.

Each case runs the role for real (ansible-playbook, --check, --tags preflight) on an
inventory whose etcd members are all this machine over a local connection, each with its
own etcd_listen_address: only the argument spec and the preflight tasks run, and they
change nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.lab.test_cluster_preflight import REPO_ROOT, check_outcome, run_cases, run_preflight

# Test-only stand-ins: PEM-looking, no real key.
KEY_MATERIAL = "test-only-etcd-key-material-0123456789"
TLS = {
    "etcd_tls_ca_certificate": "-----BEGIN CERTIFICATE-----\nMIIBca\n-----END CERTIFICATE-----",
    "etcd_tls_certificate": "-----BEGIN CERTIFICATE-----\nMIIBhost\n-----END CERTIFICATE-----",
    "etcd_tls_private_key": (
        f"-----BEGIN PRIVATE KEY-----\n{KEY_MATERIAL}\n-----END PRIVATE KEY-----"
    ),
}
THREE = {"e1": "10.0.9.1", "e2": "10.0.9.2", "e3": "10.0.9.3"}


@dataclass
class Case:
    """The etcd group (host -> its etcd_listen_address), group variables, expected output."""

    members: dict[str, str]
    expect: list[str]  # substrings of the output; empty = the preflight must pass
    group_vars: dict[str, Any] = field(default_factory=dict)


CASES: dict[str, Case] = {
    "three members pass": Case(THREE, []),
    "five members pass": Case({f"e{n}": f"10.0.9.{n}" for n in range(1, 6)}, []),
    "one member for tests passes": Case(
        {"e1": "10.0.9.1"}, [], {"etcd_allow_single_member": True}
    ),
    "two members": Case(
        {"e1": "10.0.9.1", "e2": "10.0.9.2"},
        ["etcd_group 'etcd' must hold an odd number of at least 3 hosts (3 or 5)",
         "it holds 2 (e1, e2)"],
    ),
    "four members": Case(
        {f"e{n}": f"10.0.9.{n}" for n in range(1, 5)},
        ["etcd_group 'etcd' must hold an odd number of at least 3 hosts (3 or 5), it holds 4"],
    ),
    "one member without the test flag": Case(
        {"e1": "10.0.9.1"},
        ["it holds 1 (e1)", "One member only with etcd_allow_single_member: true"],
    ),
    "names differing only in case": Case(
        {"e1": "10.0.9.1", "E1": "10.0.9.2", "e3": "10.0.9.3"},
        ["the members' names (their inventory hostnames, etcd's ETCD_NAME) must be unique"],
    ),
    "a member without an address": Case(
        {"e1": "10.0.9.1", "e2": "", "e3": "10.0.9.3"},
        ["etcd_listen_address must be this member's private IP address, got '' on e2"],
    ),
    "a wildcard address": Case(
        {"e1": "10.0.9.1", "e2": "0.0.0.0", "e3": "10.0.9.3"},
        ["etcd_listen_address must be this member's private IP address, got '0.0.0.0' on e2"],
    ),
    "two members on one address": Case(
        {"e1": "10.0.9.1", "e2": "10.0.9.1", "e3": "10.0.9.3"},
        ["etcd_listen_address must be set, and differ, on every host of etcd_group 'etcd'"],
    ),
    "no CA": Case(
        THREE,
        ["etcd_tls_ca_certificate is missing or holds no PEM certificate"],
        {"etcd_tls_ca_certificate": ""},
    ),
    "a certificate that is no PEM": Case(
        THREE,
        ["etcd_tls_certificate is missing or holds no PEM certificate"],
        {"etcd_tls_certificate": "not a certificate"},
    ),
    "an empty private key": Case(
        THREE,
        ["etcd_tls_private_key is missing or holds no PEM private key"],
        {"etcd_tls_private_key": ""},
    ),
    "no private key at all (argument spec)": Case(
        THREE,
        ["missing required arguments: etcd_tls_private_key"],
        {"etcd_tls_private_key": None},
    ),
    "the package's cluster name": Case(
        THREE,
        ["etcd_cluster_name must be letters, digits, '.', '_' and '-', and not 'default'"],
        {"etcd_cluster_name": "default"},
    ),
    "an election timeout under 5 heartbeats": Case(
        THREE,
        ["etcd_election_timeout_ms (400) must be at least 5 times etcd_heartbeat_interval_ms (100"],
        {"etcd_election_timeout_ms": 400},
    ),
    "a quota above 8 GiB": Case(
        THREE,
        ["etcd_quota_backend_bytes must be between 100 MiB and 8 GiB"],
        {"etcd_quota_backend_bytes": 17179869184},
    ),
    "a retention that is no duration": Case(
        THREE,
        ["etcd_auto_compaction_retention must be a number of revisions (mode revision) or a"],
        {"etcd_auto_compaction_retention": "1 hour"},
    ),
    "an unknown compaction mode (argument spec)": Case(
        THREE,
        ["value of etcd_auto_compaction_mode must be one of: periodic, revision"],
        {"etcd_auto_compaction_mode": "daily"},
    ),
    "clashing ports": Case(
        THREE,
        ["etcd_client_port, etcd_peer_port and etcd_metrics_port must differ"],
        {"etcd_metrics_port": 2380},
    ),
}  # fmt: skip

PLAYBOOK = [
    {
        "name": "The etcd cluster",
        "hosts": "etcd",
        "gather_facts": False,
        "roles": [{"role": "etcd"}],
    }
]


def write_inventory(directory: Path, case: Case) -> Path:
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    group_vars = {k: v for k, v in (TLS | case.group_vars).items() if v is not None}
    inventory = {
        "all": {
            "children": {
                "etcd": {
                    "hosts": {
                        host: local | {"etcd_listen_address": address}
                        for host, address in case.members.items()
                    },
                    "vars": group_vars,
                }
            }
        }
    }
    directory.mkdir(parents=True)
    (directory / "hosts.yml").write_text(json.dumps(inventory))
    (directory / "play.yml").write_text(json.dumps(PLAYBOOK))
    return directory


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str]]:
    root = tmp_path_factory.mktemp("etcd-preflight")
    roles = {"ANSIBLE_ROLES_PATH": str(REPO_ROOT / "roles")}

    def one(name: str) -> subprocess.CompletedProcess[str]:
        directory = write_inventory(root / uuid.uuid4().hex[:8], CASES[name])
        return run_preflight(directory / "hosts.yml", directory / "play.yml", env=roles)

    return run_cases(CASES, one)


@pytest.mark.parametrize("name", list(CASES))
def test_preflight(outcomes: dict[str, tuple[int, str]], name: str) -> None:
    # Nothing past preflight ran.
    check_outcome(
        outcomes[name], CASES[name].expect, ("Install etcd-server", "Write etcd's settings")
    )


def test_no_key_in_the_output(outcomes: dict[str, tuple[int, str]]) -> None:
    for name, (_, output) in outcomes.items():
        assert KEY_MATERIAL not in output, f"the private key was printed in case {name!r}"
