"""api_key_authenticate binds a transaction to a verified key; application policies read the
binding through api_key_current_*() and api_key_has_permission(). It must end with the
transaction (pooled connections) and must not be forgeable with SET / set_config."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from helpers import create, expect_error, uid

HELPERS = ("SELECT api_key_current_key_id() AS key_id, api_key_current_reference_type() AS reference_type, "
           "api_key_current_reference_id() AS reference_id, api_key_has_permission('documents', 'read') AS can_read, "
           "api_key_has_permission('documents', 'write') AS can_write")
UNBOUND = {"key_id": None, "reference_type": None, "reference_id": None, "can_read": False, "can_write": False}


@pytest.fixture(scope="module")
def keys(service):
    org1, org2 = uid("org"), uid("org")
    return {
        "org1": org1, "org2": org2,
        "org1_reader": create(service, reference_id=org1, reference_type="organization",
                              permissions='{"documents": ["read"], "files": ["read", "write"]}'),
        "org1_bare": create(service, reference_id=org1, reference_type="organization"),
        "org2_reader": create(service, reference_id=org2, reference_type="organization",
                              permissions='{"documents": ["read", "write"]}'),
        # A *user* whose id happens to equal org1's id: must not pass for the organization.
        "user_named_like_org1": create(service, reference_id=org1, permissions='{"documents": ["read"]}'),
    }


def test_binding_lives_in_the_transaction_only(keys, app):
    k = keys["org1_reader"]
    conn = app.conn
    with conn.transaction():
        assert conn.execute(HELPERS).fetchone() == UNBOUND
        r = conn.execute("SELECT * FROM api_key_authenticate(%s)", [k["key"]]).fetchone()
        assert (r["valid"], r["code"], r["key_id"]) == (True, "VALID", k["id"])
        got = conn.execute(HELPERS).fetchone()
        assert got == {"key_id": k["id"], "reference_type": "organization", "reference_id": keys["org1"],
                       "can_read": True, "can_write": False}
        row = conn.execute("SELECT api_key_has_permission('files', 'write') AS fw, api_key_has_permission('files', NULL) AS fn, "
                           "api_key_has_permission(NULL, 'read') AS nr, api_key_has_permission('nope', 'read') AS x").fetchone()
        assert row == {"fw": True, "fn": False, "nr": False, "x": False}
    # Next transaction on the same connection (what a transaction pooler hands the next client).
    with conn.transaction():
        assert conn.execute(HELPERS).fetchone() == UNBOUND
    assert conn.execute(HELPERS).fetchone() == UNBOUND        # autocommit statement, too


def test_binding_ends_with_rollback_and_with_an_autocommit_statement(keys, app):
    k = keys["org1_reader"]
    conn = app.conn
    with conn.transaction():
        conn.execute("SELECT api_key_authenticate(%s)", [k["key"]])
        assert conn.execute(HELPERS).fetchone()["key_id"] == k["id"]
        raise psycopg.Rollback()
    assert conn.execute(HELPERS).fetchone() == UNBOUND
    conn.execute("SELECT api_key_authenticate(%s)", [k["key"]])   # its own transaction
    assert conn.execute(HELPERS).fetchone() == UNBOUND


def test_binding_is_per_connection(keys, app, new_client):
    other = new_client("akt_app")
    with app.tx() as conn:
        conn.execute("SELECT api_key_authenticate(%s)", [keys["org1_reader"]["key"]])
        with other.tx() as oconn:
            assert oconn.execute(HELPERS).fetchone() == UNBOUND
            oconn.execute("SELECT api_key_authenticate(%s)", [keys["org2_reader"]["key"]])
            assert oconn.execute(HELPERS).fetchone()["reference_id"] == keys["org2"]
        assert conn.execute(HELPERS).fetchone()["reference_id"] == keys["org1"]


def test_last_authentication_wins(keys, app):
    with app.tx() as conn:
        conn.execute("SELECT api_key_authenticate(%s)", [keys["org1_reader"]["key"]])
        conn.execute("SELECT api_key_authenticate(%s)", [keys["org2_reader"]["key"]])
        got = conn.execute(HELPERS).fetchone()
        assert (got["key_id"], got["reference_id"], got["can_write"]) == (keys["org2_reader"]["id"], keys["org2"], True)


FORGERIES = [
    "SELECT set_config('api_key.current_key_id', %(id)s, true)",
    "SELECT set_config('api_key.current_reference_id', %(ref)s, true)",
    "SELECT set_config('api_key.current_reference_type', 'organization', true)",
    "SELECT set_config('api_key.permissions', '{\"documents\": [\"read\", \"write\"]}', true)",
    "SELECT set_config('api_key.key_id', %(id)s, false)",
    "SET LOCAL api_key.current_reference_id = 'evil_org'",
    "SET api_key.current_key_id = '00000000-0000-0000-0000-000000000001'",
    "SELECT set_config('api_key.actor', %(ref)s, true)",
]


@pytest.mark.parametrize("forgery", FORGERIES)
def test_binding_cannot_be_forged(forgery, keys, app):
    params = {"id": str(uuid.uuid4()), "ref": keys["org2"]}
    conn = app.conn
    # Unbound transaction: a forged setting binds nothing.
    with conn.transaction():
        try:
            with conn.transaction():   # savepoint: the attempt may be refused, that is fine too
                conn.execute(forgery, params)
        except psycopg.Error as e:
            assert e.sqlstate in {"42501", "42704", "55P02", "22023"}, e
        assert conn.execute(HELPERS).fetchone() == UNBOUND
    # Bound transaction: a forged setting changes nothing.
    with conn.transaction():
        conn.execute("SELECT api_key_authenticate(%s)", [keys["org1_reader"]["key"]])
        try:
            with conn.transaction():
                conn.execute(forgery, params)
        except psycopg.Error as e:
            assert e.sqlstate in {"42501", "42704", "55P02", "22023"}, e
        got = conn.execute(HELPERS).fetchone()
        assert (got["key_id"], got["reference_id"], got["can_write"]) == (keys["org1_reader"]["id"], keys["org1"], False)
    conn.execute("RESET ALL")


@pytest.fixture(scope="module")
def refused_keys(service, su):
    user = uid("u")
    base = dict(reference_id=user, permissions='{"documents": ["read"]}')
    k = {
        "disabled": create(service, **base),
        "expired": create(service, **base),
        "no_credits": create(service, remaining=0, **base),
        "rate_limited": create(service, rate_limit_max=1, rate_limit_window="1 hour", **base),
        "good": create(service, **base),
    }
    service.rows("SELECT 1 FROM api_key_update(id => %s, enabled => false)", [k["disabled"]["id"]])
    # Expired as time would make it (api_key_update sets expiries in the future only).
    su.rows("UPDATE api_key.keys SET expires_at = now() - interval '1 minute' WHERE id = %s", [k["expired"]["id"]])
    service.rows("SELECT code FROM api_key_verify(%s)", [k["rate_limited"]["key"]])
    return k


@pytest.mark.parametrize("case,code", [
    ("null", "NOT_FOUND"), ("empty", "NOT_FOUND"), ("garbage", "NOT_FOUND"), ("one_mb", "NOT_FOUND"),
    ("disabled", "DISABLED"), ("expired", "EXPIRED"), ("no_credits", "USAGE_EXCEEDED"),
    ("rate_limited", "RATE_LIMITED"), ("insufficient", "INSUFFICIENT_PERMISSIONS"),
])
def test_refused_keys_raise_28000_and_bind_nothing(case, code, refused_keys, app):
    fixed = {"null": None, "empty": "", "garbage": "sk_garbage", "one_mb": "x" * (1 << 20),
             "insufficient": refused_keys["good"]["key"]}
    key = fixed[case] if case in fixed else refused_keys[case]["key"]
    perms = '{"documents": ["write"]}' if case == "insufficient" else None
    conn = app.conn
    with conn.transaction():
        with pytest.raises(psycopg.Error) as info:
            with conn.transaction():
                conn.execute("SELECT * FROM api_key_authenticate(%s, permissions => %s::jsonb)", [key, perms])
        err = info.value
        assert err.sqlstate == "28000"
        assert code in str(err) or code in (err.diag.message_detail or "")
        if key:
            assert key[3:-6] not in str(err) + (err.diag.message_detail or "") + (err.diag.context or "")
        assert conn.execute(HELPERS).fetchone() == UNBOUND


def test_authenticate_spends_credits_like_verify(service, app, su):
    k = create(service, reference_id=uid("u"), remaining=2)
    with app.tx() as conn:
        assert conn.execute("SELECT remaining FROM api_key_authenticate(%s)", [k["key"]]).fetchone()["remaining"] == 1
    assert su.val("SELECT remaining FROM api_key.keys WHERE id = %s", [k["id"]]) == 1


@pytest.fixture(scope="module")
def documents(su, keys):
    """The example pattern: an application table whose policy trusts the authenticated key."""
    su.rows("CREATE TABLE public.documents (org_id text NOT NULL, body text)")
    su.rows("ALTER TABLE public.documents ENABLE ROW LEVEL SECURITY")
    su.rows("CREATE POLICY documents_read ON public.documents FOR SELECT USING ("
            "api_key_current_reference_type() = 'organization' AND org_id = api_key_current_reference_id() "
            "AND api_key_has_permission('documents', 'read'))")
    su.rows("GRANT SELECT ON public.documents TO akt_app")
    su.rows("INSERT INTO public.documents VALUES (%s, 'one-a'), (%s, 'one-b'), (%s, 'two-a'), ('elsewhere', 'x')",
            [keys["org1"], keys["org1"], keys["org2"]])
    return "public.documents"


def test_documents_example(documents, keys, app):
    conn = app.conn

    def bodies(key=None, perms=None):
        with conn.transaction():
            if key:
                conn.execute("SELECT api_key_authenticate(%s, permissions => %s::jsonb)", [key, perms])
            return sorted(r["body"] for r in conn.execute(f"SELECT body FROM {documents}"))

    assert bodies() == []
    assert bodies(keys["org1_reader"]["key"], '{"documents": ["read"]}') == ["one-a", "one-b"]
    assert bodies() == [], "the next transaction on this connection sees nothing"
    assert bodies(keys["org2_reader"]["key"]) == ["two-a"]
    assert bodies(keys["org1_bare"]["key"]) == [], "a key without documents:read sees nothing"
    assert bodies(keys["user_named_like_org1"]["key"]) == [], "a user key is not the organization"
    with pytest.raises(psycopg.Error) as info:
        bodies(keys["org1_bare"]["key"], '{"documents": ["read"]}')
    assert info.value.sqlstate == "28000"
    assert bodies() == []


def test_binding_does_not_survive_rollback_to_savepoint(keys, app, service, su):
    k = create(service, reference_id=uid("u"), remaining=1)
    conn = app.conn
    with conn.transaction():
        with conn.transaction():      # a savepoint
            conn.execute("SELECT api_key_authenticate(%s)", [k["key"]])
            raise psycopg.Rollback()
        assert su.val("SELECT remaining FROM api_key.keys WHERE id = %s", [k["id"]]) == 1, "credit was given back"
        assert conn.execute(HELPERS).fetchone()["key_id"] is None
