"""The service roles (dialogs, gateway) and the edge: their molecule scenarios on a systemd
container (create, converge, idempotence, side effect, verify, destroy; the three run
concurrently) and ansible-lint's production profile on them and on the playbooks and lab
inventory that use them."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from servicekit.config import Env
from tests.lab.lab_support import REPO_ROOT, run

VENV_BIN = REPO_ROOT / ".venv" / "bin"


MOLECULE_ROLES = ["dialogs", "gateway", "edge"]


def _molecule_test(role: str, wheelhouse: Path) -> subprocess.CompletedProcess[str]:
    return run(
        [str(VENV_BIN / "molecule"), "test"],
        timeout=1800,
        env={
            "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
            "MOLECULE_WHEELHOUSE_DIR": str(wheelhouse),
            "NO_COLOR": "1",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
        },
        cwd=REPO_ROOT / "roles" / role,
        check=False,
    )


@pytest.fixture(scope="module")
def molecule_runs(
    request: pytest.FixtureRequest, wheelhouse: Path, citus_image: str
) -> Iterator[dict[str, Future[subprocess.CompletedProcess[str]]]]:
    """Starts, concurrently, the scenarios of the selected tests (each role has containers
    and a molecule directory of its own; they mostly wait on them); each test waits for its
    own."""
    wanted = sorted(
        {
            item.callspec.params["role"]
            for item in request.session.items
            if getattr(item, "originalname", "") == "test_molecule_scenario"
            and item.path == Path(__file__)
            and hasattr(item, "callspec")
        }
    )
    with ThreadPoolExecutor(max_workers=len(wanted) or 1) as pool:
        yield {role: pool.submit(_molecule_test, role, wheelhouse) for role in wanted}


@pytest.mark.parametrize("role", MOLECULE_ROLES)
def test_molecule_scenario(
    molecule_runs: dict[str, Future[subprocess.CompletedProcess[str]]], role: str
) -> None:
    result = molecule_runs[role].result()
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    # molecule's summary: every step of the sequence ran, none was skipped.
    for action in ("converge", "idempotence", "check", "side_effect", "verify"):
        assert f"default > {action}: Executed: Successful" in output, action


def test_ansible_lint_production_profile() -> None:
    result = run(
        [
            str(VENV_BIN / "ansible-lint"), "--nocolor", "--profile", "production",
            "roles/dialogs", "roles/gateway", "roles/python_app", "roles/edge",
            "molecule/services", "playbooks/services.yml", "playbooks/edge.yml",
            "playbooks/site.yml", "inventory/lab",
        ],
        timeout=900,
        env={"PATH": f"{VENV_BIN}:{os.environ['PATH']}"},
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]


_VALID: dict[str, dict[str, object]] = {
    "dialogs": {
        "dialogs_bind_address": "10.0.0.5",
        "python_app_python_version": "3.11",
        "dialogs_database_host": "10.0.0.10",
        "dialogs_database_password": "preflight-db-password",
        "dialogs_internal_token": "preflight-internal-token",
    },
    "gateway": {
        "gateway_upstreams": ["http://10.0.0.5:8081"],
        "python_app_python_version": "3.11",
        "gateway_database_host": "10.0.0.10",
        "gateway_database_password": "preflight-db-password",
        "gateway_internal_token": "preflight-internal-token",
        "gateway_jwt_secret": "preflight-jwt-secret-0123456789abcdef",
    },
    "edge": {
        "edge_backends": ["10.0.0.5:8090"],
        "edge_metrics_address": "10.0.0.4",
        "edge_limit_nofile": 10000,
        "edge_tls_certificate": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
        "edge_tls_private_key": "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----",
    },
}


_BAD_INPUT: list[tuple[str, dict[str, object], str]] = [
    ("dialogs", {"dialogs_bind_address": "0.0.0.0"},
     "dialogs_bind_address must be the host's private address"),
    ("dialogs", {"dialogs_internal_token": "short"},
     "dialogs_internal_token is missing or shorter than 16"),
    ("dialogs", {"dialogs_instance_count": 0}, "dialogs_instance_count must be at least 1, got 0"),
    ("dialogs", {"dialogs_extra_env": {"PATH": "/usr/bin"}},
     "dialogs_extra_env must map DIALOGS_* names"),
    ("dialogs", {"dialogs_database_password": ""}, "dialogs_database_password is missing"),
    ("dialogs", {"dialogs_database_hosts": ["10.0.0.10", ""]},
     "dialogs_database_host is empty (or dialogs_database_hosts lists an empty one)"),
    # Checked by python_app for both services, naming the calling role's variable:
    ("gateway", {"gateway_instance_count": 0}, "gateway_instance_count must be at least 1, got 0"),
    ("gateway", {"gateway_extra_env": {"DIALOGS_LOG_LEVEL": "INFO"}},
     "gateway_extra_env must map GATEWAY_* names"),
    ("gateway", {"gateway_jwt_secret": "short"},
     "gateway_jwt_secret is missing or shorter than 32"),
    ("gateway", {"gateway_upstreams": []},
     "gateway_upstreams must list the dialogs instances' base URLs"),
    ("gateway", {"gateway_upstreams": ["ftp://10.0.0.5"]}, "gateway_upstreams must list the"),
    ("edge", {"edge_tls_private_key": ""}, "edge_tls_private_key is missing or holds no PEM"),
    ("edge", {"edge_tls_certificate": "not a certificate"},
     "edge_tls_certificate is missing or holds no PEM certificate"),
    ("edge", {"edge_backends": []}, "edge_backends must list every gateway instance"),
    ("edge", {"edge_backends": ["http://10.0.0.5:8090"]}, "edge_backends must list every"),
    ("edge", {"edge_metrics_address": "0.0.0.0"}, "edge_metrics_address must be one private"),
    ("edge", {"edge_limit_nofile": 1000, "edge_maxconn": 4000},
     "edge_maxconn (4000) must be >= 100 and leave two descriptors"),
    ("edge", {"edge_timeout_http_request_s": 0}, "edge_timeout_http_request_s,"),
    ("edge", {"edge_limit_nofile": 2_000_000_000},
     "edge_limit_nofile (2000000000) is above the open-files limit of this host's systemd"),
    ("edge", {"edge_virtual_address": "edge.example.com"},
     "edge_virtual_address must be an IPv4 address"),
    ("edge", {"edge_virtual_address": "10.0.0.100"},
     "edge_vrrp_interface: no interface of localhost has an IPv4 subnet holding"),
    ("edge", {"edge_virtual_address": "10.0.0.100", "edge_bind_address": "10.0.0.100"},
     "edge_bind_address must be * with edge_virtual_address set"),
    ("edge", {"edge_virtual_address": "10.0.0.100", "edge_vrrp_router_id": 300},
     "edge_vrrp_router_id must be 1-255"),
    ("edge", {"edge_virtual_address": "10.0.0.100"},
     "edge_vrrp_peers must list the other edge hosts' private IPv4 addresses, got []"),
    # Caught one step earlier, by the role's argument spec:
    ("edge", {"edge_http_mode": "allow"}, "value of edge_http_mode must be one of: refuse"),
    ("gateway", {"gateway_database_sslmode": "on"},
     "value of gateway_database_sslmode must be one of: disable, allow, prefer"),
]  # fmt: skip


@pytest.mark.parametrize(("role", "bad", "message"), _BAD_INPUT)
def test_preflight_names_the_variable_to_fix(
    role: str, bad: dict[str, object], message: str, tmp_path: Path
) -> None:
    """Bad input stops the role in its first tasks (argument spec, then preflight), before
    anything changes on the host, with a message that names the variable."""
    variables = tmp_path / "vars.json"
    # Preflight may read the host (the edge reads its file limit): with this Python.
    interpreter = {"ansible_python_interpreter": str(VENV_BIN / "python")}
    variables.write_text(json.dumps(_VALID[role] | bad | interpreter))
    playbook = tmp_path / "play.yml"
    playbook.write_text(
        "- hosts: localhost\n"
        "  connection: local\n"
        "  gather_facts: false\n"
        "  tasks:\n"
        f"    - {{name: Apply the role, ansible.builtin.include_role: {{name: {role}}}}}\n"
    )
    result = run(
        [str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", "-e", f"@{variables}",
         str(playbook)],
        timeout=300,
        env={
            "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
            "ANSIBLE_ROLES_PATH": str(REPO_ROOT / "roles"),
            "ANSIBLE_NOCOLOR": "1",
        },
        check=False,
    )  # fmt: skip
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0
    assert message in output
    assert "changed=0" in output


def _spec_row(name: str, spec: dict[str, Any]) -> str:
    """An option's row in the README table, from its argument spec."""
    description = spec["description"]
    if isinstance(description, list):
        description = " ".join(description)
    description = re.sub(r"C\(([^)]*(?:\([^)]*\))?[^)]*)\)", r"`\1`", description)
    kind = spec.get("type", "str") + (f" of {spec['elements']}" if "elements" in spec else "")
    if "choices" in spec:
        kind += ": " + ", ".join(map(str, spec["choices"]))
    if spec.get("required"):
        default = "required"
    elif "default" in spec:
        default = f"`{json.dumps(spec['default'])}`"
    else:
        default = "computed"
    return f"| `{name}` | {kind} | {default} | {description.replace('|', chr(92) + '|')} |"


@pytest.mark.parametrize("role", ["dialogs", "gateway", "python_app", "edge"])
def test_readme_options_table_matches_the_argument_spec(role: str) -> None:
    role_dir = REPO_ROOT / "roles" / role
    spec = yaml.safe_load((role_dir / "meta" / "argument_specs.yml").read_text())
    options = spec["argument_specs"]["main"]["options"]
    readme = (role_dir / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| `")]
    assert rows == [_spec_row(name, option) for name, option in options.items()]
    # And every option the role's defaults set is documented.
    defaults = yaml.safe_load((role_dir / "defaults" / "main.yml").read_text()) or {}
    assert set(defaults) <= set(options)


@pytest.mark.parametrize(
    ("hosts", "servers"),
    [
        (["10.0.0.10"], "10.0.0.10:5432/dialogs?sslmode=require"),
        (
            ["10.0.0.10", "10.0.0.11", "fd00::12"],
            "10.0.0.10:5432,10.0.0.11:5432,[fd00::12]:5432/dialogs?sslmode=require"
            "&target_session_attrs=read-write",
        ),
    ],
)
def test_the_env_file_names_every_database_server(
    hosts: list[str], servers: str, tmp_path: Path
) -> None:
    """python_app's environment file: one server, or every server that may be the
    coordinator's primary with target_session_attrs=read-write; the service accepts it."""
    variables = tmp_path / "vars.json"
    database = {"hosts": hosts, "port": 5432, "name": "dialogs", "user": "dialogs",
                "password": "p@ss/word", "sslmode": "require"}  # fmt: skip
    variables.write_text(
        json.dumps(
            {
                "python_app_name": "dialogs",
                "python_app_database": database,
                "python_app_env": {},
                "python_app_extra_env": {},
                "ansible_python_interpreter": str(VENV_BIN / "python"),
            }
        )
    )
    playbook = tmp_path / "play.yml"
    template = REPO_ROOT / "roles" / "python_app" / "templates" / "app.env.j2"
    playbook.write_text(
        "- hosts: localhost\n  connection: local\n  gather_facts: false\n  tasks:\n"
        f"    - ansible.builtin.template: {{src: '{template}', dest: '{tmp_path}/app.env'}}\n"
    )
    run(
        [str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", "-e", f"@{variables}",
         str(playbook)],
        timeout=120,
        env={"PATH": f"{VENV_BIN}:{os.environ['PATH']}", "ANSIBLE_NOCOLOR": "1"},
    )  # fmt: skip
    lines = (tmp_path / "app.env").read_text().splitlines()
    [url_line] = [line for line in lines if line.startswith("DIALOGS_DATABASE_URL=")]
    url = url_line.split("=", 1)[1].strip('"')
    assert url == f"postgresql://dialogs:p%40ss%2Fword@{servers}"
    assert "" not in lines[2:], "blank lines in the environment file"
    assert Env({"DIALOGS_DATABASE_URL": url}).database_url("DIALOGS_DATABASE_URL") == url
