"""Usage control under concurrency: each thread has its own connection (its own backend) and all
start together at a barrier. Rate limits and credits must be exact."""

from __future__ import annotations

import threading
import time
from collections import Counter

from helpers import APP, connect, create, uid


SKEW_MS = 250


def burst(key: str, threads: int, calls: int, cost: int = 1) -> list[dict]:
    """`threads` connections verify `key` `calls` times each, starting together."""
    conns = [connect(APP) for _ in range(threads)]
    barrier = threading.Barrier(threads)
    results: list[dict] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(conn):
        try:
            barrier.wait(timeout=30)
            mine = [conn.execute("SELECT * FROM api_key_verify(%s, cost => %s)", [key, cost]).fetchone()
                    for _ in range(calls)]
            with lock:
                results.extend(mine)
        except BaseException as e:  # noqa: BLE001
            with lock:
                errors.append(e)

    workers = [threading.Thread(target=work, args=(c,)) for c in conns]
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=120)
    finally:
        for c in conns:
            c.close()
    assert not errors, errors
    assert len(results) == threads * calls
    return results


def codes(results) -> Counter:
    return Counter(r["code"] for r in results)


def test_rate_limit_burst_admits_exactly_max(service):
    k = create(service, reference_id=uid("u"), rate_limit_max=20, rate_limit_window="1 hour")
    results = burst(k["key"], threads=40, calls=3)
    assert codes(results) == {"VALID": 20, "RATE_LIMITED": 100}
    assert sorted(r["rate_limit_remaining"] for r in results if r["valid"]) == list(range(20))
    for r in results:
        if not r["valid"]:
            # A backend that read the clock just before another opened the window may be told to
            # wait a few milliseconds more than the window (SKEW_MS): harmless, never less.
            assert r["rate_limit_remaining"] == 0 and 0 < r["retry_after_ms"] <= 3_600_000 + SKEW_MS


def test_credits_are_spent_exactly(service, su):
    k = create(service, reference_id=uid("u"), remaining=100)
    results = burst(k["key"], threads=8, calls=50)
    assert codes(results) == {"VALID": 100, "USAGE_EXCEEDED": 300}
    assert sorted(r["remaining"] for r in results if r["valid"]) == list(range(100))
    assert su.val("SELECT remaining FROM api_key.keys WHERE id = %s", [k["id"]]) == 0


def test_credits_with_cost_never_go_below_zero(service, su):
    k = create(service, reference_id=uid("u"), remaining=100)
    results = burst(k["key"], threads=8, calls=20, cost=3)
    assert codes(results)["VALID"] == 33
    assert su.val("SELECT remaining FROM api_key.keys WHERE id = %s", [k["id"]]) == 1


def test_rate_limit_refusals_consume_no_credit(service, su):
    k = create(service, reference_id=uid("u"), remaining=1000, rate_limit_max=10, rate_limit_window="1 hour")
    results = burst(k["key"], threads=8, calls=10)
    assert codes(results) == {"VALID": 10, "RATE_LIMITED": 70}
    assert su.val("SELECT remaining FROM api_key.keys WHERE id = %s", [k["id"]]) == 990


def test_credit_refusals_give_back_rate_allowance(service, su):
    k = create(service, reference_id=uid("u"), remaining=5, rate_limit_max=10, rate_limit_window="1 hour")
    first = burst(k["key"], threads=16, calls=1)
    assert codes(first)["VALID"] == 5
    assert set(codes(first)) <= {"VALID", "USAGE_EXCEEDED", "RATE_LIMITED"}
    service.rows("SELECT 1 FROM api_key_update(id => %s, remaining => 100)", [k["id"]])
    second = burst(k["key"], threads=16, calls=1)
    assert codes(second) == {"VALID": 5, "RATE_LIMITED": 11}, "credit-refused calls must not have used the window"
    assert su.val("SELECT remaining FROM api_key.keys WHERE id = %s", [k["id"]]) == 95


def test_admitted_again_after_the_window(service):
    k = create(service, reference_id=uid("u"), rate_limit_max=5, rate_limit_window="1 second")
    first = burst(k["key"], threads=12, calls=1)
    assert codes(first) == {"VALID": 5, "RATE_LIMITED": 7}
    wait = max(r["retry_after_ms"] for r in first if not r["valid"])
    assert 0 < wait <= 1000 + SKEW_MS
    time.sleep(wait / 1000 + 0.05)
    second = burst(k["key"], threads=12, calls=1)
    assert codes(second) == {"VALID": 5, "RATE_LIMITED": 7}


def test_refill_happens_once_under_concurrency(service, su):
    k = create(service, reference_id=uid("u"), remaining=0, refill_amount=10, refill_interval="1 hour")
    su.rows("UPDATE api_key.keys SET last_refill_at = now() - interval '2 hours' WHERE id = %s", [k["id"]])
    results = burst(k["key"], threads=8, calls=5)
    assert codes(results) == {"VALID": 10, "USAGE_EXCEEDED": 30}
    assert su.val("SELECT remaining FROM api_key.keys WHERE id = %s", [k["id"]]) == 0


def test_verification_does_not_wait_for_management(service, app, new_client):
    """A key being changed in an open transaction still verifies at once (plain keys read only)."""
    user = uid("u")
    k = create(service, reference_id=user)
    holder = new_client("akt_app")
    with holder.tx(actor=user) as conn:
        conn.execute("SELECT 1 FROM api_key_update(id => %s, name => 'being edited')", [k["id"]])
        c = new_client("akt_app")
        c.rows("SET statement_timeout = '3s'")
        started = time.time()
        assert c.val("SELECT code FROM api_key_verify(%s)", [k["key"]]) == "VALID"
        assert time.time() - started < 2


def test_an_open_transaction_does_not_hold_other_keys(service):
    """last_used_at is written when a transaction commits, not inside the verification: a
    verification at the start of a long transaction must not lock the rows of keys it used
    earlier, or every other verification of those keys (with credits) would wait for it."""
    y = create(service, reference_id=uid("u"), remaining=1000)
    x = create(service, reference_id=uid("u"))
    # a is a superuser only so that it may lower api_key.last_used_precision (a SUSET setting).
    with connect("postgres") as a, connect(APP) as b:
        assert a.execute("SELECT code FROM api_key_verify(%s)", [x["key"]]).fetchone()["code"] == "VALID"
        a.execute("SET api_key.last_used_precision = 1")
        assert a.execute("SELECT code FROM api_key_verify(%s)", [y["key"]]).fetchone()["code"] == "VALID"
        time.sleep(0.6)                       # a write of a's pending uses is now due
        a.execute("BEGIN")
        assert a.execute("SELECT code FROM api_key_verify(%s)", [x["key"]]).fetchone()["code"] == "VALID"
        b.execute("SET lock_timeout = '2s'")
        started = time.time()
        assert b.execute("SELECT code FROM api_key_verify(%s)", [y["key"]]).fetchone()["code"] == "VALID"
        assert time.time() - started < 1.0
        a.execute("COMMIT")                   # writes a's due uses, in a's own transaction
        got = service.rows("SELECT id, last_used_at FROM api_key.keys WHERE id IN (%s, %s)", [x["id"], y["id"]])
        assert all(r["last_used_at"] is not None for r in got), got


import pytest  # noqa: E402

from helpers import SERVICE  # noqa: E402

CHANGES = {
    "disable": ("SELECT api_key_update(%s, enabled => false)", "DISABLED", None),
    "revoke": ("SELECT api_key_revoke(%s)", "NOT_FOUND", None),
    "narrow": ("SELECT api_key_update(%s, permissions => '{\"files\": [\"write\"]}')", "INSUFFICIENT_PERMISSIONS", 9),
    "credits": ("SELECT api_key_credits_add(%s, 5)", "VALID", 13),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_verification_that_waited_answers_for_the_key_as_it_was_left(change, service, new_client):
    """The documented pattern holds a key's row from api_key_authenticate to COMMIT. A second
    verification of the key waits for it; if that transaction changed the key meanwhile
    (disabled, revoked, narrowed, credited), the waiting one answers for the key as it was left,
    never spends on a key that was taken away."""
    sql, code, remaining = CHANGES[change]
    made = create(service, reference_id=uid("wait"), remaining=10, permissions='{"files": ["read"]}')
    holder, waiter = new_client(SERVICE), new_client(APP)
    answer: dict = {}

    def wait_and_verify():
        answer.update(waiter.one("SELECT code, remaining FROM api_key_verify(%s, '{\"files\": [\"read\"]}')",
                                 [made["key"]]))

    with holder.tx() as conn:
        assert conn.execute("SELECT code FROM api_key_verify(%s)", [made["key"]]).fetchone()["code"] == "VALID"
        thread = threading.Thread(target=wait_and_verify)
        thread.start()
        time.sleep(0.3)
        assert not answer, "the second verification should be waiting for the key's row"
        conn.execute(sql, [made["id"]])
    thread.join(timeout=10)
    assert answer["code"] == code, answer
    if remaining is not None:
        assert answer["remaining"] == remaining


@pytest.mark.parametrize("change", ["disable", "revoke", "narrow"])
def test_a_rate_limited_verification_that_waited_answers_for_the_key_as_it_was_left(change, service, new_client,
                                                                                     su):
    """Without preloading a rate-limited key's window is a row: a second verification waits for
    it, and then answers for the key as the first transaction left it; a revoked key's window
    does not outlive it."""
    sql, code, _ = CHANGES[change]
    made = create(service, reference_id=uid("wait"), rate_limit_max=5, rate_limit_window="1 hour",
                  permissions='{"files": ["read"]}')
    holder, waiter = new_client(SERVICE), new_client(APP)
    answer: dict = {}

    def wait_and_verify():
        answer.update(waiter.one("SELECT code FROM api_key_verify(%s, '{\"files\": [\"read\"]}')", [made["key"]]))

    with holder.tx() as conn:
        assert conn.execute("SELECT code FROM api_key_verify(%s)", [made["key"]]).fetchone()["code"] == "VALID"
        thread = threading.Thread(target=wait_and_verify)
        thread.start()
        time.sleep(0.3)
        assert not answer, "the second verification should be waiting for the key's window"
        conn.execute(sql, [made["id"]])
    thread.join(timeout=10)
    assert answer["code"] == code, answer
    if change == "revoke":
        assert su.val("SELECT count(*) FROM api_key.rate_limit_windows WHERE key_id = %s", [made["id"]]) == 0


def test_a_revoke_never_deadlocks_with_a_verification_waiting_for_the_key(service, new_client):
    """A verification holds the key's window and waits for the key; the transaction holding the
    key revokes it: the revoke does not wait for the window, so neither side gets 40P01."""
    made = create(service, reference_id=uid("wait"), remaining=10, rate_limit_max=5, rate_limit_window="1 hour")
    service.rows("SELECT api_key_verify(%s)", [made["key"]])      # the window row exists
    holder, waiter = new_client(SERVICE), new_client(APP)
    answer: dict = {}

    def wait_and_verify():
        answer.update(waiter.one("SELECT code FROM api_key_verify(%s)", [made["key"]]))

    with holder.tx() as conn:
        conn.execute("SELECT api_key_update(%s, name => 'x')", [made["id"]])   # holds the key's row
        thread = threading.Thread(target=wait_and_verify)
        thread.start()
        time.sleep(0.3)
        assert conn.execute("SELECT api_key_revoke(%s) AS r", [made["id"]]).fetchone()["r"] is True
    thread.join(timeout=10)
    assert answer["code"] == "NOT_FOUND", answer


def test_usage_exceeded_after_another_took_the_refill_says_when_the_next_comes(service, new_client, su):
    made = create(service, reference_id=uid("wait"), remaining=0, refill_amount=1, refill_interval="1 hour")
    su.rows("UPDATE api_key.keys SET last_refill_at = now() - interval '2 hours' WHERE id = %s", [made["id"]])
    holder, waiter = new_client(SERVICE), new_client(APP)
    answer: dict = {}

    def wait_and_verify():
        answer.update(waiter.one("SELECT code, reset_at, retry_after_ms FROM api_key_verify(%s)", [made["key"]]))

    with holder.tx() as conn:
        assert conn.execute("SELECT code FROM api_key_verify(%s)", [made["key"]]).fetchone()["code"] == "VALID"
        thread = threading.Thread(target=wait_and_verify)
        thread.start()
        time.sleep(0.3)
    thread.join(timeout=10)
    assert answer["code"] == "USAGE_EXCEEDED"
    assert answer["reset_at"] is not None and 3_000_000 < answer["retry_after_ms"] <= 3_600_000
