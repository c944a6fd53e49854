"""Hardening an attacker with an application role can probe: what PUBLIC may execute, and
whether the entry points that run with the extension owner's rights (SECURITY DEFINER functions,
and the Rust functions that switch to the owner internally) can be made to run the caller's
functions or operators (shadowed through search_path) with those rights."""

from __future__ import annotations

import pytest

from helpers import NOBODY, create, uid, verify

EXTENSION_FUNCTIONS = """
    SELECT p.oid::regprocedure::text AS fn, p.prosecdef, p.proconfig
      FROM pg_proc p
      JOIN pg_depend d ON d.objid = p.oid AND d.classid = 'pg_proc'::regclass AND d.deptype = 'e'
      JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'api_key'"""


def test_public_may_execute_only_the_binding_helpers(su):
    # Schema "tests" holds pgrx's #[pg_test] functions, present only in builds made by `cargo pgrx test`.
    public = {r["fn"] for r in su.rows(EXTENSION_FUNCTIONS + " WHERE has_function_privilege(%s, p.oid, 'EXECUTE') "
                                       "AND p.pronamespace::regnamespace::text <> 'tests'", [NOBODY])}
    assert public == {"api_key_current_key_id()", "api_key_current_reference_id()",
                      "api_key_current_reference_type()", "api_key_has_permission(text,text)"}
    tables = su.rows("SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'api_key'::regnamespace "
                     "AND (has_table_privilege(%s, c.oid, 'SELECT') OR has_table_privilege(%s, c.oid, 'INSERT'))",
                     [NOBODY, NOBODY])
    assert tables == []


def test_security_definer_functions_pin_search_path(su):
    """Every SECURITY DEFINER function of the extension either has SET search_path, or (the two
    Rust entry points) must pin it internally; the latter is checked by the next test."""
    loose = {r["fn"] for r in su.rows(EXTENSION_FUNCTIONS + " WHERE p.prosecdef") if not any(
        (c or "").startswith("search_path=") for c in (r["proconfig"] or []))}
    assert loose <= {"api_key_verify(text,jsonb,integer,text,text[])",
                     "api_key_authenticate(text,jsonb,integer,text,text[])"}


SHADOWS = [
    # (signature for CREATE FUNCTION, body delegating to the real thing, CREATE OPERATOR clause or None)
    ("now()", "timestamptz", "SELECT pg_catalog.now()", None),
    ("ev_uuid_eq(a uuid, b uuid)", "boolean", "SELECT a OPERATOR(pg_catalog.=) b", "= (LEFTARG = uuid, RIGHTARG = uuid"),
    ("ev_bytea_eq(a bytea, b bytea)", "boolean", "SELECT a OPERATOR(pg_catalog.=) b", "= (LEFTARG = bytea, RIGHTARG = bytea"),
    ("ev_ts_le(a timestamptz, b timestamptz)", "boolean", "SELECT a OPERATOR(pg_catalog.<=) b",
     "<= (LEFTARG = timestamptz, RIGHTARG = timestamptz"),
    ("ev_ts_plus(a timestamptz, b interval)", "timestamptz", "SELECT a OPERATOR(pg_catalog.+) b",
     "+ (LEFTARG = timestamptz, RIGHTARG = interval"),
    ("ev_int8_mul_iv(a bigint, b interval)", "interval", "SELECT a::float8 OPERATOR(pg_catalog.*) b",
     "* (LEFTARG = bigint, RIGHTARG = interval"),
    ("ev_int8_ge(a bigint, b bigint)", "boolean", "SELECT a OPERATOR(pg_catalog.>=) b", ">= (LEFTARG = bigint, RIGHTARG = bigint"),
    ("ev_int8_minus(a bigint, b bigint)", "bigint", "SELECT a OPERATOR(pg_catalog.-) b", "- (LEFTARG = bigint, RIGHTARG = bigint"),
    ("ev_int4_lt(a integer, b integer)", "boolean", "SELECT a OPERATOR(pg_catalog.<) b", "< (LEFTARG = integer, RIGHTARG = integer"),
    ("ev_int4_plus(a integer, b integer)", "integer", "SELECT a OPERATOR(pg_catalog.+) b", "+ (LEFTARG = integer, RIGHTARG = integer"),
    ("ev_int4_minus(a integer, b integer)", "integer", "SELECT a OPERATOR(pg_catalog.-) b", "- (LEFTARG = integer, RIGHTARG = integer"),
    ("ev_int4_gt(a integer, b integer)", "boolean", "SELECT a OPERATOR(pg_catalog.>) b", "> (LEFTARG = integer, RIGHTARG = integer"),
    ("ev_jsonb_contains(a jsonb, b jsonb)", "boolean", "SELECT a OPERATOR(pg_catalog.@>) b", "@> (LEFTARG = jsonb, RIGHTARG = jsonb"),
    # What the usage analytics' flush calls.
    ("ev_int8_plus(a bigint, b bigint)", "bigint", "SELECT a OPERATOR(pg_catalog.+) b", "+ (LEFTARG = bigint, RIGHTARG = bigint"),
    ("ev_text_eq(a text, b text)", "boolean", "SELECT a OPERATOR(pg_catalog.=) b", "= (LEFTARG = text, RIGHTARG = text"),
    ("date_trunc(a text, b timestamptz, c text)", "timestamptz", "SELECT pg_catalog.date_trunc(a, b, c)", None),
    ("string_to_array(a text, b text)", "text[]", "SELECT pg_catalog.string_to_array(a, b)", None),
]


@pytest.fixture
def trap(app, su, new_client):
    """A connection of the application role whose search_path puts its own schema first, where
    it has shadowed functions and operators that record who ran them."""
    schema = uid("trap")
    su.rows(f"CREATE SCHEMA {schema} AUTHORIZATION akt_app")
    app.rows(f"CREATE TABLE {schema}.ran (who text, what text)")
    app.rows(f"GRANT USAGE ON SCHEMA {schema} TO PUBLIC")
    app.rows(f"GRANT INSERT ON {schema}.ran TO PUBLIC")
    for sig, ret, body, op in SHADOWS:
        name = sig.split("(")[0]
        app.rows(f"CREATE FUNCTION {schema}.{sig} RETURNS {ret} LANGUAGE plpgsql VOLATILE AS $$ BEGIN "
                 f"INSERT INTO {schema}.ran VALUES (current_user, '{name}'); RETURN ({body}); END $$")
        if op:
            app.rows(f"CREATE OPERATOR {schema}.{op}, FUNCTION = {schema}.{name})")
    c = new_client("akt_app")
    c.rows(f"SET search_path = {schema}, pg_catalog, public")
    assert c.val("SELECT now() IS NOT NULL") is True          # the trap works for the role itself
    assert c.val(f"SELECT count(*) FROM {schema}.ran") == 1
    c.rows(f"DELETE FROM {schema}.ran")
    return {"client": c, "schema": schema}


def test_verify_does_not_run_the_callers_shadowed_operators(trap, service, su):
    c, schema = trap["client"], trap["schema"]
    user = uid("u")
    plain = create(service, reference_id=user, permissions='{"docs": ["read"]}')
    credits = create(service, reference_id=user, remaining=2)
    limited = create(service, reference_id=user, rate_limit_max=1, rate_limit_window="1 hour", remaining=1)
    refill = create(service, reference_id=user, remaining=0, refill_amount=5, refill_interval="1 second")
    su.rows("UPDATE api_key.keys SET last_refill_at = now() - interval '1 hour' WHERE id = %s", [refill["id"]])
    codes = [
        verify(c, plain["key"])["code"],
        verify(c, plain["key"], permissions='{"docs": ["read"]}')["code"],
        verify(c, plain["key"], permissions='{"docs": ["write"]}')["code"],
        verify(c, credits["key"])["code"], verify(c, credits["key"])["code"], verify(c, credits["key"])["code"],
        verify(c, limited["key"])["code"], verify(c, limited["key"])["code"],
        verify(c, refill["key"])["code"],
        verify(c, "sk_not_a_key")["code"],
    ]
    assert codes == ["VALID", "VALID", "INSUFFICIENT_PERMISSIONS", "VALID", "VALID", "USAGE_EXCEEDED", "VALID",
                     "RATE_LIMITED", "VALID"]  + ["NOT_FOUND"]
    with c.tx() as conn:
        conn.execute("SELECT api_key_authenticate(%s, permissions => '{\"docs\": [\"read\"]}')", [plain["key"]])
        assert conn.execute("SELECT api_key_has_permission('docs', 'read') AS p").fetchone()["p"] is True
    # The usage counts of these verifications are written by this backend (not preloaded).
    assert c.val("SELECT api_key_flush_usage()") > 0
    ran = su.rows(f"SELECT who, what, (SELECT rolsuper FROM pg_roles WHERE rolname = who) AS super FROM {schema}.ran")
    assert ran == [], f"the caller's objects ran inside verification: {ran}"


def test_management_functions_do_not_run_the_callers_shadowed_operators(trap, su):
    c, schema = trap["client"], trap["schema"]
    user = uid("u")
    # A configuration that lets owners grant permissions, so that the actor's calls take every path.
    config = uid("cfg")
    su.rows("SELECT api_key_config_create(%s, actor_may_create => true, actor_may_raise => '{permissions}')", [config])
    made = create(c, actor=user, reference_id=user, config_id=config, remaining=5, expires_in="1 day",
                  permissions='{"a": ["b"]}')
    c.rows("SELECT 1 FROM api_key_update(id => %s, name => 'n', remaining => 3, permissions => '{\"a\": [\"b\", "
           "\"c\"]}', expires_at => now() + interval '1 hour', rate_limit_max => 5, rate_limit_window => '1 minute')",
           [made["id"]], actor=user)
    c.rows("SELECT * FROM api_key_list_for_reference(reference_id => %s)", [user], actor=user)
    c.rows("SELECT * FROM api_key_rotate(id => %s, grace => '1 minute')", [made["id"]], actor=user)
    c.rows("SELECT api_key_revoke(%s)", [made["id"]], actor=user)
    ran = su.rows(f"SELECT who, what, (SELECT rolsuper FROM pg_roles WHERE rolname = who) AS super FROM {schema}.ran")
    assert not any(r["super"] for r in ran), f"the caller's objects ran as superuser: {ran}"
