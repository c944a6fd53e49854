"""Row-level security as an application role sees it: SELECT * FROM api_key.keys shows exactly
the keys the actor may read, no hash anywhere it can reach, audit entries only where the actor
may update."""

from __future__ import annotations

import pytest

from helpers import APP, connect, create, expect_error, uid


@pytest.fixture(scope="module")
def world(service, su, app):
    """Actor `a`: owner of org1, member of org2, not in org3, 'writer' (create only) in org4."""
    a, b = uid("a"), uid("b")
    orgs = {k: uid(k) for k in ["org1", "org2", "org3", "org4"]}
    for o in orgs.values():
        service.rows("INSERT INTO api_key.organizations (id) VALUES (%s)", [o])
    for org, user, role in [("org1", a, "owner"), ("org2", a, "member"), ("org3", b, "owner"), ("org4", a, "writer"),
                            ("org2", b, "admin")]:
        service.rows("INSERT INTO api_key.members (organization_id, user_id, role) VALUES (%s, %s, %s)",
                     [orgs[org], user, role])
    service.rows("INSERT INTO api_key.role_permissions (organization_id, role, permission) VALUES (%s, 'writer', 'create')",
                 [orgs["org4"]])
    keys = {
        "a_user_1": create(app, actor=a, reference_id=a),
        "a_user_2": create(app, actor=a, reference_id=a),
        "b_user": create(app, actor=b, reference_id=b),
        "org1_1": create(app, actor=a, reference_id=orgs["org1"], reference_type="organization"),
        "org1_2": create(service, reference_id=orgs["org1"], reference_type="organization"),
        "org2": create(service, reference_id=orgs["org2"], reference_type="organization"),
        "org3": create(app, actor=b, reference_id=orgs["org3"], reference_type="organization"),
        "org4": create(app, actor=a, reference_id=orgs["org4"], reference_type="organization"),
    }
    # Some audit entries besides the creations.
    app.rows("SELECT 1 FROM api_key_update(id => %s, name => 'x')", [keys["org1_1"]["id"]], actor=a)
    app.rows("SELECT 1 FROM api_key_update(id => %s, name => 'y')", [keys["org2"]["id"]], actor=b)
    return {"a": a, "b": b, "orgs": orgs, "keys": keys}


def ids(world, *names):
    return {world["keys"][n]["id"] for n in names}


def test_actor_sees_exactly_the_keys_it_may_read(world, app):
    seen = {r["id"] for r in app.rows("SELECT * FROM api_key.keys", actor=world["a"])}
    # org4: a may create there but not read, so a does not see the key it created itself.
    assert seen == ids(world, "a_user_1", "a_user_2", "org1_1", "org1_2", "org2")
    seen_b = {r["id"] for r in app.rows("SELECT * FROM api_key.keys", actor=world["b"])}
    assert seen_b == ids(world, "b_user", "org2", "org3")
    assert app.rows("SELECT * FROM api_key.keys", actor=uid("stranger")) == []


def test_without_actor_the_app_sees_nothing_and_the_service_sees_all(world, app, service, su):
    assert app.rows("SELECT * FROM api_key.keys") == []
    assert app.rows("SELECT * FROM api_key.keys", actor="") == []
    assert service.val("SELECT count(*) FROM api_key.keys") == su.val("SELECT count(*) FROM api_key.keys")
    # A service role that sets an actor acts as that actor.
    seen = {r["id"] for r in service.rows("SELECT id FROM api_key.keys", actor=world["b"])}
    assert seen == ids(world, "b_user", "org2", "org3")


def test_membership_changes_apply_at_once(world, app, service):
    a, o1 = world["a"], world["orgs"]["org1"]
    try:
        service.rows("DELETE FROM api_key.members WHERE organization_id = %s AND user_id = %s", [o1, a])
        seen = {r["id"] for r in app.rows("SELECT id FROM api_key.keys", actor=a)}
        assert seen == ids(world, "a_user_1", "a_user_2", "org2")
    finally:
        service.rows("INSERT INTO api_key.members (organization_id, user_id, role) VALUES (%s, %s, 'owner') "
                     "ON CONFLICT (organization_id, user_id) DO UPDATE SET role = 'owner'", [o1, a])
    assert len({r["id"] for r in app.rows("SELECT id FROM api_key.keys", actor=a)}) == 5


def test_no_hash_column_and_secrets_table_unreadable(world, app, service, nobody):
    cols = [r["attname"] for r in app.rows(
        "SELECT attname FROM pg_attribute WHERE attrelid = 'api_key.keys'::regclass AND attnum > 0 AND NOT attisdropped")]
    assert cols and not {"lookup", "hash", "key_hash", "argon2_hash", "secret", "key"} & set(cols)
    row = app.rows("SELECT * FROM api_key.keys LIMIT 1", actor=world["a"])[0]
    assert not any(isinstance(v, (bytes, bytearray, memoryview)) for v in row.values())
    for client, actor in [(app, world["a"]), (app, None), (service, None), (nobody, None)]:
        expect_error("42501", client.rows, "SELECT * FROM api_key.key_secrets", actor=actor)
        expect_error("42501", client.rows, "SELECT count(*) FROM api_key.key_secrets", actor=actor)
        expect_error("42501", client.rows, "SELECT * FROM api_key.rate_limit_windows", actor=actor)
    expect_error("42501", app.rows, "SELECT k.id FROM api_key.keys k JOIN api_key.key_secrets s ON s.key_id = k.id",
                 actor=world["a"])


def test_hidden_rows_do_not_leak_through_a_chatty_function(world, app):
    """RLS conditions run before the caller's own (non-leakproof) functions."""
    fn = uid("leak")
    app.rows(f"CREATE FUNCTION app.{fn}(t text) RETURNS boolean LANGUAGE plpgsql COST 0.0001 AS "
             f"$$ BEGIN RAISE NOTICE 'saw %', t; RETURN true; END $$")
    notices = []

    def handler(d):
        notices.append(d.message_primary)

    app.conn.add_notice_handler(handler)
    try:
        rows = app.rows(f"SELECT id FROM api_key.keys WHERE app.{fn}(reference_id)", actor=world["a"])
    finally:
        app.conn.remove_notice_handler(handler)
    assert notices, "the function was not called"
    assert {r["id"] for r in rows} == ids(world, "a_user_1", "a_user_2", "org1_1", "org1_2", "org2")
    leaked = [n for n in notices if world["b"] in n or world["orgs"]["org3"] in n or world["orgs"]["org4"] in n]
    assert leaked == []


def test_membership_tables_visible_to_members(world, app):
    a = world["a"]
    orgs = {r["id"] for r in app.rows("SELECT id FROM api_key.organizations", actor=a)}
    assert orgs == {world["orgs"]["org1"], world["orgs"]["org2"], world["orgs"]["org4"]}
    members = {(r["organization_id"], r["user_id"]) for r in app.rows("SELECT * FROM api_key.members", actor=a)}
    assert (world["orgs"]["org3"], world["b"]) not in members
    assert (world["orgs"]["org2"], world["b"]) in members
    assert app.rows("SELECT * FROM api_key.members") == []
    assert {r["id"] for r in app.rows("SELECT id FROM api_key.configs")} >= {"default"}


def test_audit_log_visibility(world, app, service, su):
    a, b = world["a"], world["b"]

    def audit_keys(actor, client=app):
        # Built-in reference types only: a custom type registered by another test may let every
        # actor update its keys (its authorizer decides), and so read their audit entries.
        return {r["key_id"] for r in client.rows("SELECT key_id FROM api_key.audit_log "
                                                  "WHERE reference_type IN ('user', 'organization')", actor=actor)}

    mine = ids(world, "a_user_1", "a_user_2", "org1_1", "org1_2")
    # a: own user keys and org1 (owner: may update); not org2 (member: read only), org3, org4.
    assert audit_keys(a) == mine
    assert audit_keys(b) == ids(world, "b_user", "org2", "org3")
    assert audit_keys(None) == set()
    assert service.val("SELECT count(*) FROM api_key.audit_log") == su.val("SELECT count(*) FROM api_key.audit_log")
    entry = app.one("SELECT actor, database_role, action, detail FROM api_key.audit_log "
                    "WHERE key_id = %s AND action = 'update'", [world["keys"]["org1_1"]["id"]], actor=a)
    assert entry["actor"] == a and entry["database_role"] == "akt_app"
    assert entry["detail"]["name"]["to"] == "x"
    # Permissions are granted by the service; the owner reads the entry all the same.
    service.rows("SELECT 1 FROM api_key_update(id => %s, permissions => '{\"files\": [\"read\"]}')",
                 [world["keys"]["a_user_1"]["id"]])
    change = app.one("SELECT actor, detail FROM api_key.audit_log WHERE key_id = %s AND action = 'update'",
                     [world["keys"]["a_user_1"]["id"]], actor=a)
    assert change["actor"] is None
    assert change["detail"]["permissions"] == {"from": None, "to": {"files": ["read"]}}
    created = app.one("SELECT actor, action FROM api_key.audit_log WHERE key_id = %s AND action = 'create'",
                      [world["keys"]["org1_2"]["id"]], actor=a)
    assert created == {"actor": None, "action": "create"}


def test_read_answers_are_remembered_per_statement_only(service, su):
    """may_read remembers its answer per reference for one statement; the next statement of the
    same transaction sees a membership change."""
    o, m = uid("org"), uid("m")
    service.rows("INSERT INTO api_key.organizations (id) VALUES (%s)", [o])
    service.rows("INSERT INTO api_key.members (organization_id, user_id, role) VALUES (%s, %s, 'member')", [o, m])
    for _ in range(3):
        create(service, reference_id=o, reference_type="organization")
    with connect(APP, autocommit=False) as conn:
        conn.execute("SELECT set_config('api_key.actor', %s, true)", [m])
        seen = "SELECT count(*) AS n FROM api_key.keys WHERE reference_id = %s"
        assert conn.execute(seen, [o]).fetchone()["n"] == 3
        su.rows("DELETE FROM api_key.members WHERE organization_id = %s AND user_id = %s", [o, m])
        assert conn.execute(seen, [o]).fetchone()["n"] == 0
        conn.rollback()
