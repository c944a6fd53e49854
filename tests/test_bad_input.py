"""Bad input to every management function: a standard SQLSTATE (never XX000), a message that
names the argument and never contains a key, and nothing written."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest

from helpers import counts as row_counts
from helpers import create, expect_error, uid

MB = "a" * (1 << 20)
UNKNOWN = str(uuid.UUID(int=0xDEADBEEF))
RANDOM_ID = str(uuid.uuid4())   # a random (v4) id, as keys made before 0.2.0 have: it carries no time

ACTOR = uid("bad_u")          # the user acting in the app-role cases
OTHER = uid("bad_other")      # another user, with a key of its own


def counts(su) -> dict:
    """Row counts that a refused call must leave unchanged, and the configurations' contents."""
    return {**row_counts(su), "configs_content": su.val(
        "SELECT md5(string_agg(c::text, ',' ORDER BY c.id)) FROM api_key.configs c")}


@dataclass
class Case:
    id: str
    who: str                  # "app" (with ACTOR), "app_noactor", "service", "service_actor", "app_bad_actor_*"
    sql: str
    params: tuple = ()
    state: str | frozenset = "22023"
    mentions: str | None = None   # the message must name this argument


def C(id, who, sql, params=(), state="22023", mentions=None):
    return Case(id, who, sql, tuple(params), state if isinstance(state, str) else frozenset(state), mentions)


CREATE = "SELECT * FROM api_key_create(reference_id => %s, {})"


def cr(id, extra, params=(), state="22023", mentions=None, who="app", ref=ACTOR):
    return C(f"create-{id}", who, CREATE.format(extra) if extra else "SELECT * FROM api_key_create(reference_id => %s)",
             (ref, *params), state, mentions)


CASES = [
    # api_key_create
    C("create-reference_id-null", "app", "SELECT * FROM api_key_create(reference_id => NULL)", (), "22004", "reference_id"),
    cr("reference_id-empty", "", (), "22023", "reference_id", ref=""),
    cr("reference_id-1mb", "", (), "22023", "reference_id", ref=MB),
    cr("reference_id-257", "", (), "22023", "reference_id", who="service", ref="r" * 257),
    cr("reference_id-newline", "", (), "22023", "reference_id", who="service", ref="new\nline"),
    cr("reference_id-control", "", (), "22023", "reference_id", who="service", ref="a\x01b"),
    cr("reference_type-null", "reference_type => NULL", (), "22004", "reference_type"),
    cr("reference_type-empty", "reference_type => ''", (), "22023", "reference_type"),
    cr("reference_type-unknown", "reference_type => 'galaxy'", (), "22023", "reference_type"),
    cr("reference_type-1mb", "reference_type => %s", (MB,), "22023", "reference_type"),
    cr("name-empty", "name => ''", (), "22023", "name"),
    cr("name-1mb", "name => %s", (MB,), "22023", "name"),
    cr("config-unknown", "config_id => 'no_such_config'", (), "42704", "configuration"),
    cr("config-empty", "config_id => ''", (), "42704", "configuration"),
    cr("config-1mb", "config_id => %s", (MB,), "42704", "configuration"),
    cr("prefix-space", "prefix => 'sk live_'", (), "22023", "prefix"),
    cr("prefix-quote", "prefix => 'sk''_'", (), "22023", "prefix"),
    cr("prefix-dquote", "prefix => 'sk\"_'", (), "22023", "prefix"),
    cr("prefix-newline", "prefix => E'sk\\n'", (), "22023", "prefix"),
    cr("prefix-unicode", "prefix => 'ключ_'", (), "22023", "prefix"),
    cr("prefix-33", "prefix => %s", ("a" * 32 + "_",), "22023", "prefix"),
    cr("prefix-no-separator", "prefix => 'sk'", (), "22023", "prefix"),
    cr("prefix-starts-with-digit", "prefix => '1sk_'", (), "22023", "prefix"),
    cr("prefix-starts-with-separator", "prefix => '_sk_'", (), "22023", "prefix"),
    cr("prefix-1mb", "prefix => %s", (MB,), "22023", "prefix"),
    cr("expires_in-zero", "expires_in => '0'", (), "22023", "expires_in"),
    cr("expires_in-negative", "expires_in => '-1 day'", (), "22023", "expires_in"),
    cr("expires_in-huge", "expires_in => '100000000 years'", (), "22023", "expires_in"),
    cr("expires_in-101-years", "expires_in => '101 years'", (), "22023", "expires_in"),
    cr("permissions-array", "permissions => '[\"read\"]'", (), "22023", "permissions"),
    cr("permissions-string", "permissions => '\"read\"'", (), "22023", "permissions"),
    cr("permissions-json-null", "permissions => 'null'", (), "22023", "permissions"),
    cr("permissions-not-array", "permissions => '{\"files\": \"read\"}'", (), "22023", "permissions"),
    cr("permissions-number", "permissions => '{\"files\": [1]}'", (), "22023", "permissions"),
    cr("permissions-empty-action", "permissions => '{\"files\": [\"\"]}'", (), "22023", "permissions"),
    cr("permissions-empty-resource", "permissions => '{\"\": [\"read\"]}'", (), "22023", "permissions"),
    cr("permissions-nested", "permissions => '{\"files\": {\"read\": true}}'", (), "22023", "permissions"),
    cr("metadata-array", "metadata => '[]'", (), "22023", "metadata"),
    cr("metadata-string", "metadata => '\"x\"'", (), "22023", "metadata"),
    cr("metadata-number", "metadata => '1'", (), "22023", "metadata"),
    cr("metadata-json-null", "metadata => 'null'", (), "22023", "metadata"),
    cr("remaining-negative", "remaining => -1", (), "22023", "remaining"),
    cr("refill_amount-zero", "refill_amount => 0, refill_interval => '1 day'", (), "22023", "refill_amount"),
    cr("refill_amount-negative", "refill_amount => -5, refill_interval => '1 day'", (), "22023", "refill_amount"),
    cr("refill_amount-alone", "refill_amount => 5", (), "22023", "refill"),
    cr("refill_interval-alone", "refill_interval => '1 day'", (), "22023", "refill"),
    cr("refill_interval-zero", "refill_amount => 5, refill_interval => '0'", (), "22023", "refill_interval"),
    cr("refill_interval-negative", "refill_amount => 5, refill_interval => '-1 hour'", (), "22023", "refill_interval"),
    cr("rate_limit_max-zero", "rate_limit_max => 0, rate_limit_window => '1 minute'", (), "22023", "rate_limit_max"),
    cr("rate_limit_max-negative", "rate_limit_max => -1, rate_limit_window => '1 minute'", (), "22023", "rate_limit_max"),
    cr("rate_limit_window-zero", "rate_limit_max => 5, rate_limit_window => '0'", (), "22023", "rate_limit_window"),
    cr("rate_limit_window-negative", "rate_limit_max => 5, rate_limit_window => '-1 minute'", (), "22023", "rate_limit_window"),
    cr("rate_limit_max-alone", "rate_limit_max => 5", (), "22023", "rate_limit"),
    cr("rate_limit_enabled-alone", "rate_limit_enabled => true", (), "22023", "rate_limit"),
    cr("other-user", "", (), "42501", None, ref=OTHER),
    cr("no-actor", "", (), "42501", "actor", who="app_noactor"),
    cr("actor-257", "", (), "22023", "api_key.actor", who="app_bad_actor_long"),
    cr("actor-control", "", (), "22023", "api_key.actor", who="app_bad_actor_control"),
    cr("service-actor-control", "", (), "22023", "api_key.actor", who="service_bad_actor"),
    cr("permissions-beyond-the-configuration", "permissions => '{\"files\": [\"read\"]}'", (), "42501",
       "permissions"),
    cr("org-not-member", "reference_type => 'organization'", (), "42501", "member", ref=uid("org")),
    C("create-service-null-id", "service",
      "SELECT * FROM api_key_create(reference_id => NULL, reference_type => 'organization')", (), "22004", "reference_id"),
    # api_key_get
    C("get-null", "app", "SELECT * FROM api_key_get(NULL)", (), "22004", "id"),
    C("get-unknown", "app", "SELECT * FROM api_key_get(%s)", (UNKNOWN,), "P0002"),
    C("get-not-a-uuid", "app", "SELECT * FROM api_key_get(%s::uuid)", ("not-a-uuid",), "22P02"),
    C("get-other-user", "app", "SELECT * FROM api_key_get(%(other_id)s)", (), "P0002", "does not exist"),
    C("get-bad-actor", "app_bad_actor_control", "SELECT * FROM api_key_get(%(id)s)", (), "22023", "api_key.actor"),
    C("get-no-actor", "app_noactor", "SELECT * FROM api_key_get(%(id)s)", (), "42501"),
    # api_key_list_for_reference
    C("list-null", "app", "SELECT * FROM api_key_list_for_reference(reference_id => NULL)", (), "22004", "reference_id"),
    C("list-empty", "app", "SELECT * FROM api_key_list_for_reference(reference_id => '')", (), "22023", "reference_id"),
    C("list-1mb", "app", "SELECT * FROM api_key_list_for_reference(reference_id => %s)", (MB,), "22023", "reference_id"),
    C("list-type-unknown", "app",
      "SELECT * FROM api_key_list_for_reference(reference_id => %s, reference_type => 'galaxy')", (ACTOR,), "22023",
      "reference_type"),
    C("list-type-null", "app",
      "SELECT * FROM api_key_list_for_reference(reference_id => %s, reference_type => NULL)", (ACTOR,), "22004",
      "reference_type"),
    *[C(f"list-page_size-{n}", "app",
        f"SELECT * FROM api_key_list_for_reference(reference_id => %s, page_size => {n})", (ACTOR,), "22023", "page_size")
      for n in ("0", "-1", "1001")],
    C("list-page_size-NULL", "app", "SELECT * FROM api_key_list_for_reference(reference_id => %s, page_size => NULL)",
      (ACTOR,), "22004", "page_size"),
    # An id that carries no time (not UUIDv7) and is no key of this reference positions nothing.
    C("list-after-unknown-random-id", "app",
      "SELECT * FROM api_key_list_for_reference(reference_id => %s, after_id => %s)", (ACTOR, RANDOM_ID), "22023",
      "after_id"),
    C("list-after-unknown-non-v7-id", "app",
      "SELECT * FROM api_key_list_for_reference(reference_id => %s, after_id => %s)", (ACTOR, UNKNOWN), "22023",
      "after_id"),
    C("list-other-user", "app", "SELECT * FROM api_key_list_for_reference(reference_id => %s)", (OTHER,), "42501"),
    C("list-no-actor", "app_noactor", "SELECT * FROM api_key_list_for_reference(reference_id => %s)", (ACTOR,), "42501"),
    # api_key_update
    C("update-null", "app", "SELECT * FROM api_key_update(id => NULL, name => 'x')", (), "22004", "id"),
    C("update-unknown", "app", "SELECT * FROM api_key_update(id => %s, name => 'x')", (UNKNOWN,), "P0002"),
    *[C(f"update-{label}", "app", f"SELECT * FROM api_key_update(id => %(id)s, {arg})", (), "22023", mention)
      for label, arg, mention in [
          ("name-empty", "name => ''", "name"),
          ("name-1mb", "name => repeat('a', 1048576)", "name"),
          ("permissions-array", "permissions => '[]'", "permissions"),
          ("permissions-not-array", "permissions => '{\"a\": \"b\"}'", "permissions"),
          ("metadata-array", "metadata => '[1]'", "metadata"),
          ("metadata-json-null", "metadata => 'null'", "metadata"),
          ("remaining-negative", "remaining => -1", "remaining"),
          ("refill_amount-zero", "refill_amount => 0, refill_interval => '1 day'", "refill_amount"),
          ("refill_amount-alone", "refill_amount => 5", "refill"),
          ("refill_interval-negative", "refill_amount => 5, refill_interval => '-1 day'", "refill_interval"),
          ("rate_limit_max-zero", "rate_limit_max => 0, rate_limit_window => '1 minute'", "rate_limit_max"),
          ("rate_limit_max-alone", "rate_limit_max => 5", "rate_limit"),
          ("rate_limit_window-zero", "rate_limit_max => 5, rate_limit_window => '0'", "rate_limit_window"),
          ("rate_limit_enabled-alone", "rate_limit_enabled => true", "rate_limit"),
          ("clear-unknown", "clear => '{bogus}'", "clear"),
          ("clear-conflict", "name => 'x', clear => '{name}'", "name"),
          ("clear-empty-string", "clear => '{\"\"}'", "clear"),
          ("clear-id", "clear => '{id}'", "clear"),
          ("expires_at-past", "expires_at => now() - interval '1 second'", "expires_at"),
          ("expires_at-now", "expires_at => now()", "expires_at"),
          ("expires_at-101-years", "expires_at => now() + interval '101 years'", "expires_at"),
          ("rate_limit_window-11-years", "rate_limit_max => 5, rate_limit_window => '11 years'", "rate_limit_window"),
      ]],
    C("update-clear-null-element", "app", "SELECT * FROM api_key_update(id => %(id)s, clear => ARRAY[NULL]::text[])",
      (), "22004", "clear"),
    C("update-other-user", "app", "SELECT * FROM api_key_update(id => %(other_id)s, name => 'x')", (), "P0002",
      "does not exist"),
    C("update-adds-permissions", "app", "SELECT * FROM api_key_update(id => %(id)s, permissions => '{\"a\": [\"b\"]}')",
      (), "42501", "permissions"),
    C("update-no-actor", "app_noactor", "SELECT * FROM api_key_update(id => %(id)s, name => 'x')", (), "42501"),
    # api_key_revoke / api_key_rotate
    C("revoke-null", "app", "SELECT api_key_revoke(NULL)", (), "22004", "id"),
    C("revoke-no-actor", "app_noactor", "SELECT api_key_revoke(%(id)s)", (), "42501"),
    C("revoke-bad-actor", "app_bad_actor_long", "SELECT api_key_revoke(%(id)s)", (), "22023", "api_key.actor"),
    C("rotate-null", "app", "SELECT * FROM api_key_rotate(id => NULL)", (), "22004", "id"),
    C("rotate-unknown", "app", "SELECT * FROM api_key_rotate(id => %s)", (UNKNOWN,), "P0002"),
    C("rotate-grace-negative", "app", "SELECT * FROM api_key_rotate(id => %(id)s, grace => '-1 second')", (), "22023", "grace"),
    C("rotate-grace-null", "app", "SELECT * FROM api_key_rotate(id => %(id)s, grace => NULL)", (), "22004", "grace"),
    C("rotate-grace-11-years", "app", "SELECT * FROM api_key_rotate(id => %(id)s, grace => '11 years')", (), "22023",
      "grace"),
    C("rotate-other-user", "app", "SELECT * FROM api_key_rotate(id => %(other_id)s)", (), "P0002", "does not exist"),
    C("rotate-no-actor", "app_noactor", "SELECT * FROM api_key_rotate(id => %(id)s)", (), "42501"),
    # api_key_delete_expired
    C("delete_expired-actor", "app", "SELECT api_key_delete_expired()", (), "42501"),
    C("delete_expired-no-actor", "app_noactor", "SELECT api_key_delete_expired()", (), "42501"),
    C("delete_expired-service-with-actor", "service_actor", "SELECT api_key_delete_expired()", (), "42501"),
    # api_key_verify: any key value is fine, but the other arguments are checked
    C("verify-cost-negative", "app_noactor", "SELECT * FROM api_key_verify(%(key)s, cost => -1)", (), "22023", "cost"),
    C("verify-cost-null", "app_noactor", "SELECT * FROM api_key_verify(%(key)s, cost => NULL)", (), "22004", "cost"),
    C("verify-permissions-array", "app_noactor", "SELECT * FROM api_key_verify(%(key)s, permissions => '[]')", (), "22023",
      "permissions"),
    C("verify-permissions-json-null", "app_noactor", "SELECT * FROM api_key_verify(%(key)s, permissions => 'null')", (),
      "22023", "permissions"),
    C("verify-permissions-not-array", "app_noactor",
      "SELECT * FROM api_key_verify(%(key)s, permissions => '{\"a\": \"b\"}')", (), "22023", "permissions"),
    # configurations
    *[C(f"config_create-{label}", "service", f"SELECT * FROM api_key_config_create({args})", (), state, mention)
      for label, args, state, mention in [
          ("id-null", "id => NULL", "22004", "id"),
          ("id-empty", "id => ''", "22023", "id"),
          ("id-space", "id => 'my config'", "22023", "id"),
          ("id-1mb", "id => repeat('a', 1048576)", "22023", "id"),
          ("prefix-space", "id => 'c1', prefix => 'a b'", "22023", "prefix"),
          ("prefix-quote", "id => 'c1', prefix => 'a''b'", "22023", "prefix"),
          ("prefix-no-separator", "id => 'c1', prefix => 'sk'", "22023", "prefix"),
          ("prefix-33", "id => 'c1', prefix => repeat('a', 32) || '_'", "22023", "prefix"),
          ("prefix-null", "id => 'c1', prefix => NULL", "22004", "prefix"),
          ("hash-null", "id => 'c1', hash_algorithm => NULL", "22004", "hash_algorithm"),
          ("name_required-null", "id => 'c1', name_required => NULL", "22004", "name_required"),
          ("metadata_enabled-null", "id => 'c1', metadata_enabled => NULL", "22004", "metadata_enabled"),
          ("prefix_max_length-null", "id => 'c1', prefix_max_length => NULL", "22004", "prefix_max_length"),
          ("actor_may_raise-null", "id => 'c1', actor_may_raise => NULL", "22004", "actor_may_raise"),
          ("actor_may_raise-null-element", "id => 'c1', actor_may_raise => ARRAY[NULL]::text[]", "22004",
           "actor_may_raise"),
          ("actor_may_raise-unknown", "id => 'c1', actor_may_raise => '{everything}'", "22023", "actor_may_raise"),
          ("default_expires_in-101-years", "id => 'c1', default_expires_in => '101 years'", "22023",
           "default_expires_in"),
          ("refill_interval-11-years", "id => 'c1', refill_amount => 1, refill_interval => '11 years'", "22023",
           "refill_interval"),
          ("body_length-short", "id => 'c1', body_length => 10", "22023", "body_length"),
          ("body_length-long", "id => 'c1', body_length => 1000", "22023", "body_length"),
          ("body_length-null", "id => 'c1', body_length => NULL", "22004", "body_length"),
          ("hash-unknown", "id => 'c1', hash_algorithm => 'md5'", "22023", "hash_algorithm"),
          ("argon2-short-body", "id => 'c1', hash_algorithm => 'argon2id', body_length => 32", "22023", "body_length"),
          ("min-over-max", "id => 'c1', min_expires_in => '2 days', max_expires_in => '1 day'", "22023", "expires_in"),
          ("default-expires-negative", "id => 'c1', default_expires_in => '-1 day'", "22023", "default_expires_in"),
          ("name-lengths", "id => 'c1', name_min_length => 5, name_max_length => 2", "22023", "name_"),
          ("default_permissions", "id => 'c1', default_permissions => '[]'", "22023", "default_permissions"),
          ("rate-limit-incomplete", "id => 'c1', rate_limit_enabled => true", "22023", "rate_limit"),
          ("rate_limit_max-zero", "id => 'c1', rate_limit_max => 0", "22023", "rate_limit_max"),
          ("default_remaining-negative", "id => 'c1', default_remaining => -1", "22023", "default_remaining"),
          ("refill-alone", "id => 'c1', refill_amount => 5", "22023", "refill"),
          ("duplicate", "id => 'default'", "23505", "default"),
      ]],
    C("config_create-app", "app_noactor", "SELECT * FROM api_key_config_create(id => 'c1')", (), "42501"),
    C("config_create-app-actor", "app", "SELECT * FROM api_key_config_create(id => 'c1')", (), "42501"),
    C("config_create-service-actor", "service_actor", "SELECT * FROM api_key_config_create(id => 'c1')", (), "42501"),
    *[C(f"config_update-{label}", "service", "SELECT * FROM api_key_config_update(id => %s, settings => %s::jsonb)",
        (cfg, settings), state, mention)
      for label, cfg, settings, state, mention in [
          ("unknown", "no_such_config", '{"prefix": "a_"}', "42704", "configuration"),
          ("settings-null", "default", None, "22004", "settings"),
          ("settings-array", "default", "[]", "22023", "settings"),
          ("settings-unknown", "default", '{"bogus": 1}', "22023", "bogus"),
          ("settings-id", "default", '{"id": "other"}', "22023", "id"),
          ("settings-type", "default", '{"body_length": "abc"}', "22023", "settings"),
          ("body_length", "default", '{"body_length": 10}', "22023", "body_length"),
          ("prefix", "default", '{"prefix": "a b"}', "22023", "prefix"),
          ("hash", "default", '{"hash_algorithm": "md5"}', "22023", "hash_algorithm"),
          ("interval", "default", '{"default_expires_in": "-1 day"}', "22023", "default_expires_in"),
      ]],
    # JSON null for a setting that may not be NULL (it "clears" only settings that may be empty
    # of a value: expiry bounds, default permissions, limits). Run on a configuration of the
    # test's own, so that a failure cannot change the default configuration for other tests.
    *[C(f"config_update-{setting}-null", "service",
        f"SELECT * FROM api_key_config_update(id => %(cfg)s, settings => '{{\"{setting}\": null}}')", (),
        {"22004", "22023"}, setting)
      for setting in ("prefix", "body_length", "hash_algorithm", "name_required", "metadata_enabled", "name_min_length",
                      "prefix_min_length", "rate_limit_enabled", "actor_may_raise")],
    C("config_update-actor_may_raise-unknown", "service",
      "SELECT * FROM api_key_config_update(id => %(cfg)s, settings => '{\"actor_may_raise\": [\"everything\"]}')", (),
      "22023", "actor_may_raise"),
    C("config_update-app", "app", "SELECT * FROM api_key_config_update(id => 'default', settings => '{}')", (), "42501"),
    C("config_delete-default", "service", "SELECT api_key_config_delete('default')", (), "22023", "default"),
    C("config_delete-unknown", "service", "SELECT api_key_config_delete('no_such_config')", (), "42704", "configuration"),
    C("config_delete-null", "service", "SELECT api_key_config_delete(NULL)", (), "22004", "id"),
    C("config_delete-in-use", "service", "SELECT api_key_config_delete(%(cfg)s)", (), "2BP01", "key"),
    C("config_delete-app", "app", "SELECT api_key_config_delete(%(cfg)s)", (), "42501"),
    # membership source and reference types
    C("membership-app", "app", "SELECT api_key_use_membership_table('api_key.members')", (), "42501"),
    C("membership-no-relation", "service", "SELECT api_key_use_membership_table('no_such_table')", (), "42P01"),
    C("membership-bad-column", "service",
      "SELECT api_key_use_membership_table('api_key.members', organization_column => 'nope')", (), "42703", "nope"),
    C("membership-null-column", "service",
      "SELECT api_key_use_membership_table('api_key.members', user_column => NULL)", (), "22004", "user_column"),
    C("membership-column-type", "service",
      "SELECT api_key_use_membership_table('api_key.keys', organization_column => 'reference_id', "
      "user_column => 'created_by', role_column => 'permissions')", (), "22023", "permissions"),
    C("reftype-app", "app", "SELECT api_key_register_reference_type('project', 'pg_catalog.texteq(text,text)')", (), "42501"),
    C("reftype-builtin", "service", "SELECT api_key_register_reference_type('user', 'pg_catalog.texteq(text,text)')", (),
      "22023", "user"),
    C("reftype-bad-name", "service",
      "SELECT api_key_register_reference_type('Bad Type', 'pg_catalog.texteq(text,text)')", (), "22023", "reference_type"),
    C("reftype-1mb", "service", "SELECT api_key_register_reference_type(repeat('a', 1048576), 'pg_catalog.texteq(text,text)')",
      (), "22023", "reference_type"),
    C("reftype-null", "service", "SELECT api_key_register_reference_type(NULL, 'pg_catalog.texteq(text,text)')", (),
      "22004", "reference_type"),
    C("reftype-wrong-signature", "service",
      "SELECT api_key_register_reference_type('thing', 'pg_catalog.texteq(text,text)')", (), "22023", "authorizer"),
]


@pytest.fixture(scope="module")
def ctx(app, service, su):
    mine = create(app, actor=ACTOR, reference_id=ACTOR)
    other = create(su, reference_id=OTHER)
    cfg = uid("bad_cfg")
    service.rows("SELECT * FROM api_key_config_create(id => %s, actor_may_create => true)", [cfg])
    create(service, reference_id=uid("svc"), config_id=cfg)
    return {"id": mine["id"], "key": mine["key"], "other_id": other["id"], "other_key": other["key"],
            "cfg": cfg, "actor": ACTOR}


PARAMS = [pytest.param(c, id=c.id) for c in CASES]


@pytest.mark.parametrize("case", PARAMS)
def test_bad_input_is_refused_cleanly(case: Case, ctx, app, service, su):
    client, actor = {"app": (app, ACTOR), "app_noactor": (app, None), "service": (service, None),
                     "service_actor": (service, ACTOR), "app_bad_actor_long": (app, "u" * 257),
                     "app_bad_actor_control": (app, "u\tx"), "service_bad_actor": (service, "u\nx")}[case.who]
    params = ctx if "%(" in case.sql else list(case.params)
    before = counts(su)
    err = expect_error(set(case.state) if isinstance(case.state, frozenset) else case.state,
                       client.rows, case.sql, params, actor=actor,
                       secrets=(ctx["key"], ctx["other_key"], ctx["key"][3:-6], ctx["other_key"][3:-6]))
    assert counts(su) == before, "a refused call wrote something"
    if case.mentions:
        assert case.mentions.lower() in err.diag.message_primary.lower(), \
            f"message does not name {case.mentions!r}: {err.diag.message_primary}"
    assert len(str(err)) < 20_000, "the error echoes a huge argument back"
    # Both keys still work after the refused call.
    assert app.val("SELECT code FROM api_key_verify(%s)", [ctx["key"]]) == "VALID"


def test_revoking_what_is_not_there_is_false_not_an_error(ctx, app, service, su):
    """api_key_revoke answers false, with nothing written, for an unknown id, for a key the caller
    may not read, and for a key already revoked: what a retrying client sees."""
    before = counts(su)
    assert app.val("SELECT api_key_revoke(%s)", [UNKNOWN], actor=ACTOR) is False
    assert app.val("SELECT api_key_revoke(%s)", [RANDOM_ID], actor=ACTOR) is False
    assert app.val("SELECT api_key_revoke(%s)", [ctx["other_id"]], actor=ACTOR) is False
    assert service.val("SELECT api_key_revoke(%s)", [UNKNOWN]) is False
    assert counts(su) == before, "a revoke that revoked nothing wrote something"
    assert app.val("SELECT code FROM api_key_verify(%s)", [ctx["other_key"]]) == "VALID"
    user = uid("u")
    made = create(service, reference_id=user)
    assert app.val("SELECT api_key_revoke(%s)", [made["id"]], actor=user) is True
    after = counts(su)
    assert app.val("SELECT api_key_revoke(%s)", [made["id"]], actor=user) is False
    assert service.val("SELECT api_key_revoke(%s)", [made["id"]]) is False
    assert counts(su) == after
    assert su.val("SELECT count(*) FROM api_key.audit_log WHERE key_id = %s AND action = 'revoke'", [made["id"]]) == 1


def test_a_cursor_from_elsewhere_positions_the_page_and_reveals_nothing(ctx, app, service):
    """after_id is a position: a key id of another reference (UUIDv7, carrying its creation time)
    pages this reference's keys as from that time, whether or not the caller may see that key."""
    user = uid("u")
    older = create(service, reference_id=user, name="older")
    foreign = create(service, reference_id=uid("someone_else"))     # between the two in time
    newer = create(service, reference_id=user, name="newer")
    page = app.rows("SELECT id FROM api_key_list_for_reference(reference_id => %s, after_id => %s)",
                    [user, foreign["id"]], actor=user)
    assert [r["id"] for r in page] == [older["id"]]
    # Another user's key, made before all of this user's keys: nothing is older.
    assert app.rows("SELECT id FROM api_key_list_for_reference(reference_id => %s, after_id => %s)",
                    [user, ctx["other_id"]], actor=user) == []
    assert [r["id"] for r in app.rows("SELECT id FROM api_key_list_for_reference(reference_id => %s)", [user],
                                      actor=user)] == [newer["id"], older["id"]]
