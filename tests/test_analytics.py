"""Usage analytics: every verification counted per key, minute, code and tag set, with the
credits it spent (only if its transaction commits), written in batches and read through the
views api_key.usage_by_minute, _hour and _day under row-level security.

The counts live in each backend's memory without preloading (the main test cluster) and in
shared memory with it (the preloaded cluster of test_preloaded.py): the cases that do not
depend on where counts wait run against both and must answer the same."""

from __future__ import annotations

import os
import signal
import threading
import time

import psycopg
import pytest

from helpers import ROOT, conninfo, create, expect_error, uid, verify
from test_preloaded import CLUSTER, _can_run_clusters, cluster, connect, database_on, fresh_database

DB = "analytics"
GARBAGE = "sk_definitely_not_a_key"


def _connect(port: int, dbname: str) -> psycopg.Connection:
    return connect(port, dbname)


@pytest.fixture(scope="module", params=["backend_memory", "shared_memory"])
def storage(request, database):
    """A function that opens a superuser connection to a database where counts wait in that
    storage."""
    preloaded = request.param == "shared_memory"
    yield database_on(preloaded, DB)
    if preloaded:
        cluster("stop")


def new_key(c, owner: str, **kw) -> dict:
    extra = "".join(f", {k} => %({k})s" for k in kw)
    return c.execute(f"SELECT id, key FROM api_key_create(%(owner)s{extra})", {"owner": owner, **kw}).fetchone()


def check(c, key: str, tags=None, **kw) -> str:
    extra = "".join(f", {k} => %({k})s" for k in kw)
    return c.execute(f"SELECT code FROM api_key_verify(%(key)s, tags => %(tags)s{extra})",
                     {"key": key, "tags": tags, **kw}).fetchone()["code"]


def usage(c, view: str, key_id) -> dict:
    """{(code, tags): (verifications, credits_spent)} of one key in one view, after a flush."""
    c.execute("SELECT api_key_flush_usage()")
    rows = c.execute(f"SELECT code, tags, sum(verifications) AS v, sum(credits_spent) AS c "
                     f"FROM api_key.{view} WHERE key_id IS NOT DISTINCT FROM %s GROUP BY 1, 2", [key_id]).fetchall()
    return {(r["code"], tuple(r["tags"])): (r["v"], r["c"]) for r in rows}


def test_every_outcome_is_counted_with_its_credits(storage):
    owner = uid("u")
    with storage() as c:
        k = new_key(c, owner, remaining=10, permissions='{"files": ["read"]}')
        for _ in range(3):
            assert check(c, k["key"], cost=2) == "VALID"
        assert check(c, k["key"], permissions='{"files": ["write"]}') == "INSUFFICIENT_PERMISSIONS"
        assert check(c, k["key"], cost=7) == "USAGE_EXCEEDED"
        c.execute("SELECT api_key_update(%s, enabled => false)", [k["id"]])
        assert check(c, k["key"]) == "DISABLED"
        expected = {("VALID", ()): (3, 6), ("INSUFFICIENT_PERMISSIONS", ()): (1, 0),
                    ("USAGE_EXCEEDED", ()): (1, 0), ("DISABLED", ()): (1, 0)}
        for view in ("usage_by_minute", "usage_by_hour", "usage_by_day"):
            assert usage(c, view, k["id"]) == expected, view
        row = c.execute("SELECT reference_type, reference_id, config_id, bucket FROM api_key.usage_by_minute "
                        "WHERE key_id = %s LIMIT 1", [k["id"]]).fetchone()
        assert (row["reference_type"], row["reference_id"], row["config_id"]) == ("user", owner, "default")
        assert row["bucket"].second == 0 and row["bucket"].microsecond == 0
        # A second flush has nothing left to add.
        assert c.execute("SELECT api_key_flush_usage() AS n").fetchone()["n"] == 0
        assert usage(c, "usage_by_day", k["id"]) == expected


def test_keys_not_found_are_counted_without_an_owner(storage):
    tag = uid("probe")
    with storage() as c:
        for _ in range(3):
            assert check(c, GARBAGE, tags=[tag]) == "NOT_FOUND"
        got = usage(c, "usage_by_minute", None)
        assert got[("NOT_FOUND", (tag,))] == (3, 0)
        row = c.execute("SELECT reference_id FROM api_key.usage_by_minute WHERE tags = ARRAY[%s]", [tag]).fetchone()
        assert row["reference_id"] is None


def test_credits_count_only_when_the_transaction_commits(storage):
    with storage() as c:
        k = new_key(c, uid("u"), remaining=100)
        with c.transaction(force_rollback=True):
            assert check(c, k["key"], cost=5) == "VALID"
        with c.transaction():
            c.execute("SAVEPOINT s")
            assert check(c, k["key"], cost=7) == "VALID"
            c.execute("ROLLBACK TO SAVEPOINT s")
            c.execute("SAVEPOINT t")
            assert check(c, k["key"], cost=11) == "VALID"
            c.execute("RELEASE SAVEPOINT t")
        # A refused api_key_authenticate aborts its transaction: still a verification.
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
            c.execute("SELECT api_key_authenticate(%s, cost => 1000)", [k["key"]])
        assert usage(c, "usage_by_minute", k["id"]) == {("VALID", ()): (3, 11), ("USAGE_EXCEEDED", ()): (1, 0)}
        assert c.execute("SELECT remaining FROM api_key.keys WHERE id = %s", [k["id"]]).fetchone()["remaining"] == 89


def test_tags_are_a_set_and_bounded(storage):
    with storage() as c:
        k = new_key(c, uid("u"))
        assert check(c, k["key"], tags=["GET /v1/files", "eu"]) == "VALID"
        assert check(c, k["key"], tags=["eu", "GET /v1/files", "eu"]) == "VALID"
        assert check(c, k["key"], tags=[]) == "VALID"
        assert check(c, k["key"]) == "VALID"
        for bad, words in [([""], "tag 1 is empty"), (["a", None], "tag 2 is NULL"), (["x" * 65], "64 bytes"),
                           (["a\tb"], "control"), ([str(i) for i in range(9)], "at most 8")]:
            with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
                check(c, k["key"], tags=bad)
            assert "tags" in str(e.value) and words in str(e.value)
        assert usage(c, "usage_by_minute", k["id"]) == {("VALID", ("GET /v1/files", "eu")): (2, 0),
                                                        ("VALID", ()): (2, 0)}


def test_counts_are_exact_under_concurrency(storage):
    with storage() as c:
        keys = [new_key(c, uid("u"), remaining=1_000_000) for _ in range(3)]
    per_thread, threads = 150, 4
    errors = []

    def worker(n: int):
        try:
            with storage() as w:
                for i in range(per_thread):
                    k = keys[(n + i) % len(keys)]
                    tags = ["t" + str(i % 3)]
                    if i % 5 == 0:
                        with w.transaction(force_rollback=True):
                            assert check(w, k["key"], tags=tags, cost=2) == "VALID"
                    else:
                        assert check(w, k["key"], tags=tags, cost=2) == "VALID"
                    if i % 50 == 0:
                        w.execute("SELECT api_key_flush_usage()")
                # Without preloading, the counts of a backend are its own until it writes them.
                w.execute("SELECT api_key_flush_usage()")
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors
    with storage() as c:
        c.execute("SELECT api_key_flush_usage()")
        ids = [k["id"] for k in keys]
        for view in ("usage_by_minute", "usage_by_day"):
            row = c.execute(f"SELECT sum(verifications) AS v, sum(credits_spent) AS c FROM api_key.{view} "
                            f"WHERE key_id = ANY(%s)", [ids]).fetchone()
            assert (row["v"], row["c"]) == (per_thread * threads, 2 * per_thread * threads * 4 // 5), view
        spent = c.execute("SELECT sum(1000000 - remaining) AS s FROM api_key.keys WHERE id = ANY(%s)", [ids]).fetchone()
        assert spent["s"] == 2 * per_thread * threads * 4 // 5


def test_nothing_is_counted_when_tracking_is_off(storage):
    with storage() as c:
        k = new_key(c, uid("u"))
        c.execute("SET api_key.track_usage = off")
        assert check(c, k["key"]) == "VALID"
        c.execute("RESET api_key.track_usage")
        assert usage(c, "usage_by_minute", k["id"]) == {}


def test_rollup_keeps_every_count_and_retention_removes_old_minute_and_hour_rows(storage):
    with storage() as c:
        k = new_key(c, uid("u"))
        # Old rows, as if the flushes of the last years had written them, nothing rolled up yet.
        c.execute("SELECT api_key_flush_usage()")
        c.execute("DELETE FROM api_key.usage_rollup")
        c.execute("DELETE FROM api_key.usage")
        c.execute("""INSERT INTO api_key.usage (resolution, bucket, key_id, code, tags, verifications, credits_spent)
                     VALUES ('minute', date_trunc('minute', now() - interval '8 days'), %(k)s, 'VALID', '{}', 1, 0),
                            ('minute', date_trunc('minute', now() - interval '6 days'), %(k)s, 'VALID', '{}', 2, 0),
                            ('hour', date_trunc('hour', now() - interval '91 days'), %(k)s, 'VALID', '{}', 4, 0),
                            ('hour', date_trunc('hour', now() - interval '89 days'), %(k)s, 'VALID', '{}', 8, 0),
                            ('day', date_trunc('day', now() - interval '1000 days'), %(k)s, 'VALID', '{}', 16, 0)""",
                  {"k": k["id"]})
        c.execute("SELECT api_key_flush_usage()")
        total = lambda view, older="0 days": c.execute(  # noqa: E731
            f"SELECT coalesce(sum(verifications), 0) AS n FROM api_key.{view} WHERE key_id = %s "
            f"AND bucket < now() - %s::interval", [k["id"], older]).fetchone()["n"]
        assert total("usage_by_day") == 31             # everything, at day resolution
        assert total("usage_by_minute") == 2           # the 8-day-old minute is gone
        assert total("usage_by_minute", "7 days") == 0
        assert total("usage_by_hour") == 1 + 2 + 8     # the 91-day-old hour is gone
        assert total("usage_by_hour", "90 days") == 0


# Row-level security and the flush without preloading: the main test cluster.

def test_actors_read_the_usage_of_the_keys_they_may_read(su, app, service):
    alice, bob = uid("alice"), uid("bob")
    ka = create(service, reference_id=alice)
    kb = create(service, reference_id=bob)
    verify(app, ka["key"])
    verify(app, kb["key"])
    verify(app, GARBAGE)
    app.val("SELECT api_key_flush_usage()")  # the counts wait in app's backend (not preloaded)
    seen = app.rows("SELECT DISTINCT reference_id, key_id FROM api_key.usage_by_minute", actor=alice)
    assert [(r["reference_id"], r["key_id"]) for r in seen] == [(alice, ka["id"])]
    for view in ("usage", "usage_by_hour", "usage_by_day"):
        ids = {r["key_id"] for r in app.rows(f"SELECT key_id FROM api_key.{view}", actor=bob)}
        assert ids == {kb["id"]}, view
    # The service sees every row, including keys not found (no owner).
    rows = service.rows("SELECT key_id FROM api_key.usage_by_minute WHERE key_id IS NULL OR key_id = ANY(%s)",
                        [[ka["id"], kb["id"]]])
    assert {r["key_id"] for r in rows} >= {ka["id"], kb["id"], None}
    # No role writes the table but the extension.
    for client in (app, service):
        expect_error("42501", client.rows, "DELETE FROM api_key.usage")
        expect_error("42501", client.rows,
                     "INSERT INTO api_key.usage VALUES ('day', now(), NULL, 'VALID', '{}', NULL, NULL, NULL, 1, 0)")


def until_the_next_minute() -> None:
    time.sleep(60.3 - time.time() % 60)


def test_a_backend_writes_its_counts_when_its_own_commit_is_due(su, new_client):
    """Without preloading: only a transaction that verified writes, only once an interval has
    passed, only the minutes that are over (each minute once), and never waiting for a lock: a
    queued ACCESS EXCLUSIVE lock on the usage table (VACUUM FULL behind a reader) must not hold
    up the COMMIT. A backend that exits writes what it holds."""
    su.conn.execute("LOAD 'api_key'")  # defines the setting in this backend
    su.conn.execute("ALTER SYSTEM SET api_key.usage_flush_interval = 1")
    su.conn.execute("SELECT pg_reload_conf()")
    reader, locker = new_client("postgres"), new_client("postgres")
    try:
        time.sleep(0.5)
        k = create(su, reference_id=uid("u"))
        c = new_client("postgres")
        seen = lambda: su.val("SELECT coalesce(sum(verifications), 0) FROM api_key.usage_by_minute "  # noqa: E731
                              "WHERE key_id = %s", [k["id"]])
        verify(c, k["key"])
        until_the_next_minute()
        c.rows("SELECT 1")  # neither verifies nor writes: writes no counts
        assert seen() == 0

        reader.conn.execute("BEGIN")
        reader.conn.execute("SELECT count(*) FROM api_key.usage")

        def lock():
            locker.conn.execute("BEGIN")
            locker.conn.execute("LOCK TABLE api_key.usage IN ACCESS EXCLUSIVE MODE")

        t = threading.Thread(target=lock)
        t.start()
        time.sleep(0.3)
        started = time.monotonic()
        verify(c, k["key"])  # a write is due; its lock is not free: the COMMIT goes on
        assert time.monotonic() - started < 2
        reader.conn.execute("ROLLBACK")
        t.join(timeout=10)
        locker.conn.execute("ROLLBACK")
        assert seen() == 0

        time.sleep(1.1)
        verify(c, k["key"])  # due again: the minute that is over is written
        assert seen() == 1
        verify(c, k["key"])
        c.close()  # exits: writes what it holds
        deadline = time.time() + 10
        while seen() != 4 and time.time() < deadline:
            time.sleep(0.1)
        assert seen() == 4
    finally:
        su.conn.execute("ALTER SYSTEM RESET api_key.usage_flush_interval")
        su.conn.execute("SELECT pg_reload_conf()")


# The background worker: the preloaded cluster.

@pytest.fixture(scope="module")
def preloaded():
    if not _can_run_clusters():
        pytest.skip("scripts/cluster.sh needs root (sudo -u postgres)")
    cluster("stop")
    port = int(cluster("start"))
    fresh_database(port, DB)
    with _connect(port, "postgres") as admin:
        admin.execute("ALTER SYSTEM SET api_key.usage_flush_interval = 1")
        admin.execute("SELECT pg_reload_conf()")
    yield port
    with _connect(port, "postgres") as admin:
        admin.execute("ALTER SYSTEM RESET api_key.usage_flush_interval")
    cluster("stop")


def wait_for(c, key_id, n: int, seconds: float = 10) -> int:
    deadline = time.time() + seconds
    while True:
        got = c.execute("SELECT coalesce(sum(verifications), 0) AS n FROM api_key.usage_by_minute WHERE key_id = %s",
                        [key_id]).fetchone()["n"]
        if got >= n or time.time() > deadline:
            return got
        time.sleep(0.1)


def test_the_background_worker_writes_counts_of_every_database(preloaded):
    """Each minute's counts once it is over, in every database; and the counts of a database
    dropped meanwhile are forgotten after one try (they used to be retried every interval)."""
    other, gone = DB + "_other", DB + "_gone"
    with _connect(preloaded, "postgres") as admin:
        for name in (other, gone):
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{name}"')
        gone_oid = admin.execute("SELECT oid FROM pg_database WHERE datname = %s", [gone]).fetchone()["oid"]
    try:
        with _connect(preloaded, gone) as g:
            g.execute("CREATE EXTENSION api_key")
            check(g, GARBAGE)
        with _connect(preloaded, "postgres") as admin:
            admin.execute(f'DROP DATABASE "{gone}"')
        with _connect(preloaded, DB) as c, _connect(preloaded, other) as d:
            d.execute("CREATE EXTENSION api_key")
            kc, kd = new_key(c, uid("u")), new_key(d, uid("u"))
            for _ in range(5):
                check(c, kc["key"])
            for _ in range(2):
                check(d, kd["key"])
            until_the_next_minute()
            assert wait_for(c, kc["id"], 5) == 5
            assert wait_for(d, kd["id"], 2) == 2
        # The flush workers come and go: a database can be dropped meanwhile.
        with _connect(preloaded, "postgres") as admin:
            admin.execute(f'DROP DATABASE "{other}"')
        time.sleep(3)
        log = (ROOT / ".build" / CLUSTER / "server.log").read_text(errors="replace")
        assert "which cannot be connected to" in log
        assert log.count(f"database {gone_oid} does not exist") <= 1
    finally:
        with _connect(preloaded, "postgres") as admin:
            for name in (other, gone):
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_crash_loses_at_most_the_counts_not_yet_written(preloaded):
    with _connect(preloaded, DB) as c:
        k = new_key(c, uid("u"))
        for _ in range(10):
            check(c, k["key"])
        c.execute("SELECT api_key_flush_usage()")  # written
        assert wait_for(c, k["id"], 10) == 10
        c.execute("ALTER SYSTEM SET api_key.usage_flush_interval = 3600")
        c.execute("SELECT pg_reload_conf()")
        time.sleep(1.5)  # the launcher's current sleep ends
        for _ in range(5):
            check(c, k["key"])
        victim = c.execute("SELECT pg_backend_pid() AS p").fetchone()["p"]
    try:
        os.kill(victim, signal.SIGKILL)  # the postmaster resets shared memory
        deadline = time.time() + 30
        while True:
            try:
                with _connect(preloaded, DB) as c:
                    got = wait_for(c, k["id"], 10, seconds=0)
                    break
            except psycopg.OperationalError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        assert got == 10
    finally:
        with _connect(preloaded, "postgres") as admin:
            admin.execute("ALTER SYSTEM SET api_key.usage_flush_interval = 1")
            admin.execute("SELECT pg_reload_conf()")


# Found by review: what must not happen around a flush.

def test_a_flush_that_rolls_back_keeps_the_counts(storage):
    with storage() as c:
        k = new_key(c, uid("u"), remaining=10)
        assert check(c, k["key"], cost=2) == "VALID"
        with c.transaction(force_rollback=True):
            c.execute("SELECT api_key_flush_usage()")
        with pytest.raises(psycopg.errors.DivisionByZero):
            c.execute("SELECT api_key_flush_usage(), 1/0")
        assert usage(c, "usage_by_minute", k["id"]) == {("VALID", ()): (1, 2)}


def test_tags_must_be_one_flat_set_of_visible_labels(storage):
    with storage() as c:
        k = new_key(c, uid("u"))
        for bad, words in [("{{a,b},{c,d}}", "one-dimensional"), ("{\"a\u200b\"}", "invisible"),
                           ("{\" a\"}", "white space"), ("{(other)}", "reserved")]:
            with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
                c.execute("SELECT code FROM api_key_verify(%s, tags => %s::text[])", [k["key"], bad])
            assert words in str(e.value), (bad, str(e.value))
        assert c.execute("SELECT code FROM api_key_verify(%s, tags => '[5:6]={a,b}'::text[])",
                         [k["key"]]).fetchone()["code"] == "VALID"


def test_flushing_needs_a_read_write_transaction(storage):
    with storage() as c:
        with c.transaction(force_rollback=True):
            c.execute("SET TRANSACTION READ ONLY")
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                c.execute("SELECT api_key_flush_usage()")


def test_backends_exiting_together_lose_no_counts(su):
    """Without preloading: a pool closing its connections at once (each writes at exit)."""
    k = create(su, reference_id=uid("u"))
    conns = [psycopg.connect(conninfo("postgres"), autocommit=True) for _ in range(20)]
    for c in conns:
        c.execute("SELECT api_key_verify(%s)", [k["key"]])
    threads = [threading.Thread(target=c.close) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    deadline = time.time() + 10
    while True:
        n = su.val("SELECT coalesce(sum(verifications), 0) FROM api_key.usage_by_minute WHERE key_id = %s", [k["id"]])
        if n == 20 or time.time() > deadline:
            break
        time.sleep(0.1)
    assert n == 20
