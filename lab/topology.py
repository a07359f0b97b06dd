"""The lab's hosts, addresses, networks, images and systemd container flags, written once:
``bin/lab``, the lab tests, the benchmarks and the molecule scenarios use them."""

from __future__ import annotations

import ipaddress
import json
import subprocess

PRIVATE_NETWORK = "dialogs-lab"  # every host, fixed addresses in LAB_SUBNET
EDGE_NETWORK = "dialogs-lab-edge"  # the public side: the edge hosts (and the app host's way out)
DEFAULT_SUBNET = "10.213.0.0/24"
DEFAULT_EDGE_SUBNET = "10.214.0.0/24"
LABEL = "org.dialogs-lab.lab=1"  # on everything bin/lab creates (and `down` removes)

COORDINATOR = "lab-coordinator"
APP = "lab-app1"  # 2 dialogs instances and 2 gateway instances
EDGE = "lab-edge1"  # HAProxy: TLS in front of the gateway instances; its HTTPS is published
EDGE2 = "lab-edge2"  # the second edge host: keepalived moves the virtual address between them
EDGES = (EDGE, EDGE2)
DEFAULT_WORKERS = 2
MAX_WORKERS = 200
# The two topologies (LAB_TOPOLOGY): "ha" (the default), every Citus group (0 the
# coordinator, 1..N the workers) a Patroni cluster of a primary and a synchronous standby on
# hosts of their own, with 3 etcd members on the first host of groups 0, 1 and 2 (roles
# etcd, patroni); "single", one PostgreSQL server per Citus node (roles citus_node,
# citus_cluster), the layout of clusters deployed before HA.
TOPOLOGIES = ("ha", "single")
DEFAULT_TOPOLOGY = "ha"
HA_GROUP_HOSTS = 2  # a primary and a synchronous standby
HA_ETCD_MEMBERS = 3
PATRONI_BIN = "/opt/patroni/venv/bin"  # roles/patroni: patroni_install_dir/venv
PATRONI_CONFIG = "/etc/patroni/patroni.yml"
HTTPS_PORT = 443  # the edge's, inside its host; published on 127.0.0.1:LAB_HTTPS_PORT
DEFAULT_PUBLISHED_PORT = 8443
METRICS_PORT = 8405  # the edge's metrics, on its private address only
GATEWAY_PORTS = (8090, 8091)
DIALOGS_PORTS = (8081, 8082)
# The names the lab's certificate is valid for (the lab CA signs it), besides 127.0.0.1 and
# the virtual address.
TLS_NAMES = ("localhost", *EDGES)

# Host numbers in the private subnet (the edge hosts and the app host have the same ones in
# the edge subnet).
_EDGE_HOSTS = {EDGE: 4, EDGE2: 6}
_APP_HOST = 5
_COORDINATOR_HOST = 10
_HA_FIRST_HOST = 20  # the HA topology's database hosts: 4 host numbers per Citus group
_HA_HOSTS_PER_GROUP = 4
_VIRTUAL_HOST = 100  # in the edge subnet: the address keepalived moves

BASE_IMAGE = "dialogs-lab/debian-systemd:bookworm"
CITUS_IMAGE = "dialogs-lab/citus:pg15"
ROOTFS_IMAGE = "dialogs-lab/debian-rootfs:bookworm"
BUILD_SCRIPT = "lab/images/build.sh"  # relative to the repository

# Labels lab/images/build.sh puts on CITUS_IMAGE: what it was built from.
CITUS_VERSION_LABEL = "org.dialogs-lab.citus-version"
CITUS_CONTROL = "/usr/share/postgresql/15/extension/citus.control"
# Where the Citus image's Citus comes from (this machine), else where the nodes install it.
HOST_CITUS_SO = "/usr/lib/postgresql/15/lib/citus.so"
CITUS_REPO_URL = "https://repos.citusdata.com/community/debian/"

# systemd as PID 1 without --privileged (which cannot apply its capabilities here).
SYSTEMD_COMMAND = "/lib/systemd/systemd"
SYSTEMD_FLAGS = (
    "--cap-add", "SYS_ADMIN",
    "--cgroupns=host",
    "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "--tmpfs", "/run",
    "--tmpfs", "/run/lock",
    "--stop-signal", "SIGRTMIN+3",
)  # fmt: skip


def worker(number: int) -> str:
    return f"lab-worker{number}"


def app_address(subnet: str) -> str:
    return str(ipaddress.ip_network(subnet)[_APP_HOST])


def edge_address(subnet: str, name: str = EDGE) -> str:
    """The address of edge host ``name`` in ``subnet`` (the private or the edge subnet)."""
    return str(ipaddress.ip_network(subnet)[_EDGE_HOSTS[name]])


def virtual_address(edge_subnet: str) -> str:
    """The edge's virtual address (keepalived), in the edge subnet."""
    return str(ipaddress.ip_network(edge_subnet)[_VIRTUAL_HOST])


def coordinator_address(subnet: str) -> str:
    return str(ipaddress.ip_network(subnet)[_COORDINATOR_HOST])


def worker_address(subnet: str, number: int) -> str:
    return str(ipaddress.ip_network(subnet)[_COORDINATOR_HOST + number])


def ha_host(group: int, member: int) -> str:
    """The HA topology's database host ``member`` (1, 2) of Citus group ``group``."""
    return f"lab-pg{group}-{member}"


def ha_address(subnet: str, group: int, member: int) -> str:
    host = _HA_FIRST_HOST + group * _HA_HOSTS_PER_GROUP + member
    return str(ipaddress.ip_network(subnet)[host])


def ha_max_workers(subnet: str) -> int:
    """How many worker groups' hosts fit in ``subnet``."""
    size = ipaddress.ip_network(subnet).num_addresses
    return (min(size - 2, 254) - _HA_FIRST_HOST) // _HA_HOSTS_PER_GROUP - 1


def ha_etcd_hosts(worker_groups: int) -> list[str]:
    """etcd's members: the first host of groups 0, 1, 2 (3 groups at least in the lab)."""
    groups = range(min(worker_groups + 1, HA_ETCD_MEMBERS))
    return [ha_host(group, 1) for group in groups]


def systemd_container(name: str, image: str, *options: str, create: bool = False) -> list[str]:
    """The ``docker run -d`` (or ``docker create``) command line of a systemd container called
    ``name`` (also its hostname), with further docker options before the image."""
    verb = ["create"] if create else ["run", "-d"]
    return ["docker", *verb, "--name", name, "--hostname", name,
            *SYSTEMD_FLAGS, *options, image, SYSTEMD_COMMAND]  # fmt: skip


def image_exists(image: str) -> bool:
    return (
        subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0
    )


def citus_version(image: str) -> str:
    """The Citus release (major.minor) that ``image`` carries: its label, or for an image
    built before the label existed, the default_version of its citus.control."""
    labels = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{json .Config.Labels}}", image],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    label = _label(labels, CITUS_VERSION_LABEL)
    if label:
        return label
    control = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "cat", image, CITUS_CONTROL],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    return version_from_control(control)


def _label(labels_json: str, name: str) -> str:
    labels = json.loads(labels_json or "null") or {}
    return str(labels.get(name, "")).strip()


def version_from_control(control: str) -> str:
    """major.minor of ``default_version = '13.0-1'`` in a citus.control file."""
    for line in control.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "default_version":
            parts = value.strip().strip("'\"").split("-")[0].split(".")
            if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
                return f"{parts[0]}.{parts[1]}"
    raise ValueError(f"no default_version in citus.control:\n{control}")
