"""``bin/lab``'s commands: bring the lab up, show it, scale it, run a playbook, take it down."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import yaml

from lab import tls
from lab import topology as t

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = REPO_ROOT / ".venv" / "bin"

USAGE = """\
The lab: the whole system on local containers, deployed by the production playbooks.

  bin/lab up          build what is missing, start the containers, run playbooks/site.yml,
                      print the public URL and a copy-paste example (re-run: converges)
  bin/lab status      containers, Citus nodes, shards per node, the instances' health and
                      the edge's view of each gateway instance
  bin/lab scale N     add N workers (ha topology: N worker groups of 2 hosts) and run
                      playbooks/scale_out.yml (rebalances the shards)
  bin/lab scale -N    remove the last N workers (worker groups), one by one, each drained
                      by playbooks/remove_worker.yml first; then their containers
  bin/lab down        remove the containers, networks and the lab's state (images are kept;
                      `bin/lab down --images` removes them too)
  bin/lab playbook P [ANSIBLE ARGS]   run playbooks/P against the lab, e.g.
                      bin/lab playbook services.yml -e dialogs_log_level=DEBUG

Topology (lab/topology.py): the Citus cluster (see LAB_TOPOLOGY), lab-app1 (2 dialogs and
2 gateway instances), lab-edge1 and lab-edge2 (HAProxy, TLS; keepalived) on the docker network
dialogs-lab (fixed addresses in LAB_SUBNET); the edge hosts are also on dialogs-lab-edge, the
public side (LAB_EDGE_SUBNET; lab-app1 too, for its way out; nothing listens there), where
keepalived keeps the virtual address (host 100 of that subnet) on one of them. lab-edge1's
HTTPS is published on 127.0.0.1; the virtual address is reached from this machine through
the docker bridge. The certificate is from the lab's own CA (.lab/tls/ca.crt). The cluster's Citus
version is the one its image carries (label org.dialogs-lab.citus-version). State (generated
secrets, CA, inventory, wheelhouse, logs) lives in .lab/ (git-ignored).

Environment:
  LAB_TOPOLOGY          ha (default): every Citus group a Patroni primary and synchronous
                        standby (lab-pgG-1, lab-pgG-2 for group G, 0 the coordinator),
                        3 etcd members on lab-pg0-1, lab-pg1-1, lab-pg2-1; single: one
                        PostgreSQL server per Citus node (lab-coordinator,
                        lab-worker1..N). A lab keeps its topology until bin/lab down
  LAB_HTTPS_PORT        port on 127.0.0.1 for the edge's HTTPS (default 8443)
  LAB_SUBNET            subnet of dialogs-lab (default 10.213.0.0/24)
  LAB_EDGE_SUBNET       subnet of dialogs-lab-edge (default 10.214.0.0/24)
  LAB_PRIVATE_INTERNAL  1: dialogs-lab has no route out (docker --internal), 0: it has one.
                        Default: 1 when the cluster image carries Citus, 0 when the nodes
                        must install it from Citus's apt repository
  LAB_CITUS_IMAGE, LAB_BASE_IMAGE   images (default dialogs-lab/citus:pg15,
                        dialogs-lab/debian-systemd:bookworm, built by lab/images/build.sh)
  LAB_HOST_CITUS_SO     this machine's Citus library, copied into the image
                        (default /usr/lib/postgresql/15/lib/citus.so)
  LAB_CITUS_REPO_URL    Citus's apt repository, used when this machine has no Citus
                        (default https://repos.citusdata.com/community/debian/)
  LAB_STATE_DIR         the lab's state directory (default .lab/ in the repository)
  LAB_WHEELHOUSE_DIR    deploy this prebuilt wheelhouse (roles/python_app/files/build-wheelhouse.sh)
                        instead of building one from the working tree on every run
"""

WELCOME = r"""
The lab is up: the API at {URL} (description: {URL}/openapi.yaml),
HTTPS with a certificate of the lab's CA: {CA}
The same API on the edge's virtual address, which keepalived moves to the other edge host
when one fails: {VIRTUAL_URL}
Try it (copy and paste):

  URL={URL}
  curl() { command curl --cacert {CA} "$@"; }
  json_field() { sed -E "s/.*\"$1\": *\"([^\"]+)\".*/\1/"; }
  ALICE=$(curl -s $URL/user/register -H 'Content-Type: application/json' \
      -d '{"password": "alice-password-1", "first_name": "Alice"}' | json_field user_id)
  BOB=$(curl -s $URL/user/register -H 'Content-Type: application/json' \
      -d '{"password": "bob-password-1", "first_name": "Bob"}' | json_field user_id)
  TOKEN=$(curl -s $URL/login -H 'Content-Type: application/json' \
      -d "{\"id\": \"$ALICE\", \"password\": \"alice-password-1\"}" | json_field token)
  curl -s $URL/dialog/$BOB/send -H "Authorization: Bearer $TOKEN" \
      -H 'Content-Type: application/json' -d '{"text": "Hello, Bob!"}'; echo
  curl -si "$URL/dialog/$BOB/list?limit=20" -H "Authorization: Bearer $TOKEN"; echo

More: bin/lab status | bin/lab scale 1 | bin/lab down
"""

# Run inside the edge host: HAProxy's own view of each gateway instance (its runtime API).
EDGE_VIEW = r"""
import csv, io, socket
with socket.socket(socket.AF_UNIX) as sock:
    sock.connect("/run/haproxy/admin.sock")
    sock.sendall(b"show stat\n")
    data = b"".join(iter(lambda: sock.recv(65536), b"")).decode().lstrip("# ")
columns = {"addr": "instance", "status": "state", "check_status": "check",
           "lastchg": "since (s)", "scur": "now", "stot": "sessions", "chkfail": "failed checks"}
print("".join(f"{title:<16}" for title in columns.values()))
for row in csv.DictReader(io.StringIO(data)):
    if row["pxname"] == "gateways" and row["svname"] not in ("FRONTEND", "BACKEND"):
        print("".join(f"{row[name]:<16}" for name in columns))
"""

SECRET_NAMES = {
    "vault_db_superuser_password": 24,
    "vault_db_app_password": 24,
    "vault_internal_token": 24,
    "vault_jwt_secret": 32,
    # The HA topology's (roles patroni and ha_cluster.yml).
    "vault_db_replication_password": 24,
    "vault_db_rewind_password": 24,
    "vault_patroni_rest_password": 24,
}
# What `down` removes from the state directory: other tools keep their own state there too.
STATE_FILES = (
    "secrets.yml", "tls", "inventory.yml", "workers", "topology", "citus-source", "dist", "logs",
)  # fmt: skip


class LabError(Exception):
    """Stops the command with ``error: <message>``."""


def say(*parts: str) -> None:
    print("==>", " ".join(parts), file=sys.stderr, flush=True)


def die(*parts: str) -> NoReturn:
    raise LabError(" ".join(parts))


def docker(
    *args: str, check: bool = True, capture: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=capture, text=True)
    if check and result.returncode != 0:
        die(f"docker {' '.join(args)} failed: {(result.stderr or '').strip()}")
    return result


def docker_answers() -> bool:
    return docker("info", check=False).returncode == 0


def container_exists(name: str) -> bool:
    return docker("container", "inspect", name, check=False).returncode == 0


def container_running(name: str) -> bool:
    result = docker("container", "inspect", "-f", "{{.State.Running}}", name, check=False)
    return result.stdout.strip() == "true"


def network_exists(name: str) -> bool:
    return docker("network", "inspect", name, check=False).returncode == 0


def edge_addresses(name: str) -> list[str]:
    """The IPv4 addresses edge host ``name`` holds now (the virtual one among them when
    keepalived gave it the address); none when it is not running."""
    if not container_running(name):
        return []
    shown = docker("exec", name, "hostname", "--all-ip-addresses", check=False).stdout
    return shown.split()


def relative(path: Path) -> str:
    """``path`` as the user sees it: relative to the repository when inside it."""
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


@dataclass(frozen=True)
class Settings:
    """The lab's settings, from the environment (LAB_*)."""

    state_dir: Path
    topology: str  # single | ha
    https_port: str
    subnet: str
    edge_subnet: str
    private_internal: str  # 1 | 0 | auto
    citus_image: str
    base_image: str
    host_citus_so: Path
    citus_repo_url: str
    wheelhouse_dir: str

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        return cls(
            state_dir=Path(env.get("LAB_STATE_DIR") or REPO_ROOT / ".lab"),
            topology=env.get("LAB_TOPOLOGY") or "",
            https_port=env.get("LAB_HTTPS_PORT") or str(t.DEFAULT_PUBLISHED_PORT),
            subnet=env.get("LAB_SUBNET") or t.DEFAULT_SUBNET,
            edge_subnet=env.get("LAB_EDGE_SUBNET") or t.DEFAULT_EDGE_SUBNET,
            private_internal=env.get("LAB_PRIVATE_INTERNAL") or "auto",
            citus_image=env.get("LAB_CITUS_IMAGE") or t.CITUS_IMAGE,
            base_image=env.get("LAB_BASE_IMAGE") or t.BASE_IMAGE,
            host_citus_so=Path(env.get("LAB_HOST_CITUS_SO") or t.HOST_CITUS_SO),
            citus_repo_url=env.get("LAB_CITUS_REPO_URL") or t.CITUS_REPO_URL,
            wheelhouse_dir=env.get("LAB_WHEELHOUSE_DIR", ""),
        )


class Lab:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.citus_source = ""  # preinstalled | apt, once chosen

    # --- state ------------------------------------------------------------------------------
    @property
    def state(self) -> Path:
        return self.s.state_dir

    def worker_count(self) -> int:
        path = self.state / "workers"
        return int(path.read_text().strip()) if path.exists() else t.DEFAULT_WORKERS

    @property
    def topology(self) -> str:
        """The lab's topology: the one it was brought up with, else LAB_TOPOLOGY."""
        path = self.state / "topology"
        kept = path.read_text().strip() if path.exists() else ""
        wanted = self.s.topology
        if wanted and wanted not in t.TOPOLOGIES:
            die(f"LAB_TOPOLOGY={wanted}: use one of {', '.join(t.TOPOLOGIES)}")
        if kept and wanted and kept != wanted:
            die(
                f"the lab runs the {kept} topology, LAB_TOPOLOGY asks for {wanted}:",
                "run bin/lab down first, or unset LAB_TOPOLOGY",
            )
        return kept or wanted or t.DEFAULT_TOPOLOGY

    @property
    def ha(self) -> bool:
        return self.topology == "ha"

    def database_hosts(self, workers: int = 0) -> dict[str, tuple[int, str]]:
        """The Citus cluster's hosts with ``workers`` worker groups (default: the lab's
        count): name -> (Citus group, private address)."""
        subnet, workers = self.s.subnet, workers or self.worker_count()
        if self.ha:
            return {
                t.ha_host(group, member): (group, t.ha_address(subnet, group, member))
                for group in range(workers + 1)
                for member in range(1, t.HA_GROUP_HOSTS + 1)
            }
        hosts = {t.COORDINATOR: (0, t.coordinator_address(subnet))}
        for number in range(1, workers + 1):
            hosts[t.worker(number)] = (number, t.worker_address(subnet, number))
        return hosts

    @property
    def cluster_image(self) -> str:
        return self.s.citus_image if self.citus_source == "preinstalled" else self.s.base_image

    # --- preparation ------------------------------------------------------------------------
    def ensure_tools(self) -> None:
        # bin/lab installed the system packages, the virtualenv and started dockerd.
        if not docker_answers():
            die(
                "no docker engine answers (docker info failed):",
                "start dockerd and run bin/lab up again",
            )

    def ensure_secrets(self) -> None:
        """Generated once into secrets.yml (mode 0600, never in the repo, never printed)."""
        self.state.mkdir(parents=True, exist_ok=True)
        self.state.chmod(0o700)
        path = self.state / "secrets.yml"
        lines = path.read_text().splitlines() if path.exists() else []
        have = {line.split(":", 1)[0] for line in lines}
        missing = {name: size for name, size in SECRET_NAMES.items() if name not in have}
        if not missing:
            return
        say(f"generating the lab's secrets into {relative(path)}: {', '.join(missing)}")
        lines = lines or [
            "# Generated by bin/lab: the lab's secrets (ansible extra vars)."
            " Never commit this file."
        ]
        lines += [f'{name}: "{secrets.token_hex(size)}"' for name, size in missing.items()]
        temporary = path.with_suffix(".yml.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as stream:
            stream.write("\n".join(lines) + "\n")
        temporary.replace(path)

    @property
    def tls_dir(self) -> Path:
        return self.state / "tls"

    @property
    def ca_file(self) -> Path:
        return self.tls_dir / tls.CA_CERT

    def ensure_tls(self) -> None:
        """The lab's CA and the edge's certificate, made once (keys mode 0600, never printed)."""
        if tls.ensure(self.tls_dir, t.TLS_NAMES, (self.virtual_address,)):
            say(f"made the lab's CA and the edge's certificate in {relative(self.tls_dir)}")
        if self.ha:
            hosts = {name: address for name, (_, address) in self.database_hosts().items()}
            made = tls.ensure_hosts(self.tls_dir, hosts)
            if made:
                say(f"made cluster certificates in {relative(self.tls_dir)}:", ", ".join(made))

    def choose_citus_source(self) -> None:
        """Where the cluster's Citus comes from: the lab image (this machine's Citus copied
        into it), else Citus's apt repository. Neither: stop before anything is built."""
        path = self.state / "citus-source"
        source = path.read_text().strip() if path.exists() else ""
        if source == "preinstalled" and not t.image_exists(self.s.citus_image):
            source = ""
        if not source:
            if t.image_exists(self.s.citus_image) or self.s.host_citus_so.exists():
                source = "preinstalled"
            elif self._repository_answers():
                source = "apt"
            else:
                die(
                    "Citus is not available: it is not installed on this machine",
                    f"({self.s.host_citus_so} is missing,",
                    "so the lab image cannot take it from here)",
                    f"and Citus's apt repository ({self.s.citus_repo_url}) cannot be reached.",
                    "Install Citus for PostgreSQL 15 on this machine, or give it access to the",
                    "repository, then run bin/lab up again.",
                )
        path.write_text(source + "\n")
        self.citus_source = source

    def _repository_answers(self) -> bool:
        url = self.s.citus_repo_url.rstrip("/") + "/dists/bookworm/Release"
        try:
            with urllib.request.urlopen(url, timeout=15):  # noqa: S310 (an https/http URL)
                return True
        except (OSError, ValueError):
            return False

    def ensure_images(self) -> None:
        script = str(REPO_ROOT / t.BUILD_SCRIPT)
        if not t.image_exists(self.s.base_image):
            subprocess.run([script, "base"], check=True)
        if self.citus_source != "preinstalled":
            return
        # build.sh reuses its image while the labels match this host's PostgreSQL and Citus
        # files, and rebuilds it when they differ. An image named in LAB_CITUS_IMAGE, or one
        # on a host without Citus, is used as it is.
        ours = self.s.citus_image == t.CITUS_IMAGE and self.s.host_citus_so.exists()
        if ours or not t.image_exists(self.s.citus_image):
            subprocess.run([script, "citus"], check=True)
        if not t.image_exists(self.s.citus_image):
            die(f"lab/images/build.sh did not build {self.s.citus_image}")

    def ensure_networks(self) -> None:
        internal = self.s.private_internal == "1" or (
            self.s.private_internal == "auto" and self.citus_source == "preinstalled"
        )
        self.ensure_network(t.PRIVATE_NETWORK, self.s.subnet, "LAB_SUBNET", internal=internal)
        self.ensure_network(t.EDGE_NETWORK, self.s.edge_subnet, "LAB_EDGE_SUBNET")

    @staticmethod
    def ensure_network(net: str, subnet: str, setting: str, internal: bool = False) -> None:
        """Docker network ``net`` with ``subnet`` (the hosts have fixed addresses in it)."""
        if network_exists(net):
            have = docker(
                "network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}}{{end}}", net
            ).stdout.strip()
            if have != subnet:
                die(
                    f"network {net} exists with subnet {have or 'none'}, not {subnet}:",
                    f"run bin/lab down first, or set {setting}={have}",
                )
            return
        say(f"creating network {net} ({subnet}{', internal' if internal else ''})")
        created = docker(
            "network", "create", "--label", t.LABEL, "--subnet", subnet,
            *(["--internal"] if internal else []), net, check=False,
        )  # fmt: skip
        if created.returncode != 0:
            die(
                f"cannot create network {net} with subnet {subnet} (taken by another",
                f"network?): set {setting} to a free private subnet",
            )

    def ensure_container(self, name: str, image: str, address: str, *options: str) -> None:
        """A systemd container on the private network; created once, started when stopped."""
        if container_exists(name):
            self.refuse_stale_container(name, image)
            if not container_running(name):
                say(f"starting {name}")
                docker("start", name)
            return
        say(f"creating {name} ({address}, {image})")
        command = t.systemd_container(
            name, image, "--label", t.LABEL, "--network", t.PRIVATE_NETWORK, "--ip", address,
            *options, create=True,
        )  # fmt: skip
        docker(*command[1:])
        if name in (t.APP, *t.EDGES):
            edge_subnet = self.s.edge_subnet
            public = (
                t.app_address(edge_subnet) if name == t.APP else t.edge_address(edge_subnet, name)
            )
            docker("network", "connect", "--ip", public, t.EDGE_NETWORK, name)
        docker("start", name)

    @staticmethod
    def refuse_stale_container(name: str, image: str) -> None:
        """A container made from an older build of ``image`` runs other binaries than the
        image now holds (e.g. this host's Citus was upgraded): recreating it would lose its
        data, so the user decides."""
        running = docker("container", "inspect", "-f", "{{.Image}}", name).stdout.strip()
        current = docker("image", "inspect", "-f", "{{.Id}}", image).stdout.strip()
        if running != current:
            die(
                f"{name} was created from an older build of {image} (the image was rebuilt",
                "since, e.g. for this host's new Citus or PostgreSQL files); its data lives in",
                "the container: run bin/lab down, then bin/lab up, to recreate the lab",
            )

    def wait_for_systemd(self, names: list[str]) -> None:
        for name in names:
            state = ""
            for _ in range(90):
                result = docker("exec", name, "systemctl", "is-system-running", check=False)
                state = result.stdout.strip()
                if state in ("running", "degraded"):
                    break
                time.sleep(1)
            else:
                die(f"systemd in {name} did not finish booting (state: {state or 'none'})")

    def ensure_containers(self) -> None:
        if container_exists(t.EDGE):
            ports = docker("port", t.EDGE, f"{t.HTTPS_PORT}/tcp", check=False).stdout.split("\n")
            published = ports[0].strip()
            if published != f"127.0.0.1:{self.s.https_port}":
                die(
                    f"{t.EDGE} publishes HTTPS on",
                    f"{published or 'nothing'}, not 127.0.0.1:{self.s.https_port}:",
                    "set LAB_HTTPS_PORT to match, or run bin/lab down first",
                )
        subnet = self.s.subnet
        names = []
        for name, (_, address) in self.database_hosts().items():
            self.ensure_container(name, self.cluster_image, address)
            names.append(name)
        self.ensure_container(t.APP, self.s.base_image, t.app_address(subnet))
        # keepalived adds and removes the virtual address: NET_ADMIN.
        for edge in t.EDGES:
            publish = ["-p", f"127.0.0.1:{self.s.https_port}:{t.HTTPS_PORT}"]
            self.ensure_container(
                edge, self.s.base_image, t.edge_address(subnet, edge), "--cap-add", "NET_ADMIN",
                *(publish if edge == t.EDGE else []),
            )  # fmt: skip
        names += [t.APP, *t.EDGES]
        self.wait_for_systemd(names)

    def write_inventory(self) -> None:
        subnet = self.s.subnet
        settings: dict[str, object] = {
            "lab_topology": self.topology,
            "lab_citus_install_method": self.citus_source,
        }
        if self.citus_source == "preinstalled":
            # The release the image carries: the role checks the node has exactly that.
            settings["citus_node_citus_version"] = t.citus_version(self.s.citus_image)
        cluster = self.database_hosts()
        settings |= {
            "lab_state_dir": str(self.state),
            "lab_edge_virtual_address": self.virtual_address,
            "lab_wheelhouse_dir": self.s.wheelhouse_dir,
            # The servers the services may find the coordinator's primary on.
            "lab_coordinator_addresses": [a for group, a in cluster.values() if group == 0],
        }
        groups: dict[str, dict[str, object]] = {}
        if self.ha:
            groups["patroni"] = {
                name: {"lab_private_address": address, "patroni_citus_group": group}
                for name, (group, address) in cluster.items()
            }
            groups["etcd"] = {name: {} for name in t.ha_etcd_hosts(self.worker_count())}
        else:
            groups["coordinator"] = {
                name: {"lab_private_address": a} for name, (g, a) in cluster.items() if g == 0
            }
            groups["workers"] = {
                name: {"lab_private_address": a} for name, (g, a) in cluster.items() if g > 0
            }
        groups["dialogs"] = {t.APP: {"lab_private_address": t.app_address(subnet)}}
        groups["gateway"] = {t.APP: {}}
        groups["edge"] = {
            name: {"lab_private_address": t.edge_address(subnet, name)} for name in t.EDGES
        }
        inventory = {
            "all": {
                "vars": settings,
                "children": {name: {"hosts": hosts} for name, hosts in groups.items()},
            }
        }
        text = "# Generated by bin/lab from the running lab: do not edit (re-run bin/lab up).\n"
        text += yaml.safe_dump(inventory, sort_keys=False, default_flow_style=False)
        temporary = self.state / "inventory.yml.tmp"
        temporary.write_text(text)
        temporary.replace(self.state / "inventory.yml")
        (self.state / "topology").write_text(self.topology + "\n")

    def run_playbook(self, playbook: str, *args: str) -> None:
        """Runs a playbook with its output on the terminal and in the state's logs/."""
        logs = self.state / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"{time.strftime('%Y%m%d-%H%M%S')}-{Path(playbook).stem}.log"
        say(f"ansible-playbook {' '.join([playbook, *args])} (log: {relative(log)})")
        env = os.environ | {
            "ANSIBLE_CONFIG": str(REPO_ROOT / "ansible.cfg"),
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
        }
        command = [
            str(VENV_BIN / "ansible-playbook"), "-i", "inventory/lab/hosts.yml",
            "-i", str(self.state / "inventory.yml"), "-e", f"@{self.state / 'secrets.yml'}",
            playbook, *args,
        ]  # fmt: skip
        with (
            log.open("w") as stream,
            subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=REPO_ROOT,
                env=env,
            ) as process,  # fmt: skip
        ):
            assert process.stdout is not None
            for line in process.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                stream.write(line)
        if process.returncode != 0:
            die(f"{playbook} failed (exit {process.returncode}); see {relative(log)}")

    def coordinator_primary(self) -> str:
        """The container of the coordinator's primary server ("" when none answers): in the HA
        topology, the member of group 0 that is not in recovery."""
        members = [name for name, (group, _) in self.database_hosts().items() if group == 0]
        if not self.ha:
            return members[0] if container_running(members[0]) else ""
        for name in members:
            if not container_running(name):
                continue
            answer = docker(
                "exec", name, "runuser", "-u", "postgres", "--",
                "psql", "-XAtc", "SELECT pg_is_in_recovery()", check=False,
            )  # fmt: skip
            if answer.stdout.strip() == "f":
                return name
        return ""

    def show_patroni_groups(self) -> None:
        """patronictl list: every Citus group's members, their role, state, timeline and lag,
        from the first database host that answers (any member reads etcd)."""
        print("\n== Citus groups (patronictl list: Group 0 the coordinator)", flush=True)
        for name in self.database_hosts():
            if not container_running(name):
                continue
            listed = docker(
                "exec", name, f"{t.PATRONI_BIN}/patronictl", "-c", t.PATRONI_CONFIG, "list",
                check=False,
            )  # fmt: skip
            if listed.returncode == 0:
                print(listed.stdout, end="", flush=True)
                return
        print("(no database host could list the groups: none runs, or etcd does not answer)")

    def psql(self, host: str, sql: str) -> None:
        sys.stdout.flush()
        subprocess.run(
            ["docker", "exec", host, "runuser", "-u", "postgres", "--",
             "psql", "-X", "-d", "dialogs", "-c", sql],
        )  # fmt: skip

    def readiness(self, timeout: float) -> tuple[int, str]:
        """The status and body of /readyz through the edge (0: no answer)."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        try:
            with urllib.request.urlopen(  # noqa: S310 (our https URL)
                f"{self.url}/readyz", timeout=timeout, context=context
            ) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
        except (OSError, ValueError) as error:
            return 0, f"(no answer: {error})"

    def wait_for_gateway(self) -> None:
        answer = (0, "")
        for _ in range(60):
            answer = self.readiness(timeout=2)
            if answer[0] == 200:
                return
            time.sleep(1)
        die(f"no ready answer from {self.url}/readyz through the edge: {answer[1]}")

    @property
    def url(self) -> str:
        return f"https://localhost:{self.s.https_port}"

    @property
    def virtual_address(self) -> str:
        return t.virtual_address(self.s.edge_subnet)

    # --- commands ---------------------------------------------------------------------------
    def up(self) -> None:
        started = time.monotonic()
        self.ensure_tools()
        self.ensure_secrets()
        self.ensure_tls()
        self.choose_citus_source()
        self.ensure_images()
        self.ensure_networks()
        self.ensure_containers()
        self.write_inventory()
        self.run_playbook("playbooks/site.yml")
        self.wait_for_gateway()
        say(f"lab up in {time.monotonic() - started:.0f} s")
        welcome = (
            WELCOME.replace("{URL}", self.url)
            .replace("{CA}", str(self.ca_file))
            .replace("{VIRTUAL_URL}", f"https://{self.virtual_address}")
        )
        print(welcome, end="", flush=True)

    def status(self) -> None:
        if not docker_answers():
            die("no docker engine answers (docker info failed)")
        print("== containers", flush=True)
        subprocess.run(
            ["docker", "ps", "-a", "--filter", f"label={t.LABEL}",
             "--format", "table {{.Names}}\t{{.Status}}\t{{.Ports}}"],
        )  # fmt: skip
        if self.ha:
            self.show_patroni_groups()
        coordinator = self.coordinator_primary()
        if not coordinator:
            print("(no coordinator server accepts writes: none is running, or none is primary)")
            return
        print(f"\n== Citus nodes (on {coordinator}, the coordinator's primary)", flush=True)
        self.psql(
            coordinator,
            "SELECT nodeid, nodename, nodeport, noderole, isactive, shouldhaveshards"
            " FROM pg_dist_node ORDER BY nodeid",
        )
        print("== shards per Citus group", flush=True)
        self.psql(
            coordinator,
            "SELECT n.groupid AS group, s.nodename, count(*) AS shards,"
            " count(DISTINCT s.table_name) AS tables, pg_size_pretty(sum(s.shard_size)) AS size"
            " FROM citus_shards s JOIN pg_dist_node n USING (nodename, nodeport)"
            " WHERE n.noderole = 'primary' GROUP BY 1, 2 ORDER BY 1",
        )
        if not container_running(t.APP):
            print("(the app host is not running)")
            return
        print(f"== instances on {t.APP}", flush=True)
        subprocess.run(
            ["docker", "exec", t.APP, "systemctl", "list-units", "--all", "--plain",
             "--no-legend", "--full", "dialogs@*.service", "gateway@*.service"],
        )  # fmt: skip
        for name in t.EDGES:
            if container_running(name):
                print(f"\n== the edge's view of the gateway instances ({name})", flush=True)
                subprocess.run(["docker", "exec", name, "python3", "-c", EDGE_VIEW])
        holders = [name for name in t.EDGES if self.virtual_address in edge_addresses(name)]
        print(f"\n== the virtual address {self.virtual_address}: held by", end=" ")
        print(", ".join(holders) or "no edge host (keepalived down everywhere?)")
        print(f"\n== readiness through the edge ({self.url}/readyz)")
        print(self.readiness(timeout=5)[1])

    def scale(self, count: str) -> None:
        if not re.fullmatch(r"-?[1-9][0-9]*", count):
            die("usage: bin/lab scale N | -N (N >= 1 workers to add or to remove)")
        if not (self.state / "inventory.yml").exists():
            die("the lab is not up: run bin/lab up first")
        self.ensure_tools()
        self.choose_citus_source()
        before = self.worker_count()
        started = time.monotonic()
        if count.startswith("-"):
            self._scale_in(before, before + int(count))
        else:
            self._scale_out(before, before + int(count))
        after = self.worker_count()
        say(f"scaled from {before} to {after} workers in {time.monotonic() - started:.0f} s")
        self.psql(
            self.coordinator_primary(),
            "SELECT nodename, count(*) AS shards FROM citus_shards"
            " GROUP BY nodename ORDER BY nodename",
        )

    def _scale_out(self, before: int, after: int) -> None:
        limit = t.ha_max_workers(self.s.subnet) if self.ha else t.MAX_WORKERS
        if after > limit:
            die(f"at most {limit} workers in the lab's {self.topology} topology")
        # The new hosts: single workers, or whole worker groups (a primary and a standby).
        new = {
            name: address
            for name, (group, address) in self.database_hosts(after).items()
            if group > before
        }
        for name, address in new.items():
            self.ensure_container(name, self.cluster_image, address)
        self.wait_for_systemd(list(new))
        (self.state / "workers").write_text(f"{after}\n")
        self.ensure_tls()
        self.write_inventory()
        self.run_playbook("playbooks/scale_out.yml")

    def _scale_in(self, before: int, after: int) -> None:
        if after < 1:
            die(f"the lab has {before} workers: at least one must remain")
        for group in range(before, after, -1):
            hosts = [name for name, (g, _) in self.database_hosts(group).items() if g == group]
            which = (
                f"remove_worker_group={group}"
                if self.ha
                else f"citus_cluster_remove_node={hosts[0]}"
            )
            self.run_playbook("playbooks/remove_worker.yml", "-e", which)
            # What the playbook asks next: the hosts out of the inventory, then cluster.yml,
            # so that pg_hba (and .pgpass) forget them. For the HA cluster its configure
            # phase is enough: only the members' Patroni configuration names other hosts.
            (self.state / "workers").write_text(f"{group - 1}\n")
            self.write_inventory()
            say(f"removing the containers of worker group {group}: {', '.join(hosts)}")
            docker("rm", "-f", *hosts)
            if self.ha:
                self.run_playbook("playbooks/ha_cluster.yml", "--tags", "configure")
            else:
                self.run_playbook("playbooks/cluster.yml")

    def playbook(self, args: list[str]) -> None:
        if not args or not args[0]:
            die("usage: bin/lab playbook PLAYBOOK [ANSIBLE ARGS...]")
        playbook, *rest = args
        if not (REPO_ROOT / "playbooks" / playbook).is_file():
            die(f"no playbooks/{playbook}")
        if not (self.state / "inventory.yml").exists():
            die("the lab is not up: run bin/lab up first")
        self.run_playbook(f"playbooks/{playbook}", *rest)

    def down(self, args: list[str]) -> None:
        remove_images = args[:1] == ["--images"]
        if docker_answers():
            ids = docker("ps", "-aq", "--filter", f"label={t.LABEL}").stdout.split()
            if ids:
                say("removing the lab's containers")
                docker("rm", "-f", *ids)
            for net in (t.PRIVATE_NETWORK, t.EDGE_NETWORK):
                if network_exists(net):
                    say(f"removing network {net}")
                    docker("network", "rm", net)
            if remove_images:
                for image in (self.s.citus_image, self.s.base_image, t.ROOTFS_IMAGE):
                    if t.image_exists(image):
                        say(f"removing image {image}")
                        docker("image", "rm", image)
        if self.state.is_dir():
            say(
                f"removing the lab's state in {relative(self.state)}",
                "(secrets, inventory, wheelhouse, logs)",
            )
            for name in STATE_FILES:
                path = self.state / name
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # other tools' state is still there
                self.state.rmdir()
        if not remove_images:
            say(
                "the images are kept for the next bin/lab up",
                "(bin/lab down --images removes them)",
            )


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    command, rest = (args[0], args[1:]) if args else ("", [])
    lab = Lab(Settings.from_env())
    commands = {
        "up": lambda: lab.up(),
        "status": lambda: lab.status(),
        "scale": lambda: lab.scale(rest[0] if rest else ""),
        "down": lambda: lab.down(rest),
        "playbook": lambda: lab.playbook(rest),
    }
    if command in ("-h", "--help", "help"):
        print(USAGE, end="")
        return
    if command not in commands:
        print(USAGE, end="", file=sys.stderr)
        sys.exit(2)
    try:
        commands[command]()
    except LabError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except subprocess.CalledProcessError as error:
        # A step's own output (build.sh, docker) already said why.
        print(
            f"error: {' '.join(map(str, error.cmd))} failed (exit {error.returncode})",
            file=sys.stderr,
        )
        sys.exit(1)
