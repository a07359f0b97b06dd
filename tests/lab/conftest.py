"""Fixtures shared by the lab tier: the local images and the project's wheelhouse, built
once per session and reused."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.topology import BASE_IMAGE, BUILD_SCRIPT, CITUS_IMAGE, image_exists
from tests.lab.lab_support import build_wheelhouse

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class LabImages:
    base: str
    # None when this machine has no Citus to copy into an image (build.sh skips the variant).
    citus: str | None


@pytest.fixture(scope="session")
def lab_images() -> LabImages:
    """lab/images/build.sh: builds what is missing (minutes the first time), else reuses."""
    result = subprocess.run(
        [str(REPO_ROOT / BUILD_SCRIPT)], capture_output=True, text=True, timeout=1800, cwd=REPO_ROOT
    )
    if result.returncode != 0:
        pytest.fail(f"lab/images/build.sh failed:\n{result.stderr[-4000:]}")
    assert image_exists(BASE_IMAGE), result.stderr
    return LabImages(base=BASE_IMAGE, citus=CITUS_IMAGE if image_exists(CITUS_IMAGE) else None)


@pytest.fixture(scope="session")
def citus_image(lab_images: LabImages) -> str:
    """The image with PostgreSQL + Citus; skips when this machine has no Citus to copy."""
    if lab_images.citus is None:
        pytest.skip("no dialogs-lab/citus:pg15: this machine has no Citus to put in the image")
    return lab_images.citus


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The services' wheelhouse for the lab hosts, as the roles build it (once)."""
    return build_wheelhouse(tmp_path_factory.mktemp("wheelhouse"))
