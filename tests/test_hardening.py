"""Application code called by the extension (authorizers, membership tables and what their owner
attaches to them) must never reach privileged code, and nothing it sets may outlive the call.

A hostile application role `akt_app` (granted only api_key_user, owner of schema `app`) and a
service role registering its own authorizer try every route here: settings changed for the
session (search_path, api_key.actor), functions, operators and types shadowing built-ins in
their own schemas and in pg_temp, policies and views on a membership table, SET ROLE, writes.
Every trap announces itself with RAISE NOTICE (notices reach the client even when the work is
rolled back) and, if it ever runs as anyone but its owner, makes its owner a superuser. After
each attack: no role changed, and no trap ran as another role."""

from __future__ import annotations

import re
import time

import psycopg
import pytest

from helpers import APP, SERVICE, connect, create, expect_error, uid

# Shadows of built-ins, created in the attacker's schema: (signature, returns, call of the real one).
SHADOW_FUNCTIONS = [
    ("length(t text)", "integer", "pg_catalog.length(t)"),
    ("lower(t text)", "text", "pg_catalog.lower(t)"),
    ("upper(t text)", "text", "pg_catalog.upper(t)"),
    ("btrim(t text)", "text", "pg_catalog.btrim(t)"),
    ("left(t text, n integer)", "text", "pg_catalog.left(t, n)"),
    ("now()", "timestamptz", "pg_catalog.now()"),
    ("clock_timestamp()", "timestamptz", "pg_catalog.clock_timestamp()"),
    ("current_setting(n text, m boolean)", "text", "pg_catalog.current_setting(n, m)"),
    ("set_config(n text, v text, l boolean)", "text", "pg_catalog.set_config(n, v, l)"),
    ("gen_random_uuid()", "uuid", "pg_catalog.gen_random_uuid()"),
    ("string_to_array(a text, b text)", "text[]", "pg_catalog.string_to_array(a, b)"),
    ("to_jsonb(x anyelement)", "jsonb", "pg_catalog.to_jsonb(x)"),
    ("jsonb_typeof(x jsonb)", "text", "pg_catalog.jsonb_typeof(x)"),
    ("format(f text)", "text", "pg_catalog.format(f)"),
    ("coalesce(a text, b text)", "text", "pg_catalog.concat(a, b)"),
]

# Operators on the types the extension compares: (left, right, name, returns, real operator).
EQUALITY_TYPES = ["text", "uuid", "bytea", "timestamptz", "bigint", "integer", "jsonb", "boolean"]
ORDERED_TYPES = ["text", "timestamptz", "bigint", "integer"]
SHADOW_OPERATORS = [(t, t, op, "boolean") for t in EQUALITY_TYPES for op in ["=", "<>"]] + [
    (t, t, op, "boolean") for t in ORDERED_TYPES for op in ["<", "<=", ">", ">="]
] + [
    ("timestamptz", "interval", "+", "timestamptz"),
    ("bigint", "bigint", "-", "bigint"),
    ("bigint", "bigint", "+", "bigint"),
    ("integer", "integer", "+", "integer"),
    ("integer", "integer", "-", "integer"),
    ("text", "text", "||", "text"),
    ("text", "text", "~", "boolean"),
    ("text", "text", "~~", "boolean"),
    ("jsonb", "jsonb", "@>", "boolean"),
    ("jsonb", "text", "->", "jsonb"),
]

SHADOW_TYPES = ["text", "uuid", "jsonb", "timestamptz", "bytea", "name", "oid", "regclass"]

TRAP_BODY = """
    RAISE NOTICE 'api_key_trap % ran as %', {what!r}, current_user;
    IF current_user OPERATOR(pg_catalog.<>) {owner!r} THEN
        EXECUTE 'ALTER ROLE {owner} SUPERUSER';
    END IF;
"""


def trap(what: str, owner: str) -> str:
    return TRAP_BODY.format(what=what, owner=owner)


def plant_traps(client, schema: str, owner: str) -> None:
    """Shadows of functions, operators and types in `schema`, all of them traps."""
    for i, (sig, returns, real) in enumerate(SHADOW_FUNCTIONS):
        name = sig.split("(")[0]
        client.rows(f"""CREATE FUNCTION {schema}.{sig} RETURNS {returns} LANGUAGE plpgsql VOLATILE AS $$
                        BEGIN {trap(name, owner)} RETURN {real}; END $$""")
    for i, (left, right, op, returns) in enumerate(SHADOW_OPERATORS):
        fn = f"{schema}.op_{i}"
        real = f"a OPERATOR(pg_catalog.{op}) b"
        client.rows(f"""CREATE FUNCTION {fn}(a {left}, b {right}) RETURNS {returns} LANGUAGE plpgsql VOLATILE AS $$
                        BEGIN {trap('operator ' + op, owner)} RETURN {real}; END $$""")
        client.rows(f"CREATE OPERATOR {schema}.{op} (LEFTARG = {left}, RIGHTARG = {right}, FUNCTION = {fn})")
    client.rows(f"""CREATE FUNCTION {schema}.type_trap(v text) RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
                    BEGIN {trap('a shadowed type', owner)} RETURN true; END $$""")
    for t in SHADOW_TYPES:
        client.rows(f"CREATE DOMAIN {schema}.{t} AS pg_catalog.{t} CHECK ({schema}.type_trap(VALUE::pg_catalog.text))")
    client.rows(f"GRANT USAGE ON SCHEMA {schema} TO PUBLIC")


class Notices:
    """Collects the traps' notices of a connection."""

    def __init__(self, conn: psycopg.Connection):
        self.seen: list[str] = []
        conn.add_notice_handler(lambda d: self.seen.append(d.message_primary or ""))

    def ran_as(self) -> set[str]:
        return {m.split(" ran as ")[1] for m in self.seen if m.startswith("api_key_trap")}

    def traps(self) -> list[str]:
        return [m for m in self.seen if m.startswith("api_key_trap")]


def roles_unchanged(su) -> None:
    for role in (APP, SERVICE):
        row = su.one("SELECT rolsuper, rolcreaterole, rolbypassrls FROM pg_roles WHERE rolname = %s", [role])
        assert row == {"rolsuper": False, "rolcreaterole": False, "rolbypassrls": False}, f"{role} changed: {row}"
    assert not su.val("SELECT pg_has_role(%s, 'api_key_admin', 'USAGE')", [APP])


@pytest.fixture
def attacker(app, su, new_client):
    """The application role, with traps planted in a schema of its own that its search path
    puts before pg_catalog (and a temporary schema of its session)."""
    schema = uid("evil")
    su.rows(f'CREATE SCHEMA {schema} AUTHORIZATION "{APP}"')
    c = new_client(APP)
    plant_traps(c, schema, APP)
    notices = Notices(c.conn)
    yield {"client": c, "schema": schema, "notices": notices}
    roles_unchanged(su)


AUTHORIZER_ATTACKS = {
    # The reproduction from the review: a session-level search_path from inside the authorizer.
    "set_config search_path": "PERFORM pg_catalog.set_config('search_path', '{schema}, pg_catalog', false);",
    "SET search_path": "SET search_path = {schema}, pg_catalog;",
    "SET LOCAL search_path": "SET LOCAL search_path = {schema}, pg_catalog;",
    "search path with pg_temp first": "PERFORM pg_catalog.set_config('search_path', 'pg_temp, {schema}, pg_catalog', false);",
    "change the actor": "PERFORM pg_catalog.set_config('api_key.actor', 'victim', false);",
    "change the role": "SET ROLE postgres;",
    "change session authorization": "SET SESSION AUTHORIZATION postgres;",
    "write a row": "INSERT INTO {schema}.written VALUES (current_user);",
    "lock timeout and statement timeout": "PERFORM pg_catalog.set_config('lock_timeout', '1ms', false); "
                                          "PERFORM pg_catalog.set_config('statement_timeout', '1ms', false);",
}


def authorizer(client, schema: str, body: str, answer: str = "true") -> str:
    fn = f"{schema}.authz_{uid('a')[2:]}"
    client.rows(f"""CREATE FUNCTION {fn}(actor text, reference_id text, action text) RETURNS boolean
                    LANGUAGE plpgsql AS $$ BEGIN {body.format(schema=schema)} RETURN {answer}; END $$""")
    return fn


def run_every_management_call(c, kind: str, ref: str, actor: str = "u1") -> list[str]:
    """Every call that consults the authorizer; returns the SQLSTATEs of those that raised."""
    states = []
    made = None
    calls = [
        ("create", "SELECT * FROM api_key_create(reference_type => %s, reference_id => %s, name => 'n')", [kind, ref]),
        ("list", "SELECT * FROM api_key_list_for_reference(reference_type => %s, reference_id => %s)", [kind, ref]),
        ("select", "SELECT count(*) FROM api_key.keys", None),
    ]
    for name, sql, params in calls:
        try:
            rows = c.rows(sql, params, actor=actor)
            if name == "create":
                made = rows[0]
        except psycopg.Error as e:
            states.append(e.sqlstate)
    if made:
        for sql in ["SELECT * FROM api_key_get(%s)", "SELECT * FROM api_key_update(%s, name => 'm')",
                    "SELECT * FROM api_key_rotate(%s)", "SELECT api_key_revoke(%s)"]:
            try:
                c.rows(sql, [made["id"]], actor=actor)
            except psycopg.Error as e:
                states.append(e.sqlstate)
    return states


@pytest.mark.parametrize("attack", list(AUTHORIZER_ATTACKS))
def test_an_authorizer_cannot_reach_privileged_code(attacker, service, su, attack):
    c, schema, notices = attacker["client"], attacker["schema"], attacker["notices"]
    c.rows(f"CREATE TABLE {schema}.written (who text)")
    fn = authorizer(c, schema, AUTHORIZER_ATTACKS[attack])
    kind = "proj_" + uid("t")[2:10]
    # A superuser registers it (it can act as the function's owner; the service role cannot).
    su.rows("SELECT api_key_register_reference_type(%s, %s::regprocedure)", [kind, f"{fn}(text,text,text)"])
    c.rows(f"SET search_path = {schema}, pg_catalog, public")
    states = run_every_management_call(c, kind, "p1")
    assert set(states) <= {"42501"}, states
    assert notices.ran_as() <= {APP}, f"a trap ran as another role: {notices.traps()}"
    # Nothing the authorizer set survives: this session's settings are its own again.
    settings = c.one("SELECT current_setting('search_path') AS path, current_setting('api_key.actor', true) AS actor, "
                     "current_setting('lock_timeout') AS lt, current_user AS who")
    assert settings["path"] == f"{schema}, pg_catalog, public"
    assert settings["actor"] in (None, "")
    assert settings["lt"] == "0"
    assert settings["who"] == APP
    assert su.val(f"SELECT count(*) FROM {schema}.written") == 0
    # The actor recorded as creator is the one that called, whatever the authorizer set.
    assert su.val("SELECT count(*) FROM api_key.keys WHERE reference_type = %s AND created_by <> 'u1'", [kind]) == 0


def test_the_reviewed_reproduction(app, su, service, new_client):
    """The exact exploit from the outside review: app becomes superuser through its authorizer."""
    schema = uid("app_s")
    su.rows(f'CREATE SCHEMA {schema} AUTHORIZATION "{APP}"')
    c = new_client(APP)
    c.rows(f"CREATE FUNCTION {schema}.authz(actor text, rid text, action text) RETURNS boolean "
           "LANGUAGE sql STABLE AS $$ SELECT true $$")
    kind = "project_" + uid("t")[2:8]
    su.rows("SELECT api_key_register_reference_type(%s, %s::regprocedure)", [kind, f"{schema}.authz(text,text,text)"])
    c.rows(f"""CREATE OR REPLACE FUNCTION {schema}.authz(actor text, rid text, action text) RETURNS boolean
               LANGUAGE plpgsql AS $$ BEGIN
               PERFORM pg_catalog.set_config('search_path', '{schema}, pg_catalog', false); RETURN true; END $$""")
    c.rows(f"""CREATE FUNCTION {schema}.length(t text) RETURNS int LANGUAGE plpgsql AS $$ BEGIN
               IF current_user <> '{APP}' THEN EXECUTE 'ALTER ROLE {APP} SUPERUSER'; END IF;
               RETURN pg_catalog.length(t); END $$""")
    try:
        with c.tx(actor="u1") as conn:
            conn.execute("SELECT id FROM api_key_create(reference_type => %s, reference_id => 'p1')", [kind])
        assert su.val("SELECT rolsuper FROM pg_roles WHERE rolname = %s", [APP]) is False
    finally:
        # This authorizer says yes to every actor: its key would show in every actor's view of
        # api_key.keys in the tests that follow (the database is shared by the session).
        su.rows("DELETE FROM api_key.keys WHERE reference_type = %s", [kind])
        su.rows("DELETE FROM api_key.reference_types WHERE reference_type = %s", [kind])


def test_a_service_role_registering_its_own_authorizer_gains_nothing(service, su, new_client):
    """The same attacks by a role granted api_key_admin, through an authorizer it owns."""
    schema = uid("svc_evil")
    su.rows(f'CREATE SCHEMA {schema} AUTHORIZATION "{SERVICE}"')
    s = new_client(SERVICE)
    plant_traps(s, schema, SERVICE)
    notices = Notices(s.conn)
    fn = authorizer(s, schema, AUTHORIZER_ATTACKS["set_config search_path"])
    kind = "svc_" + uid("t")[2:10]
    s.rows("SELECT api_key_register_reference_type(%s, %s::regprocedure)", [kind, f"{fn}(text,text,text)"])
    s.rows(f"SET search_path = {schema}, pg_catalog, public")
    states = run_every_management_call(s, kind, "p1")
    assert set(states) <= {"42501"}, states
    assert notices.ran_as() <= {SERVICE}, notices.traps()
    roles_unchanged(su)
    assert su.val("SELECT rolsuper FROM pg_roles WHERE rolname = %s", [SERVICE]) is False


@pytest.mark.parametrize("answer,detail", [("NULL", "answered NULL"), ("1/0 = 1", "22012")])
def test_an_authorizer_that_answers_null_or_raises_refuses(attacker, service, su, answer, detail):
    c, schema = attacker["client"], attacker["schema"]
    fn = authorizer(c, schema, "", answer=answer)
    kind = "broken_" + uid("t")[2:10]
    su.rows("SELECT api_key_register_reference_type(%s, %s::regprocedure)", [kind, f"{fn}(text,text,text)"])
    err = expect_error("42501", c.rows, "SELECT * FROM api_key_create(reference_type => %s, reference_id => 'p')",
                       [kind], actor="u1")
    assert detail in (err.diag.message_detail or "")
    assert "XX000" not in str(err)
    # The service keeps creating keys of that type, and other actors keep reading theirs.
    made = service.one("SELECT id FROM api_key_create(reference_type => %s, reference_id => 'p')", [kind])
    reader = uid("reader")
    mine = service.one("SELECT id FROM api_key_create(reference_id => %s)", [reader])
    seen = {r["id"] for r in c.rows("SELECT id FROM api_key.keys", actor=reader)}
    assert mine["id"] in seen and made["id"] not in seen


@pytest.fixture
def hostile_membership(attacker, service, su):
    """A membership table of the application's whose owner forces RLS on it, with a policy that
    changes the session's search path and calls shadowed built-ins; and a view over it."""
    c, schema = attacker["client"], attacker["schema"]
    table, view = f"{schema}.member", f"{schema}.member_v"
    c.rows(f"CREATE TABLE {table} (organization_id text, user_id text, role text)")
    c.rows(f"INSERT INTO {table} VALUES ('org_h', 'boss', 'owner')")
    c.rows(f"""CREATE FUNCTION {schema}.policy_trap() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$ BEGIN
               PERFORM pg_catalog.set_config('search_path', '{schema}, pg_catalog', false);
               PERFORM pg_catalog.set_config('api_key.actor', 'victim', false);
               RETURN {schema}.length('x') OPERATOR(pg_catalog.>) 0; END $$""")
    c.rows(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
    c.rows(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
    c.rows(f"CREATE POLICY p ON {table} USING ({schema}.policy_trap())")
    c.rows(f"CREATE VIEW {view} AS SELECT organization_id, user_id, role FROM {table} WHERE {schema}.policy_trap()")
    c.rows(f"GRANT SELECT ON {table}, {view} TO {SERVICE}")
    yield {"table": table, "view": view}
    service.rows("SELECT api_key_use_membership_table(NULL)")


@pytest.mark.parametrize("relation", ["table", "view"])
def test_a_membership_table_cannot_reach_privileged_code(attacker, hostile_membership, service, su, relation):
    c, schema, notices = attacker["client"], attacker["schema"], attacker["notices"]
    # The superuser points at it (the service role may not act as the table's owner).
    su.rows("SELECT api_key_use_membership_table(%s::regclass)", [hostile_membership[relation]])
    c.rows(f"SET search_path = {schema}, pg_catalog, public")
    made = c.one("SELECT id FROM api_key_create(reference_type => 'organization', reference_id => 'org_h')", actor="boss")
    assert c.val("SELECT count(*) FROM api_key.keys WHERE id = %s", [made["id"]], actor="boss") == 1
    assert c.val("SELECT count(*) FROM api_key.members") == 0
    assert notices.ran_as() <= {APP}, notices.traps()
    assert c.val("SELECT current_setting('search_path')") == f"{schema}, pg_catalog, public"
    assert c.val("SELECT current_setting('api_key.actor', true)") in (None, "")


def test_shadowed_objects_in_pg_temp_are_never_used(app, su, new_client):
    """Functions and operators in pg_temp are never found without qualification, and types and
    tables there come after pg_catalog and the extension's qualified names."""
    c = new_client(APP)
    notices = Notices(c.conn)
    c.rows("CREATE TEMP TABLE keys (id uuid)")  # creates this session's pg_temp
    c.rows(f"""CREATE FUNCTION pg_temp.length(t text) RETURNS integer LANGUAGE plpgsql AS $$
               BEGIN {trap('pg_temp.length', APP)} RETURN pg_catalog.length(t); END $$""")
    c.rows(f"""CREATE FUNCTION pg_temp.t_eq(a text, b text) RETURNS boolean LANGUAGE plpgsql AS $$
               BEGIN {trap('pg_temp.=', APP)} RETURN a OPERATOR(pg_catalog.=) b; END $$""")
    c.rows("CREATE OPERATOR pg_temp.= (LEFTARG = text, RIGHTARG = text, FUNCTION = pg_temp.t_eq)")
    c.rows("SET search_path = pg_temp, pg_catalog, public")
    user = uid("u")
    made = c.one("SELECT * FROM api_key_create(reference_id => %s)", [user], actor=user)
    c.rows("SELECT * FROM api_key_list_for_reference(reference_id => %s)", [user], actor=user)
    c.rows("SELECT api_key_update(%s, name => 'x')", [made["id"]], actor=user)
    assert c.one("SELECT valid FROM api_key_verify(%s)", [made["key"]])["valid"] is True
    assert notices.ran_as() <= {APP}, notices.traps()


def test_verification_and_bookkeeping_ignore_the_callers_shadows(attacker, service, su):
    """api_key_verify runs as the extension owner and writes (credits, rate-limit windows,
    last_used_at at commit) with the caller's search path in effect: none of the traps run."""
    c, schema, notices = attacker["client"], attacker["schema"], attacker["notices"]
    user = uid("u")
    keys = [service.one("SELECT key FROM api_key_create(reference_id => %s, remaining => 50, refill_amount => 50, "
                        "refill_interval => '1 second', rate_limit_max => 100, rate_limit_window => '1 hour', "
                        "permissions => '{\"docs\": [\"read\"]}')", [user])["key"] for _ in range(2)]
    su.rows("UPDATE api_key.keys SET last_refill_at = now() - interval '1 day' WHERE reference_id = %s", [user])
    c.rows(f"SET search_path = {schema}, pg_catalog, public")
    for key in keys * 4:
        c.rows("SELECT * FROM api_key_verify(%s, permissions => '{\"docs\": [\"read\"]}')", [key])
    with c.tx() as conn:
        conn.execute("SELECT api_key_authenticate(%s)", [keys[0]])
    assert notices.ran_as() <= {APP}, notices.traps()
    assert notices.traps() == [], notices.traps()


# --- No oracle of other organizations' membership ---------------------------------------------

EXPECTED_EXECUTABLE = {
    "api_key.actor()", "api_key.is_service()", "api_key.may(text,text,text)", "api_key.is_member(text)",
    "api_key.creator_left(uuid)",
}


def test_what_an_application_role_may_execute(su):
    """Every function of the extension an application role may call, so that a new one is a
    deliberate decision (and reviewed for what it reveals)."""
    rows = su.rows("""
        SELECT p.oid::regprocedure::text AS fn, p.pronamespace::regnamespace::text AS schema
          FROM pg_proc p
          JOIN pg_depend d ON d.objid = p.oid AND d.classid = 'pg_proc'::regclass AND d.deptype = 'e'
          JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'api_key'
         WHERE has_function_privilege(%s, p.oid, 'EXECUTE') AND p.pronamespace::regnamespace::text <> 'tests'""",
                   [APP])
    internal = {r["fn"] for r in rows if r["schema"] == "api_key"}
    assert internal == EXPECTED_EXECUTABLE
    public = {r["fn"].split("(")[0] for r in rows if r["schema"] != "api_key"}
    assert all(f.startswith("api_key_") for f in public), public


@pytest.fixture
def secret_org(su):
    org = uid("secret_org")
    su.rows("INSERT INTO api_key.organizations (id) VALUES (%s)", [org])
    su.rows("INSERT INTO api_key.members VALUES (%s, 'ceo', 'owner')", [org])
    key = su.one("SELECT id FROM api_key_create(reference_type => 'organization', reference_id => %s)", [org])
    return {"id": org, "key_id": key["id"]}


def test_no_function_answers_about_other_organizations(app, secret_org):
    org = secret_org["id"]
    for actor in ("stranger", None):
        assert app.val("SELECT api_key.is_member(%s)", [org], actor=actor) is False
        assert app.val("SELECT api_key.may('organization', %s, 'read')", [org], actor=actor) is False
        assert app.val("SELECT api_key.creator_left(%s)", [secret_org["key_id"]], actor=actor) is None
        assert app.val("SELECT count(*) FROM api_key.members WHERE organization_id = %s", [org], actor=actor) == 0
    for gone in ("api_key.member_role(text,text)", "api_key.actor_may(text,text,text,text)"):
        assert app.val("SELECT to_regprocedure(%s) IS NULL", [gone]) is True
    # A member sees what the policies show it, and the functions say no more.
    assert app.val("SELECT api_key.is_member(%s)", [org], actor="ceo") is True
    assert app.val("SELECT count(*) FROM api_key.members WHERE organization_id = %s", [org], actor="ceo") == 1


def test_a_key_id_reveals_nothing(app, secret_org):
    """A key of another organization is indistinguishable from one that does not exist."""
    key_id = secret_org["key_id"]
    for sql in ["SELECT * FROM api_key_get(%s)", "SELECT * FROM api_key_update(%s, name => 'x')",
                "SELECT * FROM api_key_rotate(%s)"]:
        err = expect_error("P0002", app.rows, sql, [key_id], actor="stranger")
        assert secret_org["id"] not in str(err)
    assert app.val("SELECT api_key_revoke(%s)", [key_id], actor="stranger") is False


# --- Bookkeeping never fails or blocks someone else's transaction ------------------------------

def test_last_used_bookkeeping_never_fails_a_commit(su, service, new_client):
    """The review's reproduction: a session holds SHARE on api_key.keys (what CREATE INDEX
    takes); a superuser session with pending last_used_at writes sets lock_timeout and commits
    unrelated work. Nothing may wait, fail, or show a backtrace; the work must be committed."""
    user = uid("u")
    keys = [service.one("SELECT key FROM api_key_create(reference_id => %s)", [user])["key"] for _ in range(2)]
    holder = new_client("postgres")
    victim = new_client("postgres")
    table = uid("unrelated")
    victim.rows(f"CREATE TABLE public.{table} (x int)")
    victim.rows("SET api_key.last_used_precision = 2")
    for key in keys:
        assert victim.val("SELECT code FROM api_key_verify(%s)", [key]) == "VALID"
    time.sleep(1.5)
    with holder.conn.transaction():
        holder.conn.execute("LOCK TABLE api_key.keys IN SHARE MODE")
        started = time.monotonic()
        victim.rows("SET lock_timeout = '1s'")
        with victim.tx() as conn:
            conn.execute(f"INSERT INTO public.{table} VALUES (1)")
        assert time.monotonic() - started < 0.9, "a commit waited for the extension's bookkeeping"
    assert su.val(f"SELECT count(*) FROM public.{table}") == 1
    # Once the table is free again, the uses are written by a later commit.
    deadline = time.time() + 5
    while su.val("SELECT count(*) FROM api_key.keys WHERE reference_id = %s AND last_used_at IS NULL", [user]):
        assert time.time() < deadline, "last_used_at was never written after the lock was released"
        victim.rows("SELECT txid_current()")  # a transaction that writes anyway
        time.sleep(0.2)


def test_bookkeeping_stays_out_of_transactions_that_neither_verify_nor_write(su, service, new_client):
    """A read-only transaction of another client on a pooled connection must stay read-only (no
    transaction id, no WAL, no wait for a synchronous standby): pending uses wait for a
    transaction that verifies or writes."""
    user = uid("u")
    keys = [service.one("SELECT key FROM api_key_create(reference_id => %s)", [user])["key"] for _ in range(2)]
    pooled = new_client("postgres")  # the precision is a superuser's setting
    pooled.rows("SET api_key.last_used_precision = 2")
    assert pooled.val("SELECT code FROM api_key_verify(%s)", [keys[0]]) == "VALID"
    written = "SELECT count(last_used_at) FROM api_key.keys WHERE reference_id = %s"
    first = su.val(written, [user])  # the first use of a key may be written by its own commit
    time.sleep(1.2)  # a write is now due
    with pooled.tx() as conn:
        conn.execute("SELECT count(*) FROM pg_class")
        assert conn.execute("SELECT pg_current_xact_id_if_assigned() AS x").fetchone()["x"] is None
    assert su.val(written, [user]) == first
    # The next verifying transaction writes them.
    assert pooled.val("SELECT code FROM api_key_verify(%s)", [keys[1]]) == "VALID"
    assert su.val(written, [user]) == 2


def test_an_empty_actor_is_refused_not_the_service(service, new_client):
    """An empty user id from a request must not make a service role the service; RESET (or a
    setting that ended with its transaction, before or after the library was loaded) is."""
    expect_error("22023", service.rows, "SELECT api_key_config_update('default', '{}')", actor="")
    for first_use_loads_library in (True, False):
        fresh = new_client(SERVICE)
        with fresh.tx():
            fresh.conn.execute("SET LOCAL api_key.actor = 'u1'")
        if first_use_loads_library:
            fresh.rows("SELECT api_key.actor()")
        with fresh.tx():
            fresh.conn.execute("SET LOCAL api_key.actor = ''")
            with pytest.raises(psycopg.Error) as info:
                fresh.conn.execute("SELECT api_key_config_update('default', '{}')")
            assert info.value.sqlstate == "22023"
        assert fresh.val("SELECT api_key.actor()") is None
        fresh.rows("SELECT api_key_config_update('default', '{}')")  # the service again
        fresh.rows("SET api_key.actor = 'u1'")
        fresh.rows("RESET api_key.actor")
        fresh.rows("SELECT api_key_config_update('default', '{}')")


def test_rows_locked_by_others_are_skipped_not_waited_for(su, service, new_client):
    user = uid("u")
    made = service.one("SELECT id, key FROM api_key_create(reference_id => %s)", [user])
    holder, victim = new_client("postgres"), new_client("postgres")
    victim.rows("SET api_key.last_used_precision = 1")
    victim.rows("SET statement_timeout = '500ms'")
    assert victim.val("SELECT code FROM api_key_verify(%s)", [made["key"]]) == "VALID"
    time.sleep(1.1)
    with holder.conn.transaction():
        holder.conn.execute("SELECT 1 FROM api_key.keys WHERE id = %s FOR UPDATE", [made["id"]])
        started = time.monotonic()
        for _ in range(3):
            victim.rows("SELECT txid_current()")
        assert time.monotonic() - started < 0.4


def test_no_error_of_the_extension_carries_a_backtrace_or_internal_sql(app):
    """A sample of refusals and mistakes: messages are for people."""
    failures = []
    for sql, params in [
        ("SELECT * FROM api_key_create(reference_id => NULL)", None),
        ("SELECT * FROM api_key_verify('x', permissions => '{\"files\": [1e400]}')", None),
        ("SELECT * FROM api_key_create(reference_id => 'u', reference_type => 'nope')", None),
        ("SELECT * FROM api_key_rotate(gen_random_uuid(), grace => '300000 years')", None),
        ("SELECT api_key_config_delete(NULL)", None),
    ]:
        with pytest.raises(psycopg.Error) as info:
            app.rows(sql, params, actor="u")
        failures.append(info.value)
    for err in failures:
        d = err.diag
        text = "\n".join(str(x) for x in (d.message_primary, d.message_detail, d.message_hint, d.context) if x)
        assert err.sqlstate != "XX000", text
        assert not re.search(r"backtrace|\.rs:\d+|panicked|SQL statement|PL/pgSQL function", text), text


# --- What the review of the fix found, each kept as a test of its kind ------------------------

@pytest.fixture
def registered(attacker, su):
    """Registers an authorizer (by a superuser) and a key of its type; yields a function."""
    made = []

    def register(body: str, answer: str = "true"):
        c, schema = attacker["client"], attacker["schema"]
        fn = authorizer(c, schema, body, answer=answer)
        kind = "k_" + uid("t")[2:12]
        su.rows("SELECT api_key_register_reference_type(%s, %s::regprocedure)", [kind, f"{fn}(text,text,text)"])
        key = su.one("SELECT id, key FROM api_key_create(reference_type => %s, reference_id => 'p1')", [kind])
        made.append(kind)
        return {"kind": kind, "id": key["id"], "key": key["key"]}

    yield register
    for kind in made:
        su.rows("DELETE FROM api_key.keys WHERE reference_type = %s", [kind])
        su.rows("DELETE FROM api_key.reference_types WHERE reference_type = %s", [kind])


@pytest.mark.parametrize("errcode", ["40001", "40P01", "57014", "XX000", "53200"])
def test_an_error_an_authorizer_raises_never_breaks_other_readers(registered, app, errcode):
    """Forged "retry" or "cancel" SQLSTATEs are refusals like any error: reading api_key.keys
    keeps working for every actor, and management calls get 42501."""
    made = registered(f"RAISE EXCEPTION 'no' USING ERRCODE = '{errcode}';")
    assert app.val("SELECT count(*) FROM api_key.keys WHERE id = %s", [made["id"]], actor="u1") == 0
    expect_error("42501", app.rows, "SELECT * FROM api_key_list_for_reference(reference_type => %s, "
                 "reference_id => 'p1')", [made["kind"]], actor="u1")


def test_a_genuine_statement_timeout_in_an_authorizer_still_cancels(registered, app, new_client):
    made = registered("PERFORM pg_catalog.pg_sleep(2);")
    c = new_client(APP)
    c.rows("SET statement_timeout = '200ms'")
    started = time.monotonic()
    expect_error("57014", c.rows, "SELECT * FROM api_key_list_for_reference(reference_type => %s, "
                 "reference_id => 'p1')", [made["kind"]], actor="u1")
    assert time.monotonic() - started < 1.5


def test_application_code_does_not_see_or_replace_the_transactions_key(registered, app, service, new_client):
    """Inside an authorizer the binding reads as NULL, and an authentication it makes is undone."""
    other = service.one("SELECT key FROM api_key_create(reference_id => 'someone_else')")["key"]
    made = registered(f"""IF @extschema@.api_key_current_reference_id() IS NOT NULL THEN
                              RAISE EXCEPTION 'saw the binding'; END IF;
                          PERFORM @extschema@.api_key_authenticate('{other}');""".replace("@extschema@", "public"))
    mine = service.one("SELECT key FROM api_key_create(reference_id => 'u_bound')")["key"]
    c = new_client(APP)
    with c.tx(actor="u1") as conn:
        conn.execute("SELECT api_key_authenticate(%s)", [mine])
        rows = conn.execute("SELECT count(*) AS n FROM api_key.keys WHERE id = %s", [made["id"]]).fetchone()
        assert rows["n"] == 1, "the authorizer did not answer yes: it saw the binding"
        assert conn.execute("SELECT api_key_current_reference_id() AS r").fetchone()["r"] == "u_bound"


def test_policy_helpers_refuse_what_management_refuses(registered, app, attacker):
    """An id no management call would accept never reaches an authorizer."""
    notices = attacker["notices"]
    made = registered(f"RAISE NOTICE 'api_key_trap authorizer ran as %', current_user;")
    for bad in ["x" * 100_002, "p1\n", "\x01", ""]:
        assert app.val("SELECT api_key.may(%s, %s, 'read')", [made["kind"], bad], actor="u1") is False
        assert app.val("SELECT api_key.is_member(%s)", [bad], actor="u1") is False
    assert notices.traps() == []


def test_rolling_back_a_reauthentication_gives_the_earlier_key_back(app, service, new_client):
    a = service.one("SELECT key FROM api_key_create(reference_id => 'tenant_a')")["key"]
    b = service.one("SELECT key FROM api_key_create(reference_id => 'tenant_b')")["key"]
    c = new_client(APP)
    with c.tx() as conn:
        conn.execute("SELECT api_key_authenticate(%s)", [a])
        conn.execute("SAVEPOINT s")
        conn.execute("SELECT api_key_authenticate(%s)", [b])
        assert conn.execute("SELECT api_key_current_reference_id() AS r").fetchone()["r"] == "tenant_b"
        conn.execute("ROLLBACK TO SAVEPOINT s")
        assert conn.execute("SELECT api_key_current_reference_id() AS r").fetchone()["r"] == "tenant_a"
        conn.execute("SAVEPOINT t")
        conn.execute("SELECT api_key_authenticate(%s)", [b])
        conn.execute("RELEASE SAVEPOINT t")
        assert conn.execute("SELECT api_key_current_reference_id() AS r").fetchone()["r"] == "tenant_b"


# --- Installing: roles someone else prepared ----------------------------------------------------

@pytest.mark.parametrize("prepare, undo", [
    ("ALTER ROLE api_key_admin LOGIN", "ALTER ROLE api_key_admin NOLOGIN"),
    ("ALTER ROLE api_key_user BYPASSRLS", "ALTER ROLE api_key_user NOBYPASSRLS"),
    ("GRANT api_key_admin TO {squatter} WITH ADMIN OPTION", "REVOKE api_key_admin FROM {squatter}"),
    ("CREATE FUNCTION public.{squatter}() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1';"
     "ALTER FUNCTION public.{squatter}() OWNER TO api_key_admin", "DROP FUNCTION public.{squatter}()"),
], ids=["can log in", "has an attribute", "a non-superuser may grant it", "owns a function"])
def test_installing_refuses_roles_it_would_not_have_made(prepare, undo):
    """The roles are cluster-wide, so a second database adopts them; but not a role prepared by
    someone else (PostgreSQL 16 gives a CREATEROLE role ADMIN OPTION on what it creates), who
    could then make anyone the service."""
    squatter = uid("squatter")
    db = uid("install")
    with connect("postgres", "postgres") as admin:
        admin.execute(f'CREATE ROLE "{squatter}" LOGIN')
        admin.execute(f'CREATE DATABASE "{db}"')
        admin.execute(prepare.format(squatter=squatter))
        try:
            with connect("postgres", db) as fresh:
                err = expect_error("55000", fresh.execute, "CREATE EXTENSION api_key")
                assert "already exists and" in err.diag.message_primary
                assert fresh.execute("SELECT count(*) AS n FROM pg_extension WHERE extname = 'api_key'"
                                     ).fetchone()["n"] == 0
        finally:
            admin.execute(undo.format(squatter=squatter))
        # As the extension makes them, they are adopted.
        with connect("postgres", db) as fresh:
            fresh.execute("CREATE EXTENSION api_key")
        admin.execute(f'DROP DATABASE "{db}" WITH (FORCE)')
        admin.execute(f'DROP ROLE "{squatter}"')


# --- Policies: answers are remembered per snapshot, not longer ----------------------------------

def test_a_committed_removal_is_seen_by_the_next_statement(su, service, new_client):
    """Two READ COMMITTED snapshots can share their bounds and command id yet differ: a
    transaction inside the bounds committed in between. A member removed that way must lose
    access at the next statement, as api_key_get does."""
    org = uid("org")
    su.rows("INSERT INTO api_key.organizations (id) VALUES (%s)", [org])
    su.rows("INSERT INTO api_key.members VALUES (%s, 'alice', 'admin')", [org])
    made = create(service, reference_type="organization", reference_id=org)
    old = connect("postgres", autocommit=False)  # holds the snapshots' xmin
    removal = connect(SERVICE, autocommit=False)
    later = connect("postgres", autocommit=False)
    alice = connect(APP, autocommit=False)
    try:
        old.execute("SELECT txid_current()")
        removal.execute("DELETE FROM api_key.members WHERE organization_id = %s AND user_id = 'alice'", [org])
        later.execute("SELECT txid_current()")
        later.commit()  # completes after the removal's xid was assigned: xmax moves past it
        alice.execute("SELECT set_config('api_key.actor', 'alice', true)")
        seen = "SELECT count(*) AS n FROM api_key.keys WHERE id = %s"
        assert alice.execute(seen, [made["id"]]).fetchone()["n"] == 1
        removal.commit()
        assert alice.execute(seen, [made["id"]]).fetchone()["n"] == 0
        assert alice.execute("SELECT api_key.is_member(%s) AS m", [org]).fetchone()["m"] is False
    finally:
        for c in (alice, old, removal, later):
            c.rollback()
            c.close()


def test_roles_that_only_gained_memberships_are_adopted():
    """Being a member of another role only gives the extension's role more: installing elsewhere
    must not be refused for it (a CREATEROLE role can do that to any role)."""
    other = uid("other")
    db = uid("install")
    with connect("postgres", "postgres") as admin:
        admin.execute(f'CREATE ROLE "{other}" ROLE api_key_admin')
        admin.execute(f'CREATE DATABASE "{db}"')
        try:
            with connect("postgres", db) as fresh:
                fresh.execute("CREATE EXTENSION api_key")
        finally:
            admin.execute(f'DROP DATABASE "{db}" WITH (FORCE)')
            admin.execute(f'DROP ROLE "{other}"')


# --- Invalid actors are nobody, also to the policies --------------------------------------------

@pytest.mark.parametrize("actor", ["", "x" * 300, "bad\x01"], ids=["empty", "too long", "control character"])
def test_an_invalid_actor_is_not_the_service_to_the_policies(service, su, actor):
    """A service role whose actor came out invalid writes no membership and reads no audit log."""
    org = uid("org")
    su.rows("INSERT INTO api_key.organizations (id) VALUES (%s)", [org])
    expect_error("42501", service.rows, "INSERT INTO api_key.members VALUES (%s, 'mallory', 'owner')", [org],
                 actor=actor)
    expect_error("42501", service.rows, "INSERT INTO api_key.role_permissions VALUES (%s, 'member', 'create')",
                 [org], actor=actor)
    assert service.rows("DELETE FROM api_key.organizations WHERE id = %s RETURNING id", [org], actor=actor) == []
    assert service.rows("SELECT 1 FROM api_key.audit_log LIMIT 1", actor=actor) == []
    assert service.val("SELECT api_key.is_service()", actor=actor) is False
    assert service.val("SELECT api_key.is_service()") is True
    service.rows("INSERT INTO api_key.members VALUES (%s, 'mallory', 'owner')", [org])  # the service may


# --- Bookkeeping never waits for a standby ------------------------------------------------------

def test_bookkeeping_never_waits_for_a_synchronous_standby(su, service, new_client):
    """With a synchronous standby that is down, a commit whose only write is the last_used_at
    flush, and a backend's exit with uses pending, must not wait for it."""
    user = uid("u")
    keys = [service.one("SELECT key FROM api_key_create(reference_id => %s)", [user])["key"] for _ in range(3)]
    client = new_client("postgres")
    client.rows("SET api_key.last_used_precision = 2")
    client.rows("SET statement_timeout = '5s'")
    pid = client.val("SELECT pg_backend_pid()")
    assert client.val("SELECT code FROM api_key_verify(%s)", [keys[0]]) == "VALID"
    su.conn.execute("ALTER SYSTEM SET synchronous_standby_names = 'api_key_standby_that_is_down'")
    su.conn.execute("SELECT pg_reload_conf()")
    try:
        time.sleep(1.2)  # a flush is due
        started = time.monotonic()
        assert client.val("SELECT code FROM api_key_verify(%s)", [keys[1]]) == "VALID"  # commits the flush
        assert time.monotonic() - started < 2, "the flush's commit waited for the standby"
        assert su.val("SELECT count(last_used_at) FROM api_key.keys WHERE reference_id = %s", [user]) == 2
        with client.tx() as conn:
            conn.execute("SET TRANSACTION READ ONLY")
            conn.execute("SELECT code FROM api_key_verify(%s)", [keys[2]])  # pending until exit
        client.close()
        deadline = time.monotonic() + 3
        while su.val("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid]):
            assert time.monotonic() < deadline, "the backend's exit waits for the standby"
            time.sleep(0.1)
        assert su.val("SELECT count(last_used_at) FROM api_key.keys WHERE reference_id = %s", [user]) == 3
    finally:
        su.conn.execute("ALTER SYSTEM RESET synchronous_standby_names")
        su.conn.execute("SELECT pg_reload_conf()")


# --- An authorizer may read a setting: answers last one statement -------------------------------

def test_an_authorizers_answer_lasts_one_statement(su, service, app):
    fn = uid("by_setting")
    service.rows(f"CREATE FUNCTION svc.{fn}(actor text, reference_id text, action text) RETURNS boolean "
                 "LANGUAGE sql STABLE AS $$ SELECT current_setting('app.project_access', true) = 'on' $$")
    service.rows(f"GRANT EXECUTE ON FUNCTION svc.{fn}(text, text, text) TO PUBLIC")
    kind = uid("t").replace("-", "_")
    service.rows("SELECT api_key_register_reference_type(%s, %s::regprocedure)", [kind, f"svc.{fn}(text,text,text)"])
    made = create(service, reference_type=kind, reference_id="p1")
    seen = "SELECT count(*) AS n FROM api_key.keys WHERE id = %s"
    with app.tx(actor="bob") as conn:
        conn.execute("SET LOCAL app.project_access = 'on'")
        assert conn.execute(seen, [made["id"]]).fetchone()["n"] == 1
        conn.execute("SET LOCAL app.project_access = 'off'")
        assert conn.execute(seen, [made["id"]]).fetchone()["n"] == 0
        with pytest.raises(psycopg.Error) as info:
            conn.execute("SELECT * FROM api_key_get(%s)", [made["id"]])
        assert info.value.sqlstate == "P0002"
