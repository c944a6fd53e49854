"""Who may do what: actor kinds x operations, for organization keys and user keys, with
membership from api_key.members, from an application's own table (better-auth style), and
custom reference types with an authorizer function."""

from __future__ import annotations

import psycopg
import pytest

from helpers import APP, NOBODY, SERVICE, Client, create, error_text, expect_error, uid, verify

OPS = ["create", "get", "list", "update", "rotate", "revoke", "select"]
PERMISSION = {"create": "create", "get": "read", "list": "read", "select": "read", "update": "update",
              "rotate": "update", "revoke": "delete"}
ALL_OK = dict.fromkeys(OPS, "ok")
# No actor (an application role acting for nobody): refused before anything is looked at.
ALL_DENIED = {**dict.fromkeys(OPS, "42501"), "select": "hidden"}
# An actor that may not read the reference's keys: they do not exist for it. Calls naming a key
# answer P0002 exactly as for an unknown id (revoke: false, nothing revoked); calls naming the
# reference are refused (42501).
NOT_READABLE = {"create": "42501", "get": "P0002", "list": "42501", "update": "P0002", "rotate": "P0002",
                "revoke": "false", "select": "hidden"}

ORG_MATRIX = {
    "owner": ALL_OK,
    "admin": ALL_OK,
    "member": {"create": "42501", "get": "ok", "list": "ok", "update": "42501", "rotate": "42501", "revoke": "42501",
               "select": "ok"},
    "custom": {"create": "ok", "get": "ok", "list": "ok", "update": "42501", "rotate": "42501", "revoke": "42501",
               "select": "ok"},
    "multi_role": ALL_OK,          # role text "member, admin": the admin part grants everything
    "nonmember": NOT_READABLE,
    "service": ALL_OK,
    "no_actor": ALL_DENIED,
}

USER_MATRIX = {
    "self": ALL_OK,
    "other_user": NOT_READABLE,
    "service": ALL_OK,
    "no_actor": ALL_DENIED,
}


def run_op(op: str, client: Client, actor: str | None, ref_type: str, ref_id: str, key_id) -> object:
    """Run one operation; return something to check on success."""
    if op == "create":
        row = client.one("SELECT * FROM api_key_create(reference_id => %s, reference_type => %s, name => 'made')",
                         [ref_id, ref_type], actor=actor)
        assert (row["reference_type"], row["reference_id"], row["name"]) == (ref_type, ref_id, "made")
        return row
    if op == "get":
        row = client.one("SELECT * FROM api_key_get(%s)", [key_id], actor=actor)
        assert row["id"] == key_id
        return row
    if op == "list":
        rows = client.rows("SELECT id FROM api_key_list_for_reference(reference_id => %s, reference_type => %s)",
                           [ref_id, ref_type], actor=actor)
        assert key_id in [r["id"] for r in rows]
        return rows
    if op == "update":
        row = client.one("SELECT * FROM api_key_update(id => %s, name => 'renamed', metadata => '{\"by\": \"matrix\"}')",
                         [key_id], actor=actor)
        assert row["name"] == "renamed" and row["metadata"] == {"by": "matrix"}
        return row
    if op == "rotate":
        row = client.one("SELECT * FROM api_key_rotate(id => %s)", [key_id], actor=actor)
        assert row["id"] == key_id and row["key"]
        return row
    if op == "revoke":
        revoked = client.val("SELECT api_key_revoke(%s)", [key_id], actor=actor)
        assert revoked is True, revoked
        return True
    if op == "select":
        return client.rows("SELECT id, reference_type, reference_id FROM api_key.keys WHERE id = %s", [key_id],
                           actor=actor)
    raise AssertionError(op)


def check_cell(op, expected, client, actor, ref_type, ref_id, su, denial_words=()):
    key = create(su, reference_id=ref_id, reference_type=ref_type)
    if op == "select":
        rows = run_op(op, client, actor, ref_type, ref_id, key["id"])
        assert len(rows) == (1 if expected == "ok" else 0), rows
        return
    if expected == "ok":
        run_op(op, client, actor, ref_type, ref_id, key["id"])
        if op == "revoke":
            assert su.val("SELECT count(*) FROM api_key.keys WHERE id = %s", [key["id"]]) == 0
            assert verify(client, key["key"])["code"] == "NOT_FOUND"
        elif op == "rotate":
            assert verify(client, key["key"])["code"] == "EXPIRED"
        else:
            assert verify(client, key["key"])["code"] == "VALID"
        return
    before = su.one("SELECT * FROM api_key.keys WHERE id = %s", [key["id"]])
    audit = su.val("SELECT count(*) FROM api_key.audit_log")
    if expected == "false":
        # Nothing to revoke, as far as this caller can tell: no error, and nothing revoked.
        assert op == "revoke"
        assert client.val("SELECT api_key_revoke(%s)", [key["id"]], actor=actor) is False
    else:
        err = expect_error(expected, run_op, op, client, actor, ref_type, ref_id, key["id"], secrets=(key["key"],))
        msg = err.diag.message_primary
        if expected == "P0002":
            # Exactly what an unknown id answers: the id reveals nothing, not even the owner.
            assert msg == f"API key {key['id']} does not exist", msg
            assert ref_id not in error_text(err)
        else:
            for w in denial_words:
                assert w.format(perm=PERMISSION[op]) in msg, f"{w!r} not in {msg!r}"
    assert su.val("SELECT count(*) FROM api_key.audit_log") == audit, "a refused call wrote an audit entry"
    assert su.one("SELECT * FROM api_key.keys WHERE id = %s", [key["id"]]) == before, "a refused call changed the key"
    assert verify(client, key["key"])["code"] == "VALID"


@pytest.fixture(scope="module")
def org(service):
    """An organization in api_key.members, written by the service with plain SQL."""
    o = uid("org")
    other = uid("org")
    people = {kind: uid(kind) for kind in ["owner", "admin", "member", "custom", "multi_role", "nonmember"]}
    service.rows("INSERT INTO api_key.organizations (id, name) VALUES (%s, 'Matrix'), (%s, 'Elsewhere')", [o, other])
    for kind, role in [("owner", "owner"), ("admin", "admin"), ("member", "member"), ("custom", "keymaker"),
                       ("multi_role", "member, admin")]:
        service.rows("INSERT INTO api_key.members (organization_id, user_id, role) VALUES (%s, %s, %s)",
                     [o, people[kind], role])
    service.rows("INSERT INTO api_key.members (organization_id, user_id, role) VALUES (%s, %s, 'owner')",
                 [other, people["nonmember"]])
    # An organization-specific role: may create and read keys, nothing else.
    service.rows("INSERT INTO api_key.role_permissions (organization_id, role, permission) VALUES "
                 "(%s, 'keymaker', 'create'), (%s, 'keymaker', 'read')", [o, o])
    return {"id": o, "people": people}


ORG_CELLS = [(kind, op, exp) for kind, row in ORG_MATRIX.items() for op, exp in row.items()]


@pytest.mark.parametrize("kind,op,expected", ORG_CELLS, ids=[f"{k}-{o}" for k, o, _ in ORG_CELLS])
def test_org_key_matrix(kind, op, expected, org, app, service, su):
    if kind == "service":
        client, actor = service, None
    elif kind == "no_actor":
        client, actor = app, None
    else:
        client, actor = app, org["people"][kind]
    words = ()
    if expected == "42501":
        words = {"nonmember": ("not a member",), "no_actor": ("no actor",),
                 "member": ("api_key:{perm}",), "custom": ("api_key:{perm}",)}.get(kind, ())
    check_cell(op, expected, client, actor, "organization", org["id"], su, words)


USER_CELLS = [(kind, op, exp) for kind, row in USER_MATRIX.items() for op, exp in row.items()]


@pytest.mark.parametrize("kind,op,expected", USER_CELLS, ids=[f"{k}-{o}" for k, o, _ in USER_CELLS])
def test_user_key_matrix(kind, op, expected, app, service, su):
    owner = uid("u")
    client, actor = {"self": (app, owner), "other_user": (app, uid("u")), "service": (service, None),
                     "no_actor": (app, None)}[kind]
    check_cell(op, expected, client, actor, "user", owner, su)


def test_verify_needs_no_actor_but_needs_the_grant(app, service, su, nobody, org):
    key = create(su, reference_id=org["id"], reference_type="organization")
    for client, actor in [(app, None), (app, org["people"]["nonmember"]), (app, "anyone"), (service, None), (su, None)]:
        r = verify(client, key["key"], actor=actor)
        assert (r["code"], r["reference_type"], r["reference_id"]) == ("VALID", "organization", org["id"])
    expect_error("42501", nobody.rows, "SELECT * FROM api_key_verify(%s)", [key["key"]], secrets=(key["key"],))
    expect_error("42501", nobody.rows, "SELECT * FROM api_key_authenticate(%s)", [key["key"]], secrets=(key["key"],))
    expect_error("42501", nobody.rows, "SELECT * FROM api_key_create(reference_id => 'x')")
    expect_error("42501", nobody.rows, "SELECT * FROM api_key.keys")
    # The helpers are harmless and public: no binding, so NULL/false.
    row = nobody.one("SELECT api_key_current_key_id() AS k, api_key_current_reference_id() AS r, "
                     "api_key_has_permission('a', 'b') AS p")
    assert row == {"k": None, "r": None, "p": False}


DML = {
    "insert": "INSERT INTO api_key.keys (config_id, reference_type, reference_id, prefix, start) "
              "VALUES ('default', 'user', 'mallory', 'sk_', 'sk_xxxxxx')",
    "update": "UPDATE api_key.keys SET remaining = NULL, enabled = true",
    "delete": "DELETE FROM api_key.keys",
    "secrets-select": "SELECT * FROM api_key.key_secrets",
    "secrets-insert": "INSERT INTO api_key.key_secrets (lookup, key_id, algorithm) SELECT '\\x00', id, 'sha256' "
                      "FROM api_key.keys LIMIT 1",
    "windows-select": "SELECT * FROM api_key.rate_limit_windows",
    "windows-delete": "DELETE FROM api_key.rate_limit_windows",
    "configs-update": "UPDATE api_key.configs SET prefix = 'x_'",
    "audit-delete": "DELETE FROM api_key.audit_log",
    "audit-insert": "INSERT INTO api_key.audit_log (database_role, action) VALUES ('x', 'forged')",
    "reference-types-insert": "INSERT INTO api_key.reference_types VALUES ('evil', 'pg_catalog.texteq(text,text)')",
    "membership-source-insert": "INSERT INTO api_key.membership_source VALUES (true, 'api_key.members', 'a', 'b', 'c')",
    # 0.1.0's internal workers took a caller token; forging one (or passing one's own) must get
    # nowhere. In 0.2.0 they are gone: a call to any of them fails, for everyone.
    "worker-forged-token": "SELECT api_key.create_key(12345, 'victim', 'user', NULL, NULL, NULL, NULL, NULL, NULL, "
                           "NULL, NULL, NULL, NULL, NULL, NULL)",
    "worker-own-token": "SELECT api_key.create_key(api_key.caller_token(), 'victim', 'user', NULL, NULL, NULL, NULL, "
                        "NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
    "worker-update": "SELECT api_key.update_key(12345, (SELECT id FROM api_key.keys LIMIT 1), 'x', true, NULL, NULL, "
                     "NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
    "new-secret": "SELECT * FROM api_key.new_secret('sk_', 32, 'sha256')",
    "audit-function": "SELECT api_key.audit(1, 'forged', NULL, NULL, NULL)",
    "member-role": "SELECT api_key.member_role('org', 'victim')",
    "actor-may": "SELECT api_key.actor_may('victim', 'user', 'victim', 'delete')",
}
# Calls of 0.1.0's internals: a function that does not exist is 42883, one that may not be run 42501.
INTERNALS = {"worker-forged-token", "worker-own-token", "worker-update", "new-secret", "audit-function",
             "member-role", "actor-may"}


@pytest.mark.parametrize("who", ["app_actor", "app", "service", "nobody"])
@pytest.mark.parametrize("what", list(DML))
def test_direct_table_writes_and_internals_are_denied(who, what, app, service, nobody, su):
    client, actor = {"app_actor": (app, "mallory"), "app": (app, None), "service": (service, None),
                     "nobody": (nobody, None)}[who]
    before = su.one("SELECT (SELECT count(*) FROM api_key.keys) k, (SELECT count(*) FROM api_key.key_secrets) s, "
                    "(SELECT count(*) FROM api_key.audit_log) a, (SELECT string_agg(prefix, ',') FROM api_key.configs) c")
    expect_error({"42501", "42883"} if what in INTERNALS else "42501", client.rows, DML[what], actor=actor)
    assert su.one("SELECT (SELECT count(*) FROM api_key.keys) k, (SELECT count(*) FROM api_key.key_secrets) s, "
                  "(SELECT count(*) FROM api_key.audit_log) a, (SELECT string_agg(prefix, ',') FROM api_key.configs) c"
                  ) == before


# 0.1.0's internal functions, which took a caller token or answered for any actor.
GONE_INTERNALS = ["caller_token", "caller_role", "caller_is_service", "create_key", "update_key", "revoke_key",
                  "rotate_key", "list_keys", "key_for", "config_create", "config_update", "config_delete",
                  "delete_expired", "register_reference_type", "use_membership_table", "audit", "new_secret",
                  "member_role", "actor_may", "may_read", "permissions_problem", "authorize", "role_grants",
                  "require_service", "check_config", "check_key_settings", "expiry"]
POLICY_FUNCTIONS = {"api_key.actor()", "api_key.is_service()", "api_key.may(text,text,text)", "api_key.is_member(text)",
                    "api_key.creator_left(uuid)"}


def test_no_internal_function_can_act_as_someone_else(app, service, su):
    """No token-taking worker is left to forge a caller with: the functions in schema api_key an
    application role may execute are the policy functions, and each answers only for the actor
    of the calling transaction (none takes an actor or a token)."""
    left = su.rows("SELECT proname FROM pg_proc WHERE pronamespace = 'api_key'::regnamespace "
                   "AND proname = ANY(%s)", [GONE_INTERNALS])
    assert left == [], f"0.1.0 internals still exist: {left}"
    for role in ("api_key_user", APP, "api_key_admin", SERVICE):
        executable = {r["fn"] for r in su.rows(
            "SELECT p.oid::regprocedure::text AS fn FROM pg_proc p WHERE p.pronamespace = 'api_key'::regnamespace "
            "AND has_function_privilege(%s, p.oid, 'EXECUTE')", [role])}
        assert executable == POLICY_FUNCTIONS, (role, executable)
    assert {r["fn"] for r in su.rows(
        "SELECT p.oid::regprocedure::text AS fn FROM pg_proc p WHERE p.pronamespace = 'api_key'::regnamespace "
        "AND has_function_privilege(%s, p.oid, 'EXECUTE')", [NOBODY])} == set()
    assert su.rows("SELECT p.oid::regprocedure::text AS fn FROM pg_proc p "
                   "WHERE p.pronamespace = 'api_key'::regnamespace AND p.prosecdef") == []
    # The policy functions answer for the current actor only: mallory learns nothing about a
    # victim's keys, and nothing changes.
    victim = uid("victim")
    key = create(service, reference_id=victim)
    before = su.one("SELECT * FROM api_key.keys WHERE id = %s", [key["id"]])
    for action in ("create", "read", "update", "delete"):
        assert app.val("SELECT api_key.may('user', %s, %s)", [victim, action], actor="mallory") is False
        assert app.val("SELECT api_key.may('user', %s, %s)", [victim, action]) is False
        assert app.val("SELECT api_key.may('user', %s, %s)", [victim, action], actor=victim) is True
    assert app.val("SELECT api_key.actor()", actor="mallory") == "mallory"
    assert su.one("SELECT * FROM api_key.keys WHERE id = %s", [key["id"]]) == before
    assert verify(app, key["key"])["code"] == "VALID"


def test_service_creates_an_organization_key_with_no_user(service, su, app):
    o = uid("org_only_in_app")   # registered nowhere in api_key
    key = create(service, reference_id=o, reference_type="organization", name="migration")
    row = su.one("SELECT created_by, reference_type, reference_id FROM api_key.keys WHERE id = %s", [key["id"]])
    assert row == {"created_by": None, "reference_type": "organization", "reference_id": o}
    assert verify(app, key["key"])["reference_id"] == o
    assert [r["id"] for r in service.rows(
        "SELECT id FROM api_key_list_for_reference(reference_id => %s, reference_type => 'organization')", [o])] == [key["id"]]
    audit = su.one("SELECT actor, database_role, action FROM api_key.audit_log WHERE key_id = %s", [key["id"]])
    assert audit == {"actor": None, "database_role": SERVICE, "action": "create"}


def test_membership_tables_are_written_by_the_service_only(service, app, su):
    o = uid("org")
    service.rows("INSERT INTO api_key.organizations (id) VALUES (%s)", [o])
    service.rows("INSERT INTO api_key.members (organization_id, user_id, role) VALUES (%s, 'u_boss', 'owner')", [o])
    expect_error("42501", service.rows, "INSERT INTO api_key.members (organization_id, user_id, role) "
                 "VALUES (%s, 'u_x', 'owner')", [o], actor="u_boss")
    expect_error("42501", app.rows, "INSERT INTO api_key.members (organization_id, user_id, role) "
                 "VALUES (%s, 'u_x', 'owner')", [o], actor="u_boss")
    expect_error("42501", app.rows, "UPDATE api_key.members SET role = 'owner'", actor="u_boss")
    expect_error("42501", app.rows, "INSERT INTO api_key.role_permissions VALUES (%s, 'member', 'delete')", [o],
                 actor="u_boss")
    assert su.val("SELECT count(*) FROM api_key.members WHERE organization_id = %s", [o]) == 1


def test_keys_outlive_their_creator(org, app, service, su):
    o = org["id"]
    creator = uid("leaver")
    service.rows("INSERT INTO api_key.members (organization_id, user_id, role) VALUES (%s, %s, 'admin')", [o, creator])
    key = create(app, actor=creator, reference_id=o, reference_type="organization")
    assert su.val("SELECT created_by FROM api_key.keys WHERE id = %s", [key["id"]]) == creator
    view = "SELECT id, created_by FROM api_key.keys_without_creator WHERE id = %s"
    assert service.rows(view, [key["id"]]) == []
    service.rows("DELETE FROM api_key.members WHERE organization_id = %s AND user_id = %s", [o, creator])
    r = verify(app, key["key"])
    assert (r["code"], r["reference_id"]) == ("VALID", o)
    assert service.rows(view, [key["id"]]) == [{"id": key["id"], "created_by": creator}]
    # Readable by the organization's members through RLS; the leaver no longer reads it.
    assert app.rows(view, [key["id"]], actor=org["people"]["owner"]) == [{"id": key["id"], "created_by": creator}]
    assert app.rows(view, [key["id"]], actor=creator) == []
    assert app.rows(view, [key["id"]], actor=org["people"]["nonmember"]) == []
    # The organization's owner still manages it; for the leaver it no longer exists.
    run_op("update", app, org["people"]["owner"], "organization", o, key["id"])
    expect_error("P0002", run_op, "update", app, creator, "organization", o, key["id"])
    assert app.val("SELECT api_key_revoke(%s)", [key["id"]], actor=creator) is False
    assert verify(app, key["key"])["code"] == "VALID"


def test_organization_override_replaces_role_defaults(app, service, su):
    o = uid("org")
    m = uid("u")
    service.rows("INSERT INTO api_key.organizations (id) VALUES (%s)", [o])
    service.rows("INSERT INTO api_key.members (organization_id, user_id, role) VALUES (%s, %s, 'member')", [o, m])
    key = create(service, reference_id=o, reference_type="organization")
    assert run_op("get", app, m, "organization", o, key["id"])
    # This organization lets members update but (no longer) read. A key one may not read does
    # not exist for one (P0002), so updating it by id is not possible either; the update
    # permission shows in what it does grant: the organization's audit entries.
    service.rows("INSERT INTO api_key.role_permissions (organization_id, role, permission) VALUES (%s, 'member', 'update')", [o])
    expect_error("P0002", run_op, "get", app, m, "organization", o, key["id"])
    assert run_op("select", app, m, "organization", o, key["id"]) == []
    err = expect_error("42501", run_op, "list", app, m, "organization", o, key["id"])
    assert "api_key:read" in err.diag.message_primary
    expect_error("P0002", run_op, "update", app, m, "organization", o, key["id"])
    assert app.rows("SELECT action FROM api_key.audit_log WHERE key_id = %s", [key["id"]], actor=m) == \
        [{"action": "create"}]
    # Read and update: both, and nothing else (the defaults for 'member' are replaced).
    service.rows("INSERT INTO api_key.role_permissions (organization_id, role, permission) VALUES (%s, 'member', 'read')", [o])
    run_op("update", app, m, "organization", o, key["id"])
    err = expect_error("42501", run_op, "revoke", app, m, "organization", o, key["id"])
    assert "api_key:delete" in err.diag.message_primary
    # Other organizations keep the defaults.
    o2 = uid("org")
    service.rows("INSERT INTO api_key.organizations (id) VALUES (%s)", [o2])
    service.rows("INSERT INTO api_key.members (organization_id, user_id, role) VALUES (%s, %s, 'member')", [o2, m])
    key2 = create(service, reference_id=o2, reference_type="organization")
    assert run_op("get", app, m, "organization", o2, key2["id"])
    expect_error("42501", run_op, "update", app, m, "organization", o2, key2["id"])


# --- Bring your own membership table (better-auth's `member`) -------------------------------

@pytest.fixture
def byo_member(app, service, su):
    """app.member owned by the application, as better-auth creates it; membership read live."""
    table = uid("member")
    app.rows(f'CREATE TABLE app.{table} (id text PRIMARY KEY, "organizationId" text NOT NULL, '
             f'"userId" text NOT NULL, role text NOT NULL)')
    # The role that configures the membership source must be able to read it.
    app.rows(f"GRANT SELECT ON app.{table} TO akt_service")
    su.rows("SELECT api_key_use_membership_table(relation => %s::regclass, organization_column => 'organizationId', "
                 "user_column => 'userId', role_column => 'role')", [f"app.{table}"])
    try:
        yield f"app.{table}"
    finally:
        service.rows("SELECT api_key_use_membership_table(NULL)")


def test_membership_from_application_table_is_live(byo_member, app, service, su):
    o = uid("ba_org")     # exists only in the application's table
    u = uid("ba_user")
    # Someone who is an owner in api_key.members is ignored while the application table rules.
    service.rows("INSERT INTO api_key.organizations (id) VALUES (%s)", [o])
    service.rows("INSERT INTO api_key.members (organization_id, user_id, role) VALUES (%s, %s, 'owner')", [o, u])
    key = create(service, reference_id=o, reference_type="organization")

    def can(op):
        try:
            out = run_op(op, app, u, "organization", o, key["id"] if op != "create" else None)
            return bool(out) if op == "select" else True
        except Exception as e:  # noqa: BLE001
            # 42501 for a refused create; P0002 for a key the actor may not read.
            assert getattr(e, "sqlstate", None) in {"42501", "P0002"}, e
            return False

    assert (can("create"), can("get"), can("select")) == (False, False, False)
    app.rows(f'INSERT INTO {byo_member} VALUES (%s, %s, %s, %s)', [uid("m"), o, u, "member"])
    assert (can("create"), can("get"), can("select")) == (False, True, True)
    app.rows(f'UPDATE {byo_member} SET role = %s WHERE "userId" = %s', ["admin,member", u])
    assert (can("create"), can("get"), can("select")) == (True, True, True)
    app.rows(f'DELETE FROM {byo_member} WHERE "userId" = %s', [u])
    assert (can("create"), can("get"), can("select")) == (False, False, False)
    assert verify(app, key["key"])["code"] == "VALID"


def test_dropping_the_membership_table_fails_cleanly(app, service, su):
    table = uid("member")
    app.rows(f"CREATE TABLE app.{table} (organization_id text, user_id text, role text)")
    app.rows(f"GRANT SELECT ON app.{table} TO akt_service")
    su.rows("SELECT api_key_use_membership_table(%s::regclass)", [f"app.{table}"])
    o = uid("org")
    create(service, reference_id=o, reference_type="organization")
    try:
        try:
            app.rows(f"DROP TABLE app.{table}")
        except Exception as e:  # noqa: BLE001  (refusing the drop would be a fine answer)
            assert getattr(e, "sqlstate", None) == "2BP01", e
            return
        try:
            app.rows("SELECT count(*) FROM api_key.keys WHERE reference_id = %s", [o], actor="someone")
        except Exception as e:  # noqa: BLE001
            assert getattr(e, "sqlstate", None) in {"42P01", "55000", "42704"}, f"{getattr(e, 'sqlstate', None)}: {e}"
    finally:
        service.rows("SELECT api_key_use_membership_table(NULL)")


@pytest.mark.parametrize("role_expression,detail", [("(1/0)::text", "22012"), ("NULL::text", None)])
def test_a_failing_membership_table_refuses(role_expression, detail, app, service, su):
    """Membership read from application code that raises (or finds no role) is a refusal:
    42501 for management calls (the application's error in DETAIL), "no" for the policies, and
    never an error that breaks the caller's read of other keys."""
    view, o, u = uid("member_v"), uid("org"), uid("u")
    app.rows(f"CREATE VIEW app.{view} AS SELECT '{o}'::text AS organization_id, '{u}'::text AS user_id, "
             f"{role_expression} AS role")
    app.rows(f"GRANT SELECT ON app.{view} TO akt_service")
    key = create(service, reference_id=o, reference_type="organization")
    own = create(service, reference_id=u)
    su.rows("SELECT api_key_use_membership_table(%s::regclass)", [f"app.{view}"])
    try:
        err = expect_error("42501", create, app, actor=u, reference_id=o, reference_type="organization")
        if detail:
            assert detail in (err.diag.message_detail or ""), err.diag.message_detail
        expect_error("P0002", app.rows, "SELECT * FROM api_key_get(%s)", [key["id"]], actor=u)
        assert app.val("SELECT api_key_revoke(%s)", [key["id"]], actor=u) is False
        assert {r["id"] for r in app.rows("SELECT id FROM api_key.keys WHERE reference_id IN (%s, %s)", [o, u],
                                          actor=u)} == {own["id"]}
        assert app.rows("SELECT id FROM api_key.organizations WHERE id = %s", [o], actor=u) == []
        # The service is not affected.
        assert service.one("SELECT id FROM api_key_get(%s)", [key["id"]])["id"] == key["id"]
    finally:
        service.rows("SELECT api_key_use_membership_table(NULL)")
    assert verify(app, key["key"])["code"] == "VALID"


MEMBERSHIP_COLUMN_TYPES = [
    ("text", True), ("varchar(64)", True), ("char(16)", True), ("name", True), ("uuid", True), ("smallint", True),
    ("integer", True), ("bigint", True), ("text_domain", True),
    ("jsonb", False), ("numeric", False), ("text[]", False), ("role_enum", False), ("real", False), ("bytea", False),
]


@pytest.mark.parametrize("column_type,accepted", MEMBERSHIP_COLUMN_TYPES, ids=[t for t, _ in MEMBERSHIP_COLUMN_TYPES])
def test_membership_columns_must_be_of_plain_types(column_type, accepted, app, service, su):
    """The extension reads membership columns as text, as the table's owner: only built-in types
    whose text form involves no application code (a domain counts as its base type)."""
    table = uid("member")
    if column_type == "role_enum":
        app.rows(f"CREATE TYPE app.{table}_role AS ENUM ('owner', 'member')")
        column_type = f"app.{table}_role"
    elif column_type == "text_domain":
        app.rows(f"CREATE DOMAIN app.{table}_text AS text CHECK (VALUE <> '')")
        column_type = f"app.{table}_text"
    app.rows(f"CREATE TABLE app.{table} (organization_id text, user_id text, role {column_type})")
    call = ("SELECT api_key_use_membership_table(%s::regclass, organization_column => 'organization_id', "
            "user_column => 'user_id', role_column => 'role')")
    try:
        if accepted:
            su.rows(call, [f"app.{table}"])
            assert su.val("SELECT relation::text FROM api_key.membership_source") == f"app.{table}"
        else:
            before = su.rows("SELECT * FROM api_key.membership_source")
            err = expect_error("22023", su.rows, call, [f"app.{table}"])
            assert '"role"' in err.diag.message_primary, err.diag.message_primary
            assert su.rows("SELECT * FROM api_key.membership_source") == before
    finally:
        service.rows("SELECT api_key_use_membership_table(NULL)")


def test_pointing_at_another_membership_table_replaces_the_first(app, service, su):
    first, second = uid("member"), uid("member")
    o, u = uid("org"), uid("u")
    for table in (first, second):
        app.rows(f"CREATE TABLE app.{table} (organization_id text, user_id text, role text)")
        app.rows(f"GRANT SELECT ON app.{table} TO akt_service")
    app.rows(f"INSERT INTO app.{second} VALUES (%s, %s, 'owner')", [o, u])
    try:
        su.rows("SELECT api_key_use_membership_table(%s::regclass)", [f"app.{first}"])
        expect_error("42501", create, app, actor=u, reference_id=o, reference_type="organization")
        # No reset in between: the second table replaces the first.
        su.rows("SELECT api_key_use_membership_table(%s::regclass)", [f"app.{second}"])
        assert su.val("SELECT relation::text FROM api_key.membership_source") == f"app.{second}"
        assert create(app, actor=u, reference_id=o, reference_type="organization")["reference_id"] == o
    finally:
        service.rows("SELECT api_key_use_membership_table(NULL)")


def test_membership_relation_code_does_not_run_as_superuser(app, service, su):
    """Code in a membership view runs as the view's owner, in a subtransaction that is rolled
    back: it answers only when run as its owner, it announces itself (notices reach the client
    even though its work is undone), and what it writes does not survive."""
    probe, view, fn = uid("probe"), uid("member_v"), uid("whoami")
    app.rows(f"CREATE TABLE app.{probe} (who text)")
    app.rows(f"GRANT INSERT ON app.{probe} TO PUBLIC")
    app.rows(f"CREATE FUNCTION app.{fn}() RETURNS text LANGUAGE plpgsql VOLATILE AS "
             f"$$ BEGIN INSERT INTO app.{probe} VALUES (current_user); "
             f"RAISE NOTICE 'membership view ran as %', current_user; "
             f"RETURN CASE WHEN current_user = '{APP}' THEN 'owner' END; END $$")
    app.rows(f"GRANT EXECUTE ON FUNCTION app.{fn}() TO PUBLIC")
    app.rows(f"CREATE VIEW app.{view} AS SELECT 'probe_org'::text AS organization_id, 'probe_user'::text AS user_id, "
             f"app.{fn}() AS role")
    app.rows(f"GRANT SELECT ON app.{view} TO akt_service")
    su.rows("SELECT api_key_use_membership_table(%s::regclass)", [f"app.{view}"])
    notices = []

    def handler(d):
        notices.append(d.message_primary)

    app.conn.add_notice_handler(handler)
    try:
        made = create(app, actor="probe_user", reference_id="probe_org", reference_type="organization")
    finally:
        app.conn.remove_notice_handler(handler)
        service.rows("SELECT api_key_use_membership_table(NULL)")
    assert made["reference_id"] == "probe_org"     # the view answered 'owner': it ran as its owner
    ran_as = [n for n in notices if n.startswith("membership view ran as")]
    assert ran_as, "the view was not read"
    assert set(ran_as) == {f"membership view ran as {APP}"}, f"code in the membership view ran as {ran_as}"
    assert su.val(f"SELECT count(*) FROM app.{probe}") == 0, "what the membership view wrote survived"


# --- Custom reference types -------------------------------------------------------------------

@pytest.fixture(scope="module")
def project_type(su, service):
    """'project' keys, authorized by an SQL function over an application table."""
    su.rows("CREATE TABLE public.project_members (project_id text, user_id text, can_write boolean)")
    su.rows("CREATE FUNCTION public.project_authorizer(actor text, reference_id text, action text) RETURNS boolean "
            "LANGUAGE sql STABLE AS $$ SELECT EXISTS (SELECT 1 FROM public.project_members m "
            "WHERE m.project_id = reference_id AND m.user_id = actor AND (action = 'read' OR m.can_write)) $$")
    su.rows("GRANT EXECUTE ON FUNCTION public.project_authorizer(text, text, text) TO PUBLIC")
    # Registered by the superuser, who owns the authorizer (it runs as its owner).
    su.rows("SELECT api_key_register_reference_type('project', 'public.project_authorizer(text,text,text)')")
    p = uid("proj")
    people = {"writer": uid("w"), "reader": uid("r"), "outsider": uid("o")}
    su.rows("INSERT INTO public.project_members VALUES (%s, %s, true), (%s, %s, false)",
            [p, people["writer"], p, people["reader"]])
    return {"id": p, "people": people}


def test_register_reference_type(service, su):
    service.rows("CREATE FUNCTION svc.store_authorizer(actor text, reference_id text, action text) RETURNS boolean "
                 "LANGUAGE sql STABLE AS $$ SELECT actor = 'store_admin' $$")
    service.rows("SELECT api_key_register_reference_type('store', 'svc.store_authorizer(text,text,text)')")
    assert su.val("SELECT authorizer::text FROM api_key.reference_types WHERE reference_type = 'store'") == \
        "svc.store_authorizer(text,text,text)"


def test_registering_someone_elses_authorizer_is_refused(service, su):
    """The authorizer runs as its owner: the service may not register a superuser's function."""
    su.rows("CREATE FUNCTION public.su_authorizer(actor text, reference_id text, action text) RETURNS boolean "
            "LANGUAGE sql STABLE AS $$ SELECT true $$")
    expect_error("42501", service.rows,
                 "SELECT api_key_register_reference_type('su_owned', 'public.su_authorizer(text,text,text)')")


PROJECT_MATRIX = {
    "writer": ALL_OK,
    "reader": {"create": "42501", "get": "ok", "list": "ok", "update": "42501", "rotate": "42501", "revoke": "42501",
               "select": "ok"},
    "outsider": NOT_READABLE,
    "service": ALL_OK,
    "no_actor": ALL_DENIED,
}
PROJECT_CELLS = [(kind, op, exp) for kind, row in PROJECT_MATRIX.items() for op, exp in row.items()]


@pytest.mark.parametrize("kind,op,expected", PROJECT_CELLS, ids=[f"{k}-{o}" for k, o, _ in PROJECT_CELLS])
def test_custom_reference_type_matrix(kind, op, expected, project_type, app, service, su):
    if kind == "service":
        client, actor = service, None
    elif kind == "no_actor":
        client, actor = app, None
    else:
        client, actor = app, project_type["people"][kind]
    check_cell(op, expected, client, actor, "project", project_type["id"], su)


def test_custom_reference_type_is_live(project_type, app, su):
    p, r = project_type["id"], project_type["people"]["reader"]
    key = create(su, reference_id=p, reference_type="project")
    expect_error("42501", run_op, "update", app, r, "project", p, key["id"])
    su.rows("UPDATE public.project_members SET can_write = true WHERE user_id = %s", [r])
    try:
        run_op("update", app, r, "project", p, key["id"])
    finally:
        su.rows("UPDATE public.project_members SET can_write = false WHERE user_id = %s", [r])
    assert verify(app, key["key"])["reference_type"] == "project"


def test_authorizer_does_not_run_as_superuser(service, app, su):
    """An authorizer runs as its owner (here the service role), in a subtransaction that is
    rolled back: it says yes only when run as its owner, its notices name the role it ran as,
    and its writes do not survive."""
    fn, probe = uid("auth"), uid("probe")
    service.rows(f"CREATE TABLE svc.{probe} (who text)")
    service.rows(f"GRANT INSERT ON svc.{probe} TO PUBLIC")
    service.rows(f"CREATE FUNCTION svc.{fn}(actor text, reference_id text, action text) RETURNS boolean "
                 f"LANGUAGE plpgsql VOLATILE AS $$ BEGIN INSERT INTO svc.{probe} VALUES (current_user); "
                 f"RAISE NOTICE 'authorizer ran as %', current_user; "
                 f"RETURN actor = 'boss' AND current_user = '{SERVICE}'; END $$")
    service.rows(f"GRANT EXECUTE ON FUNCTION svc.{fn}(text, text, text) TO PUBLIC")
    t = uid("t").replace("-", "_")
    service.rows("SELECT api_key_register_reference_type(%s, %s::regprocedure)", [t, f"svc.{fn}(text,text,text)"])
    notices = []

    def handler(d):
        notices.append(d.message_primary)

    app.conn.add_notice_handler(handler)
    try:
        made = create(app, actor="boss", reference_id="r1", reference_type=t)
    finally:
        app.conn.remove_notice_handler(handler)
    assert made["reference_type"] == t
    ran_as = [n for n in notices if n.startswith("authorizer ran as")]
    assert ran_as, "the authorizer was not called"
    assert set(ran_as) == {f"authorizer ran as {SERVICE}"}, f"the authorizer ran as {ran_as}"
    assert su.val(f"SELECT count(*) FROM svc.{probe}") == 0, "what the authorizer wrote survived"


def test_deleting_the_organization_row_leaves_its_keys_working(service, app, su):
    o, owner = uid("org"), uid("u")
    service.rows("INSERT INTO api_key.organizations (id) VALUES (%s)", [o])
    service.rows("INSERT INTO api_key.members (organization_id, user_id, role) VALUES (%s, %s, 'owner')", [o, owner])
    key = create(app, actor=owner, reference_id=o, reference_type="organization")
    service.rows("DELETE FROM api_key.organizations WHERE id = %s", [o])   # cascades to its members
    assert su.val("SELECT count(*) FROM api_key.members WHERE organization_id = %s", [o]) == 0
    assert verify(app, key["key"])["code"] == "VALID"
    expect_error("P0002", run_op, "get", app, owner, "organization", o, key["id"])
    run_op("update", service, None, "organization", o, key["id"])
    assert [r["id"] for r in service.rows("SELECT id FROM api_key.keys_without_creator WHERE reference_id = %s", [o])] \
        == [key["id"]]


def test_a_membership_source_is_read_with_no_more_rights_than_its_registrant_has(app, service, su):
    """The extension reads a membership relation as its owner: the role that points the
    extension at it must be able to act as that owner. Else a service role could read, through
    membership answers, views that show a superuser more (FDW passwords, other sessions' queries)
    or rows that row-level security hides from it."""
    table = uid("member")
    app.rows(f"CREATE TABLE app.{table} (organization_id text, user_id text, role text)")
    app.rows(f"GRANT SELECT ON app.{table} TO akt_service")
    before = su.rows("SELECT * FROM api_key.membership_source")
    for relation, columns in [
        ("information_schema.user_mapping_options", ("authorization_identifier", "option_name", "option_value")),
        ("pg_catalog.pg_stat_activity", ("usename", "usename", "query")),
        (f"app.{table}", ("organization_id", "user_id", "role")),
    ]:
        err = expect_error("42501", service.rows, "SELECT api_key_use_membership_table(%s::regclass, "
                           "organization_column => %s, user_column => %s, role_column => %s)", [relation, *columns])
        assert "may not act as" in err.diag.message_primary
    assert su.rows("SELECT * FROM api_key.membership_source") == before
    # A service role that is a member of the owner's role may.
    su.rows("GRANT akt_app TO akt_service")
    try:
        service.rows("SELECT api_key_use_membership_table(%s::regclass)", [f"app.{table}"])
        service.rows("SELECT api_key_use_membership_table(NULL)")
    finally:
        su.rows("REVOKE akt_app FROM akt_service")


def test_membership_ids_compare_byte_for_byte(app, su, service):
    """A case-insensitive collation on the application's table does not make ALICE alice."""
    table = uid("member")
    try:
        su.rows("CREATE COLLATION IF NOT EXISTS public.ci (provider = icu, locale = 'und-u-ks-level2', "
                "deterministic = false)")
    except psycopg.errors.FeatureNotSupported:
        pytest.skip("this PostgreSQL build has no ICU (nondeterministic collations need it)")
    app.rows(f"CREATE TABLE app.{table} (organization_id text COLLATE public.ci, user_id text COLLATE public.ci, "
             "role text)")
    app.rows(f"INSERT INTO app.{table} VALUES ('acme_ci', 'alice', 'owner')")
    su.rows("SELECT api_key_use_membership_table(%s::regclass)", [f"app.{table}"])
    try:
        assert app.val("SELECT api_key.is_member('acme_ci')", actor="alice") is True
        assert app.val("SELECT api_key.is_member('acme_ci')", actor="ALICE") is False
        assert app.val("SELECT api_key.is_member('ACME_CI')", actor="alice") is False
    finally:
        service.rows("SELECT api_key_use_membership_table(NULL)")
