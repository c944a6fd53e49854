-- Who may do what: the actor, the service, membership, role permissions and custom
-- reference types. Every SECURITY DEFINER function pins search_path to pg_catalog, pg_temp
-- and qualifies every name, so that no caller-controlled schema can shadow what it calls.

CREATE FUNCTION api_key.actor() RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT NULLIF(pg_catalog.current_setting('api_key.actor', true), '') $$;
COMMENT ON FUNCTION api_key.actor() IS 'The actor of this transaction (api_key.actor), or NULL';

-- Role of p_user_id in p_organization_id, from api_key.members or from the application
-- table named in api_key.membership_source (read live, never copied).
CREATE FUNCTION api_key.member_role(p_organization_id text, p_user_id text) RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    src api_key.membership_source;
    found_role text;
BEGIN
    IF p_organization_id IS NULL OR p_user_id IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT * INTO src FROM api_key.membership_source;
    IF NOT FOUND THEN
        SELECT m.role INTO found_role FROM api_key.members m
         WHERE m.organization_id = p_organization_id AND m.user_id = p_user_id;
        RETURN found_role;
    END IF;
    -- Read as the table's owner, never as the extension owner (see src/run_as_owner.rs).
    RETURN api_key.member_role_from(src.relation, src.organization_column, src.user_column, src.role_column,
                                    p_organization_id, p_user_id);
END
$$;
COMMENT ON FUNCTION api_key.member_role(text, text) IS 'Role of a user in an organization, from the configured membership source; NULL when not a member';

-- Does any of p_roles (comma-separated, as some auth libraries store several) grant
-- api_key:<p_permission> in the organization? An organization's own rows for a role replace
-- the defaults for that role.
CREATE FUNCTION api_key.role_grants(p_organization_id text, p_roles text, p_permission text) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (
        SELECT 1
          FROM pg_catalog.unnest(pg_catalog.string_to_array(p_roles, ',')) AS r(raw),
               LATERAL (SELECT pg_catalog.btrim(r.raw) AS role) AS t
         WHERE CASE WHEN EXISTS (SELECT 1 FROM api_key.role_permissions o
                                  WHERE o.organization_id = p_organization_id AND o.role = t.role)
                    THEN EXISTS (SELECT 1 FROM api_key.role_permissions o
                                  WHERE o.organization_id = p_organization_id AND o.role = t.role
                                    AND o.permission = p_permission)
                    ELSE EXISTS (SELECT 1 FROM api_key.role_permissions d
                                  WHERE d.organization_id IS NULL AND d.role = t.role
                                    AND d.permission = p_permission)
               END)
$$;
COMMENT ON FUNCTION api_key.role_grants(text, text, text) IS 'Whether an organization role grants api_key:<permission>';

-- Whether p_actor may p_action ('create', 'read', 'update', 'delete') the keys of a reference.
-- Never raises: used by policies.
CREATE FUNCTION api_key.actor_may(p_actor text, p_reference_type text, p_reference_id text, p_action text)
RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found_role text;
    authorizer regprocedure;
BEGIN
    IF p_actor IS NULL OR p_reference_type IS NULL OR p_reference_id IS NULL THEN
        RETURN false;
    ELSIF p_reference_type = 'user' THEN
        RETURN p_reference_id = p_actor;
    ELSIF p_reference_type = 'organization' THEN
        found_role := api_key.member_role(p_reference_id, p_actor);
        RETURN found_role IS NOT NULL AND api_key.role_grants(p_reference_id, found_role, p_action);
    END IF;
    SELECT t.authorizer INTO authorizer FROM api_key.reference_types t WHERE t.reference_type = p_reference_type;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    -- Called as the authorizer's owner, never as the extension owner (see src/run_as_owner.rs).
    RETURN coalesce(api_key.call_authorizer(authorizer, p_actor, p_reference_id, p_action), false);
END
$$;
COMMENT ON FUNCTION api_key.actor_may(text, text, text, text) IS 'Whether an actor may create/read/update/delete the keys of a reference (no error)';

-- api_key.may_read(reference_type, reference_id), the read test of the policies, is written in
-- Rust (src/visibility.rs): it remembers its answer per reference for the rest of a statement.

CREATE FUNCTION api_key.check_reference_type(p_reference_type text) RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_reference_type IS NULL THEN
        RAISE EXCEPTION 'reference_type must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF p_reference_type IN ('user', 'organization')
       OR EXISTS (SELECT 1 FROM api_key.reference_types t WHERE t.reference_type = p_reference_type) THEN
        RETURN;
    END IF;
    RAISE EXCEPTION 'reference_type "%" is not known', left(p_reference_type, 64)
        USING ERRCODE = 'invalid_parameter_value',
              HINT = 'Use ''user'', ''organization'', or register a type with api_key_register_reference_type().';
END
$$;

CREATE FUNCTION api_key.check_reference_id(p_reference_id text) RETURNS void
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF p_reference_id IS NULL THEN
        RAISE EXCEPTION 'reference_id must not be null' USING ERRCODE = 'null_value_not_allowed';
    ELSIF length(p_reference_id) NOT BETWEEN 1 AND 256 THEN
        RAISE EXCEPTION 'reference_id must be 1 to 256 characters long' USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

-- Raise unless the caller may p_action the keys of the reference: the service (no actor,
-- privileged caller), or the actor by ownership, membership or the type's authorizer.
CREATE FUNCTION api_key.authorize(p_service boolean, p_reference_type text, p_reference_id text, p_action text)
RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    who text := api_key.actor();
    found_role text;
BEGIN
    PERFORM api_key.check_reference_type(p_reference_type);
    IF who IS NULL THEN
        IF p_service THEN
            RETURN;
        END IF;
        RAISE EXCEPTION 'no actor: set api_key.actor to act for a user, or use a role granted api_key_admin to act as the service'
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'SET LOCAL api_key.actor = ''<user id>''; or GRANT api_key_admin TO <service role>;';
    END IF;
    IF p_reference_type = 'user' THEN
        IF p_reference_id = who THEN
            RETURN;
        END IF;
        RAISE EXCEPTION 'actor "%" may not % the keys of user "%"', left(who, 256), p_action, left(p_reference_id, 256)
            USING ERRCODE = 'insufficient_privilege';
    ELSIF p_reference_type = 'organization' THEN
        found_role := api_key.member_role(p_reference_id, who);
        IF found_role IS NULL THEN
            RAISE EXCEPTION 'actor "%" is not a member of organization "%"', left(who, 256), left(p_reference_id, 256)
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        IF NOT api_key.role_grants(p_reference_id, found_role, p_action) THEN
            RAISE EXCEPTION 'actor "%" (role "%") lacks permission api_key:% in organization "%"',
                  left(who, 256), found_role, p_action, left(p_reference_id, 256)
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'Roles and their permissions are in api_key.role_permissions.';
        END IF;
    ELSIF NOT api_key.actor_may(who, p_reference_type, p_reference_id, p_action) THEN
        RAISE EXCEPTION 'actor "%" may not % the keys of % "%"', left(who, 256), p_action, p_reference_type, left(p_reference_id, 256)
            USING ERRCODE = 'insufficient_privilege';
    END IF;
END
$$;
COMMENT ON FUNCTION api_key.authorize(boolean, text, text, text) IS 'Raises 42501 unless the caller may act on the keys of a reference';

CREATE FUNCTION api_key.require_service(p_service boolean, p_what text) RETURNS void
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    IF NOT coalesce(p_service, false) OR api_key.actor() IS NOT NULL THEN
        RAISE EXCEPTION '% is for the service: a role granted api_key_admin, with no api_key.actor set', p_what
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'RESET api_key.actor, and GRANT api_key_admin TO <role> if needed.';
    END IF;
END
$$;

CREATE FUNCTION api_key.audit(p_token bigint, p_action text, p_key_id uuid, p_reference_type text,
                              p_reference_id text, p_detail jsonb DEFAULT NULL) RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO api_key.audit_log (actor, database_role, action, key_id, reference_type, reference_id, detail)
    VALUES (api_key.actor(), coalesce(api_key.caller_role(p_token), session_user::text), p_action, p_key_id,
            p_reference_type, p_reference_id, p_detail)
$$;

-- Point membership at an application's own table, read live. NULL relation: back to
-- api_key.members.
CREATE FUNCTION api_key.use_membership_table(p_token bigint, p_relation regclass, p_organization_column text,
                                             p_user_column text, p_role_column text) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    col text;
BEGIN
    PERFORM api_key.require_service(api_key.caller_is_service(p_token), 'api_key_use_membership_table');
    DELETE FROM api_key.membership_source;
    IF p_relation IS NULL THEN
        PERFORM api_key.audit(p_token, 'membership_source', NULL, NULL, NULL, jsonb_build_object('relation', NULL));
        RETURN;
    END IF;
    FOREACH col IN ARRAY ARRAY[p_organization_column, p_user_column, p_role_column] LOOP
        IF col IS NULL OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                                       WHERE a.attrelid = p_relation AND a.attname = col
                                         AND a.attnum > 0 AND NOT a.attisdropped) THEN
            RAISE EXCEPTION 'column "%" does not exist in %', col, p_relation
                USING ERRCODE = 'undefined_column',
                      HINT = 'Name the organization, user and role columns: organization_column => ..., user_column => ..., role_column => ...';
        END IF;
        -- Membership is read as the table's owner: the caller must be allowed to read it too,
        -- or this would be a way to read what it may not.
        IF NOT pg_catalog.has_column_privilege(api_key.caller_role(p_token), p_relation, col, 'SELECT') THEN
            RAISE EXCEPTION 'permission denied: % may not read column "%" of %', api_key.caller_role(p_token), col, p_relation
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'GRANT SELECT on the membership table to the role that configures it.';
        END IF;
    END LOOP;
    INSERT INTO api_key.membership_source (relation, organization_column, user_column, role_column)
    VALUES (p_relation, p_organization_column, p_user_column, p_role_column);
    PERFORM api_key.audit(p_token, 'membership_source', NULL, NULL, NULL,
                          jsonb_build_object('relation', p_relation::text, 'organization_column', p_organization_column,
                                             'user_column', p_user_column, 'role_column', p_role_column));
END
$$;

CREATE FUNCTION @extschema@.api_key_use_membership_table(relation regclass, organization_column text DEFAULT 'organization_id',
                                                    user_column text DEFAULT 'user_id', role_column text DEFAULT 'role')
RETURNS void LANGUAGE sql VOLATILE
AS $$ SELECT api_key.use_membership_table(api_key.caller_token(), relation, organization_column, user_column, role_column) $$;
COMMENT ON FUNCTION @extschema@.api_key_use_membership_table(regclass, text, text, text) IS
    'Read organization membership live from an application table (e.g. better-auth''s member). NULL: back to api_key.members. Service only.';

CREATE FUNCTION api_key.register_reference_type(p_token bigint, p_reference_type text, p_authorizer regprocedure) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    fn pg_catalog.pg_proc;
BEGIN
    PERFORM api_key.require_service(api_key.caller_is_service(p_token), 'api_key_register_reference_type');
    IF p_reference_type IS NULL OR p_authorizer IS NULL THEN
        RAISE EXCEPTION 'reference_type and authorizer must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF p_reference_type !~ '^[a-z][a-z0-9_]{0,62}$' OR p_reference_type IN ('user', 'organization') THEN
        RAISE EXCEPTION 'reference_type "%" is not allowed', left(p_reference_type, 64)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use lower-case letters, digits and _, starting with a letter; user and organization are built in.';
    END IF;
    SELECT * INTO fn FROM pg_catalog.pg_proc p WHERE p.oid = p_authorizer;
    IF fn.prorettype <> 'boolean'::regtype OR fn.pronargs <> 3 OR fn.proretset
       OR fn.proargtypes[0] <> 'text'::regtype OR fn.proargtypes[1] <> 'text'::regtype
       OR fn.proargtypes[2] <> 'text'::regtype THEN
        RAISE EXCEPTION 'authorizer % must take (actor text, reference_id text, action text) and return boolean', p_authorizer
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- The authorizer runs as its owner: the caller must be able to act as that owner, or this
    -- would be a way to run someone else's function with their rights.
    IF NOT pg_catalog.pg_has_role(api_key.caller_role(p_token), fn.proowner, 'USAGE') THEN
        RAISE EXCEPTION 'permission denied: authorizer % belongs to %, which % may not act as',
              p_authorizer, fn.proowner::regrole, api_key.caller_role(p_token)
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Register a function owned by the registering role.';
    END IF;
    INSERT INTO api_key.reference_types (reference_type, authorizer) VALUES (p_reference_type, p_authorizer)
    ON CONFLICT (reference_type) DO UPDATE SET authorizer = excluded.authorizer;
    PERFORM api_key.audit(p_token, 'register_reference_type', NULL, p_reference_type, NULL,
                          jsonb_build_object('authorizer', p_authorizer::text));
END
$$;

CREATE FUNCTION @extschema@.api_key_register_reference_type(reference_type text, authorizer regprocedure)
RETURNS void LANGUAGE sql VOLATILE
AS $$ SELECT api_key.register_reference_type(api_key.caller_token(), reference_type, authorizer) $$;
COMMENT ON FUNCTION @extschema@.api_key_register_reference_type(text, regprocedure) IS
    'Register a custom owner type (project, store, …) and its authorizer(actor, reference_id, action) returns boolean. Service only.';
