"""`bin/lab up` on a machine that has no Citus and cannot reach Citus's repository stops
at once, says exactly that, and creates nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.topology import LABEL, PRIVATE_NETWORK
from tests.lab.lab_support import BIN_LAB, run


def _lab_objects() -> tuple[list[str], list[str]]:
    containers = run(
        ["docker", "ps", "-aq", "--filter", f"label={LABEL}"], timeout=60
    ).stdout.split()
    networks = run(
        ["docker", "network", "ls", "-q", "--filter", f"name={PRIVATE_NETWORK}"], timeout=60
    ).stdout.split()
    return sorted(containers), sorted(networks)


def test_up_stops_when_citus_can_be_neither_copied_nor_installed(tmp_path: Path) -> None:
    before = _lab_objects()
    result = run(
        [str(BIN_LAB), "up"],
        timeout=600,
        env={
            "LAB_STATE_DIR": str(tmp_path / "state"),
            "LAB_CITUS_IMAGE": "dialogs-lab/citus:no-such-image",
            "LAB_HOST_CITUS_SO": str(tmp_path / "no-citus.so"),
            # Nothing listens on the discard port: the repository cannot be reached.
            "LAB_CITUS_REPO_URL": "http://127.0.0.1:9/citus/debian/",
        },
        check=False,
    )
    assert result.returncode != 0
    message = " ".join(result.stderr.split())
    assert "Citus is not available: it is not installed on this machine" in message
    assert f"({tmp_path / 'no-citus.so'} is missing" in message
    assert "Citus's apt repository (http://127.0.0.1:9/citus/debian/) cannot be reached" in message
    assert "ansible-playbook" not in result.stdout + result.stderr
    assert _lab_objects() == before


@pytest.mark.parametrize("argument", ["0", "-0", "two"])
def test_scale_rejects_a_bad_count(argument: str, tmp_path: Path) -> None:
    result = run(
        [str(BIN_LAB), "scale", argument],
        timeout=60,
        env={"LAB_STATE_DIR": str(tmp_path)},
        check=False,
    )
    assert result.returncode != 0
    assert "usage: bin/lab scale N" in result.stderr


def test_scale_in_needs_a_lab(tmp_path: Path) -> None:
    result = run(
        [str(BIN_LAB), "scale", "-1"], timeout=60, env={"LAB_STATE_DIR": str(tmp_path)}, check=False
    )
    assert result.returncode != 0
    assert "the lab is not up: run bin/lab up first" in result.stderr
