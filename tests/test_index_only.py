"""Verification reads a secret index-only when the visibility map says its heap page is
all-visible (after VACUUM). The same answers must come from the index as from the heap:
expiry of rotated-away secrets, Argon2id keys (whose hash is only in the heap), revocation."""

from __future__ import annotations

from helpers import create, uid, verify


def vacuum(su):
    su.conn.execute("VACUUM api_key.key_secrets, api_key.keys")


def test_answers_are_the_same_index_only(su, service):
    made = create(service, reference_id=uid("u"), permissions='{"files": ["read"]}')
    vacuum(su)
    assert verify(service, made["key"])["code"] == "VALID"
    new = su.one("SELECT key FROM api_key_rotate(%s, interval '1 hour')", [made["id"]])["key"]
    vacuum(su)
    old = verify(service, made["key"])
    assert old["code"] == "VALID" and old["expires_at"] is not None, old
    newest = su.one("SELECT key FROM api_key_rotate(%s)", [made["id"]])["key"]
    vacuum(su)
    assert [verify(service, k)["code"] for k in (made["key"], new, newest)] == ["EXPIRED", "EXPIRED", "VALID"]
    su.rows("SELECT api_key_revoke(%s)", [made["id"]])
    vacuum(su)
    assert verify(service, newest)["code"] == "NOT_FOUND"


def test_argon2id_keys_index_only(su, service):
    cfg = uid("slow")
    su.rows("SELECT api_key_config_create(%s, actor_may_create => true, hash_algorithm => 'argon2id', body_length => 40)", [cfg])
    made = create(service, reference_id=uid("u"), config_id=cfg)
    vacuum(su)
    assert verify(service, made["key"])["code"] == "VALID"
    wrong = made["key"][:-7] + ("A" if made["key"][-7] != "A" else "B") + made["key"][-6:]
    assert verify(service, wrong)["code"] == "NOT_FOUND"
