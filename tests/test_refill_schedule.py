"""Refills on a calendar schedule: with refill_anchor, credits refill at refill_anchor + k ×
refill_interval (UTC; a monthly schedule anchored on the 31st falls on the last day of shorter
months), not refill_interval after the previous refill. api_key_next_refill_at(k) tells when."""

from __future__ import annotations

import pytest

from helpers import create, expect_error, uid, verify

NEXT = "SELECT api_key_next_refill_at(k) AS at FROM api_key.keys k WHERE id = %s"


def next_refill(client, key_id, actor=None):
    return client.val(NEXT, [key_id], actor=actor)


def set_last_refill(su, key_id, at: str):
    su.rows("UPDATE api_key.keys SET last_refill_at = %s::timestamptz WHERE id = %s", [at, key_id])


@pytest.mark.parametrize("last, expected", [
    ("2025-01-31 00:00+00", "2025-02-28 00:00+00"),
    ("2025-02-28 00:00+00", "2025-03-31 00:00+00"),
    ("2024-02-01 00:00+00", "2024-02-29 00:00+00"),
    ("2025-04-30 12:00+00", "2025-05-31 00:00+00"),
    ("2023-12-31 00:00+00", "2024-01-31 00:00+00"),
])
def test_a_monthly_schedule_on_the_31st_falls_on_each_months_last_day(last, expected, service, su):
    key = create(service, reference_id=uid("sched"), refill_amount=100, refill_interval="1 month",
                 refill_anchor="2024-01-31 00:00+00")
    set_last_refill(su, key["id"], last)
    assert next_refill(su, key["id"]) == su.val("SELECT %s::timestamptz", [expected])


def test_a_daily_schedule_refills_at_midnight_utc_once(service, su, app):
    owner = uid("sched")
    midnight = su.val("SELECT date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'")
    key = create(service, reference_id=owner, remaining=3, refill_amount=10, refill_interval="1 day",
                 refill_anchor=str(midnight))
    su.rows("UPDATE api_key.keys SET last_refill_at = %s::timestamptz - interval '1 second' WHERE id = %s",
            [midnight, key["id"]])
    # Last refilled a second before today's midnight: today's refill is due.
    assert next_refill(app, key["id"], actor=owner) == midnight
    assert verify(app, key["key"])["remaining"] == 9
    assert verify(app, key["key"])["remaining"] == 8      # once, not again
    tomorrow = su.val("SELECT %s::timestamptz + interval '1 day'", [midnight])
    assert next_refill(app, key["id"], actor=owner) == tomorrow


def test_without_an_anchor_a_refill_rolls_from_the_last_one(service, su):
    key = create(service, reference_id=uid("sched"), refill_amount=10, refill_interval="1 month")
    set_last_refill(su, key["id"], "2025-01-31 10:00+00")
    assert next_refill(su, key["id"]) == su.val("SELECT '2025-02-28 10:00+00'::timestamptz")
    unlimited = create(service, reference_id=uid("sched"))
    assert next_refill(su, unlimited["id"]) is None


@pytest.mark.parametrize("args, sqlstate", [
    ("refill_anchor => now()", "22023"),                                                 # no refill
    ("refill_amount => 5, refill_interval => '1 month 1 day', refill_anchor => now()", "22023"),
    ("refill_amount => 5, refill_interval => '1 day', refill_anchor => 'infinity'", "22023"),
])
def test_schedules_that_make_no_sense_are_refused(args, sqlstate, service, su):
    expect_error(sqlstate, service.rows, f"SELECT * FROM api_key_create(%s, {args})", [uid("sched")])


def test_update_moves_keeps_or_clears_the_schedule(service, su, app):
    owner = uid("sched")
    key = create(service, reference_id=owner, refill_amount=10, refill_interval="1 month")
    row = service.one("SELECT refill_anchor FROM api_key_update(%s, refill_anchor => '2026-01-01 00:00+00')",
                      [key["id"]])
    assert row["refill_anchor"] == su.val("SELECT '2026-01-01 00:00+00'::timestamptz")
    # Changing the amount keeps the schedule; a mixed interval cannot be a schedule.
    assert service.one("SELECT refill_anchor FROM api_key_update(%s, refill_amount => 20)", [key["id"]]
                       )["refill_anchor"] is not None
    expect_error("22023", service.rows, "SELECT api_key_update(%s, refill_interval => '1 month 2 days')", [key["id"]])
    # An actor may not move its own schedule (it could bring a refill forward), nor lengthen its
    # interval on the same anchor (the points move too, maybe nearer).
    expect_error("42501", app.rows, "SELECT api_key_update(%s, refill_anchor => now())", [key["id"]], actor=owner)
    expect_error("42501", app.rows, "SELECT api_key_update(%s, refill_interval => '40 days')", [key["id"]],
                 actor=owner)
    expect_error("42501", app.rows, "SELECT api_key_update(%s, refill_interval => '2 months')", [key["id"]],
                 actor=owner)
    assert service.one("SELECT refill_anchor FROM api_key_update(%s, clear => '{refill_anchor}')", [key["id"]]
                       )["refill_anchor"] is None
    expect_error("22023", service.rows, "SELECT api_key_update(%s, refill_anchor => now(), clear => '{refill}')",
                 [key["id"]])


def test_a_configuration_schedules_the_refills_of_its_keys(service, su):
    cfg = uid("plan")
    service.rows("SELECT api_key_config_create(%s, refill_amount => 1000, refill_interval => '1 month', "
                 "refill_anchor => '2026-01-01 00:00+00', actor_may_create => true)", [cfg])
    key = create(service, reference_id=uid("sched"), config_id=cfg)
    assert su.val("SELECT refill_anchor FROM api_key.keys WHERE id = %s", [key["id"]]) == \
        su.val("SELECT '2026-01-01 00:00+00'::timestamptz")
    assert su.val("SELECT remaining FROM api_key.keys WHERE id = %s", [key["id"]]) == 1000
    expect_error("22023", service.rows, "SELECT api_key_config_update(%s, '{\"refill_interval\": \"1 month 1 day\"}')",
                 [cfg])
    service.rows("SELECT api_key_config_update(%s, '{\"refill_anchor\": null}')", [cfg])
    later = create(service, reference_id=uid("sched"), config_id=cfg)
    assert su.val("SELECT refill_anchor FROM api_key.keys WHERE id = %s", [later["id"]]) is None


def test_next_refill_of_any_row_is_an_answer_never_an_internal_error(su):
    """api_key_next_refill_at takes any row of the type, even one no function would store."""
    crafted = ("SELECT api_key_next_refill_at(jsonb_populate_record(NULL::api_key.keys, %s::jsonb))::text AS at")
    for row in ['{"last_refill_at": "2026-01-01+00", "refill_anchor": "2026-01-01+00", '
                '"refill_interval": "106751992 days 9223371964909551616 microseconds"}',
                '{"created_at": "294276-12-31+00", "refill_anchor": "4713-01-01 BC", "refill_interval": "1 second"}',
                '{"created_at": "2026-01-01+00", "refill_interval": "-1 day", "refill_anchor": "2026-01-01+00"}']:
        su.rows(crafted, [row])   # no error (NULL when there is no point in range)


def test_usage_exceeded_says_when_credits_come_back(service, su):
    """USAGE_EXCEEDED carries the next refill as reset_at and retry_after_ms (an HTTP 429's
    Retry-After), when waiting for it helps."""
    refilled = create(service, reference_id=uid("sched"), remaining=0, refill_amount=5, refill_interval="1 hour")
    row = service.one("SELECT code, reset_at, retry_after_ms FROM api_key_verify(%s)", [refilled["key"]])
    assert row["code"] == "USAGE_EXCEEDED"
    assert row["reset_at"] == next_refill(su, refilled["id"])
    assert 3_500_000 < row["retry_after_ms"] <= 3_600_000
    # A cost no refill can cover, or no refill at all: waiting does not help.
    row = service.one("SELECT code, reset_at, retry_after_ms FROM api_key_verify(%s, cost => 6)", [refilled["key"]])
    assert (row["code"], row["reset_at"], row["retry_after_ms"]) == ("USAGE_EXCEEDED", None, None)
    spent = create(service, reference_id=uid("sched"), remaining=0)
    row = service.one("SELECT code, reset_at, retry_after_ms FROM api_key_verify(%s)", [spent["key"]])
    assert (row["code"], row["reset_at"], row["retry_after_ms"]) == ("USAGE_EXCEEDED", None, None)
