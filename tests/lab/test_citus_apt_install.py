"""citus_node with citus_node_install_method=apt, for real, against a signed apt repository.

The test builds a repository laid out like Citus's (https://repos.citusdata.com/community/debian/,
suite = the Debian codename, component main, key at .../community/gpgkey) holding a package
named like theirs, postgresql-15-citus-<major.minor> at <full version>.citus-1, made with
dpkg-deb from this machine's Citus files, signed with a throw-away key generated for the run.
It serves the repository over HTTP from a container on a docker network of its own, and runs
the role on a second container from the plain systemd image (no PostgreSQL, no Citus): check
mode on the fresh host, the install (deb822 source, the key fetched from its URL, the package
name and pin, PostgreSQL 15 from Debian's archive), a second run with changed=0, then the
role's molecule verify (citus first in shared_preload_libraries, TLS, scram-only pg_hba, the
extension at the packaged version, reload versus restart).

What it does not prove: Citus's own packages (their names and versions as published, their
dependencies), their key, their repository's layout and PGDG; only a run against
repos.citusdata.com does (docs/testing.md).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.topology import systemd_container
from tests.lab.conftest import LabImages
from tests.lab.lab_support import REPO_ROOT, docker_exec, recap, run

VENV_BIN = REPO_ROOT / ".venv" / "bin"
PG_MAJOR = "15"
PG_LIB = Path(f"/usr/lib/postgresql/{PG_MAJOR}/lib")
PG_EXT = Path(f"/usr/share/postgresql/{PG_MAJOR}/extension")
VERIFY = REPO_ROOT / "roles" / "citus_node" / "molecule" / "default" / "verify.yml"
TOOLS = ("dpkg-deb", "dpkg-query", "apt-ftparchive", "gpg", "gpgconf", "readelf")
REPO_PORT = 8000


@dataclass(frozen=True)
class CitusPackage:
    name: str  # postgresql-15-citus-13.0
    version: str  # 13.0.5.citus-1
    major_minor: str  # 13.0
    deb: Path


def host_citus_version() -> tuple[str, str]:
    """(major.minor from citus.control, full version from the library's banner)."""
    control = (PG_EXT / "citus.control").read_text()
    short = re.search(r"default_version\s*=\s*'(\d+\.\d+)", control)
    banner = re.search(rb"Citus (\d+\.\d+\.\d+) on ", (PG_LIB / "citus.so").read_bytes())
    assert short and banner, "cannot read this machine's Citus version"
    return short.group(1), banner.group(1).decode()


def owning_package(library: str, objects: list[Path]) -> str:
    """The Debian package that ships ``library`` (a DT_NEEDED name), as dpkg-shlibdeps finds it."""
    ldd = run(["ldd", *map(str, objects)], timeout=30).stdout
    match = re.search(rf"^\s*{re.escape(library)} => (\S+)", ldd, re.M)
    assert match, f"{library} not resolved by ldd:\n{ldd}"
    real = Path(match.group(1)).resolve()
    candidates = [str(real), str(real).removeprefix("/usr")]
    for candidate in candidates:
        found = subprocess.run(["dpkg-query", "-S", candidate], capture_output=True, text=True)
        if found.returncode == 0:
            return found.stdout.split(":")[0]
    raise AssertionError(f"no package ships {real}")


def build_package(work: Path) -> CitusPackage:
    """postgresql-15-citus-<major.minor>, laid out like Citus's package, from this host's files."""
    major_minor, full = host_citus_version()
    name = f"postgresql-{PG_MAJOR}-citus-{major_minor}"
    version = f"{full}.citus-1"
    root = work / name
    (root / "DEBIAN").mkdir(parents=True)
    lib = root / PG_LIB.relative_to("/")
    ext = root / PG_EXT.relative_to("/")
    lib.mkdir(parents=True)
    ext.mkdir(parents=True)
    objects = sorted(PG_LIB.glob("citus*.so"))
    for path in objects:
        shutil.copy2(path, lib)
    if (PG_LIB / "citus_decoders").is_dir():
        shutil.copytree(PG_LIB / "citus_decoders", lib / "citus_decoders")
        objects += sorted((PG_LIB / "citus_decoders").glob("*.so"))
    for path in sorted(PG_EXT.glob("citus*")):
        shutil.copy2(path, ext)
    needed = set()
    for path in objects:
        dynamic = run(["readelf", "-d", str(path)], timeout=30).stdout
        needed |= set(re.findall(r"\(NEEDED\)\s+Shared library: \[(\S+)\]", dynamic))
    depends = sorted({owning_package(lib_name, objects) for lib_name in needed})
    arch = run(["dpkg", "--print-architecture"], timeout=30).stdout.strip()
    (root / "DEBIAN" / "control").write_text(
        f"Package: {name}\n"
        f"Version: {version}\n"
        f"Architecture: {arch}\n"
        "Maintainer: dialogs-platform tests <tests@invalid>\n"
        f"Depends: postgresql-{PG_MAJOR}, {', '.join(depends)}\n"
        "Section: database\n"
        "Priority: optional\n"
        "Description: Citus for PostgreSQL 15 (test package made from this machine's files)\n"
    )
    deb = work / f"{name}_{version}_{arch}.deb"
    run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(deb)], timeout=300)
    return CitusPackage(name, version, major_minor, deb)


def build_signed_repository(package: CitusPackage, served: Path, gnupg: Path) -> None:
    """served/community/debian: dists/bookworm/{InRelease,Release,Release.gpg} signed with a
    key generated here, main/binary-<arch>/Packages, pool/; served/community/gpgkey."""
    gnupg.mkdir(mode=0o700)
    gpg = [
        "gpg",
        "--batch",
        "--homedir",
        str(gnupg),
        "--passphrase",
        "",
        "--pinentry-mode",
        "loopback",
    ]
    uid = "dialogs test repository <tests@invalid>"
    run([*gpg, "--quick-gen-key", uid, "ed25519", "sign", "1d"], timeout=120)
    repo = served / "community" / "debian"
    pool = repo / "pool" / "main" / "p" / package.name
    pool.mkdir(parents=True)
    shutil.copy2(package.deb, pool)
    arch = package.deb.stem.rsplit("_", 1)[1]
    binary = repo / "dists" / "bookworm" / "main" / f"binary-{arch}"
    binary.mkdir(parents=True)
    packages = run(["apt-ftparchive", "packages", "pool"], timeout=120, cwd=repo).stdout
    (binary / "Packages").write_text(packages)
    run(["gzip", "-k9", str(binary / "Packages")], timeout=60)
    release = run(
        [
            "apt-ftparchive",
            "-o", "APT::FTPArchive::Release::Origin=dialogs-tests",
            "-o", "APT::FTPArchive::Release::Suite=bookworm",
            "-o", "APT::FTPArchive::Release::Codename=bookworm",
            "-o", "APT::FTPArchive::Release::Components=main",
            "-o", f"APT::FTPArchive::Release::Architectures={arch}",
            "release", "dists/bookworm",
        ],
        timeout=120,
        cwd=repo,
    ).stdout  # fmt: skip
    suite = repo / "dists" / "bookworm"
    (suite / "Release").write_text(release)
    run([*gpg, "--clearsign", "-o", str(suite / "InRelease"), str(suite / "Release")], timeout=60)
    run([*gpg, "-abs", "-o", str(suite / "Release.gpg"), str(suite / "Release")], timeout=60)
    key = run([*gpg, "--armor", "--export"], timeout=60).stdout
    # gpg started an agent for the throw-away home: stop it.
    run(["gpgconf", "--homedir", str(gnupg), "--kill", "gpg-agent"], timeout=60)
    assert "BEGIN PGP PUBLIC KEY BLOCK" in key
    (served / "community" / "gpgkey").write_text(key)
    served.chmod(0o755)
    for path in served.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def wait_for_boot(container: str, limit: float = 120) -> None:
    """Until systemd in ``container`` finished booting. Right after `docker run` systemctl may
    not reach systemd yet and return at once; an apt run during the boot loses its files in
    /tmp to systemd-tmpfiles ("Unknown error executing apt-key")."""
    deadline = time.monotonic() + limit
    state = ""
    while time.monotonic() < deadline:
        state = docker_exec(
            container, "systemctl", "is-system-running", "--wait", timeout=limit, check=False
        ).strip()
        if state in ("running", "degraded"):
            return
        time.sleep(1)
    raise AssertionError(f"{container} did not finish booting in {limit:.0f} s (state {state!r})")


@dataclass(frozen=True)
class AptLab:
    node: str
    repo_url: str
    key_url: str


@pytest.fixture(scope="module")
def apt_lab(lab_images: LabImages, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AptLab]:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} to build a signed apt repository")
    if not (PG_LIB / "citus.so").is_file():
        pytest.skip(f"no {PG_LIB / 'citus.so'}: this machine has no Citus to package")
    work = tmp_path_factory.mktemp("citus-apt")
    package = build_package(work / "build")
    served = work / "served"
    build_signed_repository(package, served, work / "gnupg")
    suffix = secrets.token_hex(4)
    network = f"citus-apt-{suffix}"
    server = f"citus-apt-repo-{suffix}"
    node = f"citus-apt-node-{suffix}"
    run(["docker", "network", "create", network], timeout=60)
    try:
        # The repository's server: the plain image's python3, the repository mounted read-only.
        run(
            [
                "docker", "run", "-d", "--name", server, "--network", network,
                "-v", f"{served}:/srv/apt:ro", lab_images.base,
                "python3", "-m", "http.server", str(REPO_PORT), "--directory", "/srv/apt",
            ],
            timeout=60,
        )  # fmt: skip
        run(systemd_container(node, lab_images.base, "--network", network), timeout=60)
        wait_for_boot(node)
        # A fresh Debian host has its package lists (the lab image drops them to stay small).
        docker_exec(node, "apt-get", "update", "-qq", timeout=300)
        # The node sees the repository (and the test fails here, clearly, when it does not).
        base_url = f"http://{server}:{REPO_PORT}/community"
        deadline = time.monotonic() + 30
        while True:
            probe = docker_exec(
                node, "python3", "-c",
                f"import urllib.request; print(urllib.request.urlopen('{base_url}/gpgkey').status)",
                check=False,
            )  # fmt: skip
            if probe.strip() == "200" or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert probe.strip() == "200", f"the node cannot fetch {base_url}/gpgkey"
        yield AptLab(node, f"{base_url}/debian/", f"{base_url}/gpgkey")
    finally:
        for container in (node, server):
            subprocess.run(
                ["docker", "rm", "-f", "-v", container], capture_output=True, timeout=120
            )
        subprocess.run(["docker", "network", "rm", network], capture_output=True, timeout=60)


def write_inventory(directory: Path, lab: AptLab, package: tuple[str, str]) -> Path:
    major_minor, full = package
    group_vars = {
        "ansible_connection": "community.docker.docker",
        "citus_node_install_method": "apt",
        "citus_node_citus_repository_url": lab.repo_url,
        "citus_node_citus_repository_key_url": lab.key_url,
        "citus_node_pgdg_repository_enabled": False,
        "citus_node_citus_version": major_minor,
        "citus_node_citus_package_version": f"{full}.citus-1",
        # What the molecule scenario's prepare step preloads from a file of its own.
        "citus_node_shared_preload_libraries_extra": ["pg_stat_statements"],
        "citus_node_superuser_password": f"test-su-{secrets.token_hex(12)}",
        "citus_node_app_db_password": f"test-app-{secrets.token_hex(12)}",
    }
    inventory = {
        "all": {"vars": group_vars, "children": {"coordinator": {"hosts": {lab.node: {}}}}}
    }
    path = directory / "hosts.yml"
    path.write_text(json.dumps(inventory))
    (directory / "converge.yml").write_text(
        "- name: Converge\n  hosts: all\n  tasks:\n"
        "    - name: Apply citus_node\n"
        "      ansible.builtin.include_role:\n        name: citus_node\n"
    )
    return path


def playbook(inventory: Path, play: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return run(
        [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), *options, str(play)],
        timeout=1200,
        env={
            "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
            "ANSIBLE_CONFIG": str(REPO_ROOT / "ansible.cfg"),
            "ANSIBLE_ROLES_PATH": str(REPO_ROOT / "roles"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
        },
        check=False,
    )


def test_citus_node_installs_citus_from_a_signed_apt_repository(
    apt_lab: AptLab, tmp_path: Path
) -> None:
    package = host_citus_version()
    inventory = write_inventory(tmp_path, apt_lab, package)
    converge = tmp_path / "converge.yml"
    passwords = json.loads(inventory.read_text())["all"]["vars"]
    secrets_used = [
        passwords["citus_node_superuser_password"],
        passwords["citus_node_app_db_password"],
    ]

    # Check mode on the fresh host: no PostgreSQL, no repository yet.
    check = playbook(inventory, converge, "--check")
    output = check.stdout + check.stderr
    assert check.returncode == 0, output[-8000:]
    assert recap(output)[apt_lab.node]["failed"] == 0
    said = " ".join(output.split())
    assert f"PostgreSQL 15 is not installed on {apt_lab.node} yet" in said, output[-8000:]
    assert "citusdata-community.sources" not in docker_exec(
        apt_lab.node, "ls", "/etc/apt/sources.list.d"
    )

    first = playbook(inventory, converge)
    output = first.stdout + first.stderr
    assert first.returncode == 0, output[-8000:]
    assert recap(output)[apt_lab.node]["changed"] > 0

    # The deb822 source with the fetched key, and the package as named and pinned.
    source = docker_exec(apt_lab.node, "cat", "/etc/apt/sources.list.d/citusdata-community.sources")
    assert f"URIs: {apt_lab.repo_url}" in source and "Suites: bookworm" in source, source
    signed_by = re.search(r"^Signed-By: (/\S+)$", source, re.M)
    assert signed_by, source
    key = docker_exec(apt_lab.node, "cat", signed_by.group(1))
    assert "BEGIN PGP PUBLIC KEY BLOCK" in key
    installed = docker_exec(
        apt_lab.node, "dpkg-query", "-W", "-f=${Version} ${db:Status-Status}",
        f"postgresql-{PG_MAJOR}-citus-{package[0]}",
    )  # fmt: skip
    assert installed == f"{package[1]}.citus-1 installed", installed
    # apt verified the repository's signature (no [trusted=yes] anywhere).
    policy = docker_exec(
        apt_lab.node, "apt-cache", "policy", f"postgresql-{PG_MAJOR}-citus-{package[0]}"
    )
    assert f"{apt_lab.repo_url.rstrip('/')} bookworm/main" in policy, policy
    assert "trusted" not in source

    second = playbook(inventory, converge)
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-8000:]
    assert recap(output)[apt_lab.node]["changed"] == 0, output[-8000:]

    # Check mode on the installed host: nothing would change.
    again = playbook(inventory, converge, "--check")
    output = again.stdout + again.stderr
    assert again.returncode == 0, output[-8000:]
    assert recap(output)[apt_lab.node]["changed"] == 0, output[-8000:]

    # The same verify as the preinstalled scenario's, then citus_version() itself.
    verify = playbook(inventory, VERIFY)
    output = verify.stdout + verify.stderr
    assert verify.returncode == 0, output[-8000:]
    version = docker_exec(
        apt_lab.node, "runuser", "-u", "postgres", "--", "psql", "-d", "dialogs", "-Atc",
        "SELECT citus_version()",
    )  # fmt: skip
    assert version.startswith(f"Citus {package[1]} "), version
    for secret in secrets_used:
        for result in (check, first, second, again, verify):
            assert secret not in result.stdout + result.stderr, "a database password was printed"
