#!/usr/bin/env bash
# The five-minute demo: installs what is missing, builds and installs the extension, starts a
# private PostgreSQL 15 cluster (.build/demo, first free port from 28815), creates the
# extension in database api_key_demo and walks through the key lifecycle.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

API_KEY_PG_VERSIONS=15 scripts/setup.sh
say "building and installing the extension (release; the first build takes a few minutes)"
cargo pgrx install --release --pg-config /usr/lib/postgresql/15/bin/pg_config >/dev/null
say "starting the demo cluster"
port=$(scripts/cluster.sh start demo)
export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres
psql -X -q -d postgres -c "DROP DATABASE IF EXISTS api_key_demo" -c "CREATE DATABASE api_key_demo"
psql -X -q -d api_key_demo -c "CREATE EXTENSION api_key"
say "walkthrough"
psql -X -q -d api_key_demo -v ON_ERROR_STOP=1 -f scripts/demo.sql

cat <<MSG

The cluster is still running. Connect with:
    psql -h 127.0.0.1 -p $port -U postgres api_key_demo
Stop it with:
    scripts/cluster.sh stop demo
MSG
