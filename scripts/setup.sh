#!/usr/bin/env bash
# Installs what api_key needs to build, test and run, skipping whatever is already there:
# Debian packages (PostgreSQL 15 and its headers, clang for bindgen, sudo), PostgreSQL 16 to 18
# (scripts/postgres-versions.sh), cargo-pgrx pinned to the pgrx version in Cargo.toml, and
# `cargo pgrx init` for every version. Run as root on a Debian machine of this project's kind.
#   API_KEY_PG_VERSIONS="15 16 17 18"   the versions to set up (15 is always set up)
set -euo pipefail
cd "$(dirname "$0")/.."

PGRX_VERSION=$(sed -n 's/^pgrx = "=\(.*\)"/\1/p' Cargo.toml)
VERSIONS=${API_KEY_PG_VERSIONS:-15 16 17 18}
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

need_pkgs=()
for p in postgresql-15 postgresql-server-dev-15 libclang-dev clang sudo unzip; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$p")
done
if ((${#need_pkgs[@]})); then
    say "installing Debian packages: ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

if [ "$VERSIONS" != 15 ]; then
    say "PostgreSQL 16, 17 and 18 (scripts/postgres-versions.sh)"
    scripts/postgres-versions.sh >/dev/null
fi

if ! cargo pgrx --version 2>/dev/null | grep -q " $PGRX_VERSION\$"; then
    say "installing cargo-pgrx $PGRX_VERSION (a few minutes, once)"
    cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi

config="${PGRX_HOME:-$HOME/.pgrx}/config.toml"
init=()
missing=false
for v in $(printf '%s\n' 15 $VERSIONS | sort -un); do
    pg_config=$(scripts/postgres-versions.sh pg_config "$v")
    init+=("--pg$v=$pg_config")
    grep -qs "^pg$v = \"$pg_config\"" "$config" || missing=true
done
if $missing; then
    say "cargo pgrx init ${init[*]}"
    cargo pgrx init "${init[@]}" >/dev/null
fi
