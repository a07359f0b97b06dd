#!/usr/bin/env bash
# Builds the project's wheel and gathers the wheels of all its dependencies for the hosts'
# platform into one directory (a "wheelhouse"), so that hosts install with pip --no-index:
# no package index, proxy or compiler is needed on them, and every host gets the same files.
#
# Usage: build-wheelhouse.sh PROJECT_DIR OUTPUT_DIR PYTHON PY_VERSION GLIBC ARCH
#   PYTHON      the controller's Python (its pip builds and downloads)
#   PY_VERSION  the hosts' Python, e.g. 3.11
#   GLIBC       the hosts' glibc, e.g. 2.36 (wheels for any manylinux up to it qualify)
#   ARCH        the hosts' machine, e.g. x86_64 or aarch64
# Prints the wheelhouse directory; DIR.tar next to it holds the same files (one file to
# copy to the hosts). Both change only when the code or a dependency does: the project
# wheel is byte-for-byte reproducible (fixed SOURCE_DATE_EPOCH, built from a clean copy so
# stale files of an in-tree build/ never leak in), the directory is replaced only when its
# checksums differ, and the archive has fixed names order, owners and times.
set -euo pipefail
project=$(cd "$1" && pwd)
mkdir -p "$2"
out=$(cd "$2" && pwd)
python=$3
# The builds below run in another directory: a relative path to Python must not break.
case "$python" in */*) python="$(cd "$(dirname "$python")" && pwd)/$(basename "$python")" ;; esac
pyver=$4
glibc=$5
arch=$6
[[ "$glibc" =~ ^2\.([0-9]+)$ ]] || { echo "GLIBC must look like 2.36, got '$glibc'" >&2; exit 2; }
glibc_minor=${BASH_REMATCH[1]}
[ -f "$project/pyproject.toml" ] || { echo "no pyproject.toml in $project" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/src" "$work/wheelhouse"
sources=(pyproject.toml)
for entry in README.md README.rst LICENSE "$project"/*/__init__.py; do
    entry=${entry#"$project"/}
    entry=${entry%/__init__.py}
    [ -e "$project/$entry" ] && sources+=("$entry")
done
tar -C "$project" --exclude=__pycache__ --exclude='*.pyc' -cf - "${sources[@]}" \
    | tar -C "$work/src" -xf -

pip=("$python" -m pip --disable-pip-version-check)
build() {
    (cd "$work/src" && SOURCE_DATE_EPOCH=315532800 "${pip[@]}" wheel --quiet --no-deps \
        "$@" -w "$work/wheelhouse" .) >&2
}
# The controller's setuptools when it has one (no network), else an isolated build.
build --no-build-isolation 2>/dev/null || build
wheel=$(ls "$work/wheelhouse"/*.whl)

# pip takes platform tags literally: list every manylinux the hosts' glibc runs.
platforms=(--platform "manylinux1_$arch" --platform "manylinux2010_$arch"
           --platform "manylinux2014_$arch")
for ((minor = 5; minor <= glibc_minor; minor++)); do
    platforms+=(--platform "manylinux_2_${minor}_$arch")
done
"${pip[@]}" download --quiet --only-binary=:all: --python-version "$pyver" \
    --implementation cp "${platforms[@]}" -d "$work/wheelhouse" "$wheel" >&2

# Exact pins of what was gathered: hosts install exactly these.
(cd "$work/wheelhouse" && for f in *.whl; do
    name=${f%%-*}
    rest=${f#*-}
    echo "${name//_/-}==${rest%%-*}"
done | sort) > "$work/wheelhouse/requirements.txt"
(cd "$work/wheelhouse" && sha256sum -- *.whl requirements.txt | sort -k2) \
    > "$work/wheelhouse/SHA256SUMS"

dest="$out/wheelhouse-py$pyver"
if ! cmp -s "$work/wheelhouse/SHA256SUMS" "$dest/SHA256SUMS" || [ ! -f "$dest.tar" ]; then
    rm -rf "$dest.new" "$dest.old"
    mv "$work/wheelhouse" "$dest.new"
    tar --sort=name --mtime=@315532800 --owner=0 --group=0 --numeric-owner \
        -C "$dest.new" -cf "$dest.tar.new" .
    [ -d "$dest" ] && mv "$dest" "$dest.old"
    mv "$dest.new" "$dest"
    mv "$dest.tar.new" "$dest.tar"
    rm -rf "$dest.old"
fi
echo "$dest"
