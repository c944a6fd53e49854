#!/usr/bin/env bash
# The api_key benchmark, in one command (as root):   bench/run.sh
#
# Installs what it needs (scripts/setup.sh, the extension in release mode, the better-auth peer's
# npm packages), starts a private cluster (.build/bench), loads keys, runs every scenario with
# pgbench (8 clients, 2 threads, prepared protocol) and the better-auth peer from Node, and prints
# the results table (also written to bench/.results/latest.md; raw results in bench/.results/<run>/).
#
# Environment (all optional):
#   BENCH_SECONDS=15        measured seconds per scenario (warm-up: BENCH_WARMUP=3 more)
#   BENCH_KEYS=100000       keys per set (plain, rate-limited, credits; baseline and hand-rolled too)
#   BENCH_BIG_KEYS=1000000  keys in the large table of the scale scenario
#   BENCH_ARGON_KEYS=1000   argon2id keys
#   BENCH_BA_KEYS=10000     keys created through better-auth's API
#   BENCH_SKIP_INSTALL=1    skip setup.sh, cargo pgrx install and npm ci (iterating on an installed build)
#   BENCH_SKIP_BETTER_AUTH=1  skip the better-auth peer (its targets then read "n/a")
#   BENCH_SKIP_PRELOAD=1    skip the second pass on the server restarted with
#                           shared_preload_libraries = 'api_key' (shared-memory rate-limit windows)
#   BENCH_QUIET_WAIT=60     seconds to wait, before each scenario, for other work on the machine
#                           to stop (builds, tests); then it measures anyway and says so
#   BENCH_RETRIES=2, BENCH_MAX_FOREIGN=0.10  repeat a scenario whose window saw foreign runnable
#                           processes in more than 10 % of the samples, up to twice
#   BENCH_KEEP_CLUSTER=1    leave the cluster running afterwards
#   PG_EXTRA_OPTS           server options (default below)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
B="$ROOT/bench"
BIN=/usr/lib/postgresql/15/bin

SECS=${BENCH_SECONDS:-15}
WARMUP=${BENCH_WARMUP:-3}
N=${BENCH_KEYS:-100000}
N_BIG=${BENCH_BIG_KEYS:-1000000}
N_ARGON=${BENCH_ARGON_KEYS:-1000}
N_BA=${BENCH_BA_KEYS:-10000}
CLIENTS=8
THREADS=2
BATCH=10000
QUIET_WAIT=${BENCH_QUIET_WAIT:-60}
RETRIES=${BENCH_RETRIES:-2}
MAX_FOREIGN=${BENCH_MAX_FOREIGN:-0.10}
export PG_EXTRA_OPTS=${PG_EXTRA_OPTS:-"-c shared_buffers=1GB -c max_connections=200 -c synchronous_commit=on -c max_wal_size=8GB -c checkpoint_timeout=30min"}

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }

# --- install -------------------------------------------------------------------------------------
if [ -z "${BENCH_SKIP_INSTALL:-}" ]; then
    say "setup (scripts/setup.sh)"
    scripts/setup.sh
    say "installing api_key (release)"
    cargo pgrx install --release --pg-config "$BIN/pg_config"
    if [ -z "${BENCH_SKIP_BETTER_AUTH:-}" ]; then
        if ! command -v npm >/dev/null; then
            say "installing nodejs and npm"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
        fi
        say "installing the better-auth peer (npm ci)"
        (cd "$B/better-auth" && npm ci --no-audit --no-fund --loglevel=error)
    fi
fi
for tool in python3 "$BIN/pgbench" psql; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing" >&2; exit 1; }
done

# The installed build: `cargo pgrx test` installs a debug build into the same directory, so say
# which one is measured; and note it if the library is replaced during the run (that also kills
# backends with SIGBUS, since the file is overwritten in place).
SO="$($BIN/pg_config --pkglibdir)/api_key.so"
so_stamp() { stat -c '%s %Y' "$SO" 2>/dev/null || echo missing; }
SO_STAMP=$(so_stamp)
BUILD=release
if command -v readelf >/dev/null && readelf -S --wide "$SO" 2>/dev/null | grep -q '\.debug_info'; then
    BUILD=debug
    say "WARNING: $SO is a DEBUG build (with debug_info): results will not be representative"
fi

# --- cluster -------------------------------------------------------------------------------------
RUN_ID=$(date -u +%Y%m%d-%H%M%S)
OUT="$B/.results/$RUN_ID"
mkdir -p "$OUT"
say "fresh cluster .build/bench (results: bench/.results/$RUN_ID)"
scripts/cluster.sh stop bench
rm -rf .build/bench
port=$(scripts/cluster.sh start bench)
if [ -z "${BENCH_KEEP_CLUSTER:-}" ]; then trap 'scripts/cluster.sh stop bench' EXIT; fi
export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres
PSQL=(psql -X -q -v ON_ERROR_STOP=1)

BUILD=$BUILD python3 - "$OUT/meta.json" "$SECS" "$WARMUP" "$N" "$N_BIG" "$N_ARGON" "$N_BA" <<'PY'
import json, os, platform, subprocess, sys, datetime
def sh(c):
    try: return subprocess.run(c, shell=True, capture_output=True, text=True).stdout.strip()
    except Exception: return ""
out, secs, warm, n, nbig, nargon, nba = sys.argv[1:]
cpu = sh("sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1")
json.dump({
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    "cores": os.cpu_count(), "cpu": cpu,
    "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    "kernel": platform.release(),
    "postgres": sh("/usr/lib/postgresql/15/bin/postgres --version"),
    "extension_commit": sh("git rev-parse --short HEAD") + ("+changes" if sh("git status --porcelain -- src sql") else ""),
    "extension_so": sh("ls -l --time-style=+%Y-%m-%dT%H:%M /usr/lib/postgresql/15/lib/api_key.so | awk '{print $6}'"),
    "pg_options": os.environ.get("PG_EXTRA_OPTS", ""),
    "build": os.environ.get("BUILD", "?"),
    "seconds": int(secs), "warmup": int(warm), "keys": int(n), "big_keys": int(nbig),
    "argon_keys": int(nargon), "better_auth_keys": int(nba),
    "clients": 8, "threads": 2, "protocol": "prepared",
}, open(out, "w"), indent=2)
PY

# --- helpers -------------------------------------------------------------------------------------
# load DB LO HI ARGS: api_key_create for i in LO..HI, plaintexts into bench_keys, in batches of
# BATCH keys (one statement and transaction each), alternating between two sessions (2 cores).
# ARGS are api_key_create's named arguments and may use g (the key's number).
load() {
    local db=$1 lo=$2 hi=$3 args=$4 pids=() w s e
    for w in 0 1; do
        for ((s = lo + w * BATCH; s <= hi; s += 2 * BATCH)); do
            e=$((s + BATCH - 1)); ((e > hi)) && e=$hi
            echo "INSERT INTO bench_keys (i, key) SELECT g, c.key FROM generate_series($s, $e) AS g, LATERAL api_key_create($args) AS c;"
        done | "${PSQL[@]}" -d "$db" &
        pids+=($!)
    done
    for w in "${pids[@]}"; do wait "$w"; done
}
# timed_load NAME DB LO HI ARGS: load, and record the time in loads.jsonl.
timed_load() {
    local name=$1 t0; t0=$(now)
    say "loading $name: $(($4 - $3 + 1)) keys"
    load "$2" "$3" "$4" "$5"
    local secs; secs=$(elapsed "$t0")
    echo "{\"name\": \"$name\", \"keys\": $(($4 - $3 + 1)), \"seconds\": $secs}" >> "$OUT/loads.jsonl"
    say "  $name: ${secs}s"
}
finish_load() { "${PSQL[@]}" -d "$1" -f "$B/sql/finish_load.sql" >/dev/null; }
wal_lsn() { psql -X -At -d "$1" -c "SELECT pg_current_wal_lsn()"; }
wal_diff() { psql -X -At -d "$1" -c "SELECT pg_wal_lsn_diff('$3', '$2')::bigint"; }
q() { psql -X -At -d "$1" -c "$2"; }

# The interference monitor: every runnable process outside the benchmark and its cluster is noted,
# so that the table can flag scenarios that shared the 2 cores with a build or another test.
start_monitor() {
    python3 "$B/monitor.py" "$OUT/monitor.jsonl" $$ "$(head -1 .build/bench/data/postmaster.pid)" &
    MON_PID=$!
}
# wait_quiet: before a scenario, wait (up to BENCH_QUIET_WAIT seconds) until the monitor has seen
# nothing foreign for 5 seconds.
wait_quiet() {
    python3 - "$OUT/monitor.jsonl" "$QUIET_WAIT" <<'PY' || say "  the machine is busy with other work; measuring anyway (see 'foreign CPU')"
import json, sys, time
path, limit = sys.argv[1], float(sys.argv[2])
deadline = time.time() + limit
while True:
    try:
        tail = [json.loads(l) for l in open(path).read().splitlines()[-10:]]
    except (OSError, ValueError):
        tail = []
    if len(tail) == 10 and not any(s["foreign"] for s in tail) and time.time() - tail[-1]["t"] < 2:
        sys.exit(0)
    if time.time() > deadline:
        sys.exit(1)
    time.sleep(0.5)
PY
}

# scenario NAME DB SCRIPT [pgbench args...]: wait for a quiet machine, checkpoint, warm up, then
# measure with per-transaction logs. An attempt that shared the CPU with foreign work for more
# than BENCH_MAX_FOREIGN of its samples is repeated (up to BENCH_RETRIES times); the table shows
# the cleanest attempt. Transactions of every attempt (warm-ups included) are counted in
# NAME.txns for the exactness checks.
scenario() {
    local name=$1 db=$2 script=$3; shift 3
    local attempt=0 rc lsn0 lsn1 t0 t1 foreign
    : > "$OUT/$name.txns"
    while :; do
        attempt=$((attempt + 1))
        wait_quiet
        say "scenario $name$( ((attempt > 1)) && echo " (attempt $attempt)")"
        "${PSQL[@]}" -d "$db" -c CHECKPOINT
        "$BIN/pgbench" -n -c "$CLIENTS" -j "$THREADS" -M prepared -T "$WARMUP" -f "$B/sql/$script" "$@" "$db" \
            > "$OUT/$name.a$attempt.warmup.out" 2>&1 || true
        processed "$OUT/$name.a$attempt.warmup.out" >> "$OUT/$name.txns"
        rc=0
        lsn0=$(wal_lsn "$db")
        t0=$(now)
        "$BIN/pgbench" -n -c "$CLIENTS" -j "$THREADS" -M prepared -T "$SECS" -f "$B/sql/$script" "$@" \
            -l --log-prefix="$OUT/$name.a$attempt" "$db" > "$OUT/$name.a$attempt.out" 2>&1 || rc=$?
        t1=$(now)
        lsn1=$(wal_lsn "$db")
        processed "$OUT/$name.a$attempt.out" >> "$OUT/$name.txns"
        foreign=$(python3 "$B/report.py" summarize "$OUT" "$name" --attempt "$attempt" --exit-code "$rc" \
            --wal-bytes "$(wal_diff "$db" "$lsn0" "$lsn1")" --window "$t0" "$t1")
        if ((attempt > RETRIES)) || python3 -c "import sys; sys.exit(float(sys.argv[1]) > float(sys.argv[2]))" "$foreign" "$MAX_FOREIGN"; then
            break
        fi
        say "  $name shared the CPU with other work (${foreign}); again"
    done
}
processed() { sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$1" | grep . || echo 0; }
txns() { awk '{ s += $1 } END { print s + 0 }' "$OUT/$1.txns"; }
# check NAME DESCRIPTION EXPECTED ACTUAL: an exactness check, recorded in checks.jsonl.
check() {
    local ok=false; [ "$3" = "$4" ] && ok=true
    echo "{\"scenario\": \"$1\", \"check\": \"$2\", \"expected\": \"$3\", \"actual\": \"$4\", \"ok\": $ok}" >> "$OUT/checks.jsonl"
    $ok || say "  CHECK FAILED: $1: $2: expected $3, got $4"
}

start_monitor

# --- database bench: baseline, hand-rolled, every verification mode ------------------------------
"${PSQL[@]}" -d postgres -c "CREATE DATABASE bench" -c "CREATE DATABASE bench_scale" -c "CREATE DATABASE better_auth"
"${PSQL[@]}" -d bench -f "$B/sql/setup_bench.sql" >/dev/null

timed_load plain bench 1 "$N" "reference_id => 'user_' || (g % 10000), name => 'plain ' || g"
timed_load rate_limited bench 10000001 $((10000000 + N)) \
    "reference_id => 'user_' || (g % 10000), name => 'rate ' || g, rate_limit_max => 1000000, rate_limit_window => '1 hour'"
timed_load credits bench 20000001 $((20000000 + N)) \
    "reference_id => 'user_' || (g % 10000), name => 'credits ' || g, remaining => 1000000000"
load bench 30000001 30000001 "reference_id => 'hot', name => 'hot rate', rate_limit_max => 2000000000, rate_limit_window => '1 hour'"
load bench 40000001 40000001 "reference_id => 'hot', name => 'hot credits', remaining => 1000000000000"
timed_load argon2id bench 50000001 $((50000000 + N_ARGON)) \
    "reference_id => 'user_' || (g % 10000), name => 'argon ' || g, config_id => 'argon'"
say "baseline and hand-rolled tables"
"${PSQL[@]}" -d bench <<SQL
INSERT INTO baseline_keys (hash, owner, name)
SELECT sha256(convert_to(k.key, 'UTF8')), 'user_' || (k.i % 10000), 'plain ' || k.i FROM bench_keys k WHERE k.i BETWEEN 1 AND $N;
INSERT INTO handrolled_keys (hash, owner, name, remaining)
SELECT sha256(convert_to(k.key, 'UTF8')), 'user_' || (k.i % 10000), 'credits ' || k.i, 1000000000
  FROM bench_keys k WHERE k.i BETWEEN 20000001 AND $((20000000 + N));
INSERT INTO handrolled_keys (hash, owner, name, remaining)
SELECT sha256(convert_to(k.key, 'UTF8')), 'hot', 'hot credits', 1000000000000 FROM bench_keys k WHERE k.i = 40000001;
SQL
finish_load bench

D=(-D "n=$N")
scenario baseline bench baseline.sql "${D[@]}"
scenario verify_plain bench verify_plain.sql "${D[@]}"
# The same with the usage analytics off (api_key.track_usage, superuser: the bench's role).
PGOPTIONS="-c api_key.track_usage=off" scenario verify_plain_untracked bench verify_plain.sql "${D[@]}"
# Every verification of verify_plain was counted (pgbench's backends wrote their counts as they
# exited), and none of verify_plain_untracked.
plain_counted() { q bench "SELECT coalesce(sum(u.verifications), 0) FROM api_key.usage_by_day u JOIN api_key.keys k ON k.id = u.key_id WHERE k.name LIKE 'plain %'"; }
for _ in 1 2 3 4 5 6 7 8 9 10; do [ "$(plain_counted)" = "$(txns verify_plain)" ] && break; sleep 0.5; done
check verify_plain "verifications counted in the usage analytics = verifications" "$(txns verify_plain)" "$(plain_counted)"

before=$(q bench "SELECT sum(remaining) FROM handrolled_keys")
scenario handrolled bench handrolled.sql "${D[@]}"
check handrolled "credits spent = verifications" "$(txns handrolled)" "$((before - $(q bench "SELECT sum(remaining) FROM handrolled_keys")))"

before=$(q bench "SELECT sum(remaining) FROM api_key.keys WHERE name LIKE 'credits %'")
scenario verify_credits bench verify_credits.sql "${D[@]}"
check verify_credits "credits spent = verifications" "$(txns verify_credits)" \
    "$((before - $(q bench "SELECT sum(remaining) FROM api_key.keys WHERE name LIKE 'credits %'")))"

scenario verify_rate bench verify_rate.sql "${D[@]}"
check verify_rate "admitted in windows = verifications" "$(txns verify_rate)" \
    "$(q bench "SELECT coalesce(sum(w.admitted), 0) FROM api_key.rate_limit_windows w JOIN api_key.keys k ON k.id = w.key_id WHERE k.name LIKE 'rate %'")"

scenario verify_hot_rate bench verify_hot_rate.sql "${D[@]}"
check verify_hot_rate "admitted in the window = verifications" "$(txns verify_hot_rate)" \
    "$(q bench "SELECT w.admitted FROM api_key.rate_limit_windows w JOIN api_key.keys k ON k.id = w.key_id WHERE k.name = 'hot rate'")"

scenario verify_hot_credits bench verify_hot_credits.sql "${D[@]}"
check verify_hot_credits "credits spent = verifications" "$(txns verify_hot_credits)" \
    "$((1000000000000 - $(q bench "SELECT remaining FROM api_key.keys WHERE name = 'hot credits'")))"

before=$(q bench "SELECT remaining FROM api_key.keys WHERE name = 'hot credits'")
scenario verify_hot_credits_request bench verify_hot_credits_request.sql "${D[@]}"
check verify_hot_credits_request "credits spent = verifications" "$(txns verify_hot_credits_request)" \
    "$((before - $(q bench "SELECT remaining FROM api_key.keys WHERE name = 'hot credits'")))"

# Reference for the hot key with credits: the hand-rolled function on the same single key.
scenario handrolled_hot bench handrolled_hot.sql "${D[@]}"

scenario verify_argon bench verify_argon.sql -D "n=$N_ARGON"

# --- database bench_scale: 100,000 keys, then 1,000,000; listing ------------------------------------
"${PSQL[@]}" -d bench_scale -f "$B/sql/setup_scale.sql" >/dev/null
SCALE_SMALL=$((N < N_BIG ? N : N_BIG))
timed_load scale_first_100k bench_scale 1 "$SCALE_SMALL" \
    "reference_id => 'org_big', reference_type => 'organization', name => 'org key ' || g"
finish_load bench_scale
scenario verify_100k bench_scale verify_scale.sql -D "n=$SCALE_SMALL"
if ((N_BIG > SCALE_SMALL)); then
    timed_load scale_rest_to_1m bench_scale $((SCALE_SMALL + 1)) "$N_BIG" \
        "reference_id => 'user_' || (g % 10000), name => 'key ' || g"
    finish_load bench_scale
fi
scenario verify_1m bench_scale verify_scale.sql -D "n=$N_BIG"
scenario list_org bench_scale list_org.sql

# --- the better-auth peer -------------------------------------------------------------------------
if [ -z "${BENCH_SKIP_BETTER_AUTH:-}" ]; then
    say "better-auth peer: $N_BA keys through auth.api.createApiKey, then verifyApiKey"
    "${PSQL[@]}" -d postgres -c "CHECKPOINT"
    (cd "$B/better-auth" && PGDATABASE=better_auth BENCH_OUT="$OUT/better-auth.json" BENCH_SECONDS=$SECS \
        BENCH_WARMUP=$WARMUP BENCH_BA_KEYS=$N_BA BENCH_BA_WORKERS=$CLIENTS node bench.mjs 2> "$OUT/better-auth.log") \
        || { say "better-auth peer failed:"; tail -20 "$OUT/better-auth.log" >&2; }
fi

# --- the same cluster, preloaded: shared-memory rate-limit windows ----------------------------------
if [ -z "${BENCH_SKIP_PRELOAD:-}" ]; then
    say "restarting the cluster with shared_preload_libraries = 'api_key'"
    kill "$MON_PID" 2>/dev/null || true
    scripts/cluster.sh stop bench
    PG_EXTRA_OPTS="$PG_EXTRA_OPTS -c shared_preload_libraries=api_key" scripts/cluster.sh start bench >/dev/null
    start_monitor
    finish_load bench
    table_rows() { q bench "SELECT count(*) || '/' || coalesce(sum(admitted), 0) FROM api_key.rate_limit_windows"; }
    before=$(table_rows)
    scenario baseline_preload bench baseline.sql "${D[@]}"
    scenario verify_plain_preload bench verify_plain.sql "${D[@]}"
    PGOPTIONS="-c api_key.track_usage=off" scenario verify_plain_untracked_preload bench verify_plain.sql "${D[@]}"
    scenario verify_rate_preload bench verify_rate.sql "${D[@]}"
    scenario verify_hot_rate_preload bench verify_hot_rate.sql "${D[@]}"
    check verify_rate_preload "rate_limit_windows table untouched (rows/admitted)" "$before" "$(table_rows)"
    # Credits through the credit writer (no row lock held past the verification).
    scenario handrolled_preload bench handrolled.sql "${D[@]}"
    for s in verify_credits verify_hot_credits verify_hot_credits_request; do
        case $s in verify_credits) where="name LIKE 'credits %'" ;; *) where="name = 'hot credits'" ;; esac
        before=$(q bench "SELECT sum(remaining) FROM api_key.keys WHERE $where")
        scenario "${s}_preload" bench "$s.sql" "${D[@]}"
        check "${s}_preload" "credits spent = verifications" "$(txns "${s}_preload")" \
            "$((before - $(q bench "SELECT sum(remaining) FROM api_key.keys WHERE $where")))"
    done
fi

if [ "$(so_stamp)" != "$SO_STAMP" ]; then
    say "WARNING: api_key.so was replaced during the run"
    echo '{"so_replaced": true}' > "$OUT/warnings.json"
fi

# --- report ---------------------------------------------------------------------------------------
python3 "$B/report.py" table "$OUT" | tee "$OUT/table.md"
cp "$OUT/table.md" "$B/.results/latest.md"
ln -sfn "$RUN_ID" "$B/.results/latest"
