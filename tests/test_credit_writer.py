"""With the library preloaded, credits are spent by the credit writer, a background worker, in
transactions of its own: a verification holds no lock on the key past its call. Rolled-back
spends are refunded shortly after. Exactness under concurrency, the lock test of issue 9,
refunds, cancellation and a writer that goes away.

Runs on the preloaded cluster of test_preloaded.py."""

from __future__ import annotations

import random
import threading
import time

import psycopg
import pytest

from test_preloaded import _can_run_clusters, cluster, connect, fresh_database

DB = "credit_writer"

pytestmark = pytest.mark.skipif(not _can_run_clusters(), reason="scripts/cluster.sh needs root (sudo -u postgres)")


def _connect(port: int, **kw) -> psycopg.Connection:
    return connect(port, DB, **kw)


@pytest.fixture(scope="module")
def port():
    cluster("stop")
    port = int(cluster("start"))
    fresh_database(port, DB)
    yield port
    cluster("stop")


def new_key(c, remaining: int, **kw) -> dict:
    extra = "".join(f", {k} => %({k})s" for k in kw)
    return c.execute(f"SELECT id, key FROM api_key_create('u', remaining => %(r)s{extra})",
                     {"r": remaining, **kw}).fetchone()


def check(c, key: str, cost: int = 1) -> dict:
    return c.execute("SELECT code, remaining FROM api_key_verify(%s, cost => %s)", [key, cost]).fetchone()


def remaining(c, key_id) -> int:
    return c.execute("SELECT remaining FROM api_key.keys WHERE id = %s", [key_id]).fetchone()["remaining"]


def eventually(f, expected, seconds: float = 10):
    deadline = time.time() + seconds
    while True:
        got = f()
        if got == expected or time.time() > deadline:
            return got
        time.sleep(0.05)


def test_a_transaction_left_open_after_authenticating_blocks_nobody(port):
    """Issue 9's lock test: BEGIN; api_key_authenticate(…); the request's work…; meanwhile
    another session verifies the same key at once."""
    with _connect(port) as a, _connect(port, options="-c statement_timeout=3000") as b:
        k = new_key(a, 100)
        a.execute("BEGIN")
        a.execute("SELECT api_key_authenticate(%s, cost => 2)", [k["key"]])
        started = time.monotonic()
        for _ in range(20):
            assert check(b, k["key"])["code"] == "VALID"
        assert time.monotonic() - started < 2, "the second session waited for the first one's transaction"
        a.execute("COMMIT")
        assert remaining(a, k["id"]) == 78


def test_a_rolled_back_spend_is_refunded(port):
    with _connect(port) as c:
        k = new_key(c, 10)
        with c.transaction(force_rollback=True):
            assert check(c, k["key"], cost=4) == {"code": "VALID", "remaining": 6}
        assert eventually(lambda: remaining(c, k["id"]), 10) == 10
        with c.transaction():
            c.execute("SAVEPOINT s")
            assert check(c, k["key"], cost=3)["code"] == "VALID"
            c.execute("ROLLBACK TO SAVEPOINT s")
            assert check(c, k["key"], cost=2)["code"] == "VALID"
        assert eventually(lambda: remaining(c, k["id"]), 8) == 8
        # A refused authentication aborts its transaction: a spend before it comes back.
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
            with c.transaction():
                assert check(c, k["key"], cost=5)["code"] == "VALID"
                c.execute("SELECT api_key_authenticate(%s, cost => 100)", [k["key"]])
        assert eventually(lambda: remaining(c, k["id"]), 8) == 8


def test_a_read_only_transaction_on_the_primary_spends(port):
    with _connect(port) as c:
        k = new_key(c, 3)
        with c.transaction():
            c.execute("SET TRANSACTION READ ONLY")
            assert check(c, k["key"]) == {"code": "VALID", "remaining": 2}
        assert remaining(c, k["id"]) == 2


def test_exact_under_concurrency_with_rollbacks(port):
    credits, threads, calls = 500, 8, 120
    with _connect(port) as c:
        k = new_key(c, credits)
    committed = [0] * threads
    errors = []

    def worker(n: int):
        rng = random.Random(n)
        try:
            with _connect(port) as w:
                for _ in range(calls):
                    cost = rng.randint(1, 3)
                    rollback = rng.random() < 0.3
                    with w.transaction(force_rollback=rollback):
                        r = check(w, k["key"], cost)
                        assert r["code"] in ("VALID", "USAGE_EXCEEDED"), r
                        if r["code"] == "VALID":
                            assert r["remaining"] >= 0
                            if not rollback:
                                committed[n] += cost
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors
    with _connect(port) as c:
        assert eventually(lambda: remaining(c, k["id"]), credits - sum(committed)) == credits - sum(committed)


def test_a_change_in_progress_holds_the_keys_spends_until_it_ends(port):
    """The writer never waits for another transaction: it leaves the key queued while a
    management call holds its row, and answers for the key as that call left it."""
    with _connect(port) as a, _connect(port) as b:
        k = new_key(a, 10)
        a.execute("BEGIN")
        a.execute("SELECT api_key_update(%s, enabled => false)", [k["id"]])
        answer = {}
        t = threading.Thread(target=lambda: answer.update(check(b, k["key"])))
        t.start()
        time.sleep(0.5)
        assert t.is_alive(), "the verification did not wait for the change in progress"
        # Other keys are not held up meanwhile.
        with _connect(port) as c:
            other = new_key(c, 5)
            assert check(c, other["key"])["code"] == "VALID"
        a.execute("COMMIT")
        t.join(timeout=10)
        assert answer["code"] == "DISABLED"
        assert remaining(a, k["id"]) == 10


def test_a_cancelled_verification_spends_nothing(port):
    with _connect(port) as a, _connect(port) as b:
        k = new_key(a, 10)
        a.execute("BEGIN")
        a.execute("SELECT api_key_update(%s, name => 'held')", [k["id"]])
        b.execute("SET statement_timeout = 300")
        with pytest.raises(psycopg.errors.QueryCanceled):
            check(b, k["key"])
        b.execute("RESET statement_timeout")
        a.execute("ROLLBACK")
        time.sleep(0.3)
        assert remaining(a, k["id"]) == 10
        assert check(b, k["key"]) == {"code": "VALID", "remaining": 9}


def test_a_writer_that_goes_away_is_replaced(port):
    with _connect(port) as c:
        k = new_key(c, 10)
        assert check(c, k["key"])["code"] == "VALID"
        c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'api_key credit writer'")
        time.sleep(0.3)
        assert check(c, k["key"]) == {"code": "VALID", "remaining": 8}
        # Idle writers leave, so that DROP DATABASE is not refused because of them.
        assert eventually(lambda: c.execute("SELECT count(*) AS n FROM pg_stat_activity "
                                            "WHERE backend_type = 'api_key credit writer'").fetchone()["n"], 0) == 0


def test_with_the_writer_off_the_verifying_transaction_spends(port):
    with _connect(port) as a, _connect(port, options="-c lock_timeout=500") as b:
        k = new_key(a, 10)
        a.execute("SET api_key.credit_writer = off")
        a.execute("BEGIN")
        assert check(a, k["key"])["code"] == "VALID"
        # The old way: the key's row stays locked until the transaction ends.
        with pytest.raises(psycopg.errors.LockNotAvailable):
            check(b, k["key"])
        a.execute("ROLLBACK")
        assert remaining(a, k["id"]) == 10


# Found by review.

def test_a_verification_whose_backend_is_terminated_spends_nothing(port):
    with _connect(port) as holder, _connect(port) as admin:
        k = new_key(admin, 100)
        holder.execute("BEGIN")
        holder.execute("SELECT 1 FROM api_key.keys WHERE id = %s FOR UPDATE", [k["id"]])
        victims = [_connect(port, options="-c deadlock_timeout=60s") for _ in range(5)]
        threads = []
        for v in victims:
            def run(v=v):
                try:
                    check(v, k["key"])
                except psycopg.Error:
                    pass
            threads.append(threading.Thread(target=run))
        for t in threads:
            t.start()
        time.sleep(0.5)
        pids = [v.info.backend_pid for v in victims]
        admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", [pids])
        for t in threads:
            t.join(timeout=10)
        holder.execute("ROLLBACK")
        assert eventually(lambda: remaining(admin, k["id"]), 100) == 100
        time.sleep(0.5)
        assert remaining(admin, k["id"]) == 100


def test_a_transaction_holding_the_keys_table_still_verifies(port):
    with _connect(port, options="-c statement_timeout=10000") as c:
        k = new_key(c, 10)
        for lock in ["LOCK TABLE api_key.keys IN SHARE MODE", "CREATE INDEX keys_by_name_tmp ON api_key.keys (name)"]:
            with c.transaction(force_rollback=True):
                c.execute(lock)
                assert check(c, k["key"])["code"] == "VALID"
        assert remaining(c, k["id"]) == 10


def test_a_writer_that_cannot_start_leaves_verifications_to_their_transactions(port):
    with _connect(port, options="-c statement_timeout=20000") as c, \
            psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True) as admin:
        k = new_key(c, 10)
        time.sleep(2.5)  # the idle writer leaves
        admin.execute(f'ALTER DATABASE "{DB}" ALLOW_CONNECTIONS false')
        try:
            assert check(c, k["key"]) == {"code": "VALID", "remaining": 9}
        finally:
            admin.execute(f'ALTER DATABASE "{DB}" ALLOW_CONNECTIONS true')
        assert check(c, k["key"]) == {"code": "VALID", "remaining": 8}


def test_a_refund_never_undoes_a_balance_set_after_the_spend(port):
    with _connect(port) as a, _connect(port) as b:
        k = new_key(a, 100)
        a.execute("BEGIN")
        assert check(a, k["key"], cost=10)["code"] == "VALID"
        b.execute("SELECT api_key_credits_set(%s, 0)", [k["id"]])
        a.execute("ROLLBACK")
        time.sleep(0.5)
        assert remaining(b, k["id"]) == 0
        # A refund after an addition still gives back.
        b.execute("SELECT api_key_credits_set(%s, 50)", [k["id"]])
        a.execute("BEGIN")
        assert check(a, k["key"], cost=10)["code"] == "VALID"
        b.execute("SELECT api_key_credits_add(%s, 5)", [k["id"]])
        a.execute("ROLLBACK")
        assert eventually(lambda: remaining(b, k["id"]), 55) == 55
