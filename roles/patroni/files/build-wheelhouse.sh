#!/usr/bin/env bash
# Gathers Patroni and every dependency as wheels for the hosts' platform into one directory
# (a "wheelhouse") and DIR.tar next to it, so that hosts install with pip --no-index: no
# package index, proxy or compiler is needed on them, and every host gets the same files.
# The conventions are roles/python_app/files/build-wheelhouse.sh's (manylinux tags up to the
# hosts' glibc, requirements.txt of exact pins, SHA256SUMS, an archive with fixed order,
# owners and times); this one builds no project wheel.
#
# Usage: build-wheelhouse.sh DEST PYTHON PY_VERSION GLIBC ARCH "PINS" "SDIST_PINS"
#   DEST        the wheelhouse directory to make (DEST.tar next to it); the role names it
#               after the pins' checksum, so an existing DEST.tar is reused as it is
#   PYTHON      the controller's Python (its pip builds and downloads)
#   PY_VERSION  the hosts' Python, e.g. 3.11
#   GLIBC       the hosts' glibc, e.g. 2.36 (wheels for any manylinux up to it qualify)
#   ARCH        the hosts' machine, e.g. x86_64
#   PINS        space-separated requirements, e.g. "patroni[etcd3]==4.1.5 psycopg[binary]==3.3.9"
#   SDIST_PINS  space-separated pure-Python dependencies that PyPI has as source only for
#               the pinned range (ydiff, python-etcd): built here into py3-none-any wheels,
#               byte for byte the same on every build (fixed SOURCE_DATE_EPOCH)
# Prints DEST.
set -euo pipefail
[ $# -eq 7 ] || { echo "usage: $0 DEST PYTHON PY_VERSION GLIBC ARCH PINS SDIST_PINS" >&2; exit 2; }
dest=$1
python=$2
case "$python" in */*) python="$(cd "$(dirname "$python")" && pwd)/$(basename "$python")" ;; esac
pyver=$3
glibc=$4
arch=$5
read -r -a pins <<<"$6"
read -r -a sdist_pins <<<"$7"
[[ "$glibc" =~ ^2\.([0-9]+)$ ]] || { echo "GLIBC must look like 2.36, got '$glibc'" >&2; exit 2; }
glibc_minor=${BASH_REMATCH[1]}
[ ${#pins[@]} -gt 0 ] || { echo "no PINS given" >&2; exit 2; }

if [ -f "$dest.tar" ] && [ -f "$dest/SHA256SUMS" ]; then
    echo "$dest"
    exit 0
fi
mkdir -p "$(dirname "$dest")"
dest="$(cd "$(dirname "$dest")" && pwd)/$(basename "$dest")"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/wheelhouse" "$work/build"
pip=("$python" -m pip --disable-pip-version-check)

# Source-only pure-Python dependencies: a wheel each, no dependencies (those come below).
if [ ${#sdist_pins[@]} -gt 0 ]; then
    (cd "$work/build" && SOURCE_DATE_EPOCH=315532800 PYTHONHASHSEED=0 \
        "${pip[@]}" wheel --quiet --no-deps --no-binary=:all: -w "$work/wheelhouse" \
        "${sdist_pins[@]}") >&2
    for f in "$work/wheelhouse"/*.whl; do
        case "$f" in *-py3-none-any.whl | *-py2.py3-none-any.whl) ;;
            *) echo "$f is not a pure-Python wheel: it cannot be built for the hosts here" >&2
               exit 1 ;;
        esac
    done
fi

# pip takes platform tags literally: list every manylinux the hosts' glibc runs.
platforms=(--platform "manylinux1_$arch" --platform "manylinux2010_$arch"
           --platform "manylinux2014_$arch")
for ((minor = 5; minor <= glibc_minor; minor++)); do
    platforms+=(--platform "manylinux_2_${minor}_$arch")
done
"${pip[@]}" download --quiet --only-binary=:all: --python-version "$pyver" \
    --implementation cp "${platforms[@]}" --find-links "$work/wheelhouse" \
    -d "$work/wheelhouse" "${pins[@]}" "${sdist_pins[@]}" >&2

# Exact pins of what was gathered: hosts install exactly these.
(cd "$work/wheelhouse" && for f in *.whl; do
    name=${f%%-*}
    rest=${f#*-}
    echo "${name//_/-}==${rest%%-*}"
done | sort) > "$work/wheelhouse/requirements.txt"
(cd "$work/wheelhouse" && sha256sum -- *.whl requirements.txt | sort -k2) \
    > "$work/wheelhouse/SHA256SUMS"

rm -rf "$dest" "$dest.tar" "$dest.tar.new"
tar --sort=name --mtime=@315532800 --owner=0 --group=0 --numeric-owner \
    -C "$work/wheelhouse" -cf "$dest.tar.new" .
mv "$work/wheelhouse" "$dest"
mv "$dest.tar.new" "$dest.tar"
echo "$dest"
