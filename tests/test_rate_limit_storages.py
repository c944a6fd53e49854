"""Rate-limit windows are counted in shared memory when the library is preloaded, else in the
table api_key.rate_limit_windows. Both apply the same arithmetic (rate_limit.rs); these cases
run against both and must answer the same: exact under concurrency, and an admission given back
when its transaction (or savepoint) rolls back, is cancelled, times out or loses its backend,
kept when it commits.

The table storage is the main test cluster; shared memory is the preloaded cluster of
test_preloaded.py, started here for this module."""

from __future__ import annotations

import random
import threading
import time

import psycopg
import pytest

from test_preloaded import cluster, database_on

DB = "rate_limit_storages"


@pytest.fixture(scope="module", params=["table", "shared_memory"])
def storage(request, database):
    """A function that opens a superuser connection to a database of that storage."""
    preloaded = request.param == "shared_memory"
    yield database_on(preloaded, DB)
    if preloaded:
        cluster("stop")


def new_key(c, max_: int, window: str = "1 hour", **kw) -> str:
    extra = "".join(f", {k} => %({k})s" for k in kw)
    return c.execute(f"SELECT key FROM api_key_create('u', rate_limit_max => %(max)s, "
                     f"rate_limit_window => %(window)s{extra})", {"max": max_, "window": window, **kw}
                     ).fetchone()["key"]


def check(c, key: str) -> dict:
    return c.execute("SELECT code, rate_limit_remaining, retry_after_ms, remaining FROM api_key_verify(%s)",
                     [key]).fetchone()


def left(c, key: str) -> int:
    """The allowance left now, read by a verification that is rolled back (and so takes none)."""
    with c.transaction(force_rollback=True):
        row = check(c, key)
    return row["rate_limit_remaining"] + (1 if row["code"] == "VALID" else 0)


def test_a_burst_admits_exactly_max(storage):
    with storage() as c:
        key = new_key(c, 50)
    admitted = []

    def worker():
        with storage() as w:
            for _ in range(25):
                admitted.append(check(w, key)["code"] == "VALID")

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 50


def test_a_committed_admission_is_kept_a_rolled_back_one_given_back(storage):
    with storage() as c:
        key = new_key(c, 5)
        with c.transaction():
            assert check(c, key)["rate_limit_remaining"] == 4
        assert left(c, key) == 4
        with c.transaction(force_rollback=True):
            assert [check(c, key)["rate_limit_remaining"] for _ in range(3)] == [3, 2, 1]
        assert left(c, key) == 4


def test_savepoints_give_back_what_they_roll_back(storage):
    with storage() as c:
        key = new_key(c, 10)
        c.execute("BEGIN")
        check(c, key)                      # kept
        c.execute("SAVEPOINT a")
        check(c, key)                      # rolled back with a
        c.execute("SAVEPOINT b")
        check(c, key)                      # rolled back with a (b is inside it)
        c.execute("RELEASE b")
        c.execute("ROLLBACK TO a")
        c.execute("SAVEPOINT c")
        check(c, key)                      # kept: c is released
        c.execute("RELEASE c")
        c.execute("COMMIT")
        assert left(c, key) == 8


@pytest.mark.parametrize("how", ["error", "cancel", "statement_timeout", "terminate"])
def test_an_aborted_verifying_transaction_gives_back(storage, how):
    with storage() as c:
        key = new_key(c, 3)
        victim = storage()
        pid = victim.info.backend_pid
        if how == "statement_timeout":
            victim.execute("SET statement_timeout = '200ms'")
        victim.execute("BEGIN")
        assert check(victim, key)["rate_limit_remaining"] == 2
        if how in ("cancel", "terminate"):
            fn = "pg_cancel_backend" if how == "cancel" else "pg_terminate_backend"
            threading.Timer(0.3, lambda: c.execute(f"SELECT {fn}(%s)", [pid])).start()
        with pytest.raises(psycopg.Error):
            victim.execute("SELECT 1 / 0" if how == "error" else "SELECT pg_sleep(5)")
        victim.close()
        deadline = time.monotonic() + 5
        while c.execute("SELECT count(*) AS n FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()["n"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert left(c, key) == 3


def test_a_refusal_for_credits_gives_the_admission_back(storage):
    with storage() as c:
        key = new_key(c, 3, remaining=1)
        assert check(c, key)["rate_limit_remaining"] == 2
        refused = check(c, key)
        assert refused["code"] == "USAGE_EXCEEDED" and refused["rate_limit_remaining"] == 2
        assert left(c, key) == 2


def test_concurrent_commits_and_rollbacks_count_exactly_the_commits(storage):
    """Transactions that verify then commit or roll back at random, in parallel: the window
    ends up counting exactly the committed admissions, never more than max."""
    with storage() as c:
        key = new_key(c, 40)
    committed = []

    def worker(seed: int):
        rng = random.Random(seed)
        with storage() as w:
            for _ in range(20):
                keep = rng.random() < 0.5
                try:
                    with w.transaction(force_rollback=not keep):
                        valid = check(w, key)["code"] == "VALID"
                        if rng.random() < 0.3:
                            w.execute("SELECT pg_sleep(0.005)")
                except psycopg.errors.SerializationFailure:
                    continue
                if keep and valid:
                    committed.append(1)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(committed) <= 40
    with storage() as c:
        assert left(c, key) == 40 - len(committed)


@pytest.mark.parametrize("refusal", ["rollback", "credits"])
def test_a_call_that_is_given_back_never_starts_a_window(storage, refusal):
    """A window opens at the first admitted verification that stays admitted: one rolled back,
    or refused for credits, leaves no window behind (else a client could place windows at will
    without spending allowance)."""
    with storage() as c:
        key = new_key(c, 1, window="2 seconds", remaining=10)
        if refusal == "rollback":
            with c.transaction(force_rollback=True):
                assert check(c, key)["code"] == "VALID"
        else:
            assert c.execute("SELECT code FROM api_key_verify(%s, cost => 100)", [key]).fetchone()["code"] == \
                "USAGE_EXCEEDED"
        time.sleep(1.2)
        assert check(c, key)["code"] == "VALID"           # opens the window now
        time.sleep(1.2)
        assert check(c, key)["code"] == "RATE_LIMITED"    # 2.4 s after the first call, 1.2 s into this window


def test_reset_at_is_the_end_of_the_window(storage):
    """For X-RateLimit-Reset: a valid call reports when its window resets, a refused one when it
    may try again; a key without a rate limit reports none."""
    with storage() as c:
        key = new_key(c, 1, window="1 hour")
        valid = c.execute("SELECT code, reset_at FROM api_key_verify(%s)", [key]).fetchone()
        refused = c.execute("SELECT code, reset_at, retry_after_ms FROM api_key_verify(%s)", [key]).fetchone()
        assert (valid["code"], refused["code"]) == ("VALID", "RATE_LIMITED")
        assert refused["reset_at"] == valid["reset_at"]
        left = c.execute("SELECT extract(epoch FROM %s - clock_timestamp()) * 1000 AS ms", [valid["reset_at"]]
                         ).fetchone()["ms"]
        assert abs(float(left) - refused["retry_after_ms"]) < 2_000
        plain = c.execute("SELECT key FROM api_key_create('u')").fetchone()["key"]
        assert c.execute("SELECT reset_at FROM api_key_verify(%s)", [plain]).fetchone()["reset_at"] is None
