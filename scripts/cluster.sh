#!/usr/bin/env bash
# A private PostgreSQL cluster for the demo, the tests and the benchmark:
#   scripts/cluster.sh start [NAME]   initdb if needed, start, print the port
#   scripts/cluster.sh stop [NAME]
#   scripts/cluster.sh env [NAME]     print PGHOST/PGPORT/PGUSER exports
# API_KEY_PG selects the PostgreSQL version (15, the default, is Debian's; 16 to 18 come from
# scripts/postgres-versions.sh).
# Data lives in .build/NAME (ignored by git), owned by the postgres OS user because initdb
# refuses root. The port is the first free one from 28815 up, remembered in .build/NAME/port.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BIN=$("$(scripts/postgres-versions.sh pg_config "${API_KEY_PG:-15}")" --bindir)
cmd=${1:-start}
name=${2:-demo}
dir="$ROOT/.build/$name"
data="$dir/data"
as_pg() { if [ "$(id -un)" = postgres ]; then "$@"; else sudo -u postgres "$@"; fi; }

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

case "$cmd" in
start)
    mkdir -p "$dir"
    chown postgres "$dir" 2>/dev/null || true
    # The postgres user must be able to reach the data directory through the checkout.
    p="$dir"; while [ "$p" != / ]; do chmod o+x "$p" 2>/dev/null || true; p=$(dirname "$p"); done
    if [ ! -f "$data/PG_VERSION" ]; then
        as_pg "$BIN/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log"
    fi
    running=false
    as_pg "$BIN/pg_ctl" -D "$data" status >/dev/null 2>&1 && running=true
    port=$(cat "$dir/port" 2>/dev/null || true)
    # A remembered port that someone else took meanwhile (another checkout's cluster): move.
    if [ -z "$port" ] || { ! $running && port_in_use "$port"; }; then
        port=28815; while port_in_use "$port"; do port=$((port + 1)); done
        echo "$port" > "$dir/port"
    fi
    if ! $running; then
        as_pg "$BIN/pg_ctl" -D "$data" -l "$dir/server.log" -w -o "-p $port -k $dir -c listen_addresses=127.0.0.1 ${PG_EXTRA_OPTS:-}" start >/dev/null
    fi
    echo "$port"
    ;;
stop)
    as_pg "$BIN/pg_ctl" -D "$data" -m fast stop >/dev/null 2>&1 || true
    ;;
kill)  # SIGKILL the postmaster: a crash, for the crash test
    pid=$(head -1 "$data/postmaster.pid")
    kill -9 "$pid"
    ;;
env)
    echo "export PGHOST=127.0.0.1 PGPORT=$(cat "$dir/port") PGUSER=postgres PGDATABASE=postgres"
    ;;
*)
    echo "usage: $0 start|stop|kill|env [name]" >&2; exit 2 ;;
esac
