#!/usr/bin/env bash
# Installs what api_key needs to build, test and run, skipping whatever is already there:
# Debian packages (PostgreSQL 15 and its headers, clang for bindgen, sudo), cargo-pgrx pinned to
# the pgrx version in Cargo.toml, and `cargo pgrx init` against the system PostgreSQL 15.
# Run as root on a Debian machine of this project's kind.
set -euo pipefail
cd "$(dirname "$0")/.."

PGRX_VERSION=$(sed -n 's/^pgrx = "=\(.*\)"/\1/p' Cargo.toml)
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

need_pkgs=()
for p in postgresql-15 postgresql-server-dev-15 libclang-dev clang sudo; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$p")
done
if ((${#need_pkgs[@]})); then
    say "installing Debian packages: ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

if ! cargo pgrx --version 2>/dev/null | grep -q " $PGRX_VERSION\$"; then
    say "installing cargo-pgrx $PGRX_VERSION (a few minutes, once)"
    cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi

if ! grep -qs "pg15" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
    say "cargo pgrx init --pg15=$PG_CONFIG"
    cargo pgrx init --pg15="$PG_CONFIG"
fi
