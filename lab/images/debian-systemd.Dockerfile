# dialogs-lab/debian-systemd:bookworm: Debian 12 with systemd as PID 1, for Ansible tests.
# Built by lab/images/build.sh from a root filesystem image (debootstrap + docker import,
# or the registry's debian:bookworm). Run it with: --cap-add SYS_ADMIN --cgroupns=host
# -v /sys/fs/cgroup:/sys/fs/cgroup:rw --tmpfs /run --tmpfs /run/lock
ARG ROOTFS=dialogs-lab/debian-rootfs:bookworm
FROM ${ROOTFS}

ARG PACKAGES="systemd systemd-sysv dbus python3 python3-apt sudo iproute2 procps ca-certificates locales"
ENV container=docker LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive

# bookworm + updates + security, the same suites the lab's PostgreSQL packages come from.
RUN rm -f /etc/apt/sources.list \
 && printf '%s\n' \
      'Types: deb' \
      'URIs: http://deb.debian.org/debian' \
      'Suites: bookworm bookworm-updates' \
      'Components: main' \
      'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' \
      '' \
      'Types: deb' \
      'URIs: http://deb.debian.org/debian-security' \
      'Suites: bookworm-security' \
      'Components: main' \
      'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' \
      > /etc/apt/sources.list.d/debian.sources \
 && missing="" \
 && for p in $PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done \
 && if [ -n "$missing" ]; then \
      apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing \
      && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb; \
    fi

# Units that make no sense in a container (no udev, no consoles, read-only /sys).
RUN systemctl mask \
      systemd-udevd.service systemd-udevd-kernel.socket systemd-udevd-control.socket \
      systemd-modules-load.service systemd-remount-fs.service sys-kernel-config.mount \
      sys-kernel-debug.mount sys-kernel-tracing.mount sys-fs-fuse-connections.mount \
      dev-hugepages.mount getty.target console-getty.service systemd-firstboot.service \
      apt-daily.timer apt-daily-upgrade.timer \
 && sed -i 's/^# *en_US.UTF-8 UTF-8/en_US.UTF-8 UTF-8/' /etc/locale.gen && locale-gen >/dev/null \
 && : > /etc/machine-id

STOPSIGNAL SIGRTMIN+3
CMD ["/lib/systemd/systemd"]
