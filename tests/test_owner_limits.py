"""An owner cannot lift its own limits; and the kinds of fault found in other API-key systems'
bug trackers: expiry against the transaction's start, cursors that need their row, refills that
never apply, durations that overflow later."""

from __future__ import annotations

import time

import psycopg
import pytest

from helpers import create, expect_error, uid, verify


@pytest.fixture
def owned(service):
    """A user key made by the service with every kind of limit, and its owner."""
    user = uid("u")
    made = create(service, reference_id=user, permissions='{"files": ["read", "write"]}', remaining=100,
                  refill_amount=100, refill_interval="1 day", rate_limit_max=10, rate_limit_window="1 minute",
                  expires_in="30 days")
    return {"user": user, "id": made["id"], "key": made["key"]}


LIFTS = {
    "raise remaining": "remaining => 1000",
    "unlimited credits": "clear => '{remaining,refill}'",
    "bigger refill": "refill_amount => 1000",
    "more frequent refill": "refill_interval => '1 hour'",
    "rate limit off": "rate_limit_enabled => false",
    "higher rate limit": "rate_limit_max => 1000",
    "shorter window": "rate_limit_window => '1 second'",
    "more permissions": "permissions => '{\"files\": [\"read\", \"write\", \"delete\"]}'",
    "other permissions": "permissions => '{\"billing\": [\"read\"]}'",
    "later expiry": "expires_at => now() + interval '60 days'",
    "no expiry": "clear => '{expires_at}'",
}


@pytest.mark.parametrize("lift", list(LIFTS))
def test_an_owner_cannot_lift_its_own_limits(app, service, su, owned, lift):
    before = su.one("SELECT * FROM api_key.keys WHERE id = %s", [owned["id"]])
    expect_error("42501", app.rows, f"SELECT * FROM api_key_update(%s, {LIFTS[lift]})", [owned["id"]],
                 actor=owned["user"])
    assert su.one("SELECT * FROM api_key.keys WHERE id = %s", [owned["id"]]) == before
    # The service may.
    service.rows(f"SELECT * FROM api_key_update(%s, {LIFTS[lift]})", [owned["id"]])


NARROWINGS = {
    "fewer credits": "remaining => 5",
    "smaller refill": "refill_amount => 10",
    "rarer refill": "refill_interval => '7 days'",
    "no refill": "clear => '{refill}'",
    "lower rate limit": "rate_limit_max => 2",
    "longer window": "rate_limit_window => '1 hour'",
    "fewer permissions": "permissions => '{\"files\": [\"read\"]}'",
    "no permissions": "clear => '{permissions}'",
    "earlier expiry": "expires_at => now() + interval '1 day'",
    "disabled": "enabled => false",
    "renamed, with metadata": "name => 'mine', metadata => '{\"team\": \"x\"}'",
}


@pytest.mark.parametrize("narrowing", list(NARROWINGS))
def test_an_owner_may_narrow(app, owned, narrowing):
    app.rows(f"SELECT * FROM api_key_update(%s, {NARROWINGS[narrowing]})", [owned["id"]], actor=owned["user"])


def test_disabling_is_for_good_unless_the_configuration_says_otherwise(app, service, su):
    user = uid("u")
    made = create(app, actor=user, reference_id=user)
    app.rows("SELECT api_key_update(%s, enabled => false)", [made["id"]], actor=user)
    expect_error("42501", app.rows, "SELECT api_key_update(%s, enabled => true)", [made["id"]], actor=user)
    config = uid("pausable")
    service.rows("SELECT api_key_config_create(%s, actor_may_create => true, actor_may_raise => '{enabled}')", [config])
    paused = create(app, actor=user, reference_id=user, config_id=config)
    app.rows("SELECT api_key_update(%s, enabled => false)", [paused["id"]], actor=user)
    app.rows("SELECT api_key_update(%s, enabled => true)", [paused["id"]], actor=user)
    assert verify(app, paused["key"])["code"] == "VALID"


def test_actors_create_keys_within_their_configuration(app, service):
    user = uid("u")
    config = uid("cfg")
    service.rows("SELECT api_key_config_create(%s, actor_may_create => true, default_permissions => '{\"files\": [\"read\", \"write\"]}', "
                 "default_remaining => 100, rate_limit_enabled => true, rate_limit_max => 10, "
                 "rate_limit_window => '1 minute', refill_amount => 100, refill_interval => '1 day')", [config])
    ok = create(app, actor=user, reference_id=user, config_id=config, permissions='{"files": ["read"]}',
                remaining=50, rate_limit_max=5, rate_limit_window="1 hour")
    assert verify(app, ok["key"], permissions='{"files": ["read"]}')["remaining"] == 49
    for lift in ["permissions => '{\"files\": [\"delete\"]}'", "remaining => 1000", "rate_limit_enabled => false",
                 "rate_limit_max => 100", "refill_amount => 1000, refill_interval => '1 day'"]:
        expect_error("42501", app.rows, f"SELECT * FROM api_key_create(reference_id => %s, config_id => %s, {lift})",
                     [user, config], actor=user)
    # With nothing given, the actor gets the configuration's defaults.
    plain = create(app, actor=user, reference_id=user, config_id=config)
    assert verify(app, plain["key"], permissions='{"files": ["write"]}')["code"] == "VALID"
    # The default configuration grants no permissions, so an actor can ask for none.
    expect_error("42501", app.rows, "SELECT * FROM api_key_create(reference_id => %s, permissions => %s)",
                 [user, '{"files": ["read"]}'], actor=user)


def test_a_configuration_can_let_owners_manage_a_field(app, service):
    user = uid("u")
    config = uid("selfserve")
    service.rows("SELECT api_key_config_create(%s, actor_may_create => true, actor_may_raise => '{permissions,remaining}')", [config])
    made = create(app, actor=user, reference_id=user, config_id=config, permissions='{"files": ["read"]}',
                  remaining=10)
    app.rows("SELECT api_key_update(%s, remaining => 500, permissions => '{\"files\": [\"read\", \"write\"]}')",
             [made["id"]], actor=user)
    limited = create(service, reference_id=user, config_id=config, expires_in="1 day", rate_limit_max=1,
                     rate_limit_window="1 minute")
    for lift in ["clear => '{expires_at}'", "rate_limit_enabled => false"]:
        expect_error("42501", app.rows, f"SELECT api_key_update(%s, {lift})", [limited["id"]], actor=user)
    expect_error("22023", service.rows, "SELECT api_key_config_create(%s, actor_may_raise => '{everything}')",
                 [uid("bad")])


def test_organization_admins_cannot_lift_the_organizations_limits(app, service, su):
    org = uid("org")
    su.rows("INSERT INTO api_key.organizations (id) VALUES (%s)", [org])
    su.rows("INSERT INTO api_key.members VALUES (%s, 'adm', 'admin')", [org])
    made = create(service, reference_type="organization", reference_id=org, remaining=10)
    expect_error("42501", app.rows, "SELECT api_key_update(%s, remaining => 1000)", [made["id"]], actor="adm")
    app.rows("SELECT api_key_update(%s, remaining => 1)", [made["id"]], actor="adm")


# --- Time: the verification's clock -------------------------------------------------------------

def test_expiry_is_checked_against_the_time_of_the_verification(app, service, new_client):
    user = uid("u")
    made = create(service, reference_id=user, expires_in="1 second")
    c = new_client("akt_app")
    with c.tx() as conn:
        conn.execute("SELECT 1")  # the transaction has started, before the key expires
        time.sleep(1.5)
        code = conn.execute("SELECT code FROM api_key_verify(%s)", [made["key"]]).fetchone()["code"]
    assert code == "EXPIRED"


def test_a_refill_is_due_by_the_calendar(app, service, su):
    """A monthly refill is a calendar month after the last one, not 30 days."""
    user = uid("u")
    made = create(service, reference_id=user, remaining=0, refill_amount=5, refill_interval="1 month")
    # Last refill 29 days ago: a 30-day month would not be due; a calendar month from, say,
    # a February date may be. Use dates whose answer differs: 31 days ago in a 31-day month.
    su.rows("UPDATE api_key.keys SET last_refill_at = date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' "
            "- interval '1 month' - interval '1 second' WHERE id = %s", [made["id"]])
    assert verify(app, made["key"])["remaining"] == 4
    su.rows("UPDATE api_key.keys SET remaining = 0, last_refill_at = (now() AT TIME ZONE 'UTC' - interval '1 month' "
            "+ interval '1 minute') AT TIME ZONE 'UTC' WHERE id = %s", [made["id"]])
    assert verify(app, made["key"])["code"] == "USAGE_EXCEEDED"


# --- Cursors do not need their row -------------------------------------------------------------

def test_a_cursor_keeps_its_place_after_its_key_is_revoked(app, service):
    user = uid("u")
    ids = [create(service, reference_id=user, name=f"k{i}")["id"] for i in range(5)]
    first = app.rows("SELECT id FROM api_key_list_for_reference(reference_id => %s, page_size => 2)", [user],
                     actor=user)
    assert [r["id"] for r in first] == ids[::-1][:2]
    app.rows("SELECT api_key_revoke(%s)", [first[-1]["id"]], actor=user)
    rest = app.rows("SELECT id FROM api_key_list_for_reference(reference_id => %s, page_size => 10, after_id => %s)",
                    [user, first[-1]["id"]], actor=user)
    assert [r["id"] for r in rest] == ids[::-1][2:]


def test_ids_carry_their_creation_time(service, su):
    made = create(service, reference_id=uid("u"))
    row = su.one("SELECT created_at, updated_at, (SELECT substr(%s::text, 15, 1)) AS version FROM api_key.keys "
                 "WHERE id = %s", [made["id"], made["id"]])
    assert row["version"] == "7"
    assert row["created_at"] == row["updated_at"] == made["created_at"]


# --- One meaning for credits and refill -------------------------------------------------------

def test_a_refill_added_to_unlimited_credits_applies(app, service, su):
    user = uid("u")
    made = create(service, reference_id=user)
    row = service.one("SELECT remaining, refill_amount FROM api_key_update(%s, refill_amount => 3, "
                      "refill_interval => '1 hour')", [made["id"]])
    assert row == {"remaining": 3, "refill_amount": 3}
    for _ in range(3):
        assert verify(app, made["key"])["code"] == "VALID"
    assert verify(app, made["key"])["code"] == "USAGE_EXCEEDED"
    su.rows("UPDATE api_key.keys SET last_refill_at = now() - interval '2 hours' WHERE id = %s", [made["id"]])
    assert verify(app, made["key"])["remaining"] == 2


def test_credits_and_refill_combinations(service):
    user = uid("u")
    made = create(service, reference_id=user, refill_amount=10, refill_interval="1 day")
    assert service.val("SELECT remaining FROM api_key_get(%s)", [made["id"]]) == 10
    expect_error("22023", service.rows, "SELECT api_key_update(%s, clear => '{remaining}')", [made["id"]])
    expect_error("22023", service.rows, "SELECT api_key_update(%s, remaining => 5, clear => '{remaining}')",
                 [made["id"]])
    assert service.val("SELECT remaining FROM api_key_update(%s, clear => '{remaining,refill}')", [made["id"]]) is None
    expect_error("22023", service.rows, "SELECT api_key_update(%s, refill_amount => 5)", [made["id"]])
    expect_error("22023", service.rows, "SELECT * FROM api_key_create(reference_id => %s, refill_amount => 5)", [user])


# --- Durations are bounded where they are given -------------------------------------------------

@pytest.mark.parametrize("call", [
    "SELECT * FROM api_key_create(reference_id => %(u)s, rate_limit_max => 1, rate_limit_window => '300000 years')",
    "SELECT * FROM api_key_create(reference_id => %(u)s, remaining => 1, refill_amount => 1, refill_interval => '300000 years')",
    "SELECT * FROM api_key_create(reference_id => %(u)s, expires_in => '300000 years')",
    "SELECT * FROM api_key_create(reference_id => %(u)s, expires_in => '101 years')",
    "SELECT * FROM api_key_rotate(%(id)s, grace => '300000 years')",
    "SELECT * FROM api_key_update(%(id)s, rate_limit_window => '11 years')",
    "SELECT * FROM api_key_update(%(id)s, expires_at => 'infinity')",
    "SELECT * FROM api_key_config_create(%(cfg)s, default_expires_in => '300000 years')",
    "SELECT * FROM api_key_config_create(%(cfg)s, rate_limit_enabled => true, rate_limit_max => 1, rate_limit_window => '300000 years')",
    # Negative parts: '-12 mons +360 days +1 hour' compares equal to 1 hour but adds about
    # minus 5 days; others overflow the calendar although they compare as small.
    "SELECT * FROM api_key_update(%(id)s, rate_limit_max => 1, rate_limit_window => '-12 mons +360 days +1 hour')",
    "SELECT * FROM api_key_update(%(id)s, remaining => 1, refill_amount => 1, refill_interval => '-12 mons +360 days +1 hour')",
    "SELECT * FROM api_key_create(reference_id => %(u)s, expires_in => '3000000 mons -89999999 days')",
    "SELECT * FROM api_key_create(reference_id => %(u)s, expires_in => '-12 mons +361 days')",
    "SELECT * FROM api_key_rotate(%(id)s, grace => '71582788 mons -2147483639 days')",
    "SELECT * FROM api_key_config_create(%(cfg)s, max_expires_in => '1 mon -29 days')",
])
def test_every_duration_has_a_bound(service, su, call):
    user = uid("u")
    made = create(service, reference_id=user)
    before = su.val("SELECT count(*) FROM api_key.audit_log")
    expect_error("22023", service.rows, call, {"u": user, "id": made["id"], "cfg": uid("cfg")})
    assert su.val("SELECT count(*) FROM api_key.audit_log") == before
    assert verify(service, made["key"])["code"] == "VALID"


def test_configurations_are_the_services_unless_they_let_actors_create(app, service):
    """A configuration the service keeps for itself (partner keys with billing:write, say) is not
    a way for an actor to get those permissions: actors create keys only of configurations that
    let them (the default one does)."""
    user = uid("u")
    partner = uid("partner")
    service.rows("SELECT api_key_config_create(%s, default_permissions => '{\"billing\": [\"write\"]}')", [partner])
    err = expect_error("42501", app.rows, "SELECT * FROM api_key_create(reference_id => %s, config_id => %s)",
                       [user, partner], actor=user)
    assert "only the service" in err.diag.message_primary
    made = create(service, reference_id=user, config_id=partner)
    assert verify(app, made["key"], permissions='{"billing": ["write"]}')["code"] == "VALID"
    service.rows("SELECT api_key_config_update(%s, '{\"actor_may_create\": true}')", [partner])
    create(app, actor=user, reference_id=user, config_id=partner)


def test_rotating_is_issuing_a_key(app, service, su):
    """A rotation hands out a working key with the key's permissions: an actor needs the right to
    create keys (and a configuration it may create keys of), not only to update them."""
    org = uid("org")
    partner = uid("partner")
    su.rows("INSERT INTO api_key.organizations (id) VALUES (%s)", [org])
    su.rows("INSERT INTO api_key.members VALUES (%s, 'keeper', 'maintainer'), (%s, 'adm', 'admin')", [org, org])
    su.rows("INSERT INTO api_key.role_permissions VALUES (%s, 'maintainer', 'read'), (%s, 'maintainer', 'update')",
            [org, org])
    service.rows("SELECT api_key_config_create(%s)", [partner])
    made = create(service, reference_type="organization", reference_id=org, config_id=partner,
                  permissions='{"billing": ["write"]}')
    plain = create(service, reference_type="organization", reference_id=org)
    before = su.rows("SELECT key_id, expires_at FROM api_key.key_secrets ORDER BY key_id, created_at")

    # update without create: no rotation, of any configuration
    for key in (made, plain):
        err = expect_error("42501", app.rows, "SELECT * FROM api_key_rotate(%s, grace => '10 years')", [key["id"]],
                           actor="keeper")
        assert "api_key:create" in err.diag.message_primary
    # create, but of a configuration kept for the service
    err = expect_error("42501", app.rows, "SELECT * FROM api_key_rotate(%s)", [made["id"]], actor="adm")
    assert "only the service" in err.diag.message_primary
    assert su.rows("SELECT key_id, expires_at FROM api_key.key_secrets ORDER BY key_id, created_at") == before
    assert verify(app, made["key"])["code"] == "VALID"

    # what creating allows, rotating allows
    rotated = app.rows("SELECT key FROM api_key_rotate(%s)", [plain["id"]], actor="adm")[0]
    assert verify(app, rotated["key"])["code"] == "VALID"
    # A rotation re-issues the key as it is (the owner rotating its own key is the common case),
    # so the configuration decides: once actors may create keys of it, they may rotate its keys.
    service.rows("SELECT api_key_config_update(%s, '{\"actor_may_create\": true}')", [partner])
    again = app.rows("SELECT key FROM api_key_rotate(%s)", [made["id"]], actor="adm")[0]
    assert verify(app, again["key"], permissions='{"billing": ["write"]}')["code"] == "VALID"


def test_a_month_is_not_thirty_days_for_an_owner(app, service):
    """Switching a window between '1 month' and '30 days' shortens it in some months: an owner
    may do neither; and max_expires_in is counted on the calendar."""
    user = uid("u")
    made = create(service, reference_id=user, rate_limit_max=5, rate_limit_window="1 month")
    expect_error("42501", app.rows, "SELECT api_key_update(%s, rate_limit_window => '30 days')", [made["id"]],
                 actor=user)
    app.rows("SELECT api_key_update(%s, rate_limit_window => '31 days')", [made["id"]], actor=user)
    cfg = uid("monthly")
    service.rows("SELECT api_key_config_create(%s, max_expires_in => '30 days', actor_may_create => true)", [cfg])
    # A calendar month from today is 28 to 31 days: refused when it is longer than 30 days.
    longer = service.val("SELECT (now() AT TIME ZONE 'UTC' + interval '1 month') > (now() AT TIME ZONE 'UTC' + interval '30 days')")
    call = "SELECT * FROM api_key_create(reference_id => %s, config_id => %s, expires_in => '1 month')"
    if longer:
        expect_error("22023", app.rows, call, [user, cfg], actor=user)
    else:
        app.rows(call, [user, cfg], actor=user)
