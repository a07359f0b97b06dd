"""What bin/lab writes for each topology (no docker: the inventory, the certificates, the
refusal to switch a running lab's topology)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from lab import tls
from lab.cli import Lab, LabError, Settings


def _lab(state: Path, topology: str) -> Lab:
    lab = Lab(Settings.from_env({"LAB_STATE_DIR": str(state), "LAB_TOPOLOGY": topology}))
    lab.citus_source = "apt"  # no image to read the release from
    return lab


def _inventory(state: Path) -> dict:
    inventory: dict = yaml.safe_load((state / "inventory.yml").read_text())["all"]
    return inventory


def test_the_single_topology_has_a_coordinator_and_workers(tmp_path: Path) -> None:
    _lab(tmp_path, "single").write_inventory()
    inventory = _inventory(tmp_path)
    children = inventory["children"]
    assert list(children["coordinator"]["hosts"]) == ["lab-coordinator"]
    assert list(children["workers"]["hosts"]) == ["lab-worker1", "lab-worker2"]
    assert "patroni" not in children and "etcd" not in children
    assert inventory["vars"]["lab_coordinator_addresses"] == ["10.213.0.10"]


def test_the_ha_topology_has_two_hosts_per_group_and_three_etcd_members(tmp_path: Path) -> None:
    _lab(tmp_path, "ha").write_inventory()
    inventory = _inventory(tmp_path)
    children = inventory["children"]
    members = children["patroni"]["hosts"]
    assert {name: host["patroni_citus_group"] for name, host in members.items()} == {
        "lab-pg0-1": 0, "lab-pg0-2": 0, "lab-pg1-1": 1, "lab-pg1-2": 1,
        "lab-pg2-1": 2, "lab-pg2-2": 2,
    }  # fmt: skip
    addresses = [host["lab_private_address"] for host in members.values()]
    assert len(set(addresses)) == len(addresses)
    assert list(children["etcd"]["hosts"]) == ["lab-pg0-1", "lab-pg1-1", "lab-pg2-1"]
    assert "coordinator" not in children and "workers" not in children
    assert inventory["vars"]["lab_coordinator_addresses"] == [
        members["lab-pg0-1"]["lab_private_address"],
        members["lab-pg0-2"]["lab_private_address"],
    ]
    assert (tmp_path / "topology").read_text().strip() == "ha"


def test_a_lab_keeps_its_topology_until_it_is_taken_down(tmp_path: Path) -> None:
    _lab(tmp_path, "ha").write_inventory()
    assert _lab(tmp_path, "").topology == "ha"
    with pytest.raises(LabError, match="runs the ha topology, LAB_TOPOLOGY asks for single"):
        _ = _lab(tmp_path, "single").topology
    with pytest.raises(LabError, match="LAB_TOPOLOGY=triple: use one of ha, single"):
        _ = _lab(tmp_path / "other", "triple").topology


def test_each_cluster_host_gets_a_certificate_of_the_cluster_ca(tmp_path: Path) -> None:
    lab = _lab(tmp_path, "ha")
    lab.ensure_tls()
    ca = tmp_path / "tls" / tls.CLUSTER_CA_CERT
    for name in lab.database_hosts():
        certificate, key = tls.host_files(tmp_path / "tls", name)
        assert key.stat().st_mode & 0o077 == 0
        verified = subprocess.run(
            ["openssl", "verify", "-CAfile", str(ca), str(certificate)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert verified.returncode == 0, verified.stdout + verified.stderr
    # Made once: a second call keeps them.
    hosts = {name: address for name, (_, address) in lab.database_hosts().items()}
    before = {name: tls.host_files(tmp_path / "tls", name)[0].read_bytes() for name in hosts}
    assert tls.ensure_hosts(tmp_path / "tls", hosts) == []
    after = {name: tls.host_files(tmp_path / "tls", name)[0].read_bytes() for name in hosts}
    assert before == after
