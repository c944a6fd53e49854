"""Generated values of every argument type, thrown at every function (Hypothesis).

For each call: it returns, or it raises with a proper SQLSTATE (never XX000), a message with no
panic text, backtrace or internal SQL; a call that raised wrote nothing; api_key_verify answers
every key value with exactly one row (it may raise only for a malformed `permissions` or `cost`).
"""

from __future__ import annotations

import re
import uuid

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import counts, create, uid

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))

# --- Values ----------------------------------------------------------------------------------

special_text = st.sampled_from([
    "", " ", "user", "organization", "default", "sk_", "0", "-1", "'", "\"", "\\", "%", "_", "null", "NULL",
    "é", "🔑", "a\nb", "a\tb", "\x01", "\x7f", "x" * 257, "x" * 10_000, "sk_live_", "123_", "api_key", "pg_catalog",
])
# No lone surrogates: they are not text in any encoding, and the client could not send them.
any_text = st.one_of(special_text, st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
                                           max_size=300))
maybe = lambda s: st.one_of(st.none(), s)  # noqa: E731

# JSON as text, so that numbers beyond float (1e400), big integers and deep nesting reach the
# server exactly as written.
json_number = st.sampled_from(["0", "-0", "1", "-1", "1e400", "-1e400", "1.5e-400", "123456789012345678901234567890",
                               "9223372036854775808", "3.14"])
json_string = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=40).map(
    lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    .translate({c: f"\\u{c:04x}" for c in range(32)}) + '"')
json_scalar = st.one_of(json_number, json_string, st.sampled_from(["true", "false", "null"]))
json_value = st.recursive(
    json_scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5).map(lambda xs: "[" + ", ".join(xs) + "]"),
        st.lists(st.tuples(json_string, inner), max_size=5).map(
            lambda kv: "{" + ", ".join(f"{k}: {v}" for k, v in kv) + "}"),
    ),
    max_leaves=20,
)
deep = st.integers(1, 3000).map(lambda n: "[" * n + "1" + "]" * n)
permissions_like = st.dictionaries(
    st.sampled_from(["files", "users", "", "x" * 200]),
    st.lists(st.sampled_from(["read", "write", "", "1", "x" * 200]), max_size=4), max_size=3,
).map(lambda d: "{" + ", ".join(f'"{k}": [' + ", ".join(f'"{a}"' for a in v) + "]" for k, v in d.items()) + "}")
any_json = st.one_of(json_value, deep, permissions_like, st.sampled_from(["{}", "[]", '""', "1e400"]))

intervals = st.one_of(
    st.sampled_from(["0", "-1 second", "1 second", "1 month", "1 year", "100 years", "101 years", "10 years 1 day",
                     "300000 years", "178000000 years", "-178000000 years", "1 month -31 days", "2147483647 days",
                     "P1Y2M3DT4H5M6S", "00:00:00.000001", "-00:00:00.000001"]),
    st.builds(lambda m, d, us: f"{m} months {d} days {us} microseconds",
              st.integers(-2**31, 2**31 - 1), st.integers(-2**31, 2**31 - 1), st.integers(-2**63, 2**63 - 1)),
)
timestamps = st.one_of(
    st.sampled_from(["infinity", "-infinity", "epoch", "now", "4713-01-01 BC", "294276-12-31", "2000-01-01"]),
    st.integers(-10**6, 10**6).map(lambda s: f"now() + {s} * interval '1 hour'"),
)
bigints = st.one_of(st.sampled_from([0, -1, 1, 2**63 - 1, -2**63]), st.integers(-2**63, 2**63 - 1))
ints = st.one_of(st.sampled_from([0, -1, 1, 2**31 - 1, -2**31]), st.integers(-2**31, 2**31 - 1))
clear_lists = st.lists(st.one_of(st.none(), st.sampled_from(
    ["name", "expires_at", "permissions", "metadata", "remaining", "refill", "refill_anchor", "rate_limit", "id", ""])), max_size=4)


# --- Calls -----------------------------------------------------------------------------------

FORBIDDEN = re.compile(r"panic|backtrace|\.rs:\d+|RUST_|SQL statement|PL/pgSQL function|internal query", re.I)


def sql_literal_arg(name: str, kind: str):
    """(SQL fragment, params) for a named argument whose value is given as text and cast."""
    if kind == "timestamptz_expr":
        return f"{name} => %s::timestamptz"
    return f"{name} => %s::{kind}"


def call(client, su, fn: str, args: dict[str, tuple[str, object]], actor: str | None, *, one_row: bool = False):
    """Calls fn with named arguments {name: (sql type, value)}; checks the outcome as described
    in the module docstring. Returns the rows, or the error."""
    parts, params = [], []
    for name, (kind, value) in args.items():
        if kind == "timestamptz_expr" and value is not None and "now()" in str(value):
            parts.append(f"{name} => {value}")
            continue
        parts.append(sql_literal_arg(name, "timestamptz" if kind == "timestamptz_expr" else kind))
        params.append(value)
    sql = f"SELECT * FROM {fn}({', '.join(parts)})"
    before = counts(su)
    try:
        rows = client.rows(sql, params, actor=actor)
    except psycopg.errors.QueryCanceled:
        raise
    except psycopg.Error as e:
        d = e.diag
        text = "\n".join(str(x) for x in (d.message_primary, d.message_detail, d.message_hint, d.context) if x)
        assert e.sqlstate and e.sqlstate != "XX000", f"{fn}: {e.sqlstate} {text}\n{sql} {params!r}"
        assert not e.sqlstate.startswith(("08", "57", "58")), f"{fn}: {e.sqlstate} {text}"
        assert not FORBIDDEN.search(text), f"{fn}: {text}"
        assert counts(su) == before, f"{fn} raised {e.sqlstate} but wrote something"
        return e
    if one_row:
        assert len(rows) == 1, rows
    return rows


@pytest.fixture(scope="module")
def existing(service, su):
    """A few real keys and a configuration, so that ids sometimes hit something."""
    user = uid("prop")
    keys = [create(service, reference_id=user, remaining=1000, rate_limit_max=1000, rate_limit_window="1 minute",
                   permissions='{"files": ["read"]}') for _ in range(3)]
    return {"user": user, "ids": [k["id"] for k in keys], "keys": [k["key"] for k in keys]}


actors = st.one_of(st.none(), st.sampled_from(["prop_actor", ""]), any_text)


@SETTINGS
@given(key=maybe(any_text), permissions=maybe(any_json), cost=maybe(ints), config_id=maybe(any_text))
def test_verify_answers_every_key_with_one_row(app, su, key, permissions, cost, config_id):
    args = {"key": ("text", key), "permissions": ("jsonb", permissions), "cost": ("integer", cost),
            "config_id": ("text", config_id)}
    result = call(app, su, "api_key_verify", args, None, one_row=True)
    if isinstance(result, psycopg.Error):
        # Only the request may be refused, never the key: a malformed permissions value
        # (or one that is not JSON at all: PostgreSQL's own 22P02), a negative or NULL cost.
        assert result.sqlstate in {"22023", "22004", "22P02", "54001"}, result


@SETTINGS
@given(data=st.data())
def test_verify_with_real_keys_and_any_request(app, su, existing, data):
    key = data.draw(st.sampled_from(existing["keys"]))
    permissions = data.draw(maybe(any_json))
    result = call(app, su, "api_key_verify", {"key": ("text", key), "permissions": ("jsonb", permissions)}, None,
                  one_row=True)
    if not isinstance(result, psycopg.Error):
        assert result[0]["code"] in {"VALID", "INSUFFICIENT_PERMISSIONS", "RATE_LIMITED", "USAGE_EXCEEDED"}


@SETTINGS
@given(reference_id=maybe(any_text), reference_type=maybe(st.one_of(special_text, any_text)), name=maybe(any_text),
       config_id=maybe(st.one_of(st.just("default"), any_text)), prefix=maybe(any_text),
       expires_in=maybe(intervals), permissions=maybe(any_json), metadata=maybe(any_json),
       remaining=maybe(bigints), refill_amount=maybe(bigints), refill_interval=maybe(intervals),
       rate_limit_max=maybe(ints), rate_limit_window=maybe(intervals), rate_limit_enabled=maybe(st.booleans()),
       refill_anchor=maybe(timestamps), actor=actors, as_service=st.booleans())
def test_create(app, service, su, reference_id, reference_type, name, config_id, prefix, expires_in, permissions,
                metadata, remaining, refill_amount, refill_interval, rate_limit_max, rate_limit_window,
                rate_limit_enabled, refill_anchor, actor, as_service):
    args = {"reference_id": ("text", reference_id), "reference_type": ("text", reference_type),
            "name": ("text", name), "config_id": ("text", config_id), "prefix": ("text", prefix),
            "expires_in": ("interval", expires_in), "permissions": ("jsonb", permissions),
            "metadata": ("jsonb", metadata), "remaining": ("bigint", remaining),
            "refill_amount": ("bigint", refill_amount), "refill_interval": ("interval", refill_interval),
            "rate_limit_max": ("integer", rate_limit_max), "rate_limit_window": ("interval", rate_limit_window),
            "rate_limit_enabled": ("boolean", rate_limit_enabled), "refill_anchor": ("timestamptz_expr", refill_anchor)}
    result = call(service if as_service else app, su, "api_key_create", args, actor)
    if not isinstance(result, psycopg.Error):
        made = result[0]
        # Whatever was accepted verifies, now and without raising.
        assert call(app, su, "api_key_verify", {"key": ("text", made["key"])}, None, one_row=True)


@SETTINGS
@given(data=st.data(), name=maybe(any_text), enabled=maybe(st.booleans()), expires_at=maybe(timestamps),
       permissions=maybe(any_json), metadata=maybe(any_json), remaining=maybe(bigints),
       refill_amount=maybe(bigints), refill_interval=maybe(intervals), rate_limit_enabled=maybe(st.booleans()),
       rate_limit_max=maybe(ints), rate_limit_window=maybe(intervals), clear=maybe(clear_lists),
       refill_anchor=maybe(timestamps), as_service=st.booleans())
def test_update(app, service, su, existing, data, name, enabled, expires_at, permissions, metadata, remaining,
                refill_amount, refill_interval, rate_limit_enabled, rate_limit_max, rate_limit_window, clear,
                refill_anchor, as_service):
    key_id = data.draw(st.one_of(st.sampled_from(existing["ids"]), st.none(), st.uuids()))
    args = {"id": ("uuid", key_id), "name": ("text", name), "enabled": ("boolean", enabled),
            "expires_at": ("timestamptz_expr", expires_at), "permissions": ("jsonb", permissions),
            "metadata": ("jsonb", metadata), "remaining": ("bigint", remaining),
            "refill_amount": ("bigint", refill_amount), "refill_interval": ("interval", refill_interval),
            "rate_limit_enabled": ("boolean", rate_limit_enabled), "rate_limit_max": ("integer", rate_limit_max),
            "rate_limit_window": ("interval", rate_limit_window), "clear": ("text[]", clear),
            "refill_anchor": ("timestamptz_expr", refill_anchor)}
    call(service if as_service else app, su, "api_key_update", args, None if as_service else existing["user"])
    for key in existing["keys"]:
        assert call(app, su, "api_key_verify", {"key": ("text", key)}, None, one_row=True)


@SETTINGS
@given(data=st.data(), amount=maybe(bigints), reason=maybe(any_text), actor=actors,
       fn=st.sampled_from(["api_key_credits_add", "api_key_credits_subtract", "api_key_credits_set"]))
def test_credit_operations(app, service, su, existing, data, amount, reason, actor, fn):
    key_id = data.draw(st.one_of(st.sampled_from(existing["ids"]), st.none(), st.uuids()))
    client = data.draw(st.sampled_from([app, service]))
    balance = "SELECT (SELECT remaining FROM api_key.keys WHERE id = %s) AS remaining"
    before = su.val(balance, [key_id])
    out = call(client, su, fn, {"id": ("uuid", key_id), "remaining" if fn.endswith("set") else "amount":
                                ("bigint", amount), "reason": ("text", reason)}, actor)
    after = su.val(balance, [key_id])
    if isinstance(out, psycopg.Error):
        assert after == before
    else:
        assert out[0][fn] == after
    for key in existing["keys"]:
        assert call(app, su, "api_key_verify", {"key": ("text", key)}, None, one_row=True)


@SETTINGS
@given(data=st.data(), grace=maybe(intervals), page_size=maybe(ints), after_id=maybe(st.uuids()),
       reference_id=maybe(any_text), reference_type=maybe(any_text), actor=actors)
def test_rotate_get_revoke_list(app, service, su, existing, data, grace, page_size, after_id, reference_id,
                                reference_type, actor):
    key_id = data.draw(st.one_of(st.sampled_from(existing["ids"]), st.none(), st.uuids()))
    client = data.draw(st.sampled_from([app, service]))
    call(client, su, "api_key_rotate", {"id": ("uuid", key_id), "grace": ("interval", grace)}, actor)
    call(client, su, "api_key_get", {"id": ("uuid", key_id)}, actor)
    call(client, su, "api_key_list_for_reference", {
        "reference_id": ("text", reference_id), "reference_type": ("text", reference_type),
        "page_size": ("integer", page_size), "after_id": ("uuid", after_id)}, actor)
    call(client, su, "api_key_revoke", {"id": ("uuid", data.draw(st.one_of(st.none(), st.uuids())))}, actor)


@SETTINGS
@given(config_id=maybe(any_text), prefix=maybe(any_text), body_length=maybe(ints), hash_algorithm=maybe(any_text),
       default_expires_in=maybe(intervals), min_expires_in=maybe(intervals), max_expires_in=maybe(intervals),
       name_required=maybe(st.booleans()), name_min_length=maybe(ints), name_max_length=maybe(ints),
       default_permissions=maybe(any_json), rate_limit_enabled=maybe(st.booleans()), rate_limit_max=maybe(ints),
       rate_limit_window=maybe(intervals), default_remaining=maybe(bigints), refill_amount=maybe(bigints),
       refill_interval=maybe(intervals), actor_may_raise=maybe(clear_lists), settings_json=maybe(any_json),
       refill_anchor=maybe(timestamps))
def test_configurations(service, su, config_id, prefix, body_length, hash_algorithm, default_expires_in,
                        min_expires_in, max_expires_in, name_required, name_min_length, name_max_length,
                        default_permissions, rate_limit_enabled, rate_limit_max, rate_limit_window, default_remaining,
                        refill_amount, refill_interval, actor_may_raise, settings_json, refill_anchor):
    args = {"id": ("text", config_id), "prefix": ("text", prefix), "body_length": ("integer", body_length),
            "hash_algorithm": ("text", hash_algorithm), "default_expires_in": ("interval", default_expires_in),
            "min_expires_in": ("interval", min_expires_in), "max_expires_in": ("interval", max_expires_in),
            "name_required": ("boolean", name_required), "name_min_length": ("integer", name_min_length),
            "name_max_length": ("integer", name_max_length), "default_permissions": ("jsonb", default_permissions),
            "rate_limit_enabled": ("boolean", rate_limit_enabled), "rate_limit_max": ("integer", rate_limit_max),
            "rate_limit_window": ("interval", rate_limit_window), "default_remaining": ("bigint", default_remaining),
            "refill_amount": ("bigint", refill_amount), "refill_interval": ("interval", refill_interval),
            "actor_may_raise": ("text[]", actor_may_raise), "refill_anchor": ("timestamptz_expr", refill_anchor)}
    result = call(service, su, "api_key_config_create", args, None)
    target = config_id if not isinstance(result, psycopg.Error) else "default"
    call(service, su, "api_key_config_update", {"id": ("text", target), "settings": ("jsonb", settings_json)}, None)
    if not isinstance(result, psycopg.Error):
        # A configuration that was accepted can make a key, or refuses with a clear error.
        call(service, su, "api_key_create", {"reference_id": ("text", "cfg_user"), "config_id": ("text", config_id)},
             None)
        call(service, su, "api_key_config_delete", {"id": ("text", config_id)}, None)


@SETTINGS
@given(resource=maybe(any_text), action=maybe(any_text), reference_type=maybe(any_text),
       reference_id=maybe(any_text), what=maybe(any_text))
def test_policy_helpers_and_binding_helpers(app, su, resource, action, reference_type, reference_id, what):
    call(app, su, "api_key_has_permission", {"resource": ("text", resource), "action": ("text", action)}, None,
         one_row=True)
    for sql, params in [("SELECT api_key.may(%s, %s, %s)", [reference_type, reference_id, what]),
                        ("SELECT api_key.is_member(%s)", [reference_id]),
                        ("SELECT api_key.creator_left(%s::uuid)", [str(uuid.uuid4())]),
                        ("SELECT api_key.creator_left(NULL)", [])]:
        assert len(app.rows(sql, params, actor=what if what else None)) == 1
