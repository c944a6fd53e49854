-- Row-level security, privileges and comments. Runs last, when every object exists.
--
-- Application roles (granted api_key_user) read through RLS and change nothing directly:
-- every change goes through the management functions, which decide access in one place
-- (src/access). The service (api_key_admin) may also write the membership tables with plain
-- SQL. Superusers bypass RLS. The policies call functions that answer only for the current
-- role and actor (src/access/policy.rs).

ALTER TABLE api_key.configs ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_key.configs FORCE ROW LEVEL SECURITY;
ALTER TABLE api_key.keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_key.keys FORCE ROW LEVEL SECURITY;
ALTER TABLE api_key.key_secrets ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_key.key_secrets FORCE ROW LEVEL SECURITY;
ALTER TABLE api_key.rate_limit_windows ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_key.rate_limit_windows FORCE ROW LEVEL SECURITY;
ALTER TABLE api_key.organizations ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_key.organizations FORCE ROW LEVEL SECURITY;
ALTER TABLE api_key.members ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_key.members FORCE ROW LEVEL SECURITY;
ALTER TABLE api_key.role_permissions ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_key.role_permissions FORCE ROW LEVEL SECURITY;
ALTER TABLE api_key.membership_source ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_key.membership_source FORCE ROW LEVEL SECURITY;
ALTER TABLE api_key.reference_types ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_key.reference_types FORCE ROW LEVEL SECURITY;
ALTER TABLE api_key.audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_key.audit_log FORCE ROW LEVEL SECURITY;
ALTER TABLE api_key.usage ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_key.usage FORCE ROW LEVEL SECURITY;
ALTER TABLE api_key.usage_rollup ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_key.usage_rollup FORCE ROW LEVEL SECURITY;

-- Keys: exactly those the actor may read; with no actor, the service sees all.
CREATE POLICY keys_visible ON api_key.keys FOR SELECT
    USING (api_key.may(reference_type, reference_id, 'read'));

-- Configurations are not secret: anyone with the extension's roles may read them.
CREATE POLICY configs_visible ON api_key.configs FOR SELECT USING (true);

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
CREATE POLICY membership_source_service ON api_key.membership_source FOR SELECT TO api_key_admin USING (true);
CREATE POLICY reference_types_visible ON api_key.reference_types FOR SELECT USING (true);

-- Audit: the service reads all; an actor reads the entries of references whose keys it may
-- update (a user's own; an organization's for its owners and admins by default).
CREATE POLICY audit_visible ON api_key.audit_log FOR SELECT
    USING (api_key.is_service() OR api_key.may(reference_type, reference_id, 'update'));

-- Usage analytics: the rows of keys the actor may read, like the keys; with no actor, the
-- service sees all, including verifications of keys that were not found (no owner).
CREATE POLICY usage_visible ON api_key.usage FOR SELECT
    USING (api_key.is_service() OR api_key.may(reference_type, reference_id, 'read'));
CREATE POLICY usage_rollup_visible ON api_key.usage_rollup FOR SELECT USING (true);
CREATE VIEW api_key.usage_by_minute WITH (security_invoker = true) AS
SELECT u.key_id, u.reference_type, u.reference_id, u.config_id, u.bucket, u.code, u.tags, u.verifications, u.credits_spent
  FROM api_key.usage AS u
 WHERE u.resolution OPERATOR(pg_catalog.=) 'minute';
-- Hour rows, and the minute rows not rolled up yet added up per hour.
CREATE VIEW api_key.usage_by_hour WITH (security_invoker = true) AS
SELECT u.key_id, u.reference_type, u.reference_id, u.config_id, u.bucket, u.code, u.tags, u.verifications, u.credits_spent
  FROM api_key.usage AS u
 WHERE u.resolution OPERATOR(pg_catalog.=) 'hour'
UNION ALL
SELECT u.key_id, u.reference_type, u.reference_id, u.config_id, pg_catalog.date_trunc('hour', u.bucket, 'UTC'),
       u.code, u.tags, pg_catalog.sum(u.verifications)::bigint, pg_catalog.sum(u.credits_spent)::bigint
  FROM api_key.usage AS u
 WHERE u.resolution OPERATOR(pg_catalog.=) 'minute'
   AND u.bucket OPERATOR(pg_catalog.>=) COALESCE((SELECT r.through FROM api_key.usage_rollup AS r
                                                  WHERE r.resolution OPERATOR(pg_catalog.=) 'hour'), '-infinity')
 GROUP BY u.key_id, u.reference_type, u.reference_id, u.config_id, 5, u.code, u.tags;
-- Day rows, and the hour and minute rows not rolled up yet added up per day.
CREATE VIEW api_key.usage_by_day WITH (security_invoker = true) AS
SELECT u.key_id, u.reference_type, u.reference_id, u.config_id, u.bucket, u.code, u.tags, u.verifications, u.credits_spent
  FROM api_key.usage AS u
 WHERE u.resolution OPERATOR(pg_catalog.=) 'day'
UNION ALL
SELECT u.key_id, u.reference_type, u.reference_id, u.config_id, pg_catalog.date_trunc('day', u.bucket, 'UTC'),
       u.code, u.tags, pg_catalog.sum(u.verifications)::bigint, pg_catalog.sum(u.credits_spent)::bigint
  FROM api_key.usage AS u
 WHERE (u.resolution OPERATOR(pg_catalog.=) 'hour'
        AND u.bucket OPERATOR(pg_catalog.>=) COALESCE((SELECT r.through FROM api_key.usage_rollup AS r
                                                       WHERE r.resolution OPERATOR(pg_catalog.=) 'day'), '-infinity'))
    OR (u.resolution OPERATOR(pg_catalog.=) 'minute'
        AND u.bucket OPERATOR(pg_catalog.>=) COALESCE((SELECT r.through FROM api_key.usage_rollup AS r
                                                       WHERE r.resolution OPERATOR(pg_catalog.=) 'hour'), '-infinity'))
 GROUP BY u.key_id, u.reference_type, u.reference_id, u.config_id, 5, u.code, u.tags;
COMMENT ON VIEW api_key.usage_by_minute IS 'Verifications per key, minute (bucket, UTC), code and tag set, with credits spent; kept for api_key.usage_minute_retention';
COMMENT ON VIEW api_key.usage_by_hour IS 'Verifications per key, hour (bucket, UTC), code and tag set, with credits spent; kept for api_key.usage_hour_retention';
COMMENT ON VIEW api_key.usage_by_day IS 'Verifications per key, day (bucket, UTC), code and tag set, with credits spent; kept until deleted';

-- Audit view: organization keys whose creator is no longer a member. The keys keep working
-- (ownership is the organization); this is for reviewing them.
CREATE VIEW api_key.keys_without_creator WITH (security_invoker = true) AS
SELECT k.id, k.reference_type, k.reference_id, k.name, k.start, k.created_by, k.created_at, k.last_used_at
  FROM api_key.keys AS k
 WHERE k.reference_type OPERATOR(pg_catalog.=) 'organization' AND k.created_by IS NOT NULL
   AND api_key.creator_left(k.id);
COMMENT ON VIEW api_key.keys_without_creator IS 'Organization keys whose creator has left the organization (for audits; the keys keep working)';

-- Privileges.
REVOKE ALL ON ALL TABLES IN SCHEMA api_key FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA api_key FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA api_key FROM PUBLIC;
GRANT USAGE ON SCHEMA api_key TO api_key_user, api_key_admin;
GRANT SELECT ON api_key.keys, api_key.configs, api_key.organizations, api_key.members, api_key.role_permissions,
                api_key.reference_types, api_key.audit_log, api_key.keys_without_creator,
                api_key.usage, api_key.usage_rollup, api_key.usage_by_minute, api_key.usage_by_hour, api_key.usage_by_day
    TO api_key_user, api_key_admin;
GRANT SELECT ON api_key.membership_source TO api_key_admin;
GRANT INSERT, UPDATE, DELETE ON api_key.organizations, api_key.members, api_key.role_permissions TO api_key_admin;

-- What the policies call, as the querying role: each answers for the current actor only.
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
COMMENT ON FUNCTION @extschema@.api_key_create(text, text, text, text, text, interval, jsonb, jsonb, bigint, bigint, interval, integer, interval, boolean, timestamp with time zone) IS
    'Create a key for (reference_type, reference_id). Returns the plaintext key once; only its hash is stored.';
COMMENT ON FUNCTION @extschema@.api_key_verify(text, jsonb, integer, text, text[]) IS
    'Verify an API key: exactly one row (valid, code, key and usage), never an error for any key value. Checks existence, enabled, expiry, permissions, rate limit, credits; a refused call consumes nothing. Counted, with its tags, in the usage analytics.';
COMMENT ON FUNCTION @extschema@.api_key_authenticate(text, jsonb, integer, text, text[]) IS
    'Verify a key and bind the current transaction to it (see api_key_current_*); raises 28000 with the code when not valid.';
COMMENT ON FUNCTION @extschema@.api_key_flush_usage() IS
    'Write the usage counts waiting in memory now (the background flush does it every api_key.usage_flush_interval) and apply the retention settings; returns the rows written';
COMMENT ON FUNCTION @extschema@.api_key_get(uuid) IS 'One key (never its hash), if the caller may read it';
COMMENT ON FUNCTION @extschema@.api_key_list_for_reference(text, text, text, integer, uuid) IS
    'Keys of a reference, newest first, page_size per page; pass the last id seen as after_id for the next page';
COMMENT ON FUNCTION @extschema@.api_key_update(uuid, text, boolean, timestamp with time zone, jsonb, jsonb, bigint, bigint, interval, boolean, integer, interval, text[], timestamp with time zone) IS
    'Change a key. NULL arguments leave a field as it is; clear => ''{expires_at,remaining}'' sets fields to NULL. Actors may only narrow limits and permissions.';
COMMENT ON FUNCTION @extschema@.api_key_revoke(uuid) IS
    'Revoke a key: it is deleted and verifies as NOT_FOUND from now on. True if this call revoked it, false if there is no such key.';
COMMENT ON FUNCTION @extschema@.api_key_rotate(uuid, interval) IS
    'New plaintext for the same key (owner, permissions, limits, credits); the old one works until grace has passed. Needs api_key:update and api_key:create.';
COMMENT ON FUNCTION @extschema@.api_key_delete_expired() IS
    'Delete expired keys and rotated-away secrets past their grace; returns how many of both. Service only.';
COMMENT ON FUNCTION @extschema@.api_key_credits_add(uuid, bigint, text) IS
    'Add amount credits to a key, atomically; returns the balance after. Audited with reason. Service only.';
COMMENT ON FUNCTION @extschema@.api_key_credits_subtract(uuid, bigint, text) IS
    'Subtract amount credits from a key, atomically, never below zero (22023, nothing taken); returns the balance after. Audited with reason. Service only.';
COMMENT ON FUNCTION @extschema@.api_key_credits_set(uuid, bigint, text) IS
    'Set a key''s credit balance (NULL: unlimited, unless it has a refill); returns it. Audited with reason. Service only.';
COMMENT ON FUNCTION @extschema@.api_key_next_refill_at(api_key.keys) IS
    'When the key (a row of api_key.keys) next refills its credits: refill_interval after the last refill, or the next point of its calendar schedule (refill_anchor); NULL without a refill.';
COMMENT ON FUNCTION @extschema@.api_key_config_create(text, text, integer, text, interval, interval, interval, boolean, integer, integer, integer, integer, boolean, jsonb, boolean, integer, interval, bigint, bigint, interval, text[], boolean, timestamp with time zone) IS
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
