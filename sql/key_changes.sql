-- Changing keys: update, revoke, rotate, clean up; and the audit view of keys whose creator
-- left. Same pattern as keys.sql: an invoker wrapper passes the caller token to a definer worker.

CREATE FUNCTION api_key.update_key(p_token bigint, p_id uuid, p_name text, p_enabled boolean, p_expires_at timestamptz,
                                   p_permissions jsonb, p_metadata jsonb, p_remaining bigint, p_refill_amount bigint,
                                   p_refill_interval interval, p_rate_limit_enabled boolean, p_rate_limit_max integer,
                                   p_rate_limit_window interval, p_clear text[])
RETURNS api_key.keys
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k api_key.keys := api_key.key_for(p_token, p_id, 'update');
    before api_key.keys := k;
    cfg api_key.configs := api_key.config(k.config_id);
    bad text;
    changed jsonb;
BEGIN
    SELECT c INTO bad FROM unnest(p_clear) c
     WHERE c IS NULL OR c NOT IN ('name', 'expires_at', 'permissions', 'metadata', 'remaining', 'refill');
    IF FOUND THEN
        RAISE EXCEPTION 'clear: cannot clear "%"', bad USING ERRCODE = 'invalid_parameter_value',
              HINT = 'clear accepts name, expires_at, permissions, metadata, remaining, refill.';
    END IF;
    IF cfg.max_expires_in IS NOT NULL AND p_expires_at > now() + cfg.max_expires_in THEN
        RAISE EXCEPTION 'expires_at is later than configuration "%" allows (%)', cfg.id, cfg.max_expires_in
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    k.name := CASE WHEN 'name' = ANY(p_clear) THEN NULL ELSE coalesce(p_name, k.name) END;
    IF 'name' = ANY(p_clear) AND cfg.name_required THEN
        RAISE EXCEPTION 'name is required by configuration "%"', cfg.id USING ERRCODE = 'null_value_not_allowed';
    END IF;
    k.enabled := coalesce(p_enabled, k.enabled);
    k.expires_at := CASE WHEN 'expires_at' = ANY(p_clear) THEN NULL ELSE coalesce(p_expires_at, k.expires_at) END;
    k.permissions := CASE WHEN 'permissions' = ANY(p_clear) THEN NULL ELSE coalesce(p_permissions, k.permissions) END;
    k.metadata := CASE WHEN 'metadata' = ANY(p_clear) THEN NULL ELSE coalesce(p_metadata, k.metadata) END;
    k.remaining := CASE WHEN 'remaining' = ANY(p_clear) THEN NULL ELSE coalesce(p_remaining, k.remaining) END;
    IF 'refill' = ANY(p_clear) THEN
        k.refill_amount := NULL;
        k.refill_interval := NULL;
    ELSIF p_refill_amount IS NOT NULL OR p_refill_interval IS NOT NULL THEN
        k.refill_amount := coalesce(p_refill_amount, k.refill_amount);
        k.refill_interval := coalesce(p_refill_interval, k.refill_interval);
    END IF;
    k.rate_limit_max := coalesce(p_rate_limit_max, k.rate_limit_max);
    k.rate_limit_window := coalesce(p_rate_limit_window, k.rate_limit_window);
    k.rate_limit_enabled := coalesce(p_rate_limit_enabled,
                                     CASE WHEN p_rate_limit_max IS NOT NULL OR p_rate_limit_window IS NOT NULL THEN true END,
                                     k.rate_limit_enabled);
    -- Only what this call changes is checked against the configuration: tightening a
    -- configuration must not lock existing keys (they keep the settings they were made with).
    PERFORM api_key.check_key_settings(cfg, p_name, p_permissions, p_metadata, p_remaining,
                                       CASE WHEN p_refill_amount IS NOT NULL OR p_refill_interval IS NOT NULL THEN k.refill_amount END,
                                       CASE WHEN p_refill_amount IS NOT NULL OR p_refill_interval IS NOT NULL THEN k.refill_interval END,
                                       p_rate_limit_max, p_rate_limit_window);
    IF k.rate_limit_enabled AND (k.rate_limit_max IS NULL OR k.rate_limit_window IS NULL) THEN
        RAISE EXCEPTION 'a rate limit needs both rate_limit_max and rate_limit_window' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE api_key.keys SET
        name = k.name, enabled = k.enabled, expires_at = k.expires_at, permissions = k.permissions,
        metadata = k.metadata, remaining = k.remaining, refill_amount = k.refill_amount,
        refill_interval = k.refill_interval, rate_limit_enabled = k.rate_limit_enabled,
        rate_limit_max = k.rate_limit_max, rate_limit_window = k.rate_limit_window, updated_at = now()
     WHERE id = k.id
    RETURNING * INTO k;
    -- Record what changed (old and new), so permission changes are auditable.
    SELECT jsonb_object_agg(n.key, jsonb_build_object('from', o.value, 'to', n.value)) INTO changed
      FROM jsonb_each(to_jsonb(k)) n JOIN jsonb_each(to_jsonb(before)) o USING (key)
     WHERE n.value IS DISTINCT FROM o.value AND n.key NOT IN ('updated_at', 'last_used_at', 'last_refill_at');
    PERFORM api_key.audit(p_token, 'update', k.id, k.reference_type, k.reference_id, changed);
    RETURN k;
END
$$;

CREATE FUNCTION @extschema@.api_key_update(
    id uuid, name text DEFAULT NULL, enabled boolean DEFAULT NULL, expires_at timestamptz DEFAULT NULL,
    permissions jsonb DEFAULT NULL, metadata jsonb DEFAULT NULL, remaining bigint DEFAULT NULL,
    refill_amount bigint DEFAULT NULL, refill_interval interval DEFAULT NULL, rate_limit_enabled boolean DEFAULT NULL,
    rate_limit_max integer DEFAULT NULL, rate_limit_window interval DEFAULT NULL, clear text[] DEFAULT NULL)
RETURNS api_key.keys
LANGUAGE sql VOLATILE
AS $$
    SELECT api_key.update_key(api_key.caller_token(), id, name, enabled, expires_at, permissions, metadata, remaining,
                              refill_amount, refill_interval, rate_limit_enabled, rate_limit_max, rate_limit_window, clear)
$$;
COMMENT ON FUNCTION @extschema@.api_key_update(uuid, text, boolean, timestamptz, jsonb, jsonb, bigint, bigint, interval, boolean, integer, interval, text[]) IS
    'Change a key. NULL arguments leave a field as it is; clear => ''{expires_at,remaining}'' sets fields to NULL.';

CREATE FUNCTION api_key.revoke_key(p_token bigint, p_id uuid) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k api_key.keys := api_key.key_for(p_token, p_id, 'delete');
BEGIN
    DELETE FROM api_key.keys WHERE id = k.id;  -- secrets go with it (ON DELETE CASCADE)
    DELETE FROM api_key.rate_limit_windows WHERE key_id = k.id;
    PERFORM api_key.audit(p_token, 'revoke', k.id, k.reference_type, k.reference_id,
                          jsonb_build_object('name', k.name, 'start', k.start));
    RETURN true;
END
$$;

CREATE FUNCTION @extschema@.api_key_revoke(id uuid) RETURNS boolean
LANGUAGE sql VOLATILE
AS $$ SELECT api_key.revoke_key(api_key.caller_token(), id) $$;
COMMENT ON FUNCTION @extschema@.api_key_revoke(uuid) IS 'Revoke a key: it is deleted and verifies as NOT_FOUND from now on';

CREATE FUNCTION api_key.rotate_key(p_token bigint, p_id uuid, p_grace interval) RETURNS api_key.created_key
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k api_key.keys := api_key.key_for(p_token, p_id, 'update');
    cfg api_key.configs := api_key.config(k.config_id);
    secret record;
BEGIN
    IF p_grace IS NULL OR p_grace < interval '0' THEN
        RAISE EXCEPTION 'grace must be zero or positive' USING ERRCODE = 'invalid_parameter_value',
              HINT = 'grace is how long the old key keeps working, e.g. ''1 hour''.';
    END IF;
    -- Old secrets stop at the end of the grace period (or earlier, if already due) and then
    -- answer EXPIRED until api_key_delete_expired() removes them.
    UPDATE api_key.key_secrets SET expires_at = least(coalesce(expires_at, 'infinity'), now() + p_grace)
     WHERE key_id = k.id;
    SELECT * INTO secret FROM api_key.new_secret(k.prefix, cfg.body_length, cfg.hash_algorithm);
    INSERT INTO api_key.key_secrets (lookup, key_id, algorithm, argon2_hash)
    VALUES (secret.lookup, k.id, cfg.hash_algorithm, secret.argon2_hash);
    UPDATE api_key.keys SET start = secret.start, updated_at = now() WHERE id = k.id;
    PERFORM api_key.audit(p_token, 'rotate', k.id, k.reference_type, k.reference_id,
                          jsonb_build_object('grace', p_grace::text));
    RETURN ROW(k.id, secret.key, secret.start, k.prefix, k.name, k.reference_type, k.reference_id, k.config_id,
               k.expires_at, now())::api_key.created_key;
END
$$;

CREATE FUNCTION @extschema@.api_key_rotate(id uuid, grace interval DEFAULT '0') RETURNS api_key.created_key
LANGUAGE sql VOLATILE
AS $$ SELECT api_key.rotate_key(api_key.caller_token(), id, grace) $$;
COMMENT ON FUNCTION @extschema@.api_key_rotate(uuid, interval) IS
    'New plaintext for the same key (owner, permissions, limits, credits); the old one works until grace has passed';

CREATE FUNCTION api_key.delete_expired(p_token bigint) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    keys_deleted bigint;
    secrets_deleted bigint;
BEGIN
    PERFORM api_key.require_service(api_key.caller_is_service(p_token), 'api_key_delete_expired');
    DELETE FROM api_key.keys WHERE expires_at <= now();
    GET DIAGNOSTICS keys_deleted = ROW_COUNT;
    DELETE FROM api_key.key_secrets WHERE expires_at <= now();
    GET DIAGNOSTICS secrets_deleted = ROW_COUNT;
    DELETE FROM api_key.rate_limit_windows w WHERE NOT EXISTS (SELECT 1 FROM api_key.keys k WHERE k.id = w.key_id);
    PERFORM api_key.audit(p_token, 'delete_expired', NULL, NULL, NULL,
                          jsonb_build_object('keys', keys_deleted, 'rotated_secrets', secrets_deleted));
    RETURN keys_deleted;
END
$$;

CREATE FUNCTION @extschema@.api_key_delete_expired() RETURNS bigint
LANGUAGE sql VOLATILE
AS $$ SELECT api_key.delete_expired(api_key.caller_token()) $$;
COMMENT ON FUNCTION @extschema@.api_key_delete_expired() IS
    'Delete expired keys (and rotated-away secrets past their grace); returns how many keys. Service only.';

-- Audit view: organization keys whose creator is no longer a member. The keys keep working
-- (ownership is the organization); this is for reviewing them.
CREATE VIEW api_key.keys_without_creator WITH (security_invoker = true) AS
SELECT k.id, k.reference_type, k.reference_id, k.name, k.start, k.created_by, k.created_at, k.last_used_at
  FROM api_key.keys k
 WHERE k.reference_type = 'organization' AND k.created_by IS NOT NULL
   AND api_key.member_role(k.reference_id, k.created_by) IS NULL;
COMMENT ON VIEW api_key.keys_without_creator IS 'Organization keys whose creator has left the organization (for audits; the keys keep working)';
