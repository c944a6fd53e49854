"""A key's life as an application sees it: create, verify, expire, disable, revoke, rotate, list;
credits, refills and rate limits; configurations; no plaintext anywhere."""

from __future__ import annotations

import time
import uuid

import psycopg
import pytest

from helpers import (BASE62, CLUSTER, ROOT, Client, checksum, create, expect_error, random_body, uid,
                     verify, with_checksum)

MB = "a" * (1 << 20)


def user_key(app: Client, user: str | None = None, **kw) -> tuple[str, dict]:
    """A fresh user (or the one given), and a key it created for itself through the application role."""
    user = user or uid("u")
    made = create(app, actor=user, reference_id=user, **kw)
    return user, made


def service_key(service: Client, user: str | None = None, **kw) -> tuple[str, dict]:
    """A fresh user (or the one given), and a key the service made for it: for keys with
    permissions or limits beyond the configuration's, which only the service may grant."""
    user = user or uid("u")
    made = create(service, reference_id=user, **kw)
    return user, made


def expire_now(su: Client, key_id) -> None:
    """Make a key expired, as time would: expires_at in the past (api_key_update refuses that)."""
    su.rows("UPDATE api_key.keys SET expires_at = now() - interval '1 second' WHERE id = %s", [key_id])


def test_create_returns_the_plaintext_once_and_stores_only_its_start(app, su):
    user = uid("u")
    made = create(app, actor=user, reference_id=user, name="ci")
    assert list(made.keys()) == ["id", "key", "start", "prefix", "name", "reference_type", "reference_id",
                                 "config_id", "expires_at", "created_at"]
    key = made["key"]
    assert key.startswith("sk_") and made["prefix"] == "sk_"
    assert len(key) == len("sk_") + 32 + 6
    assert set(key[3:]) <= set(BASE62)
    assert key[-6:] == checksum(key[:-6]), "the last six characters are the CRC32 checksum in base62"
    assert made["start"] == key[:len("sk_") + 6]
    assert (made["name"], made["reference_type"], made["reference_id"], made["config_id"]) == \
        ("ci", "user", user, "default")
    assert made["expires_at"] is None and made["created_at"] is not None
    row = su.one("SELECT * FROM api_key.keys WHERE id = %s", [made["id"]])
    assert row["start"] == made["start"] and row["created_by"] == user
    # A new key: one clock reading for both times, and a UUIDv7 id that carries it.
    assert row["created_at"] == row["updated_at"] == made["created_at"]
    assert made["id"].version == 7
    assert key not in str(row)
    # Two keys never share a body.
    other = create(app, actor=user, reference_id=user)
    assert other["key"] != key and other["id"] != made["id"]


def test_verify_valid_returns_the_keys_fields_without_an_actor(app, service):
    user, made = service_key(service, name="deploy", permissions='{"files": ["read", "write"]}',
                             metadata='{"team": "infra"}', expires_in="1 day")
    # Verification needs no actor: the application verifies on behalf of an anonymous request.
    r = verify(app, made["key"])
    assert r["valid"] is True and r["code"] == "VALID"
    assert r["key_id"] == made["id"]
    assert (r["reference_type"], r["reference_id"], r["config_id"], r["name"]) == ("user", user, "default", "deploy")
    assert r["permissions"] == {"files": ["read", "write"]}
    assert r["metadata"] == {"team": "infra"}
    assert r["remaining"] is None and r["rate_limit_remaining"] is None and r["retry_after_ms"] is None
    assert r["expires_at"] == made["expires_at"]


def _malformed(key: str) -> dict[str, object]:
    prefix, body = key[:3], key[3:-6]
    typo_body = body[:5] + ("b" if body[5] == "a" else "a") + body[6:]
    i = next(i for i in range(3, len(key) - 7) if key[i] != key[i + 1])
    return {
        "another_valid_format_key": with_checksum("sk_" + random_body(32)),
        "typo_in_prefix": "sK_" + key[3:],
        "typo_in_body": prefix + typo_body + key[-6:],
        "typo_in_body_with_fixed_checksum": with_checksum(prefix + typo_body),
        "typo_in_checksum": key[:-1] + ("0" if key[-1] != "0" else "1"),
        "transposed": key[:i] + key[i + 1] + key[i] + key[i + 2:],
        "same_body_other_prefix": with_checksum("pk_" + body),
        "null": None,
        "empty": "",
        "one_megabyte": MB,
        "one_megabyte_of_key": (key * (1 + (1 << 20) // len(key)))[: 1 << 20],
        "garbage": "not a key at all",
        "sql": "sk_' OR 1=1 --",
        "unicode": "ключ" * 20,
        "emoji": "🔑" * 50,
        "trailing_space": key + " ",
        "leading_space": " " + key,
        "trailing_newline": key + "\n",
        "lowercased": key.lower(),
        "uppercased": key.upper(),
        "prefix_only": prefix,
        "without_checksum": key[:-6],
        "doubled": key + key,
        "truncated": key[:-1],
        "extra_char": key + "a",
        "start_only": key[:9],
        "tab_inside": key[:10] + "\t" + key[10:],
    }


MALFORMED_CASES = list(_malformed("sk_" + "AB" * 16 + "000000").keys())


@pytest.fixture(scope="module")
def known_key(app):
    return user_key(app)[1]


@pytest.mark.parametrize("case", MALFORMED_CASES)
def test_wrong_or_malformed_keys_give_one_not_found_row(app, known_key, case):
    candidate = _malformed(known_key["key"])[case]
    assert candidate != known_key["key"]
    r = verify(app, candidate)
    assert r["valid"] is False and r["code"] == "NOT_FOUND"
    assert all(r[c] is None for c in r if c not in ("valid", "code")), r
    # The real key still works afterwards.
    assert verify(app, known_key["key"])["code"] == "VALID"


def test_expired_by_expires_in(app):
    _, made = user_key(app, expires_in="1 second")
    assert verify(app, made["key"])["code"] == "VALID"
    time.sleep(1.1)
    r = verify(app, made["key"])
    assert (r["valid"], r["code"], r["key_id"]) == (False, "EXPIRED", made["id"])


def test_expired_by_moving_expires_at_into_the_past(app, service, su):
    user, made = user_key(app)
    # api_key_update sets expiries in the future only; to stop a key now, disable or revoke it.
    for who, actor in [(app, user), (service, None)]:
        err = expect_error("22023", who.rows, "SELECT 1 FROM api_key_update(id => %s, expires_at => now() - interval "
                           "'1 hour')", [made["id"]], actor=actor)
        assert "future" in err.diag.message_primary
    assert verify(app, made["key"])["code"] == "VALID"
    expire_now(su, made["id"])
    r = verify(app, made["key"])
    assert (r["valid"], r["code"], r["key_id"]) == (False, "EXPIRED", made["id"])
    # Removing an expiry lifts a limit: the service's to do, not the owner's.
    expect_error("42501", app.rows, "SELECT 1 FROM api_key_update(id => %s, clear => '{expires_at}')", [made["id"]],
                 actor=user)
    assert verify(app, made["key"])["code"] == "EXPIRED"
    service.rows("SELECT 1 FROM api_key_update(id => %s, clear => '{expires_at}')", [made["id"]])
    assert verify(app, made["key"])["code"] == "VALID"


def test_permissions_every_requested_action_of_every_resource(app, service):
    _, made = service_key(service, permissions='{"files": ["read", "write"], "users": ["read"]}')
    _, bare = user_key(app)
    k = made["key"]
    for asked, code in [
        ('{"files": ["read"]}', "VALID"),
        ('{"files": ["read", "write"], "users": ["read"]}', "VALID"),
        ("{}", "VALID"),
        ('{"files": ["delete"]}', "INSUFFICIENT_PERMISSIONS"),
        ('{"files": ["read", "delete"]}', "INSUFFICIENT_PERMISSIONS"),
        ('{"billing": ["read"]}', "INSUFFICIENT_PERMISSIONS"),
        ('{"files": ["read"], "billing": ["read"]}', "INSUFFICIENT_PERMISSIONS"),
        ('{"users": ["write"]}', "INSUFFICIENT_PERMISSIONS"),
    ]:
        r = verify(app, k, permissions=asked)
        assert r["code"] == code, asked
        assert r["valid"] is (code == "VALID")
        assert r["key_id"] == made["id"]
    assert verify(app, bare["key"], permissions='{"files": ["read"]}')["code"] == "INSUFFICIENT_PERMISSIONS"
    assert verify(app, bare["key"], permissions="{}")["code"] == "VALID"


def test_disabled_and_enabled_again(app, service):
    user, made = user_key(app)
    row = app.one("SELECT * FROM api_key_update(id => %s, enabled => false)", [made["id"]], actor=user)
    assert row["enabled"] is False
    r = verify(app, made["key"])
    assert (r["valid"], r["code"], r["key_id"]) == (False, "DISABLED", made["id"])
    # Re-enabling lifts a limit: the owner may not (unless its configuration allows it), the service may.
    expect_error("42501", app.rows, "SELECT 1 FROM api_key_update(id => %s, enabled => true)", [made["id"]], actor=user)
    assert verify(app, made["key"])["code"] == "DISABLED"
    service.rows("SELECT 1 FROM api_key_update(id => %s, enabled => true)", [made["id"]])
    assert verify(app, made["key"])["code"] == "VALID"


def test_revoked_key_is_not_found_and_gone(app, su):
    user, made = user_key(app)
    assert app.val("SELECT api_key_revoke(%s)", [made["id"]], actor=user) is True
    r = verify(app, made["key"])
    assert (r["valid"], r["code"], r["key_id"]) == (False, "NOT_FOUND", None)
    expect_error("P0002", app.rows, "SELECT * FROM api_key_get(%s)", [made["id"]], actor=user)
    expect_error("P0002", app.rows, "SELECT * FROM api_key_update(%s, name => 'back')", [made["id"]], actor=user)
    expect_error("P0002", app.rows, "SELECT * FROM api_key_rotate(%s)", [made["id"]], actor=user)
    # Revoking again (a retrying client) is no error: there is nothing left to revoke.
    assert app.val("SELECT api_key_revoke(%s)", [made["id"]], actor=user) is False
    assert su.val("SELECT count(*) FROM api_key.key_secrets WHERE key_id = %s", [made["id"]]) == 0
    assert su.val("SELECT count(*) FROM api_key.keys WHERE id = %s", [made["id"]]) == 0


def test_rotate_with_grace_then_old_key_expires(app, service, su):
    user, made = service_key(service, permissions='{"files": ["read"]}', remaining=10, name="rot")
    rotated_at = time.time()
    new = app.one("SELECT * FROM api_key_rotate(id => %s, grace => '2 seconds')", [made["id"]], actor=user)
    assert new["id"] == made["id"] and new["key"] != made["key"]
    assert new["key"].startswith("sk_") and new["key"][-6:] == checksum(new["key"][:-6])
    assert (new["name"], new["reference_id"]) == ("rot", user)
    old_r, new_r = verify(app, made["key"]), verify(app, new["key"])
    assert (old_r["code"], new_r["code"]) == ("VALID", "VALID")
    assert old_r["key_id"] == new_r["key_id"] == made["id"]
    # Credits and permissions belong to the key, not to the secret: both spent from one pool.
    assert (old_r["remaining"], new_r["remaining"]) == (9, 8)
    assert new_r["permissions"] == {"files": ["read"]}
    assert su.val("SELECT start FROM api_key.keys WHERE id = %s", [made["id"]]) == new["start"]
    time.sleep(max(0.0, rotated_at + 2.1 - time.time()))
    old_r = verify(app, made["key"])
    assert (old_r["valid"], old_r["code"], old_r["key_id"]) == (False, "EXPIRED", made["id"])
    assert verify(app, new["key"])["code"] == "VALID"


def test_rotate_without_grace_retires_the_old_key_at_once(app):
    user, made = user_key(app)
    new = app.one("SELECT * FROM api_key_rotate(id => %s)", [made["id"]], actor=user)
    assert verify(app, made["key"])["code"] == "EXPIRED"
    assert verify(app, new["key"])["code"] == "VALID"
    # Rotating twice: the first rotation's key is also retired.
    newer = app.one("SELECT * FROM api_key_rotate(id => %s, grace => '1 hour')", [made["id"]], actor=user)
    assert verify(app, new["key"])["code"] == "VALID"
    assert verify(app, newer["key"])["code"] == "VALID"
    assert verify(app, made["key"])["code"] == "EXPIRED"


def test_list_for_reference_pages_newest_first(app):
    user = uid("u")
    ids = []
    for i in range(4):
        ids.append(create(app, actor=user, reference_id=user, name=f"k{i}")["id"])
    # Three more in one transaction: created_at is each call's own clock reading, so they still
    # list in creation order (and paging breaks any tie by id).
    with app.tx(actor=user) as conn:
        for i in range(3):
            ids.append(conn.execute("SELECT id FROM api_key_create(reference_id => %s, name => %s)",
                                    [user, f"t{i}"]).fetchone()["id"])
    everything = app.rows("SELECT * FROM api_key_list_for_reference(reference_id => %s)", [user], actor=user)
    assert sorted(r["id"] for r in everything) == sorted(ids)
    assert [r["created_at"] for r in everything] == sorted((r["created_at"] for r in everything), reverse=True)
    assert not {"lookup", "hash", "argon2_hash", "key", "secret"} & set(everything[0].keys())
    for col in ["id", "name", "prefix", "start", "config_id", "enabled", "expires_at", "remaining", "permissions",
                "metadata", "created_at", "created_by", "last_used_at"]:
        assert col in everything[0]

    seen, after, pages = [], None, 0
    while True:
        page = app.rows("SELECT id FROM api_key_list_for_reference(reference_id => %s, reference_type => 'user', "
                        "page_size => 3, after_id => %s)", [user, after], actor=user)
        pages += 1
        if not page:
            break
        assert len(page) <= 3
        seen += [r["id"] for r in page]
        after = page[-1]["id"]
    assert seen == [r["id"] for r in everything], "pages concatenate to the full list, in order, without repeats"
    assert pages == 4  # 3 + 3 + 1, then an empty page


def test_a_cursor_on_a_key_made_before_0_2_0(app, service, su):
    """Keys made before 0.2.0 have random (v4) ids that carry no time: such a cursor positions by
    its key while the key exists, and is refused (22023: start again) once it is gone."""
    user = uid("u")
    newer = create(service, reference_id=user, name="newer")
    old_ids = [su.val("INSERT INTO api_key.keys (id, config_id, reference_type, reference_id, name, prefix, start, "
                      "created_at, updated_at) VALUES (gen_random_uuid(), 'default', 'user', %s, %s, 'sk_', "
                      "'sk_xxxx', now() - %s::interval, now() - %s::interval) RETURNING id",
                      [user, f"v4_{days}", f"{days} days", f"{days} days"]) for days in (1, 2)]
    assert all(str(i)[14] == "4" for i in old_ids)
    listed = lambda after: [r["id"] for r in app.rows(  # noqa: E731
        "SELECT id FROM api_key_list_for_reference(reference_id => %s, after_id => %s)", [user, after], actor=user)]
    assert listed(None) == [newer["id"], *old_ids]
    assert listed(newer["id"]) == old_ids
    assert listed(old_ids[0]) == [old_ids[1]]
    su.rows("DELETE FROM api_key.keys WHERE id = %s", [old_ids[0]])
    err = expect_error("22023", app.rows, "SELECT id FROM api_key_list_for_reference(reference_id => %s, after_id => %s)",
                       [user, old_ids[0]], actor=user)
    assert "after_id" in err.diag.message_primary
    assert listed(None) == [newer["id"], old_ids[1]]


def test_order_of_checks(app, service, su):
    user = uid("u")
    # disabled beats expired beats permissions
    k = create(service, reference_id=user, permissions='{"a": ["x"]}')
    app.rows("SELECT 1 FROM api_key_update(id => %s, enabled => false)", [k["id"]], actor=user)
    expire_now(su, k["id"])
    assert verify(app, k["key"], permissions='{"b": ["y"]}')["code"] == "DISABLED"
    service.rows("SELECT 1 FROM api_key_update(id => %s, enabled => true)", [k["id"]])
    assert verify(app, k["key"], permissions='{"b": ["y"]}')["code"] == "EXPIRED"
    # permissions beat rate limit and credits
    k2 = create(service, reference_id=user, permissions='{"a": ["x"]}', remaining=1,
                rate_limit_max=1, rate_limit_window="1 hour")
    assert verify(app, k2["key"])["code"] == "VALID"          # spends the window and the credit
    assert verify(app, k2["key"], permissions='{"b": ["y"]}')["code"] == "INSUFFICIENT_PERMISSIONS"
    # rate limit beats credits
    assert verify(app, k2["key"])["code"] == "RATE_LIMITED"


def test_credits_and_cost(app, su):
    _, made = user_key(app, remaining=3)
    k = made["key"]
    assert [(r["code"], r["remaining"]) for r in (verify(app, k) for _ in range(4))] == \
        [("VALID", 2), ("VALID", 1), ("VALID", 0), ("USAGE_EXCEEDED", 0)]
    _, made = user_key(app, remaining=3)
    k = made["key"]
    r = verify(app, k, cost=2)
    assert (r["code"], r["remaining"]) == ("VALID", 1)
    r = verify(app, k, cost=2)
    assert (r["valid"], r["code"], r["remaining"]) == (False, "USAGE_EXCEEDED", 1)
    assert su.val("SELECT remaining FROM api_key.keys WHERE id = %s", [made["id"]]) == 1
    r = verify(app, k, cost=1)
    assert (r["code"], r["remaining"]) == ("VALID", 0)


def test_refill_after_interval(app, su):
    _, made = user_key(app, remaining=1, refill_amount=3, refill_interval="1 hour")
    assert (verify(app, made["key"])["code"]) == "VALID"
    assert (verify(app, made["key"])["code"]) == "USAGE_EXCEEDED"
    # An hour passes (moved by hand, as superuser, rather than slept).
    su.rows("UPDATE api_key.keys SET created_at = created_at - interval '61 minutes', "
            "last_refill_at = last_refill_at - interval '61 minutes' WHERE id = %s", [made["id"]])
    r = verify(app, made["key"])
    assert (r["code"], r["remaining"]) == ("VALID", 2)
    assert (verify(app, made["key"])["code"], verify(app, made["key"])["code"]) == ("VALID", "VALID")
    assert verify(app, made["key"])["code"] == "USAGE_EXCEEDED", "one refill per interval"


def test_refused_verifications_consume_no_credit(app, service, su):
    user, made = service_key(service, remaining=5, permissions='{"a": ["read"]}')
    for _ in range(3):
        assert verify(app, made["key"], permissions='{"a": ["write"]}')["code"] == "INSUFFICIENT_PERMISSIONS"
    app.rows("SELECT 1 FROM api_key_update(id => %s, enabled => false)", [made["id"]], actor=user)
    assert verify(app, made["key"])["code"] == "DISABLED"
    assert su.val("SELECT remaining FROM api_key.keys WHERE id = %s", [made["id"]]) == 5


def test_rate_limit_retry_after_then_admitted_again(app):
    _, made = user_key(app, rate_limit_max=2, rate_limit_window="1 second")
    k = made["key"]
    r1, r2, r3 = verify(app, k), verify(app, k), verify(app, k)
    assert (r1["code"], r1["rate_limit_remaining"]) == ("VALID", 1)
    assert (r2["code"], r2["rate_limit_remaining"]) == ("VALID", 0)
    assert (r3["valid"], r3["code"], r3["rate_limit_remaining"]) == (False, "RATE_LIMITED", 0)
    assert 0 < r3["retry_after_ms"] <= 1000
    time.sleep(r3["retry_after_ms"] / 1000 + 0.05)
    assert verify(app, k)["code"] == "VALID"


def test_config_scoping_and_config_defaults(app, service):
    cfg = uid("cfg")
    service.rows("SELECT * FROM api_key_config_create(id => %s, actor_may_create => true, prefix => 'xk_live_', default_expires_in => '7 days', "
                 "default_permissions => '{\"files\": [\"read\"]}', rate_limit_enabled => true, "
                 "rate_limit_max => 100, rate_limit_window => '1 minute', default_remaining => 50)", [cfg])
    user, made = user_key(app, config_id=cfg)
    assert made["key"].startswith("xk_live_") and made["config_id"] == cfg
    assert made["expires_at"] is not None
    r = verify(app, made["key"], config_id=cfg)
    assert (r["code"], r["config_id"], r["permissions"], r["remaining"], r["rate_limit_remaining"]) == \
        ("VALID", cfg, {"files": ["read"]}, 49, 99)
    assert verify(app, made["key"], config_id="default")["code"] == "NOT_FOUND"
    assert verify(app, made["key"], config_id="no_such_config")["code"] == "NOT_FOUND"
    assert verify(app, made["key"])["code"] == "VALID"
    # The default configuration has no rate limit and no credits.
    _, plain = user_key(app)
    r = verify(app, plain["key"])
    assert (r["remaining"], r["rate_limit_remaining"]) == (None, None)
    # A configuration with keys cannot be deleted; an unused one can.
    expect_error("2BP01", service.rows, "SELECT api_key_config_delete(%s)", [cfg])
    app.rows("SELECT api_key_revoke(%s)", [made["id"]], actor=user)
    assert service.val("SELECT api_key_config_delete(%s)", [cfg]) is True


def test_config_changes_apply_to_keys_created_afterwards(app, service):
    cfg = uid("cfg")
    service.rows("SELECT * FROM api_key_config_create(id => %s, actor_may_create => true, prefix => 'ok_')", [cfg])
    user, old = user_key(app, config_id=cfg)
    service.rows("SELECT * FROM api_key_config_update(id => %s, settings => '{\"prefix\": \"nk_\", "
                 "\"rate_limit_enabled\": true, \"rate_limit_max\": 1, \"rate_limit_window\": \"1 hour\"}')", [cfg])
    _, new = user_key(app, user, config_id=cfg)
    assert old["key"].startswith("ok_") and new["key"].startswith("nk_")
    assert [verify(app, old["key"])["code"] for _ in range(3)] == ["VALID"] * 3, "old keys keep their settings"
    assert [verify(app, new["key"])["code"] for _ in range(2)] == ["VALID", "RATE_LIMITED"]
    listed = app.rows("SELECT id FROM api_key_list_for_reference(reference_id => %s, config_id => %s)", [user, cfg],
                      actor=user)
    assert {r["id"] for r in listed} == {old["id"], new["id"]}
    assert app.rows("SELECT id FROM api_key_list_for_reference(reference_id => %s, config_id => 'default')", [user],
                    actor=user) == []


def test_update_respects_config_max_expiry(app, service):
    cfg = uid("cfg")
    service.rows("SELECT * FROM api_key_config_create(id => %s, actor_may_create => true, max_expires_in => '30 days')", [cfg])
    expect_error("22004", create, app, actor="u_x", reference_id="u_x", config_id=cfg)
    expect_error("22023", create, app, actor="u_x", reference_id="u_x", config_id=cfg, expires_in="31 days")
    user, made = user_key(app, config_id=cfg, expires_in="29 days")
    # Beyond the configuration's maximum, or no expiry at all: refused, for the service too.
    for who, actor in [(app, user), (service, None)]:
        expect_error("22023", who.rows, "SELECT 1 FROM api_key_update(id => %s, expires_at => now() + interval "
                     "'1 year')", [made["id"]], actor=actor)
        err = expect_error("22023", who.rows, "SELECT 1 FROM api_key_update(id => %s, clear => '{expires_at}')",
                           [made["id"]], actor=actor)
        assert "max_expires_in" in err.diag.message_primary
    app.rows("SELECT 1 FROM api_key_update(id => %s, expires_at => now() + interval '1 day')", [made["id"]], actor=user)
    # The service may move it later again, within the maximum.
    service.rows("SELECT 1 FROM api_key_update(id => %s, expires_at => now() + interval '29 days')", [made["id"]])


@pytest.mark.parametrize("tighten", ['{"name_required": true}', '{"metadata_enabled": false}',
                                     '{"name_min_length": 1, "name_max_length": 3}'])
def test_existing_key_can_be_disabled_after_the_config_tightens(tighten, app, service):
    cfg = uid("cfg")
    service.rows("SELECT * FROM api_key_config_create(id => %s, actor_may_create => true)", [cfg])
    user, made = user_key(app, config_id=cfg, metadata='{"a": 1}', **({"name": "a long name"} if "max" in tighten else {}))
    service.rows("SELECT * FROM api_key_config_update(id => %s, settings => %s::jsonb)", [cfg, tighten])
    row = app.one("SELECT enabled FROM api_key_update(id => %s, enabled => false)", [made["id"]], actor=user)
    assert row["enabled"] is False
    assert verify(app, made["key"])["code"] == "DISABLED"


@pytest.mark.parametrize("ident", ["o'Brien", 'say "hi"', "back\\slash", "100%_done", "ключ", "🔑 emoji",
                                   "semi;colon -- x", "x" * 256, "🔑" * 256])
def test_unusual_identifiers_round_trip(ident, app):
    made = create(app, actor=ident, reference_id=ident, name=ident[:128])
    r = verify(app, made["key"])
    assert (r["code"], r["reference_id"], r["name"]) == ("VALID", ident, ident[:128])
    assert [x["id"] for x in app.rows("SELECT id FROM api_key.keys", actor=ident)] == [made["id"]]
    assert app.one("SELECT id FROM api_key_get(%s)", [made["id"]], actor=ident)["id"] == made["id"]
    # Someone else, whose id differs in its last character only: the key does not exist for it.
    other = ident[:-1] + ("y" if ident[-1] != "y" else "z")
    expect_error("P0002", app.rows, "SELECT id FROM api_key_get(%s)", [made["id"]], actor=other)


@pytest.mark.parametrize("ident", ["new\nline", "tab\there", "nul\x01byte", "bell\x07", "del\x7f", "c1\x85control",
                                   "", "x" * 257, "🔑" * 257])
def test_identifiers_with_control_characters_or_out_of_bounds_are_refused(ident, app, service, su):
    """Actors and reference ids: 1 to 256 characters, no control characters (22023, even for the
    service; an empty actor is refused too, not taken for "no actor")."""
    before = su.val("SELECT count(*) FROM api_key.keys")
    expect_error("22023", create, service, reference_id=ident)
    expect_error("22023", service.rows, "SELECT * FROM api_key_list_for_reference(reference_id => %s)", [ident])
    expect_error("22023", create, app, actor=ident, reference_id="someone")
    expect_error("22023", create, service, actor=ident, reference_id="someone")
    # Policies see nothing for such an actor (and raise nothing), even a service role's.
    assert app.rows("SELECT id FROM api_key.keys", actor=ident) == []
    assert service.rows("SELECT id FROM api_key.keys", actor=ident) == []
    assert service.val("SELECT api_key.actor()", actor=ident) is None
    if ident and len(ident) <= 128:
        expect_error("22023", create, service, reference_id=uid("u"), name=ident)
    assert su.val("SELECT count(*) FROM api_key.keys") == before


def test_many_management_calls_in_one_statement_and_transaction(service, su):
    ref = uid("bulk")
    ids = [r["id"] for r in service.rows("SELECT (api_key_create(reference_id => %s, name => 'b' || g)).id "
                                          "FROM generate_series(1, 100) g", [ref])]
    assert len(set(ids)) == 100
    with service.tx() as conn:
        for i in ids[:80]:
            conn.execute("SELECT 1 FROM api_key_update(id => %s, enabled => false)", [i])
    assert su.val("SELECT count(*) FROM api_key.keys WHERE reference_id = %s AND NOT enabled", [ref]) == 80
    revoked = service.rows("SELECT api_key_revoke(id) AS ok FROM api_key.keys WHERE reference_id = %s", [ref])
    assert len(revoked) == 100 and all(r["ok"] for r in revoked)
    assert su.val("SELECT count(*) FROM api_key.keys WHERE reference_id = %s", [ref]) == 0


def test_argon2id_configuration(app, service, su):
    cfg = uid("argon")
    service.rows("SELECT * FROM api_key_config_create(id => %s, actor_may_create => true, hash_algorithm => 'argon2id', body_length => 40, "
                 "prefix => 'ak_')", [cfg])
    user, made = user_key(app, config_id=cfg)
    k = made["key"]
    assert len(k) == 3 + 40 + 6
    assert verify(app, k)["code"] == "VALID"
    # Same lookup id, wrong secret tail, valid checksum: found by index, refused by Argon2.
    forged = with_checksum(k[:-6 - 24] + random_body(24))
    assert verify(app, forged)["code"] == "NOT_FOUND"
    row = su.one("SELECT algorithm, argon2_hash FROM api_key.key_secrets WHERE key_id = %s", [made["id"]])
    assert row["algorithm"] == "argon2id" and row["argon2_hash"].startswith("$argon2id$")
    assert k[3:-6] not in row["argon2_hash"]
    new = app.one("SELECT * FROM api_key_rotate(id => %s, grace => '1 hour')", [made["id"]], actor=user)
    assert verify(app, new["key"])["code"] == "VALID" and verify(app, k)["code"] == "VALID"


@pytest.mark.parametrize("prefix", ["sk", "a" * 32, "a" * 32 + "_", "1sk_", "_sk_", "-", "sk__x", "sk.live_", "ключ_"])
def test_prefixes_must_end_where_a_scanner_sees_them_end(prefix, app, service, su):
    """A prefix is empty or up to 32 ASCII letters, digits, _ and -, starting with a letter and
    ending with _ or -: refused in a configuration and at create (22023)."""
    before = su.val("SELECT count(*) FROM api_key.configs")
    err = expect_error("22023", service.rows, "SELECT * FROM api_key_config_create(id => %s, prefix => %s)",
                       [uid("fmt"), prefix])
    assert "prefix" in err.diag.message_primary
    assert su.val("SELECT count(*) FROM api_key.configs") == before
    err = expect_error("22023", create, service, reference_id=uid("u"), prefix=prefix)
    assert "prefix" in err.diag.message_primary


@pytest.mark.parametrize("prefix,body_length,algorithm", [
    ("", 23, "sha256"), ("sk_", 22, "sha256"), ("a" * 31 + "_", 128, "sha256"), ("x-y_z-", 22, "sha256"),
    ("live2024_", 64, "sha256"), ("", 40, "argon2id"), ("ak_", 128, "argon2id"), ("a" * 31 + "-", 40, "argon2id"),
    ("A-", 22, "sha256"),
])
def test_key_format_extremes(prefix, body_length, algorithm, app, service):
    cfg = uid("fmt")
    service.rows("SELECT * FROM api_key_config_create(id => %s, actor_may_create => true, prefix => %s, body_length => %s, hash_algorithm => %s)",
                 [cfg, prefix, body_length, algorithm])
    user, made = user_key(app, config_id=cfg)
    k = made["key"]
    assert k.startswith(prefix) and len(k) == len(prefix) + body_length + 6
    assert k[-6:] == checksum(k[:-6])
    assert verify(app, k)["code"] == "VALID"
    assert verify(app, with_checksum(k[:-7] + ("b" if k[-7] == "a" else "a")))["code"] == "NOT_FOUND"
    new = app.one("SELECT * FROM api_key_rotate(id => %s, grace => '1 hour')", [made["id"]], actor=user)
    assert verify(app, new["key"])["code"] == "VALID" and verify(app, k)["code"] == "VALID"


def test_delete_expired_is_for_the_service(app, service, su):
    user, made = user_key(app, expires_in="1 hour")
    _, keep = user_key(app, user)
    _, rotated = user_key(app, user)
    _, graced = user_key(app, user)
    new = app.one("SELECT * FROM api_key_rotate(id => %s)", [rotated["id"]], actor=user)
    app.one("SELECT * FROM api_key_rotate(id => %s, grace => '1 hour')", [graced["id"]], actor=user)
    expire_now(su, made["id"])
    expect_error("42501", app.rows, "SELECT api_key_delete_expired()", actor=user)
    expect_error("42501", app.rows, "SELECT api_key_delete_expired()")
    expect_error("42501", service.rows, "SELECT api_key_delete_expired()", actor=user)
    due = su.one("SELECT (SELECT count(*) FROM api_key.keys WHERE expires_at <= now()) AS keys, "
                 "(SELECT count(*) FROM api_key.key_secrets s JOIN api_key.keys k ON k.id = s.key_id "
                 "WHERE s.expires_at <= now() AND (k.expires_at IS NULL OR k.expires_at > now())) AS secrets")
    deleted = service.val("SELECT api_key_delete_expired()")
    # Expired keys and rotated-away secrets, both counted (at least this test's key and secret).
    detail = su.val("SELECT detail FROM api_key.audit_log WHERE action = 'delete_expired' ORDER BY id DESC LIMIT 1")
    assert detail["keys"] >= 1 and detail["rotated_secrets"] >= 1, detail
    assert deleted == detail["keys"] + detail["rotated_secrets"]
    # Everything that was due when the call began (more may have come due since).
    assert detail["keys"] >= due["keys"] and detail["rotated_secrets"] >= due["secrets"], (detail, due)
    assert su.val("SELECT count(*) FROM api_key.key_secrets WHERE key_id = %s", [rotated["id"]]) == 1
    assert su.val("SELECT count(*) FROM api_key.key_secrets WHERE key_id = %s", [graced["id"]]) == 2
    assert service.val("SELECT api_key_delete_expired()") == 0
    assert su.val("SELECT count(*) FROM api_key.keys WHERE id = %s", [made["id"]]) == 0
    assert verify(app, made["key"])["code"] == "NOT_FOUND"
    assert verify(app, rotated["key"])["code"] == "NOT_FOUND", "the retired secret is gone too"
    assert verify(app, new["key"])["code"] == "VALID"
    assert verify(app, keep["key"])["code"] == "VALID"


def test_last_used_at_is_written_in_batches(app, new_client, su):
    """With api_key.last_used_precision = 1 s, a backend writes its batch half a second later."""
    _, a = user_key(app)
    _, b = user_key(app)
    c = new_client("postgres")
    assert verify(c, a["key"])["code"] == "VALID"          # loads the library: the setting exists
    c.rows("SET api_key.last_used_precision = 1")
    assert verify(c, a["key"])["code"] == "VALID"
    time.sleep(0.7)
    assert verify(c, b["key"])["code"] == "VALID"          # due: writes the batch
    got = su.one("SELECT (SELECT last_used_at FROM api_key.keys WHERE id = %s) a, "
                 "(SELECT last_used_at FROM api_key.keys WHERE id = %s) b", [a["id"], b["id"]])
    assert got["a"] is not None and got["b"] is not None


def test_last_used_at_is_written_when_the_backend_exits(app, new_client, su):
    """last_used_at is written in batches, and what a backend holds is written when it exits
    normally: verify on a fresh connection, close it, and the time shows up shortly after."""
    _, made = user_key(app)
    assert su.val("SELECT last_used_at FROM api_key.keys WHERE id = %s", [made["id"]]) is None
    c = new_client("akt_app")
    assert verify(c, made["key"])["code"] == "VALID"
    c.close()
    deadline = time.time() + 3
    while su.val("SELECT last_used_at FROM api_key.keys WHERE id = %s", [made["id"]]) is None:
        assert time.time() < deadline, "last_used_at not written after the backend exited"
        time.sleep(0.05)
    at = su.val("SELECT last_used_at FROM api_key.keys WHERE id = %s", [made["id"]])
    assert su.val("SELECT now() - %s < interval '1 minute'", [at]) is True


def test_read_only_transaction(app, su):
    """Verification in a read-only transaction: a plain key is fine; a key that must count
    (credits, rate limit) cannot be counted there. The error must at least be a proper one."""
    _, plain = user_key(app)
    _, counted = user_key(app, remaining=5)
    with app.tx() as conn:
        conn.execute("SET TRANSACTION READ ONLY")
        assert conn.execute("SELECT code FROM api_key_verify(%s)", [plain["key"]]).fetchone()["code"] == "VALID"
    with pytest.raises(psycopg.Error) as info:
        with app.tx() as conn:
            conn.execute("SET TRANSACTION READ ONLY")
            conn.execute("SELECT code FROM api_key_verify(%s)", [counted["key"]]).fetchone()
    assert info.value.sqlstate == "25006"
    assert su.val("SELECT remaining FROM api_key.keys WHERE id = %s", [counted["id"]]) == 5


def test_no_plaintext_anywhere(app, service, su):
    """Every column of every table in schema api_key, as superuser (behind RLS), for every key
    made here: neither the key nor its body appears."""
    cfg = uid("argon")
    service.rows("SELECT * FROM api_key_config_create(id => %s, actor_may_create => true, hash_algorithm => 'argon2id', body_length => 40)", [cfg])
    user = uid("u")
    keys = [create(service, reference_id=user, name="n", permissions='{"f": ["r"]}', metadata='{"m": 1}',
                   remaining=10, rate_limit_max=5, rate_limit_window="1 minute")]
    keys.append(create(app, actor=user, reference_id=user, config_id=cfg))
    keys.append(create(service, reference_id=uid("org"), reference_type="organization"))
    rotated = app.one("SELECT * FROM api_key_rotate(id => %s, grace => '1 hour')", [keys[0]["id"]], actor=user)
    keys.append(rotated)
    app.rows("SELECT 1 FROM api_key_update(id => %s, name => 'renamed', metadata => '{\"n\": 2}')",
             [keys[1]["id"]], actor=user)
    service.rows("SELECT 1 FROM api_key_update(id => %s, permissions => '{\"g\": [\"w\"]}')", [keys[1]["id"]])
    for k in keys:
        verify(app, k["key"])
    with pytest.raises(psycopg.Error):
        app.rows("SELECT api_key_authenticate(%s, '{\"nope\": [\"x\"]}')", [keys[0]["key"]])

    tables = [r["t"] for r in su.rows(
        "SELECT format('%I.%I', n.nspname, c.relname) AS t FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'api_key' AND c.relkind IN ('r', 'v', 'm', 'p')")]
    assert "api_key.keys" in tables and "api_key.key_secrets" in tables and "api_key.audit_log" in tables
    for k in keys:
        secret, body = k["key"], k["key"][len(k["prefix"]):-6]
        for t in tables:
            hits = su.val(f"SELECT count(*) FROM {t} x WHERE strpos(x::text, %s) > 0 OR strpos(x::text, %s) > 0",
                          [secret, body])
            assert hits == 0, f"plaintext of a key found in {t}"
        assert su.val("SELECT count(*) FROM api_key.audit_log a WHERE strpos(a::text, %s) > 0",
                      [body[:16]]) == 0
    log = ROOT / ".build" / CLUSTER / "server.log"
    if log.exists():
        text = log.read_text(errors="replace")
        for k in keys:
            assert k["key"][len(k["prefix"]):-6] not in text, "a key appears in the server log"


def test_empty_prefix_with_shortest_body_verifies(app, service):
    cfg = uid("short")
    service.rows("SELECT * FROM api_key_config_create(id => %s, actor_may_create => true, body_length => 22)", [cfg])
    user, made = user_key(app, config_id=cfg, prefix="")
    assert len(made["key"]) == 28
    assert verify(app, made["key"])["code"] == "VALID"


def test_a_longer_string_that_starts_with_a_key_is_not_that_key(app):
    """<key><24 base62 chars><checksum> has the key as its Argon2 "lookup id": it must not be
    accepted as the SHA-256 key it starts with (found by this suite; fixed)."""
    _, made = user_key(app)
    extended = with_checksum(made["key"] + random_body(24))
    assert extended != made["key"]
    r = verify(app, extended)
    assert (r["valid"], r["code"]) == (False, "NOT_FOUND")


def test_verification_writes_no_wal_per_call(service, new_client, su):
    """A plain key costs no WAL at all; a rate-limited one none for its window (shared memory
    when preloaded; else only the commit record of the unlogged-table update, ~40 bytes)."""
    user = uid("u")
    plain = create(service, reference_id=user)
    limited = create(service, reference_id=user, rate_limit_max=100_000, rate_limit_window="1 hour")
    preloaded = "api_key" in su.val("SHOW shared_preload_libraries")
    c = new_client("akt_app")
    n, slack = 500, 16_384   # slack: a checkpoint record, a page prune or a full-page image meanwhile
    for key, per_call in [(plain["key"], 0), (limited["key"], 0 if preloaded else 64)]:
        assert verify(c, key)["code"] == "VALID"
        start = su.val("SELECT pg_current_wal_insert_lsn()")
        for _ in range(n):
            c.conn.execute("SELECT code FROM api_key_verify(%s)", [key])
        used = su.val("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s)", [start])
        assert used <= n * per_call + slack, f"{used / n:.1f} WAL bytes per verification"
