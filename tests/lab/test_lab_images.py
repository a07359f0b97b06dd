"""lab/images/build.sh reuses dialogs-lab/citus:pg15 only while it holds this host's
PostgreSQL package and Citus files (its labels say what it was built from), and rebuilds it
when they differ."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from lab.cli import Lab, LabError, Settings
from lab.topology import BUILD_SCRIPT
from tests.lab.conftest import REPO_ROOT

PG_LIB = Path("/usr/lib/postgresql/15/lib")
PG_EXT = Path("/usr/share/postgresql/15/extension")


def docker(*args: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
        env=os.environ | {"DOCKER_BUILDKIT": "0"},
    )


def image_id(image: str) -> str:
    return docker("image", "inspect", "-f", "{{.Id}}", image).stdout.strip()


def labels(image: str) -> dict[str, str]:
    out = docker("image", "inspect", "-f", "{{json .Config.Labels}}", image).stdout
    found: dict[str, str] = json.loads(out) or {}
    return {k: v for k, v in found.items() if k.startswith("org.dialogs-lab.")}


DOCKERFILE = Path(__file__).resolve().parents[2] / "lab" / "images" / "citus.Dockerfile"


def host_labels() -> dict[str, str]:
    """The labels the image must carry on this host, computed here independently of build.sh."""
    files = [*PG_LIB.glob("citus*.so"), *PG_EXT.glob("citus*")]
    names = {f"lib/{p.name}" if p.parent == PG_LIB else f"extension/{p.name}": p for p in files}
    decoders = PG_LIB / "citus_decoders"
    names |= {f"lib/citus_decoders/{p.relative_to(decoders)}": p for p in decoders.rglob("*")}
    listing = "".join(
        f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {name}\n"
        for name, path in sorted(names.items())
        if path.is_file()
    )
    control = (PG_EXT / "citus.control").read_text()
    version = re.search(r"default_version\s*=\s*'(\d+\.\d+)", control)
    assert version, control
    package = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "postgresql-15"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {
        "org.dialogs-lab.postgresql": package,
        "org.dialogs-lab.citus-files": hashlib.sha256(listing.encode()).hexdigest(),
        "org.dialogs-lab.citus-version": version.group(1),
        # The image's recipe: a changed Dockerfile rebuilds it too.
        "org.dialogs-lab.recipe": hashlib.sha256(DOCKERFILE.read_bytes()).hexdigest(),
    }


def build_citus_image() -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO_ROOT / BUILD_SCRIPT), "citus"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO_ROOT,
    )


@pytest.mark.parametrize(
    ("label", "stale", "reason"),
    [
        ("org.dialogs-lab.citus-files", "0" * 64, "holds other Citus files (" + "0" * 64),
        (
            "org.dialogs-lab.postgresql",
            "15.0-0+deb12u0",
            "was built from postgresql-15 '15.0-0+deb12u0', this host has",
        ),
    ],
    ids=["citus-files", "postgresql"],
)
def test_citus_image_is_rebuilt_when_the_host_differs(
    citus_image: str, label: str, stale: str, reason: str, tmp_path: Path
) -> None:
    expected = host_labels()
    assert labels(citus_image) == expected, "build.sh left an image that does not match the host"
    original = image_id(citus_image)
    # An image of the same name that says it was built from something else.
    (tmp_path / "Dockerfile").write_text(f"FROM {citus_image}\nLABEL {label}={stale}\n")
    docker("build", "-q", "-t", citus_image, str(tmp_path))
    stale_id = image_id(citus_image)
    try:
        assert labels(citus_image)[label] == stale
        result = build_citus_image()
        assert result.returncode == 0, result.stderr[-4000:]
        message = " ".join(result.stderr.split())
        assert reason in message and "rebuilding it" in message, message
        assert labels(citus_image) == expected
        assert image_id(citus_image) != stale_id
        # Matching again: reused, not rebuilt.
        again = build_citus_image()
        assert again.returncode == 0, again.stderr[-4000:]
        assert "matches this host" in again.stderr and "reused" in again.stderr, again.stderr
    finally:
        # Leave the image as the session found it: the original back under its name.
        if subprocess.run(["docker", "image", "inspect", original], capture_output=True).returncode:
            build_citus_image()
        else:
            docker("tag", original, citus_image)
        subprocess.run(["docker", "image", "rm", stale_id], capture_output=True)


def lab_in(tmp_path: Path) -> Lab:
    lab = Lab(Settings.from_env(os.environ | {"LAB_STATE_DIR": str(tmp_path / "state")}))
    lab.citus_source = "preinstalled"
    return lab


def test_lab_up_rebuilds_an_image_built_from_other_citus_files(
    citus_image: str, tmp_path: Path
) -> None:
    """bin/lab up's image step goes through build.sh's comparison, not only when the image
    is missing: a host whose Citus changed gets an image of its own files."""
    expected = host_labels()
    original = image_id(citus_image)
    (tmp_path / "Dockerfile").write_text(
        f"FROM {citus_image}\nLABEL org.dialogs-lab.citus-files={'0' * 64}\n"
    )
    docker("build", "-q", "-t", citus_image, str(tmp_path))
    stale_id = image_id(citus_image)
    try:
        lab_in(tmp_path).ensure_images()
        assert image_id(citus_image) != stale_id
        assert labels(citus_image) == expected
    finally:
        docker("tag", original, citus_image)
        subprocess.run(["docker", "image", "rm", stale_id], capture_output=True)


def test_lab_up_refuses_a_container_made_from_an_older_build(
    citus_image: str, tmp_path: Path
) -> None:
    """A lab node created before the image was rebuilt would run the old binaries: bin/lab up
    stops and names the fix instead of deploying a cluster that mixes them."""
    older, name = "dialogs-lab/test-older-build", "lab-test-older-build"
    (tmp_path / "Dockerfile").write_text(f"FROM {citus_image}\nLABEL org.dialogs-lab.test=old\n")
    docker("build", "-q", "-t", older, str(tmp_path))
    docker("create", "--name", name, older)
    try:
        lab_in(tmp_path).refuse_stale_container(name, older)  # its own image: accepted
        with pytest.raises(LabError, match=r"created from an older build of .*bin/lab down"):
            lab_in(tmp_path).refuse_stale_container(name, citus_image)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        subprocess.run(["docker", "image", "rm", older], capture_output=True)
