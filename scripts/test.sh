#!/usr/bin/env bash
# Every test level, exiting non-zero on any failure. On PostgreSQL 15 (Debian's):
#   1. plain #[test]s and in-database #[pg_test]s             (cargo pgrx test)
#   2. the Debian package built (scripts/package.sh), and the upgrade from 0.1.0 through it:
#      dpkg -i into a clean state, ALTER EXTENSION UPDATE, catalog = fresh install (tests/upgrade)
#   3. regression SQL: test/sql/*.sql against test/expected/*.out (pg_regress)
#   4. client tests over real connections as ordinary roles    (pytest, tests/), the package installed
# On PostgreSQL 16, 17 and 18 (from scripts/postgres-versions.sh): 1 and 4.
# Installs what it needs first (scripts/setup.sh). Run as root.
#   API_KEY_PG_VERSIONS="15 16 17 18"   the versions to test (15 always runs in full)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export API_KEY_PG_VERSIONS=${API_KEY_PG_VERSIONS:-15 16 17 18}
say() { printf '\n\033[1m==> %s\033[0m (%s)\n' "$*" "$(date +%T)"; }
started=$(date +%s)

scripts/setup.sh

if [ ! -x .build/venv/bin/pytest ] || ! .build/venv/bin/pip freeze | grep -q hypothesis; then
    python3 -m venv .build/venv
    .build/venv/bin/pip install -q -r tests/requirements.txt
fi
# initdb and the servers run as the postgres OS user: it must reach .build through the checkout.
mkdir -p .build
p="$ROOT/.build"; while [ "$p" != / ]; do chmod o+x "$p" 2>/dev/null || true; p=$(dirname "$p"); done

in_database_tests() { # version
    say "PostgreSQL $1: unit and in-database tests (cargo pgrx test)"
    mkdir -p ".build/pgrx-test-$1"
    chown postgres ".build/pgrx-test-$1"
    cargo pgrx test "pg$1" --runas postgres --pgdata "$ROOT/.build/pgrx-test-$1/data"
}

client_tests() { # version
    say "PostgreSQL $1: client tests (pytest)"
    local cluster="test-$1"
    API_KEY_PG=$1 scripts/cluster.sh stop "$cluster"
    rm -rf ".build/$cluster"
    local port
    port=$(API_KEY_PG=$1 scripts/cluster.sh start "$cluster")
    if [ "$1" = 15 ]; then
        say "PostgreSQL 15: regression SQL (pg_regress)"
        PGHOST=127.0.0.1 PGPORT=$port psql -X -q -U postgres -d postgres -c "CREATE DATABASE regression" >/dev/null
        /usr/lib/postgresql/15/lib/pgxs/src/test/regress/pg_regress \
            --use-existing --host=127.0.0.1 --port="$port" --user=postgres \
            --inputdir=test --outputdir=.build/regress --bindir=/usr/lib/postgresql/15/bin \
            $(cd test/sql && ls *.sql | sed 's/\.sql$//' | sort) || {
            API_KEY_PG=$1 scripts/cluster.sh stop "$cluster"
            return 1
        }
    fi
    local status=0
    API_KEY_PG=$1 API_KEY_TEST_CLUSTER=$cluster .build/venv/bin/pytest -q -p no:cacheprovider \
        --ignore=tests/upgrade tests || status=$?
    API_KEY_PG=$1 scripts/cluster.sh stop "$cluster"
    return $status
}

in_database_tests 15
say "PostgreSQL 15: the Debian package"
scripts/package.sh 15
say "PostgreSQL 15: upgrade from 0.1.0 through the package (leaves the package installed)"
.build/venv/bin/pytest -q -p no:cacheprovider tests/upgrade
client_tests 15

for v in $API_KEY_PG_VERSIONS; do
    [ "$v" = 15 ] && continue
    in_database_tests "$v"   # also installs that build into that version's server
    client_tests "$v"
done
say "all tests passed in $(( $(date +%s) - started )) s"
