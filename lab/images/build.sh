#!/usr/bin/env bash
# Builds the local lab images (no registry needed) and reuses them when they exist:
#
#   dialogs-lab/debian-systemd:bookworm  Debian 12 with systemd as PID 1, python3, sudo...
#   dialogs-lab/citus:pg15               the above + postgresql-15 at this host's minor version
#                                        + this host's Citus files (for `preinstalled`),
#                                        labelled with both; rebuilt when the host's differ
#
# The base comes from the registry's debian:bookworm when it answers, else from a debootstrap
# rootfs (cached as a tarball under $DIALOGS_STATE_DIR) turned into an image by `docker import`.
# The citus variant is skipped, with a message, when this host has no citus.so: real hosts
# install Citus from its apt repository through the citus_node role instead.
#
# Usage: lab/images/build.sh [--force] [base|citus|all]     (default: all)
#        --force rebuilds the named image (citus: the variant only, over the existing base)
# Env:   DIALOGS_STATE_DIR (default /var/tmp/dialogs-platform)
#        DIALOGS_LAB_MIRROR (default http://deb.debian.org/debian)
#        DIALOGS_LAB_BASE_SOURCE = auto | registry | debootstrap (default auto)
set -euo pipefail
# The classic builder: no buildx plugin is needed here.
export DOCKER_BUILDKIT=0

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE_DIR="${DIALOGS_STATE_DIR:-/var/tmp/dialogs-platform}"
MIRROR="${DIALOGS_LAB_MIRROR:-http://deb.debian.org/debian}"
BASE_SOURCE="${DIALOGS_LAB_BASE_SOURCE:-auto}"
BASE_IMAGE=dialogs-lab/debian-systemd:bookworm
ROOTFS_IMAGE=dialogs-lab/debian-rootfs:bookworm
CITUS_IMAGE=dialogs-lab/citus:pg15
PG_MAJOR=15
PG_LIB=/usr/lib/postgresql/$PG_MAJOR/lib
PG_EXT=/usr/share/postgresql/$PG_MAJOR/extension
# Packages the base image must carry (the Dockerfile installs whichever are missing).
BASE_PACKAGES=(systemd systemd-sysv dbus python3 python3-apt sudo iproute2 procps
               ca-certificates locales)

say() { printf '==> [lab/images] %s\n' "$*" >&2; }
die() { printf 'error: [lab/images] %s\n' "$*" >&2; exit 1; }

force=0
target=all
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        base|citus|all) target=$arg ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) die "unknown argument '$arg' (use: [--force] [base|citus|all])" ;;
    esac
done

command -v docker >/dev/null || die "docker is not installed"
docker info >/dev/null 2>&1 || die "no docker engine answers (docker info failed); start dockerd"

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# docker build, quiet unless it fails (then its output and the log's path are shown).
build() {
    local log="$STATE_DIR/build-$1.log"
    shift
    mkdir -p "$STATE_DIR"
    if ! docker build "$@" >"$log" 2>&1; then
        tail -40 "$log" >&2
        die "docker build failed (full log: $log)"
    fi
}

# --- the root filesystem -------------------------------------------------------------------
rootfs_from_registry() {
    [ "$BASE_SOURCE" = debootstrap ] && return 1
    say "trying the registry for debian:bookworm"
    if timeout 60 docker pull -q debian:bookworm >/dev/null 2>&1; then
        docker tag debian:bookworm "$ROOTFS_IMAGE"
        return 0
    fi
    [ "$BASE_SOURCE" = registry ] && die "the registry did not give debian:bookworm"
    say "registry not reachable: building the root filesystem with debootstrap"
    return 1
}

rootfs_from_debootstrap() {
    command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
    [ "$(id -u)" -eq 0 ] || die "debootstrap needs root"
    local tarball="$STATE_DIR/debootstrap-bookworm-amd64.tar"
    mkdir -p "$STATE_DIR"
    if [ ! -s "$tarball" ]; then
        local work
        work=$(mktemp -d "$STATE_DIR/rootfs.XXXXXX")
        local include
        include=$(IFS=,; echo "${BASE_PACKAGES[*]}")
        say "debootstrap bookworm into $work (a few minutes; cached afterwards as $tarball)"
        if ! debootstrap --variant=minbase --include="$include" bookworm "$work" "$MIRROR" \
                >"$STATE_DIR/debootstrap.log" 2>&1; then
            rm -rf "$work"
            die "debootstrap failed, see $STATE_DIR/debootstrap.log"
        fi
        # Keep the image small: apt lists and caches are fetched again when needed.
        rm -rf "$work"/var/cache/apt/archives/*.deb "$work"/var/lib/apt/lists/*
        tar -C "$work" --numeric-owner -cf "$tarball.tmp" .
        mv "$tarball.tmp" "$tarball"
        rm -rf "$work"
    else
        say "reusing the cached rootfs $tarball"
    fi
    say "docker import -> $ROOTFS_IMAGE"
    docker import "$tarball" "$ROOTFS_IMAGE" >/dev/null
}

build_base() {
    local force=${1:-$force}
    if image_exists "$BASE_IMAGE" && [ "$force" -eq 0 ]; then
        say "$BASE_IMAGE exists: reused"
        return 0
    fi
    if ! image_exists "$ROOTFS_IMAGE" || [ "$force" -eq 1 ]; then
        rootfs_from_registry || rootfs_from_debootstrap
    fi
    say "building $BASE_IMAGE"
    build base -t "$BASE_IMAGE" --build-arg "ROOTFS=$ROOTFS_IMAGE" \
        --build-arg "PACKAGES=${BASE_PACKAGES[*]}" \
        -f "$HERE/debian-systemd.Dockerfile" "$HERE"
    say "$BASE_IMAGE built"
}

# --- the citus variant ---------------------------------------------------------------------
# The image is labelled with what it was built from and reused only while the host still has
# exactly that: org.dialogs-lab.postgresql (the postgresql-<major> package version),
# org.dialogs-lab.citus-files (sha256 over the copied Citus files: their relative names in
# byte order, each with the sha256 of its content, as `sha256sum` prints them) and
# org.dialogs-lab.citus-version (major.minor of citus.control's default_version).
label_of() {
    docker image inspect -f "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true
}

# Copies the Citus files into $1/lib and $1/extension.
stage_citus_files() {
    mkdir -p "$1/lib" "$1/extension"
    # Only the files Citus installed: the shared objects, the decoders, the extension scripts.
    cp -a "$PG_LIB"/citus*.so "$1/lib/"
    [ -d "$PG_LIB/citus_decoders" ] && cp -a "$PG_LIB/citus_decoders" "$1/lib/"
    cp -a "$PG_EXT"/citus* "$1/extension/"
}

citus_files_digest() {
    (cd "$1" && find lib extension \( -type f -o -type l \) | LC_ALL=C sort \
        | xargs -d '\n' sha256sum | sha256sum | cut -d' ' -f1)
}

build_citus() {
    if [ ! -f "$PG_LIB/citus.so" ]; then
        if image_exists "$CITUS_IMAGE"; then
            say "$CITUS_IMAGE exists: reused (this host has no $PG_LIB/citus.so to compare it with)"
        else
            say "skipping $CITUS_IMAGE: this host has no $PG_LIB/citus.so to copy;" \
                "use citus_node_install_method=apt (Citus's apt repository) on real hosts"
        fi
        return 0
    fi
    local pg_version
    pg_version=$(dpkg-query -W -f='${Version}' "postgresql-$PG_MAJOR" 2>/dev/null) \
        || die "citus.so found but postgresql-$PG_MAJOR is not a Debian package here"
    local ctx
    ctx=$(mktemp -d)
    trap 'rm -rf "$ctx"' RETURN
    stage_citus_files "$ctx"
    local files_digest citus_version
    files_digest=$(citus_files_digest "$ctx")
    citus_version=$(sed -n "s/^default_version *= *'\([0-9]*\.[0-9]*\).*/\1/p" "$PG_EXT/citus.control")
    [ -n "$citus_version" ] || die "no default_version in $PG_EXT/citus.control"
    local recipe
    recipe=$(sha256sum "$HERE/citus.Dockerfile" | cut -d' ' -f1)
    if image_exists "$CITUS_IMAGE" && [ "$force" -eq 0 ]; then
        local built_pg built_files built_recipe
        built_pg=$(label_of "$CITUS_IMAGE" org.dialogs-lab.postgresql)
        built_files=$(label_of "$CITUS_IMAGE" org.dialogs-lab.citus-files)
        built_recipe=$(label_of "$CITUS_IMAGE" org.dialogs-lab.recipe)
        if [ "$built_pg" = "$pg_version" ] && [ "$built_files" = "$files_digest" ] \
                && [ "$built_recipe" = "$recipe" ]; then
            say "$CITUS_IMAGE exists and matches this host (postgresql-$PG_MAJOR $pg_version," \
                "Citus $citus_version files ${files_digest:0:12}): reused"
            return 0
        fi
        [ "$built_pg" = "$pg_version" ] || say "$CITUS_IMAGE was built from postgresql-$PG_MAJOR" \
            "'${built_pg:-unknown}', this host has $pg_version: rebuilding it"
        [ "$built_files" = "$files_digest" ] || say "$CITUS_IMAGE holds other Citus files" \
            "(${built_files:-no checksum label}) than this host ($files_digest): rebuilding it"
        [ "$built_recipe" = "$recipe" ] || say "$CITUS_IMAGE was built from another" \
            "citus.Dockerfile (${built_recipe:-no recipe label}): rebuilding it"
    fi
    local old_id
    old_id=$(docker image inspect -f '{{.Id}}' "$CITUS_IMAGE" 2>/dev/null || true)
    cp "$HERE/citus.Dockerfile" "$ctx/Dockerfile"
    say "building $CITUS_IMAGE (postgresql-$PG_MAJOR $pg_version + this host's Citus $citus_version files)"
    build citus -t "$CITUS_IMAGE" --build-arg "BASE=$BASE_IMAGE" \
        --build-arg "PG_MAJOR=$PG_MAJOR" --build-arg "PG_VERSION=$pg_version" \
        --build-arg "CITUS_FILES=$files_digest" --build-arg "CITUS_VERSION=$citus_version" \
        --build-arg "RECIPE=$recipe" "$ctx"
    # The copied objects must find every library they link against in the image.
    if docker run --rm --entrypoint sh "$CITUS_IMAGE" -c \
            "ldd $PG_LIB/citus.so $PG_LIB/citus_columnar.so" | grep -q 'not found'; then
        docker image rm "$CITUS_IMAGE" >/dev/null
        die "$CITUS_IMAGE: citus.so misses shared libraries in the image (ldd: not found)"
    fi
    # The image it replaces, now untagged (kept when a container still uses it).
    if [ -n "$old_id" ] && [ "$old_id" != "$(docker image inspect -f '{{.Id}}' "$CITUS_IMAGE")" ]; then
        docker image rm "$old_id" >/dev/null 2>&1 || true
    fi
    say "$CITUS_IMAGE built"
}

# --force rebuilds the named image only ("citus" keeps an existing base; "all" rebuilds both).
case "$target" in
    base) build_base ;;
    citus) build_base 0; build_citus ;;
    all) build_base; build_citus ;;
esac
