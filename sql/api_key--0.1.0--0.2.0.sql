-- api_key 0.1.0 → 0.2.0. Released: never edit this file; fix forward in the next script.
--
-- 0.2.0 rewrote the management functions in Rust and decides access in one place; the 0.1.0
-- internal functions (PL/pgSQL workers, caller tokens, member_role, actor_may, …) go. Public
-- functions keep their oids (CREATE OR REPLACE), so that nothing of the application's that
-- depends on them is dropped; only api_key_config_create changes its signature (new
-- arguments: actor_may_raise, actor_may_create). Keys, secrets, credits, configurations, membership and the audit
-- log are kept as they are; open rate-limit windows are carried over to the new layout.
-- tests/test_upgrade.py checks that the result is identical to a fresh install of 0.2.0.

\echo Use "ALTER EXTENSION api_key UPDATE TO '0.2.0'" to load this file. \quit

-- 1. What called the functions that go: the policies and the audit view (recreated below).
DROP POLICY keys_visible ON api_key.keys;
DROP POLICY organizations_visible ON api_key.organizations;
DROP POLICY organizations_service ON api_key.organizations;
DROP POLICY members_visible ON api_key.members;
DROP POLICY members_service ON api_key.members;
DROP POLICY role_permissions_visible ON api_key.role_permissions;
DROP POLICY role_permissions_service ON api_key.role_permissions;
DROP POLICY audit_visible ON api_key.audit_log;
DROP VIEW api_key.keys_without_creator;

-- 2. The 0.1.0 internals.
DROP FUNCTION api_key.use_membership_table(bigint, regclass, text, text, text);
DROP FUNCTION api_key.register_reference_type(bigint, text, regprocedure);
DROP FUNCTION api_key.create_key(bigint, text, text, text, text, text, interval, jsonb, jsonb, bigint, bigint, interval, integer, interval, boolean);
DROP FUNCTION api_key.update_key(bigint, uuid, text, boolean, timestamptz, jsonb, jsonb, bigint, bigint, interval, boolean, integer, interval, text[]);
DROP FUNCTION api_key.revoke_key(bigint, uuid);
DROP FUNCTION api_key.rotate_key(bigint, uuid, interval);
DROP FUNCTION api_key.delete_expired(bigint);
DROP FUNCTION api_key.list_keys(bigint, text, text, text, integer, uuid);
DROP FUNCTION api_key.key_for(bigint, uuid, text);
DROP FUNCTION api_key.config_create(bigint, api_key.configs);
DROP FUNCTION api_key.config_update(bigint, text, jsonb);
DROP FUNCTION api_key.config_delete(bigint, text);
DROP FUNCTION api_key.check_config(api_key.configs);
DROP FUNCTION api_key.check_key_settings(api_key.configs, text, jsonb, jsonb, bigint, bigint, interval, integer, interval);
DROP FUNCTION api_key.expiry(api_key.configs, interval);
DROP FUNCTION api_key.config(text);
DROP FUNCTION api_key.audit(bigint, text, uuid, text, text, jsonb);
DROP FUNCTION api_key.authorize(boolean, text, text, text);
DROP FUNCTION api_key.require_service(boolean, text);
DROP FUNCTION api_key.check_reference_type(text);
DROP FUNCTION api_key.check_reference_id(text);
DROP FUNCTION api_key.actor_may(text, text, text, text);
DROP FUNCTION api_key.role_grants(text, text, text);
DROP FUNCTION api_key.member_role(text, text);
DROP FUNCTION api_key.may_read(text, text);
DROP FUNCTION api_key.member_role_from(oid, text, text, text, text, text);
DROP FUNCTION api_key.call_authorizer(oid, text, text, text);
DROP FUNCTION api_key.new_secret(text, integer, text);
DROP FUNCTION api_key.permissions_problem(jsonb);
DROP FUNCTION api_key.caller_token();
DROP FUNCTION api_key.caller_is_service(bigint);
DROP FUNCTION api_key.caller_role(bigint);
-- New arguments (actor_may_raise, actor_may_create): the only public function whose
-- signature changes.
DROP FUNCTION @extschema@.api_key_config_create(text, text, integer, text, interval, interval, interval, boolean, integer, integer, integer, integer, boolean, jsonb, boolean, integer, interval, bigint, bigint, interval);

-- 3. Tables.
ALTER TABLE api_key.configs ADD COLUMN actor_may_raise text[] NOT NULL DEFAULT '{}';
COMMENT ON COLUMN api_key.configs.actor_may_raise IS 'Limits actors (not only the service) may raise: any of enabled, expires_at, permissions, remaining, refill, rate_limit';
ALTER TABLE api_key.configs ADD COLUMN actor_may_create boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN api_key.configs.actor_may_create IS 'Whether actors may create keys of this configuration (else only the service); true for "default"';
-- In 0.1.0 actors could create keys of any configuration: the existing ones keep allowing it
-- (new ones are the service's unless they say otherwise).
UPDATE api_key.configs SET actor_may_create = true;
ALTER TABLE api_key.keys ALTER COLUMN updated_at SET DEFAULT clock_timestamp();

-- Rate-limit windows are kept by their end now: carry the open ones over.
CREATE UNLOGGED TABLE api_key.rate_limit_windows_0_2 (
    key_id     uuid PRIMARY KEY,
    window_end timestamptz NOT NULL,
    admitted   integer NOT NULL
);
INSERT INTO api_key.rate_limit_windows_0_2 (key_id, window_end, admitted)
SELECT w.key_id, w.window_start OPERATOR(pg_catalog.+) LEAST(k.rate_limit_window, interval '10 years'), w.admitted
  FROM api_key.rate_limit_windows AS w JOIN api_key.keys AS k ON k.id OPERATOR(pg_catalog.=) w.key_id
 WHERE k.rate_limit_window IS NOT NULL;
DROP TABLE api_key.rate_limit_windows;
ALTER TABLE api_key.rate_limit_windows_0_2 RENAME TO rate_limit_windows;
ALTER TABLE api_key.rate_limit_windows RENAME CONSTRAINT rate_limit_windows_0_2_pkey TO rate_limit_windows_pkey;
COMMENT ON TABLE api_key.rate_limit_windows IS 'Current fixed rate-limit window per key, with its end (unlogged: no WAL per verification; emptied by a crash)';
ALTER TABLE api_key.rate_limit_windows ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_key.rate_limit_windows FORCE ROW LEVEL SECURITY;
REVOKE ALL ON api_key.rate_limit_windows FROM PUBLIC;

-- 4. Functions (as the build of 0.2.0 generates them).
CREATE OR REPLACE FUNCTION @extschema@."api_key_authenticate"(
	"key" TEXT,
	"permissions" jsonb DEFAULT NULL,
	"cost" INT DEFAULT 1,
	"config_id" TEXT DEFAULT NULL
) RETURNS api_key.verification
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'api_key_authenticate_wrapper';

CREATE OR REPLACE FUNCTION @extschema@."api_key_config_create"(
	"id" TEXT,
	"prefix" TEXT DEFAULT 'sk_',
	"body_length" INT DEFAULT 32,
	"hash_algorithm" TEXT DEFAULT 'sha256',
	"default_expires_in" interval DEFAULT NULL,
	"min_expires_in" interval DEFAULT NULL,
	"max_expires_in" interval DEFAULT NULL,
	"name_required" bool DEFAULT false,
	"name_min_length" INT DEFAULT 1,
	"name_max_length" INT DEFAULT 128,
	"prefix_min_length" INT DEFAULT 0,
	"prefix_max_length" INT DEFAULT 32,
	"metadata_enabled" bool DEFAULT true,
	"default_permissions" jsonb DEFAULT NULL,
	"rate_limit_enabled" bool DEFAULT false,
	"rate_limit_max" INT DEFAULT NULL,
	"rate_limit_window" interval DEFAULT NULL,
	"default_remaining" bigint DEFAULT NULL,
	"refill_amount" bigint DEFAULT NULL,
	"refill_interval" interval DEFAULT NULL,
	"actor_may_raise" TEXT[] DEFAULT '{}',
	"actor_may_create" bool DEFAULT false
) RETURNS api_key.configs
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'api_key_config_create_wrapper';

CREATE OR REPLACE FUNCTION @extschema@."api_key_config_delete"(
	"id" TEXT
) RETURNS bool
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'api_key_config_delete_wrapper';

CREATE OR REPLACE FUNCTION @extschema@."api_key_config_update"(
	"id" TEXT,
	"settings" jsonb
) RETURNS api_key.configs
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'api_key_config_update_wrapper';

CREATE OR REPLACE FUNCTION @extschema@."api_key_create"(
	"reference_id" TEXT,
	"reference_type" TEXT DEFAULT 'user',
	"name" TEXT DEFAULT NULL,
	"config_id" TEXT DEFAULT NULL,
	"prefix" TEXT DEFAULT NULL,
	"expires_in" interval DEFAULT NULL,
	"permissions" jsonb DEFAULT NULL,
	"metadata" jsonb DEFAULT NULL,
	"remaining" bigint DEFAULT NULL,
	"refill_amount" bigint DEFAULT NULL,
	"refill_interval" interval DEFAULT NULL,
	"rate_limit_max" INT DEFAULT NULL,
	"rate_limit_window" interval DEFAULT NULL,
	"rate_limit_enabled" bool DEFAULT NULL
) RETURNS api_key.created_key
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'api_key_create_wrapper';

CREATE OR REPLACE FUNCTION @extschema@."api_key_current_key_id"() RETURNS uuid
STRICT STABLE PARALLEL RESTRICTED
LANGUAGE c
AS 'MODULE_PATHNAME', 'api_key_current_key_id_wrapper';

CREATE OR REPLACE FUNCTION @extschema@."api_key_current_reference_id"() RETURNS TEXT
STRICT STABLE PARALLEL RESTRICTED
LANGUAGE c
AS 'MODULE_PATHNAME', 'api_key_current_reference_id_wrapper';

CREATE OR REPLACE FUNCTION @extschema@."api_key_current_reference_type"() RETURNS TEXT
STRICT STABLE PARALLEL RESTRICTED
LANGUAGE c
AS 'MODULE_PATHNAME', 'api_key_current_reference_type_wrapper';

CREATE OR REPLACE FUNCTION @extschema@."api_key_delete_expired"() RETURNS bigint
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'api_key_delete_expired_wrapper';

CREATE OR REPLACE FUNCTION @extschema@."api_key_get"(
	"id" uuid
) RETURNS api_key.keys
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'api_key_get_wrapper';

CREATE OR REPLACE FUNCTION @extschema@."api_key_has_permission"(
	"resource" TEXT,
	"action" TEXT
) RETURNS bool
STABLE PARALLEL RESTRICTED
LANGUAGE c
AS 'MODULE_PATHNAME', 'api_key_has_permission_wrapper';

CREATE OR REPLACE FUNCTION @extschema@."api_key_list_for_reference"(
	"reference_id" TEXT,
	"reference_type" TEXT DEFAULT 'user',
	"config_id" TEXT DEFAULT NULL,
	"page_size" INT DEFAULT 100,
	"after_id" uuid DEFAULT NULL
) RETURNS SETOF api_key.keys
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'api_key_list_for_reference_wrapper';

CREATE OR REPLACE FUNCTION @extschema@."api_key_register_reference_type"(
	"reference_type" TEXT,
	"authorizer" regprocedure
) RETURNS void
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'api_key_register_reference_type_wrapper';

CREATE OR REPLACE FUNCTION @extschema@."api_key_revoke"(
	"id" uuid
) RETURNS bool
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'api_key_revoke_wrapper';

CREATE OR REPLACE FUNCTION @extschema@."api_key_rotate"(
	"id" uuid,
	"grace" interval DEFAULT '0'
) RETURNS api_key.created_key
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'api_key_rotate_wrapper';

CREATE OR REPLACE FUNCTION @extschema@."api_key_update"(
	"id" uuid,
	"name" TEXT DEFAULT NULL,
	"enabled" bool DEFAULT NULL,
	"expires_at" timestamp with time zone DEFAULT NULL,
	"permissions" jsonb DEFAULT NULL,
	"metadata" jsonb DEFAULT NULL,
	"remaining" bigint DEFAULT NULL,
	"refill_amount" bigint DEFAULT NULL,
	"refill_interval" interval DEFAULT NULL,
	"rate_limit_enabled" bool DEFAULT NULL,
	"rate_limit_max" INT DEFAULT NULL,
	"rate_limit_window" interval DEFAULT NULL,
	"clear" TEXT[] DEFAULT NULL
) RETURNS api_key.keys
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'api_key_update_wrapper';

CREATE OR REPLACE FUNCTION @extschema@."api_key_use_membership_table"(
	"relation" regclass,
	"organization_column" TEXT DEFAULT 'organization_id',
	"user_column" TEXT DEFAULT 'user_id',
	"role_column" TEXT DEFAULT 'role'
) RETURNS void
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'api_key_use_membership_table_wrapper';

CREATE OR REPLACE FUNCTION @extschema@."api_key_verify"(
	"key" TEXT,
	"permissions" jsonb DEFAULT NULL,
	"cost" INT DEFAULT 1,
	"config_id" TEXT DEFAULT NULL
) RETURNS api_key.verification
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'api_key_verify_wrapper';

CREATE OR REPLACE FUNCTION api_key."actor"() RETURNS TEXT
STRICT STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'actor_wrapper';

CREATE FUNCTION api_key."is_service"() RETURNS bool
STRICT STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'is_service_wrapper';

CREATE OR REPLACE FUNCTION api_key."is_member"(
	"organization_id" TEXT
) RETURNS bool
STABLE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'is_member_wrapper';

CREATE OR REPLACE FUNCTION api_key."creator_left"(
	"key_id" uuid
) RETURNS bool
STABLE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'creator_left_wrapper';

CREATE OR REPLACE FUNCTION api_key."may"(
	"reference_type" TEXT,
	"reference_id" TEXT,
	"action" TEXT
) RETURNS bool
STABLE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'may_wrapper';

-- 5. Policies, the audit view, privileges and comments, as a fresh install makes them.
-- Keys: exactly those the actor may read; with no actor, the service sees all.
CREATE POLICY keys_visible ON api_key.keys FOR SELECT
    USING (api_key.may(reference_type, reference_id, 'read'));

-- Configurations are not secret: anyone with the extension's roles may read them.

-- key_secrets and rate_limit_windows: no policy and no grant. Nobody but the functions.

-- Membership: members of an organization see it and its members; the service sees and
-- writes all.
CREATE POLICY organizations_visible ON api_key.organizations FOR SELECT
    USING (api_key.is_member(id));
CREATE POLICY organizations_service ON api_key.organizations FOR ALL TO api_key_admin
    USING (api_key.is_service()) WITH CHECK (api_key.is_service());
CREATE POLICY members_visible ON api_key.members FOR SELECT
    USING (api_key.is_member(organization_id));
CREATE POLICY members_service ON api_key.members FOR ALL TO api_key_admin
    USING (api_key.is_service()) WITH CHECK (api_key.is_service());
CREATE POLICY role_permissions_visible ON api_key.role_permissions FOR SELECT
    USING (organization_id IS NULL OR api_key.is_member(organization_id));
CREATE POLICY role_permissions_service ON api_key.role_permissions FOR ALL TO api_key_admin
    USING (api_key.is_service()) WITH CHECK (api_key.is_service());

-- Audit: the service reads all; an actor reads the entries of references whose keys it may
-- update (a user's own; an organization's for its owners and admins by default).
CREATE POLICY audit_visible ON api_key.audit_log FOR SELECT
    USING (api_key.is_service() OR api_key.may(reference_type, reference_id, 'update'));

-- Audit view: organization keys whose creator is no longer a member. The keys keep working
-- (ownership is the organization); this is for reviewing them.
CREATE VIEW api_key.keys_without_creator WITH (security_invoker = true) AS
SELECT k.id, k.reference_type, k.reference_id, k.name, k.start, k.created_by, k.created_at, k.last_used_at
  FROM api_key.keys AS k
 WHERE k.reference_type OPERATOR(pg_catalog.=) 'organization' AND k.created_by IS NOT NULL
   AND api_key.creator_left(k.id);
COMMENT ON VIEW api_key.keys_without_creator IS 'Organization keys whose creator has left the organization (for audits; the keys keep working)';

GRANT SELECT ON api_key.keys_without_creator TO api_key_user, api_key_admin;

-- What the policies call, as the querying role: each answers for the current actor only.
REVOKE EXECUTE ON FUNCTION api_key.is_service(), api_key.may(text, text, text), api_key.is_member(text),
                            api_key.creator_left(uuid)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api_key.actor(), api_key.is_service(), api_key.may(text, text, text), api_key.is_member(text),
                          api_key.creator_left(uuid)
    TO api_key_user, api_key_admin;

-- Every public function of the extension: from PUBLIC to the extension's roles. Found through
-- pg_depend so that no function can be forgotten here.
DO $grants$
DECLARE
    fn regprocedure;
BEGIN
    FOR fn IN
        SELECT p.oid::pg_catalog.regprocedure
          FROM pg_catalog.pg_proc AS p
          JOIN pg_catalog.pg_depend AS d ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass
                                       AND d.objid OPERATOR(pg_catalog.=) p.oid
                                       AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass
                                       AND d.deptype OPERATOR(pg_catalog.=) 'e'
          JOIN pg_catalog.pg_extension AS e ON e.oid OPERATOR(pg_catalog.=) d.refobjid
                                           AND e.extname OPERATOR(pg_catalog.=) 'api_key'
         WHERE p.pronamespace OPERATOR(pg_catalog.=) '@extschema@'::pg_catalog.regnamespace
           AND p.proname OPERATOR(pg_catalog.~~) 'api\_key\_%'
           AND p.proname OPERATOR(pg_catalog.!~~) 'api\_key\_current\_%'
           AND p.proname OPERATOR(pg_catalog.<>) 'api_key_has_permission'
    LOOP
        EXECUTE pg_catalog.format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', fn);
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO api_key_user, api_key_admin', fn);
    END LOOP;
END
$grants$;
-- The api_key_current_* helpers and api_key_has_permission stay executable by PUBLIC: they
-- only read the caller's own transaction binding, and application policies call them.

-- Comments on the functions (written in Rust; their doc comments say the same at more length).
COMMENT ON FUNCTION @extschema@.api_key_create(text, text, text, text, text, interval, jsonb, jsonb, bigint, bigint, interval, integer, interval, boolean) IS
    'Create a key for (reference_type, reference_id). Returns the plaintext key once; only its hash is stored.';
COMMENT ON FUNCTION @extschema@.api_key_verify(text, jsonb, integer, text) IS
    'Verify an API key: exactly one row (valid, code, key and usage), never an error for any key value. Checks existence, enabled, expiry, permissions, rate limit, credits; a refused call consumes nothing.';
COMMENT ON FUNCTION @extschema@.api_key_authenticate(text, jsonb, integer, text) IS
    'Verify a key and bind the current transaction to it (see api_key_current_*); raises 28000 with the code when not valid.';
COMMENT ON FUNCTION @extschema@.api_key_get(uuid) IS 'One key (never its hash), if the caller may read it';
COMMENT ON FUNCTION @extschema@.api_key_list_for_reference(text, text, text, integer, uuid) IS
    'Keys of a reference, newest first, page_size per page; pass the last id seen as after_id for the next page';
COMMENT ON FUNCTION @extschema@.api_key_update(uuid, text, boolean, timestamp with time zone, jsonb, jsonb, bigint, bigint, interval, boolean, integer, interval, text[]) IS
    'Change a key. NULL arguments leave a field as it is; clear => ''{expires_at,remaining}'' sets fields to NULL. Actors may only narrow limits and permissions.';
COMMENT ON FUNCTION @extschema@.api_key_revoke(uuid) IS
    'Revoke a key: it is deleted and verifies as NOT_FOUND from now on. True if this call revoked it, false if there is no such key.';
COMMENT ON FUNCTION @extschema@.api_key_rotate(uuid, interval) IS
    'New plaintext for the same key (owner, permissions, limits, credits); the old one works until grace has passed. Needs api_key:update and api_key:create.';
COMMENT ON FUNCTION @extschema@.api_key_delete_expired() IS
    'Delete expired keys and rotated-away secrets past their grace; returns how many of both. Service only.';
COMMENT ON FUNCTION @extschema@.api_key_config_create(text, text, integer, text, interval, interval, interval, boolean, integer, integer, integer, integer, boolean, jsonb, boolean, integer, interval, bigint, bigint, interval, text[], boolean) IS
    'Create a named key configuration. Service only.';
COMMENT ON FUNCTION @extschema@.api_key_config_update(text, jsonb) IS
    'Change settings of a configuration: settings => ''{"column": value, …}'' (JSON null clears). Applies to keys created afterwards. Service only.';
COMMENT ON FUNCTION @extschema@.api_key_config_delete(text) IS 'Delete a configuration that has no keys. Service only.';
COMMENT ON FUNCTION @extschema@.api_key_use_membership_table(regclass, text, text, text) IS
    'Read organization membership live from an application table (e.g. better-auth''s member), as its owner. NULL: back to api_key.members. Service only.';
COMMENT ON FUNCTION @extschema@.api_key_register_reference_type(text, regprocedure) IS
    'Register a custom owner type (project, store, …) and its authorizer(actor, reference_id, action) returns boolean, run as its owner. Service only.';
COMMENT ON FUNCTION @extschema@.api_key_current_key_id() IS 'Id of the key this transaction was authenticated with (api_key_authenticate), or NULL';
COMMENT ON FUNCTION @extschema@.api_key_current_reference_type() IS 'Owner type of the key this transaction was authenticated with, or NULL';
COMMENT ON FUNCTION @extschema@.api_key_current_reference_id() IS 'Owner id of the key this transaction was authenticated with, or NULL';
COMMENT ON FUNCTION @extschema@.api_key_has_permission(text, text) IS 'Whether the key this transaction was authenticated with grants action on resource';
COMMENT ON FUNCTION api_key.actor() IS 'The actor of this transaction (api_key.actor), or NULL';
COMMENT ON FUNCTION api_key.is_service() IS 'Policy test: does the caller act as the service (no actor set, and a superuser or a member of api_key_admin)? False for an invalid actor.';
COMMENT ON FUNCTION api_key.may(text, text, text) IS 'Policy test: may the current actor (or the service) create/read/update/delete keys of this reference? Remembered per statement.';
COMMENT ON FUNCTION api_key.is_member(text) IS 'Policy test: is the current actor a member of this organization?';
COMMENT ON FUNCTION api_key.creator_left(uuid) IS 'For keys_without_creator: has this organization key''s creator left the organization? NULL unless the current actor may read the organization''s keys.';
