"""The service's credit operations: add, subtract, set. Each changes the balance as it is now,
atomically (no update lost to a concurrent verification or operation), is refused whole or
applied whole, and is audited with the balance before and after and the reason."""

from __future__ import annotations

import threading

import pytest

from helpers import NOBODY, create, expect_error, uid, verify


def balance(su, key_id):
    return su.val("SELECT remaining FROM api_key.keys WHERE id = %s", [key_id])


def last_audit(su, key_id) -> dict:
    return su.one("SELECT action, actor, detail FROM api_key.audit_log WHERE key_id = %s ORDER BY id DESC LIMIT 1",
                  [key_id])


def test_add_subtract_set_and_their_audit(service, su):
    key = create(service, reference_id=uid("cr"), remaining=10)
    assert service.val("SELECT api_key_credits_add(%s, 5, reason => 'top-up')", [key["id"]]) == 15
    entry = last_audit(su, key["id"])
    assert entry["action"] == "credits_add" and entry["actor"] is None
    assert entry["detail"] == {"amount": 5, "remaining_before": 10, "remaining": 15, "reason": "top-up"}
    assert service.val("SELECT api_key_credits_subtract(%s, 15)", [key["id"]]) == 0
    assert verify(service, key["key"])["code"] == "USAGE_EXCEEDED"
    assert service.val("SELECT api_key_credits_set(%s, 3, 'new month')", [key["id"]]) == 3
    assert last_audit(su, key["id"])["detail"] == {"amount": 3, "remaining_before": 0, "remaining": 3,
                                                   "reason": "new month"}
    assert verify(service, key["key"])["remaining"] == 2
    assert service.val("SELECT api_key_credits_set(%s, NULL)", [key["id"]]) is None
    assert verify(service, key["key"])["remaining"] is None


@pytest.mark.parametrize("call, sqlstate", [
    ("api_key_credits_add(%(id)s, 0)", "22023"),
    ("api_key_credits_add(%(id)s, -5)", "22023"),
    ("api_key_credits_add(%(id)s, NULL)", "22004"),
    ("api_key_credits_add(%(id)s, 9223372036854775807)", "22003"),
    ("api_key_credits_subtract(%(id)s, 11)", "22023"),
    ("api_key_credits_set(%(id)s, -1)", "22023"),
    ("api_key_credits_add(NULL, 1)", "22004"),
    ("api_key_credits_add(gen_random_uuid(), 1)", "P0002"),
    ("api_key_credits_add(%(id)s, 1, repeat('x', 1001))", "22023"),
])
def test_refused_operations_change_nothing(call, sqlstate, service, su):
    key = create(service, reference_id=uid("cr"), remaining=10)
    audited = su.val("SELECT count(*) FROM api_key.audit_log")
    expect_error(sqlstate, service.rows, f"SELECT {call}", {"id": key["id"]})
    assert balance(su, key["id"]) == 10
    assert su.val("SELECT count(*) FROM api_key.audit_log") == audited


def test_unlimited_credits_cannot_be_added_to_and_a_refill_keeps_a_balance(service, su):
    unlimited = create(service, reference_id=uid("cr"))
    err = expect_error("22023", service.rows, "SELECT api_key_credits_add(%s, 1)", [unlimited["id"]])
    assert "unlimited" in str(err) and err.diag.message_hint
    refilled = create(service, reference_id=uid("cr"), refill_amount=100, refill_interval="1 day")
    expect_error("22023", service.rows, "SELECT api_key_credits_set(%s, NULL)", [refilled["id"]])
    assert balance(su, refilled["id"]) == 100


@pytest.mark.parametrize("who", ["actor_owner", "app_no_actor", "nobody"])
def test_only_the_service_may(who, app, service, su, new_client):
    owner = uid("cr")
    key = create(service, reference_id=owner, remaining=10)
    client, actor = {"actor_owner": (app, owner), "app_no_actor": (app, None),
                     "nobody": (new_client(NOBODY), None)}[who]
    for fn in ("add", "subtract", "set"):
        expect_error("42501", client.rows, f"SELECT api_key_credits_{fn}(%s, 1)", [key["id"]], actor=actor)
    assert balance(su, key["id"]) == 10


def test_concurrent_operations_and_verifications_lose_nothing(service, su, new_client):
    """8 connections add, subtract and verify at once: the balance is exactly the start, plus
    every add, minus every subtract and every admitted verification."""
    key = create(service, reference_id=uid("cr"), remaining=500)
    done = {"added": 0, "subtracted": 0, "spent": 0}
    lock = threading.Lock()

    errors: list[BaseException] = []

    def worker(i: int):
        try:
            work(i)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    def work(i: int):
        c = new_client(service.role)
        for n in range(40):
            if i % 2 == 0:
                fn = "add" if n % 2 == 0 else "subtract"
                c.val(f"SELECT api_key_credits_{fn}(%s, 3)", [key["id"]])
                with lock:
                    done["added" if fn == "add" else "subtracted"] += 3
            elif verify(c, key["key"])["code"] == "VALID":
                with lock:
                    done["spent"] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # A balance changed by a number is not a new version of the key: no verification had to
    # start again, let alone give up (40001).
    assert not errors, errors
    assert balance(su, key["id"]) == 500 + done["added"] - done["subtracted"] - done["spent"]
    audited = su.rows("SELECT detail FROM api_key.audit_log WHERE key_id = %s AND action LIKE 'credits_%%' "
                      "ORDER BY id", [key["id"]])
    assert len(audited) == 4 * 40
