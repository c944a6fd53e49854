-- Row-level security and privileges. Runs last, when every object exists.
--
-- Application roles (granted api_key_user) read through RLS and change nothing directly:
-- every change goes through the management functions, which check the actor. The service
-- (api_key_admin) may also write membership tables with plain SQL. Superusers bypass RLS.

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

-- Keys: exactly those the actor may read; with no actor, the service sees all.
CREATE POLICY keys_visible ON api_key.keys FOR SELECT
    USING (api_key.may_read(reference_type, reference_id));

-- Configurations are not secret: anyone with the extension's roles may read them.
CREATE POLICY configs_visible ON api_key.configs FOR SELECT USING (true);

-- key_secrets and rate_limit_windows: no policy and no grant. Nobody but the functions.

-- Membership: members of an organization see it and its members; the service sees and
-- writes all.
CREATE POLICY organizations_visible ON api_key.organizations FOR SELECT
    USING (api_key.member_role(id, api_key.actor()) IS NOT NULL);
CREATE POLICY organizations_service ON api_key.organizations FOR ALL TO api_key_admin
    USING (api_key.actor() IS NULL) WITH CHECK (api_key.actor() IS NULL);
CREATE POLICY members_visible ON api_key.members FOR SELECT
    USING (api_key.member_role(organization_id, api_key.actor()) IS NOT NULL);
CREATE POLICY members_service ON api_key.members FOR ALL TO api_key_admin
    USING (api_key.actor() IS NULL) WITH CHECK (api_key.actor() IS NULL);
CREATE POLICY role_permissions_visible ON api_key.role_permissions FOR SELECT
    USING (organization_id IS NULL OR api_key.member_role(organization_id, api_key.actor()) IS NOT NULL);
CREATE POLICY role_permissions_service ON api_key.role_permissions FOR ALL TO api_key_admin
    USING (api_key.actor() IS NULL) WITH CHECK (api_key.actor() IS NULL);
CREATE POLICY membership_source_service ON api_key.membership_source FOR SELECT TO api_key_admin USING (true);
CREATE POLICY reference_types_visible ON api_key.reference_types FOR SELECT USING (true);

-- Audit: the service reads all; an actor reads the entries of references whose keys it may
-- update (a user's own; an organization's for its owners and admins by default).
CREATE POLICY audit_visible ON api_key.audit_log FOR SELECT
    USING (CASE WHEN api_key.actor() IS NULL THEN pg_catalog.pg_has_role('api_key_admin', 'USAGE')
                ELSE api_key.actor_may(api_key.actor(), reference_type, reference_id, 'update') END);

-- Privileges.
REVOKE ALL ON ALL TABLES IN SCHEMA api_key FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA api_key FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA api_key FROM PUBLIC;
GRANT USAGE ON SCHEMA api_key TO api_key_user, api_key_admin;
GRANT SELECT ON api_key.keys, api_key.configs, api_key.organizations, api_key.members, api_key.role_permissions,
                api_key.reference_types, api_key.audit_log, api_key.keys_without_creator
    TO api_key_user, api_key_admin;
GRANT SELECT ON api_key.membership_source TO api_key_admin;
GRANT INSERT, UPDATE, DELETE ON api_key.organizations, api_key.members, api_key.role_permissions TO api_key_admin;

-- Functions that policies and wrappers call as the invoking role. The workers are safe to
-- expose: each re-checks the caller through its token and the actor.
GRANT EXECUTE ON FUNCTION
    api_key.actor(), api_key.may_read(text, text), api_key.member_role(text, text),
    api_key.actor_may(text, text, text, text), api_key.caller_token(),
    api_key.create_key(bigint, text, text, text, text, text, interval, jsonb, jsonb, bigint, bigint, interval, integer, interval, boolean),
    api_key.key_for(bigint, uuid, text),
    api_key.list_keys(bigint, text, text, text, integer, uuid),
    api_key.update_key(bigint, uuid, text, boolean, timestamptz, jsonb, jsonb, bigint, bigint, interval, boolean, integer, interval, text[]),
    api_key.revoke_key(bigint, uuid), api_key.rotate_key(bigint, uuid, interval), api_key.delete_expired(bigint),
    api_key.config_create(bigint, api_key.configs), api_key.config_update(bigint, text, jsonb),
    api_key.config_delete(bigint, text), api_key.use_membership_table(bigint, regclass, text, text, text),
    api_key.register_reference_type(bigint, text, regprocedure)
    TO api_key_user, api_key_admin;

-- Every public function of the extension: from PUBLIC to the extension's roles. Found through
-- pg_depend so that no function can be forgotten here.
DO $grants$
DECLARE
    fn regprocedure;
BEGIN
    FOR fn IN
        SELECT p.oid::regprocedure
          FROM pg_catalog.pg_proc p
          JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid
                                     AND d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.deptype = 'e'
          JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid AND e.extname = 'api_key'
         WHERE p.pronamespace = '@extschema@'::regnamespace
           AND p.proname LIKE 'api\_key\_%'
           AND p.proname NOT LIKE 'api\_key\_current\_%' AND p.proname <> 'api_key_has_permission'
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', fn);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO api_key_user, api_key_admin', fn);
    END LOOP;
END
$grants$;
-- The api_key_current_* helpers and api_key_has_permission stay executable by PUBLIC: they
-- only read the caller's own transaction binding, and application policies call them.

-- Comments on the functions written in Rust (the SQL-defined ones carry theirs).
COMMENT ON FUNCTION @extschema@.api_key_verify(text, jsonb, integer, text) IS
    'Verify an API key: exactly one row (valid, code, key and usage), never an error for any key value. Checks existence, enabled, expiry, permissions, rate limit, credits; a refused call consumes nothing.';
COMMENT ON FUNCTION @extschema@.api_key_authenticate(text, jsonb, integer, text) IS
    'Verify a key and bind the current transaction to it (see api_key_current_*); raises 28000 with the code when not valid.';
COMMENT ON FUNCTION @extschema@.api_key_current_key_id() IS 'Id of the key this transaction was authenticated with (api_key_authenticate), or NULL';
COMMENT ON FUNCTION @extschema@.api_key_current_reference_type() IS 'Owner type of the key this transaction was authenticated with, or NULL';
COMMENT ON FUNCTION @extschema@.api_key_current_reference_id() IS 'Owner id of the key this transaction was authenticated with, or NULL';
COMMENT ON FUNCTION @extschema@.api_key_has_permission(text, text) IS 'Whether the key this transaction was authenticated with grants action on resource';
COMMENT ON FUNCTION api_key.caller_token() IS 'Internal: a token naming the calling role for this transaction (see docs/security.md)';
COMMENT ON FUNCTION api_key.caller_is_service(bigint) IS 'Internal: whether the role behind a caller token may act as the service';
COMMENT ON FUNCTION api_key.caller_role(bigint) IS 'Internal: the role behind a caller token, for the audit log';
COMMENT ON FUNCTION api_key.new_secret(text, integer, text) IS 'Internal: a new key, its display start, index lookup value and Argon2 hash';
COMMENT ON FUNCTION api_key.may_read(text, text) IS 'Row-level-security test for reading keys of a reference (remembered per statement)';
COMMENT ON FUNCTION api_key.permissions_problem(jsonb) IS 'Why a value is not a permissions object ({"resource": ["action", …]}), or NULL';
