#!/usr/bin/env bash
# Installable packages, one per PostgreSQL version:
#   scripts/package.sh [VERSION ...]     (default: 15 16 17 18)
# writes .build/packages/postgresql-NN-api-key_<version>_amd64.deb for each: a release build
# (cargo pgrx package) with its files under Debian's paths for that version
# (/usr/lib/postgresql/NN/lib, /usr/share/postgresql/NN/extension), depending on postgresql-NN.
# 16 to 18 are built against the servers of scripts/postgres-versions.sh (same major version,
# same ABI as Debian's packages of them).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
OUT="$ROOT/.build/packages"
mkdir -p "$OUT"
versions=("$@")
((${#versions[@]})) || versions=(15 16 17 18)

for v in "${versions[@]}"; do
    [ "$v" = 15 ] || scripts/postgres-versions.sh >/dev/null
    pg_config=$(scripts/postgres-versions.sh pg_config "$v")
    printf '\033[1m==> postgresql-%s-api-key %s\033[0m\n' "$v" "$VERSION"
    built="$ROOT/.build/package-build/$v"
    rm -rf "$built"
    cargo pgrx package --pg-config "$pg_config" --out-dir "$built" >/dev/null
    stage="$ROOT/.build/package-stage/$v"
    rm -rf "$stage"
    lib="$stage/usr/lib/postgresql/$v/lib"
    ext="$stage/usr/share/postgresql/$v/extension"
    mkdir -p "$lib" "$ext" "$stage/DEBIAN" "$stage/usr/share/doc/postgresql-$v-api-key"
    find "$built" -name 'api_key.so' -exec install -m 0644 {} "$lib/" \;
    find "$built" \( -name 'api_key.control' -o -name 'api_key--*.sql' \) -exec install -m 0644 {} "$ext/" \;
    [ -f "$lib/api_key.so" ] && [ -f "$ext/api_key.control" ] && [ -f "$ext/api_key--$VERSION.sql" ] || {
        echo "package: the build for PostgreSQL $v is missing files" >&2
        exit 1
    }
    install -m 0644 README.md CHANGELOG.md "$stage/usr/share/doc/postgresql-$v-api-key/"
    size=$(du -sk "$stage/usr" | cut -f1)
    cat >"$stage/DEBIAN/control" <<CONTROL
Package: postgresql-$v-api-key
Version: $VERSION
Architecture: amd64
Maintainer: api_key developers <api-key@localhost>
Depends: postgresql-$v
Section: database
Priority: optional
Installed-Size: $size
Homepage: https://example.invalid/api_key
Description: API keys managed inside PostgreSQL $v
 Keys owned by users, organizations or any reference; membership and role
 permissions decide who manages them; verification checks expiry, permissions,
 rate limits and credits in one call; row-level security enforces it.
CONTROL
    deb="$OUT/postgresql-$v-api-key_${VERSION}_amd64.deb"
    dpkg-deb --root-owner-group --build "$stage" "$deb" >/dev/null
    echo "$deb"
done
