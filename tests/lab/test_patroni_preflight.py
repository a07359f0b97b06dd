"""The patroni role's bad inputs fail in preflight, each with a message that names the fix.

As tests/lab/test_cluster_preflight.py does for the Citus roles: ansible-playbook runs the
role for real (--check, --tags preflight) against an inventory whose hosts are all this
machine over a local connection, so only the preflight tasks run and nothing changes. The
role is not in a playbook yet, so each case writes a one-play playbook next to its
inventory.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.lab.test_cluster_preflight import REPO_ROOT, check_outcome, run_cases, run_preflight

# Look-alike PEM blocks: preflight checks their shape only. Test-only secrets, long enough.
CERT = "-----BEGIN CERTIFICATE-----\nMIIBtest\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIIEtest-only-key\n-----END PRIVATE KEY-----\n"
SECRETS: dict[str, str] = {
    "vault_db_superuser_password": "test-only-superuser-secret",
    "vault_db_replication_password": "test-only-replication-secret",
    "vault_db_rewind_password": "test-only-rewind-secret",
    "vault_patroni_restapi_password": "test-only-restapi-secret",
}
VARS: dict[str, Any] = {
    "patroni_superuser_password": "{{ vault_db_superuser_password }}",
    "patroni_replication_password": "{{ vault_db_replication_password }}",
    "patroni_rewind_password": "{{ vault_db_rewind_password }}",
    "patroni_restapi_password": "{{ vault_patroni_restapi_password }}",
    "patroni_etcd_hosts": ["10.251.0.21:2379", "10.251.0.22:2379", "10.251.0.23:2379"],
    "patroni_etcd_ca_pem": CERT,
    "patroni_etcd_cert_pem": CERT,
    "patroni_etcd_key_pem": KEY,
    "patroni_postgresql_ssl_cert_pem": CERT,
    "patroni_postgresql_ssl_key_pem": KEY,
}
# Host -> its variables: the coordinator group (0) and one worker group (1), two hosts each.
GOOD: dict[str, dict[str, Any]] = {
    "c1": {"patroni_citus_group": 0, "patroni_address": "10.251.0.11"},
    "c2": {"patroni_citus_group": 0, "patroni_address": "10.251.0.12"},
    "w1": {"patroni_citus_group": 1, "patroni_address": "10.251.0.13"},
    "w2": {"patroni_citus_group": 1, "patroni_address": "10.251.0.14"},
}


def hosts_with(**changes: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """GOOD with some hosts' variables changed (a value of None removes the host)."""
    hosts = copy.deepcopy(GOOD)
    for host, update in changes.items():
        if update is None:
            hosts.pop(host)
        else:
            hosts.setdefault(host, {}).update(update)
    return {h: {k: v for k, v in hv.items() if v is not None} for h, hv in hosts.items()}


@dataclass
class Case:
    expect: list[str]  # substrings of the output; empty = the preflight must pass
    hosts: dict[str, dict[str, Any]] = field(default_factory=lambda: copy.deepcopy(GOOD))
    variables: dict[str, Any] = field(default_factory=dict)  # over VARS; None removes one
    group: str = "patroni"  # the inventory group the hosts are in
    debian_databases: int = 3  # directories in base/ of the case's own "Debian cluster"


CASES: dict[str, Case] = {
    "valid inventory passes": Case([]),
    "a group of one host with patroni_allow_single_host passes": Case(
        [],
        hosts=hosts_with(c2=None, w2=None),
        variables={"patroni_allow_single_host": True},
    ),
    "host outside patroni_group_name": Case(
        ["c1 is not in the inventory group 'patroni' (patroni_group_name)"], group="dbs"
    ),
    "negative Citus group": Case(
        ["patroni_citus_group must be this host's Citus group, a whole number >= 0", "got '-1'"],
        hosts=hosts_with(w2={"patroni_citus_group": -1}),
    ),
    "Citus group not a number": Case(
        ["patroni_citus_group'' is of type str and we were unable to convert to int"],
        hosts=hosts_with(w2={"patroni_citus_group": "first"}),
    ),
    "Citus group missing on a host": Case(
        ["patroni_citus_group is missing or not a whole number >= 0 on w2"],
        hosts=hosts_with(w2={"patroni_citus_group": None}),
    ),
    "a gap in the group ids": Case(
        ["must be 0..N with no gap (0: the coordinator), got [0, 2]: no host has group 1"],
        hosts=hosts_with(w1={"patroni_citus_group": 2}, w2={"patroni_citus_group": 2}),
    ),
    "no coordinator group": Case(
        ["got [1, 2]: no host has group 0"],
        hosts=hosts_with(c1={"patroni_citus_group": 2}, c2={"patroni_citus_group": 2}),
    ),
    "a group without a standby": Case(
        [
            "Citus group 1 (w1) has a single host, so no standby to fail over to",
            "or set patroni_allow_single_host to true",
        ],
        hosts=hosts_with(w2=None),
    ),
    "two members of one name": Case(
        ["patroni_name must be unique over the 'patroni' group; w1 is used more than once"],
        hosts=hosts_with(w2={"patroni_name": "w1"}),
    ),
    "two members of one address": Case(
        ["patroni_address must differ between the members"],
        hosts=hosts_with(w2={"patroni_address": "10.251.0.13"}),
    ),
    "two etcd members": Case(
        ["patroni_etcd_hosts must list an odd number (at least 3) of etcd members", "got 2"],
        variables={"patroni_etcd_hosts": ["10.251.0.21:2379", "10.251.0.22:2379"]},
    ),
    "four etcd members": Case(
        ["patroni_etcd_hosts must list an odd number (at least 3) of etcd members", "got 4"],
        variables={"patroni_etcd_hosts": [f"10.251.0.2{n}:2379" for n in range(1, 5)]},
    ),
    "an etcd member without a port": Case(
        ["patroni_etcd_hosts must list an odd number (at least 3) of etcd members as host:port"],
        variables={"patroni_etcd_hosts": ["e1:2379", "e2:2379", "e3"]},
    ),
    "missing superuser password": Case(
        ["patroni_superuser_password is missing or shorter than 8 characters"],
        variables={"patroni_superuser_password": None},
    ),
    "missing replication password": Case(
        ["patroni_replication_password is missing or shorter than 8 characters"],
        variables={"patroni_replication_password": None},
    ),
    "short rewind password": Case(
        ["patroni_rewind_password is missing or shorter than 8 characters"],
        variables={"patroni_rewind_password": "short"},
    ),
    "etcd key not PEM": Case(
        ["patroni_etcd_key_pem is missing or holds no PEM private key"],
        variables={"patroni_etcd_key_pem": "not a key"},
    ),
    "missing etcd CA": Case(
        ["patroni_etcd_ca_pem is missing or holds no PEM certificate"],
        variables={"patroni_etcd_ca_pem": None},
    ),
    "server certificate not PEM": Case(
        ["patroni_postgresql_ssl_cert_pem is missing or holds no PEM certificate"],
        variables={"patroni_postgresql_ssl_cert_pem": KEY},
    ),
    "asynchronous commit": Case(
        ["synchronous_commit (if any) is on or remote_apply"],
        variables={"patroni_postgresql_parameters": {"synchronous_commit": "off"}},
    ),
    "commit acknowledged before the standby has it": Case(
        ["synchronous_commit (if any) is on or remote_apply"],
        variables={"patroni_postgresql_parameters": {"synchronous_commit": "local"}},
    ),
    "Debian's cluster holds data": Case(
        ["patroni_debian_cluster: Debian's cluster 'main' on c1 holds 1 database(s) besides"],
        debian_databases=4,
    ),
    "ttl below Patroni's minimum": Case(
        ["patroni_ttl must be >= 20 (Patroni's minimum)"], variables={"patroni_ttl": 10}
    ),
}


def write_case(directory: Path, case: Case) -> tuple[Path, Path]:
    """hosts.yml, group_vars/all/{main,vault}.yml and play.yml (JSON is YAML)."""
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inventory = {
        "all": {
            "children": {
                case.group: {"hosts": {h: local | hv for h, hv in case.hosts.items()}},
            }
        }
    }
    debian = directory / "debian-main"
    for number in range(case.debian_databases):
        (debian / "base" / str(number + 1)).mkdir(parents=True)
    own = {"patroni_debian_cluster_data_dir": str(debian)}
    variables = {k: v for k, v in (VARS | own | case.variables).items() if v is not None}
    (directory / "group_vars" / "all").mkdir(parents=True)
    (directory / "hosts.yml").write_text(json.dumps(inventory))
    (directory / "group_vars" / "all" / "main.yml").write_text(json.dumps(variables))
    (directory / "group_vars" / "all" / "vault.yml").write_text(json.dumps(SECRETS))
    play = [
        {
            "name": "Patroni members",
            "hosts": "all",
            "gather_facts": False,
            "roles": [{"role": "patroni"}],
        }
    ]
    (directory / "play.yml").write_text(json.dumps(play))
    return directory / "hosts.yml", directory / "play.yml"


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str]]:
    root = tmp_path_factory.mktemp("patroni-preflight")
    roles = {"ANSIBLE_ROLES_PATH": str(REPO_ROOT / "roles")}

    def one(name: str) -> subprocess.CompletedProcess[str]:
        directory = root / uuid.uuid4().hex[:8]
        return run_preflight(*write_case(directory, CASES[name]), env=roles)

    return run_cases(CASES, one)


@pytest.mark.parametrize("name", list(CASES))
def test_preflight(outcomes: dict[str, tuple[int, str]], name: str) -> None:
    # Nothing past preflight ran.
    check_outcome(
        outcomes[name], CASES[name].expect, ("Build the Patroni wheelhouse", "Write patroni.yml")
    )
    if not CASES[name].expect:
        assert "failed=1" not in outcomes[name][1]


def test_no_secret_in_the_output(outcomes: dict[str, tuple[int, str]]) -> None:
    for name, (_, output) in outcomes.items():
        for secret in [*SECRETS.values(), "MIIEtest-only-key"]:
            assert secret not in output, f"a secret was printed in case {name!r}"
