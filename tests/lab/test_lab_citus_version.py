"""The lab follows the Citus release its image carries: bin/lab's inventory and the molecule
scenarios take it from the image's label (or, for an image built before the label, from its
citus.control), so a machine with another supported Citus needs no edit."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from lab import molecule
from lab.cli import Lab, Settings
from lab.topology import CITUS_CONTROL, CITUS_VERSION_LABEL, citus_version, version_from_control

# Test-only images and containers: removed afterwards.
TEST_REPOSITORY = "dialogs-lab-test/citus-relabelled"


def _relabelled(base: str, version: str) -> str:
    """A copy of ``base`` whose Citus version label says ``version`` (empty: no label)."""
    name = f"{TEST_REPOSITORY}:{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["docker", "build", "-q", "-t", name, "-"],
        input=f"FROM {base}\nLABEL {CITUS_VERSION_LABEL}={json.dumps(version)}\n",
        text=True, capture_output=True, check=True, timeout=300,
        env=os.environ | {"DOCKER_BUILDKIT": "0"},  # the classic builder: no buildx here
    )  # fmt: skip
    return name


@pytest.fixture(scope="module")
def images(citus_image: str) -> Iterator[dict[str, str]]:
    """The Citus image relabelled as Citus 13.2, and one whose label is empty."""
    made = {"13.2": _relabelled(citus_image, "13.2"), "": _relabelled(citus_image, "")}
    yield made
    subprocess.run(["docker", "image", "rm", *made.values()], capture_output=True)


def test_version_from_control() -> None:
    assert version_from_control("comment = 'Citus'\ndefault_version = '13.2-1'\n") == "13.2"
    assert version_from_control("default_version = '12.1-1'") == "12.1"
    with pytest.raises(ValueError, match="no default_version"):
        version_from_control("comment = 'no version here'\n")


def test_the_label_names_the_release(images: dict[str, str]) -> None:
    assert citus_version(images["13.2"]) == "13.2"


def test_without_the_label_citus_control_names_it(images: dict[str, str]) -> None:
    control = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "cat", images[""], CITUS_CONTROL],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    match = re.search(r"default_version\s*=\s*'(\d+\.\d+)", control)
    assert match, control
    assert citus_version(images[""]) == match.group(1)


def test_bin_lab_inventory_carries_the_image_release(
    images: dict[str, str], tmp_path: Path
) -> None:
    """What `bin/lab up` and `scale` write, for a lab whose image says Citus 13.2."""
    lab = Lab(
        Settings.from_env({"LAB_STATE_DIR": str(tmp_path), "LAB_CITUS_IMAGE": images["13.2"]})
    )
    lab.citus_source = "preinstalled"
    lab.write_inventory()
    inventory = yaml.safe_load((tmp_path / "inventory.yml").read_text())
    assert inventory["all"]["vars"]["citus_node_citus_version"] == "13.2"
    assert inventory["all"]["vars"]["lab_citus_install_method"] == "preinstalled"


def test_molecule_containers_get_the_lab_settings_and_release(
    images: dict[str, str], tmp_path: Path
) -> None:
    """The shared create step (molecule/shared/create.yml runs lab.molecule): a platform that
    names only itself becomes a systemd container, and the scenario's Citus release is the
    image's."""
    name = f"lab-test-molecule-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "molecule.yml"
    config.write_text(
        yaml.safe_dump({"platforms": [{"name": name, "image": images["13.2"],
                                       "networks": [{"name": name}]}]})
    )  # fmt: skip
    try:
        molecule.create(config, tmp_path / "ephemeral")
        host = json.loads(
            subprocess.run(
                ["docker", "inspect", name], capture_output=True, text=True, check=True
            ).stdout
        )[0]
        assert (tmp_path / "ephemeral" / "citus-version").read_text() == "13.2"
        assert [cap.removeprefix("CAP_") for cap in host["HostConfig"]["CapAdd"]] == ["SYS_ADMIN"]
        assert host["HostConfig"]["CgroupnsMode"] == "host"
        assert set(host["HostConfig"]["Tmpfs"]) == {"/run", "/run/lock"}
        assert host["Config"]["StopSignal"] == "SIGRTMIN+3"
        assert host["Config"]["Cmd"] == ["/lib/systemd/systemd"]
        assert host["Config"]["Labels"]["owner"] == "molecule"
        assert list(host["NetworkSettings"]["Networks"]) == [name]
        state = ""
        for _ in range(90):  # systemd boots as PID 1 (its bus answers after a moment)
            state = subprocess.run(
                ["docker", "exec", name, "systemctl", "is-system-running"],
                capture_output=True, text=True, timeout=60,
            ).stdout.strip()  # fmt: skip
            if state in ("running", "degraded"):
                break
            time.sleep(1)
        assert state in ("running", "degraded")
    finally:
        molecule.destroy(config)
    assert subprocess.run(["docker", "inspect", name], capture_output=True).returncode != 0
    assert subprocess.run(["docker", "network", "inspect", name], capture_output=True).returncode
