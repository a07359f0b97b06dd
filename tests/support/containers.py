"""Running the lab's systemd images by hand (bench scripts, throw-away test containers)."""

from __future__ import annotations

# systemd as PID 1 without --privileged (which cannot apply its capabilities here); the same
# settings molecule's scenarios and bin/lab use.
SYSTEMD_RUN_FLAGS = [
    "--cap-add", "SYS_ADMIN",
    "--cgroupns=host",
    "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "--tmpfs", "/run",
    "--tmpfs", "/run/lock",
]  # fmt: skip


def systemd_container(name: str, image: str, *options: str) -> list[str]:
    """The ``docker run`` command line of a detached systemd container called ``name``
    (also its hostname), with further ``docker run`` options before the image."""
    return ["docker", "run", "-d", "--name", name, "--hostname", name,
            *SYSTEMD_RUN_FLAGS, *options, image]  # fmt: skip
