"""Bad inventories and variables fail in preflight, with a message that names the fix.

The playbooks run for real (ansible-playbook, --check, --tags preflight) against hosts that
are this machine over a local connection: only the preflight tasks run, and they change
nothing. One case points the role at a container whose image has no Citus.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from lab.topology import systemd_container

if TYPE_CHECKING:
    from tests.lab.conftest import LabImages

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = REPO_ROOT / ".venv" / "bin"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Test-only values, long enough for the roles' checks.
SECRETS = {
    "vault_db_superuser_password": "test-only-superuser-secret",
    "vault_db_app_password": "test-only-application-secret",
}
MAPPING = {
    "citus_node_superuser_password": "{{ vault_db_superuser_password }}",
    "citus_node_app_db_password": "{{ vault_db_app_password }}",
}


@dataclass
class Case:
    """An inventory (group -> hosts), its variables, a playbook, and the expected outcome."""

    groups: dict[str, list[str]]
    expect: list[str]  # substrings of the output; empty = the preflight must pass
    group_vars: dict[str, Any] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=lambda: dict(SECRETS))
    playbook: str = "cluster.yml"
    extra: list[str] = field(default_factory=list)


GOOD = {"coordinator": ["c1"], "workers": ["w1", "w2"]}
CASES: dict[str, Case] = {
    "valid inventory passes": Case(GOOD, []),
    "no coordinator": Case(
        {"coordinator": [], "workers": ["w1"]},
        ["inventory group 'coordinator' must hold exactly one host, it holds 0"],
    ),
    "two coordinators": Case(
        {"coordinator": ["c1", "c2"], "workers": ["w1"]},
        ["inventory group 'coordinator' must hold exactly one host, it holds 2 (c1, c2)"],
    ),
    "empty workers group": Case(
        {"coordinator": ["c1"], "workers": []},
        ["inventory group 'workers' is empty or missing: add the worker hosts"],
    ),
    "a host in two roles": Case(
        {"coordinator": ["c1"], "workers": ["c1", "w1"]},
        ["c1 is in both 'coordinator' and 'workers'", "remove it from one"],
    ),
    "a cluster of both kinds": Case(
        GOOD | {"patroni": ["p1", "p2"]},
        ["(the highly available cluster)", "p1, p2 and c1, w1, w2", "keep one set of groups"],
    ),
    "missing superuser secret": Case(
        GOOD,
        ["citus_node_superuser_password is missing", "define vault_db_superuser_password"],
        secrets={"vault_db_app_password": SECRETS["vault_db_app_password"]},
    ),
    "missing application secret": Case(
        GOOD,
        ["citus_node_app_db_password is missing", "define vault_db_app_password"],
        secrets={"vault_db_superuser_password": SECRETS["vault_db_superuser_password"]},
    ),
    "unsupported PostgreSQL/Citus pair": Case(
        GOOD,
        [
            "PostgreSQL 17 with Citus 12.1 is not a supported pair",
            "set citus_node_postgresql_version / citus_node_citus_version",
        ],
        group_vars={"citus_node_postgresql_version": "17", "citus_node_citus_version": "12.1"},
    ),
    "unknown install method": Case(
        GOOD,
        ["citus_node_install_method must be 'apt' or 'preinstalled', not 'yum'"],
        group_vars={"citus_node_install_method": "yum"},
    ),
    "asynchronous commit": Case(
        GOOD,
        [
            "citus_node_settings sets synchronous_commit to 'off'",
            "can then lose the writes acknowledged just before it switches over",
        ],
        group_vars={"citus_node_settings": {"synchronous_commit": "off"}},
    ),
    "remove_worker without a worker": Case(
        GOOD,
        ["say which worker to remove: -e citus_cluster_remove_node="],
        playbook="remove_worker.yml",
    ),
    "remove_worker with a host outside the workers group": Case(
        GOOD,
        ["'c1' is not in the 'workers' group"],
        playbook="remove_worker.yml",
        extra=["-e", "citus_cluster_remove_node=c1"],
    ),
}


def ansible_env() -> dict[str, str]:
    return os.environ | {
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_CONFIG": str(REPO_ROOT / "ansible.cfg"),
    }


def write_inventory(directory: Path, case: Case) -> Path:
    """hosts.yml (JSON is YAML) + group_vars/all/{main,vault}.yml, as a real inventory has."""
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inventory = {
        "all": {
            "children": {
                group: {"hosts": {host: local for host in hosts}}
                for group, hosts in case.groups.items()
            }
        }
    }
    (directory / "group_vars" / "all").mkdir(parents=True)
    (directory / "hosts.yml").write_text(json.dumps(inventory))
    (directory / "group_vars" / "all" / "main.yml").write_text(
        json.dumps(MAPPING | case.group_vars)
    )
    (directory / "group_vars" / "all" / "vault.yml").write_text(json.dumps(case.secrets))
    return directory / "hosts.yml"


def run_preflight(
    inventory: Path, playbook: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``playbook`` in check mode with only its preflight tasks (nothing changes)."""
    return subprocess.run(
        [
            str(VENV_BIN / "ansible-playbook"),
            "-i",
            str(inventory),
            str(playbook),
            "--check",
            "--tags",
            "preflight",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
        env=ansible_env() | (env or {}),
    )


def run_cases(
    names: Iterable[str], one: Callable[[str], subprocess.CompletedProcess[str]]
) -> dict[str, tuple[int, str]]:
    """Every case, run four at a time: name -> (exit code, output without colours)."""

    def outcome(name: str) -> tuple[str, tuple[int, str]]:
        result = one(name)
        return name, (result.returncode, ANSI.sub("", result.stdout + result.stderr))

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(outcome, names))


def check_outcome(
    outcome: tuple[int, str], expected: list[str], not_reached: tuple[str, ...]
) -> None:
    """A case's outcome: it passed (``expected`` empty), or it failed saying each of
    ``expected``, and no task named in ``not_reached`` (past preflight) ran."""
    code, output = outcome
    if not expected:
        assert code == 0, output[-4000:]
        assert "failed=0" in output
        return
    assert code != 0, f"preflight passed although it should fail:\n{output[-3000:]}"
    flat = unwrap(output)
    for text in expected:
        assert text in flat, f"{text!r} not in the output:\n{output[-4000:]}"
    for task in not_reached:
        assert task not in output


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str]]:
    root = tmp_path_factory.mktemp("preflight")

    def one(name: str) -> subprocess.CompletedProcess[str]:
        case = CASES[name]
        inventory = write_inventory(root / uuid.uuid4().hex[:8], case)
        return run_preflight(inventory, REPO_ROOT / "playbooks" / case.playbook, *case.extra)

    return run_cases(CASES, one)


def unwrap(output: str) -> str:
    """Messages are folded over several lines in Ansible's output: one line, single spaces."""
    return re.sub(r"\s+", " ", output)


@pytest.mark.parametrize("name", list(CASES))
def test_preflight(outcomes: dict[str, tuple[int, str]], name: str) -> None:
    # Nothing past preflight ran: no task of the install or configure phases.
    check_outcome(
        outcomes[name],
        CASES[name].expect,
        ("Install PostgreSQL, Citus", "Write the restart-only settings"),
    )


def test_no_secret_in_the_output(outcomes: dict[str, tuple[int, str]]) -> None:
    for name, (_, output) in outcomes.items():
        for secret in SECRETS.values():
            assert secret not in output, f"a secret was printed in case {name!r}"


def test_example_inventory_passes_preflight(tmp_path: Path) -> None:
    """The committed example (vault encrypted with the documented example-only password)."""
    password_file = tmp_path / "vault-pass"
    password_file.write_text("example-only")
    result = subprocess.run(
        [
            str(VENV_BIN / "ansible-playbook"),
            "-i",
            str(REPO_ROOT / "inventory" / "example" / "hosts.yml"),
            str(REPO_ROOT / "playbooks" / "cluster.yml"),
            "--check",
            "--tags",
            "preflight",
            "--vault-password-file",
            str(password_file),
            # The example's hosts do not exist: every one is this machine for the check.
            "-e",
            "ansible_connection=local",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
        env=ansible_env(),
    )
    output = ANSI.sub("", result.stdout + result.stderr)
    assert result.returncode == 0, output[-4000:]
    assert re.search(
        r"db-coordinator-1\s+:\s+ok=\d+\s+changed=0\s+unreachable=0\s+failed=0", output
    )


@pytest.fixture
def bare_container(lab_images: LabImages) -> Iterator[str]:
    """A systemd container from the base image: no PostgreSQL, no Citus."""
    name = f"citus-preflight-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        systemd_container(name, lab_images.base),
        check=True,
        capture_output=True,
    )
    try:
        yield name
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def test_preinstalled_without_citus_fails_saying_so(tmp_path: Path, bare_container: str) -> None:
    inventory = {
        "all": {
            "vars": {
                "ansible_connection": "community.docker.docker",
                "ansible_python_interpreter": "/usr/bin/python3",
            },
            "children": {
                "coordinator": {"hosts": {bare_container: {}}},
                "workers": {"hosts": {}},
            },
        }
    }
    (tmp_path / "hosts.yml").write_text(json.dumps(inventory))
    (tmp_path / "play.yml").write_text(
        json.dumps(
            [
                {
                    "name": "Install a node from a preinstalled image",
                    "hosts": "coordinator",
                    "roles": [{"role": "citus_node"}],
                    "vars": MAPPING | SECRETS | {"citus_node_install_method": "preinstalled"},
                }
            ]
        )
    )
    result = subprocess.run(
        [
            str(VENV_BIN / "ansible-playbook"),
            "-i",
            str(tmp_path / "hosts.yml"),
            str(tmp_path / "play.yml"),
            "--tags",
            "install",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
        env=ansible_env() | {"ANSIBLE_ROLES_PATH": str(REPO_ROOT / "roles")},
    )
    output = unwrap(ANSI.sub("", result.stdout + result.stderr))
    assert result.returncode != 0, output[-3000:]
    assert "citus_node_install_method is 'preinstalled' but the citus extension is not" in output
    assert "/usr/share/postgresql/15/extension/citus.control" in output
    assert "or set citus_node_install_method to 'apt'" in output
    for secret in SECRETS.values():
        assert secret not in output
