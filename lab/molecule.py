"""The molecule scenarios' containers: the lab's systemd containers (``topology``), so that a
scenario names only its platforms (name, groups, networks; image: the Citus image unless
given). molecule/shared/create.yml and destroy.yml run this, for every scenario, through
the base config .config/molecule/config.yml.

    python -m lab.molecule create|destroy MOLECULE_FILE EPHEMERAL_DIRECTORY
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from lab import topology

LABEL = "owner=molecule"
# Read by the base config's citus_node_citus_version: the release the image carries.
CITUS_VERSION_FILE = "citus-version"


def _docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        sys.exit(f"docker {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def _platforms(config_file: Path) -> list[dict[str, Any]]:
    config = yaml.safe_load(config_file.read_text())
    platforms: list[dict[str, Any]] = config["platforms"]
    return platforms


def _networks(platform: dict[str, Any]) -> list[str]:
    return [network["name"] for network in platform.get("networks", [])]


def _subnets(platforms: list[dict[str, Any]]) -> dict[str, str]:
    """network -> subnet, for the networks a platform gives one (``subnet:``); docker picks
    the others'."""
    return {
        network["name"]: str(network["subnet"])
        for platform in platforms
        for network in platform.get("networks", [])
        if network.get("subnet")
    }


def image_of(platform: dict[str, Any]) -> str:
    return str(platform.get("image") or os.environ.get("LAB_CITUS_IMAGE") or topology.CITUS_IMAGE)


def create(config_file: Path, ephemeral: Path) -> None:
    platforms = _platforms(config_file)
    subnets = _subnets(platforms)
    for network in dict.fromkeys(n for p in platforms for n in _networks(p)):
        if _docker("network", "inspect", network, check=False).returncode != 0:
            subnet = ["--subnet", subnets[network]] if network in subnets else []
            _docker("network", "create", "--label", LABEL, *subnet, network)
    for platform in platforms:
        name, networks = platform["name"], _networks(platform)
        if _docker("container", "inspect", name, check=False).returncode == 0:
            _docker("start", name)
            continue
        options = ["--label", LABEL, *(["--network", networks[0]] if networks else [])]
        _docker(*topology.systemd_container(name, image_of(platform), *options)[1:])
        for network in networks[1:]:
            _docker("network", "connect", network, name)
    versions = {_citus_version(image) for image in {image_of(p) for p in platforms}} - {""}
    if len(versions) > 1:
        sys.exit(f"the scenario's images carry different Citus releases: {sorted(versions)}")
    ephemeral.mkdir(parents=True, exist_ok=True)
    (ephemeral / CITUS_VERSION_FILE).write_text(versions.pop() if versions else "")


def _citus_version(image: str) -> str:
    """The image's Citus release; empty for an image without Citus."""
    try:
        return topology.citus_version(image)
    except (subprocess.CalledProcessError, ValueError):
        return ""


def destroy(config_file: Path) -> None:
    platforms = _platforms(config_file)
    names = [platform["name"] for platform in platforms]
    _docker("rm", "-f", *names, check=False)
    for network in dict.fromkeys(n for p in platforms for n in _networks(p)):
        if _docker("network", "inspect", network, check=False).returncode == 0:
            _docker("network", "rm", network)


def main() -> None:
    if len(sys.argv) != 4 or sys.argv[1] not in ("create", "destroy"):
        sys.exit(__doc__)
    command, config_file, ephemeral = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    if command == "create":
        create(config_file, ephemeral)
    else:
        destroy(config_file)


if __name__ == "__main__":
    main()
