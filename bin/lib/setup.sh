# Shared setup for bin/test and bin/lab: installs what this project needs on a Debian host.
# Each step is skipped when its result is already there, so re-runs are fast.

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV="$REPO_ROOT/.venv"
STATE_DIR="${DIALOGS_STATE_DIR:-/var/tmp/dialogs-platform}"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Debian packages: PostgreSQL 15 for the pg tier, etcd for the ha tier, docker +
# debootstrap for the lab.
ensure_system_packages() {
    # apt-utils (apt-ftparchive), gnupg and binutils (readelf): the lab test that installs
    # Citus from a local signed apt repository builds that repository.
    local wanted=(postgresql-15 postgresql-contrib python3-venv etcd-server docker.io
                  debootstrap rsync curl jq ca-certificates apt-utils gnupg binutils)
    local missing=()
    for pkg in "${wanted[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        say "missing packages (install them for the full suite): ${missing[*]}"
        return 0
    fi
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Debian starts a default cluster on 5432; the project never uses it.
    if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q .; then
        systemctl stop postgresql >/dev/null 2>&1 || pg_ctlcluster 15 main stop >/dev/null 2>&1 || true
    fi
    # Debian's etcd service would serve a one-member cluster on 2379; the ha tier starts
    # its own members on free ports, so the packaged one is stopped and never started.
    if [ -e /etc/init.d/etcd ]; then
        systemctl disable --now etcd >/dev/null 2>&1 || true
        service etcd stop >/dev/null 2>&1 || true
        update-rc.d etcd disable >/dev/null 2>&1 || true
    fi
}

# The project's virtualenv, reinstalled only when pyproject.toml changes.
ensure_venv() {
    local stamp="$VENV/.pyproject.sha256"
    local want
    want=$(sha256sum "$REPO_ROOT/pyproject.toml" | cut -d' ' -f1)
    if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        return 0
    fi
    say "preparing the virtualenv in $VENV"
    # An existing venv is only updated: re-running `venv` with another interpreter would
    # break it.
    if [ ! -x "$VENV/bin/python" ]; then
        local python=python3
        [ -x /usr/bin/python3 ] && python=/usr/bin/python3
        "$python" -m venv "$VENV"
        "$VENV/bin/pip" install -q --upgrade pip
    fi
    "$VENV/bin/pip" install -q -e "$REPO_ROOT[dev]"
    echo "$want" > "$stamp"
}

# A docker engine, started in the background when none answers. Its output goes to a
# log file, so the daemon never holds the caller's terminal or CI's output open.
ensure_docker() {
    docker info >/dev/null 2>&1 && return 0
    if ! command -v dockerd >/dev/null; then
        say "no dockerd here: the lab tier will skip"
        return 0
    fi
    mkdir -p "$STATE_DIR"
    say "starting dockerd (log: $STATE_DIR/dockerd.log)"
    # Any other descriptor the caller holds (a pipe, a lock file) is closed too: the daemon
    # outlives this run and would keep it open.
    (
        for fd in /proc/self/fd/*; do
            fd=${fd##*/}
            [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null
        done
        exec setsid nohup dockerd >"$STATE_DIR/dockerd.log" 2>&1 < /dev/null
    ) &
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && return 0
        sleep 1
    done
    say "dockerd did not answer within 60 s (see $STATE_DIR/dockerd.log): the lab tier will skip"
}
