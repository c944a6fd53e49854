#!/usr/bin/env bash
# Every test level, exiting non-zero on any failure:
#   1. plain #[test]s and in-database #[pg_test]s   (cargo pgrx test)
#   2. the extension installed into PostgreSQL 15 and a private cluster started (.build/test)
#   3. regression SQL files: test/sql/*.sql against test/expected/*.out (pg_regress)
#   4. client tests over real connections as ordinary roles (pytest, tests/)
# Installs what it needs first (scripts/setup.sh). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

scripts/setup.sh

say "unit and in-database tests (cargo pgrx test)"
mkdir -p .build/pgrx-test
chown postgres .build/pgrx-test
# initdb and the server run as the postgres OS user: it must reach .build through the checkout.
p="$ROOT/.build"; while [ "$p" != / ]; do chmod o+x "$p" 2>/dev/null || true; p=$(dirname "$p"); done
cargo pgrx test pg15 --runas postgres --pgdata "$ROOT/.build/pgrx-test/data"

say "installing the extension into PostgreSQL 15"
cargo pgrx install --release --pg-config /usr/lib/postgresql/15/bin/pg_config >/dev/null

say "starting the test cluster"
scripts/cluster.sh stop test
rm -rf .build/test
port=$(scripts/cluster.sh start test)
trap 'scripts/cluster.sh stop test' EXIT
export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres

say "regression SQL (pg_regress)"
psql -X -q -d postgres -c "DROP DATABASE IF EXISTS regression" -c "CREATE DATABASE regression" >/dev/null
/usr/lib/postgresql/15/lib/pgxs/src/test/regress/pg_regress \
    --use-existing --host=127.0.0.1 --port="$port" --user=postgres \
    --inputdir=test --outputdir=.build/regress --bindir=/usr/lib/postgresql/15/bin \
    $(cd test/sql && ls *.sql | sed 's/\.sql$//' | sort)

say "client tests (pytest)"
if [ ! -x .build/venv/bin/pytest ]; then
    python3 -m venv .build/venv
    .build/venv/bin/pip install -q -r tests/requirements.txt
fi
API_KEY_TEST_CLUSTER=test .build/venv/bin/pytest -q tests
