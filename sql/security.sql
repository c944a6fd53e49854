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

REVOKE EXECUTE ON FUNCTION
    @extschema@.api_key_verify(text, jsonb, integer, text),
    @extschema@.api_key_authenticate(text, jsonb, integer, text),
    @extschema@.api_key_create(text, text, text, text, text, interval, jsonb, jsonb, bigint, bigint, interval, integer, interval, boolean),
    @extschema@.api_key_get(uuid),
    @extschema@.api_key_list_for_reference(text, text, text, integer, uuid),
    @extschema@.api_key_update(uuid, text, boolean, timestamptz, jsonb, jsonb, bigint, bigint, interval, boolean, integer, interval, text[]),
    @extschema@.api_key_revoke(uuid), @extschema@.api_key_rotate(uuid, interval),
    @extschema@.api_key_delete_expired(),
    @extschema@.api_key_config_create(text, text, integer, text, interval, interval, interval, boolean, integer, integer, integer, integer, boolean, jsonb, boolean, integer, interval, bigint, bigint, interval),
    @extschema@.api_key_config_update(text, jsonb), @extschema@.api_key_config_delete(text),
    @extschema@.api_key_use_membership_table(regclass, text, text, text),
    @extschema@.api_key_register_reference_type(text, regprocedure)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    @extschema@.api_key_verify(text, jsonb, integer, text),
    @extschema@.api_key_authenticate(text, jsonb, integer, text),
    @extschema@.api_key_create(text, text, text, text, text, interval, jsonb, jsonb, bigint, bigint, interval, integer, interval, boolean),
    @extschema@.api_key_get(uuid),
    @extschema@.api_key_list_for_reference(text, text, text, integer, uuid),
    @extschema@.api_key_update(uuid, text, boolean, timestamptz, jsonb, jsonb, bigint, bigint, interval, boolean, integer, interval, text[]),
    @extschema@.api_key_revoke(uuid), @extschema@.api_key_rotate(uuid, interval),
    @extschema@.api_key_delete_expired(),
    @extschema@.api_key_config_create(text, text, integer, text, interval, interval, interval, boolean, integer, integer, integer, integer, boolean, jsonb, boolean, integer, interval, bigint, bigint, interval),
    @extschema@.api_key_config_update(text, jsonb), @extschema@.api_key_config_delete(text),
    @extschema@.api_key_use_membership_table(regclass, text, text, text),
    @extschema@.api_key_register_reference_type(text, regprocedure)
    TO api_key_user, api_key_admin;
-- The api_key_current_* helpers and api_key_has_permission stay executable by PUBLIC: they
-- only read the caller's own transaction binding, and application policies call them.
