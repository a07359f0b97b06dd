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
