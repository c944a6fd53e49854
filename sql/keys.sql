-- Key management. Each public function (schema @extschema@) is a SECURITY INVOKER wrapper
-- that passes api_key.caller_token() (who is calling, unforgeable) to a SECURITY DEFINER
-- worker in schema api_key; the worker checks arguments, authorizes, acts and audits.

-- Validation shared by create and update. Raises 22023/22004 naming the argument.
CREATE FUNCTION api_key.check_key_settings(cfg api_key.configs, p_name text, p_permissions jsonb, p_metadata jsonb,
                                           p_remaining bigint, p_refill_amount bigint, p_refill_interval interval,
                                           p_rate_limit_max integer, p_rate_limit_window interval)
RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    problem text;
BEGIN
    IF p_name IS NOT NULL AND length(p_name) NOT BETWEEN cfg.name_min_length AND cfg.name_max_length THEN
        RAISE EXCEPTION 'name must be % to % characters long (configuration "%")',
              cfg.name_min_length, cfg.name_max_length, cfg.id USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_permissions IS NOT NULL THEN
        problem := api_key.permissions_problem(p_permissions);
        IF problem IS NOT NULL THEN
            RAISE EXCEPTION 'permissions %', problem USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Permissions look like {"files": ["read", "write"]}.';
        END IF;
    END IF;
    IF p_metadata IS NOT NULL THEN
        IF NOT cfg.metadata_enabled THEN
            RAISE EXCEPTION 'metadata is not accepted by configuration "%"', cfg.id USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF jsonb_typeof(p_metadata) <> 'object' THEN
            RAISE EXCEPTION 'metadata must be a JSON object or NULL, not %', jsonb_typeof(p_metadata)
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;
    IF p_refill_amount <= 0 THEN
        RAISE EXCEPTION 'refill_amount must be positive' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_refill_interval <= interval '0' THEN
        RAISE EXCEPTION 'refill_interval must be positive' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF (p_refill_amount IS NULL) <> (p_refill_interval IS NULL) THEN
        RAISE EXCEPTION 'refill_amount and refill_interval go together' USING ERRCODE = 'invalid_parameter_value',
              HINT = 'Pass both, e.g. refill_amount => 1000, refill_interval => ''1 day''.';
    END IF;
    IF p_remaining < 0 THEN
        RAISE EXCEPTION 'remaining must not be negative' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_rate_limit_max <= 0 THEN
        RAISE EXCEPTION 'rate_limit_max must be positive' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_rate_limit_window <= interval '0' THEN
        RAISE EXCEPTION 'rate_limit_window must be positive' USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

CREATE FUNCTION api_key.expiry(cfg api_key.configs, p_expires_in interval) RETURNS timestamptz
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    lifetime interval := coalesce(p_expires_in, cfg.default_expires_in);
BEGIN
    IF lifetime IS NULL THEN
        IF cfg.max_expires_in IS NOT NULL THEN
            RAISE EXCEPTION 'expires_in is required: configuration "%" allows keys of at most %', cfg.id, cfg.max_expires_in
                USING ERRCODE = 'null_value_not_allowed';
        END IF;
        RETURN NULL;
    END IF;
    IF lifetime <= interval '0' THEN
        RAISE EXCEPTION 'expires_in must be positive, got %', lifetime USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF lifetime < cfg.min_expires_in OR lifetime > cfg.max_expires_in THEN
        RAISE EXCEPTION 'expires_in must be between % and % (configuration "%")',
              coalesce(cfg.min_expires_in::text, 'any'), coalesce(cfg.max_expires_in::text, 'any'), cfg.id
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN now() + lifetime;
EXCEPTION WHEN datetime_field_overflow THEN
    RAISE EXCEPTION 'expires_in % is too far in the future', lifetime USING ERRCODE = 'invalid_parameter_value';
END
$$;

CREATE FUNCTION api_key.config(p_config_id text) RETURNS api_key.configs
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg api_key.configs;
BEGIN
    SELECT * INTO cfg FROM api_key.configs c WHERE c.id = coalesce(p_config_id, 'default');
    IF NOT FOUND THEN
        RAISE EXCEPTION 'configuration "%" does not exist', left(p_config_id, 64) USING ERRCODE = 'undefined_object',
              HINT = 'SELECT id FROM api_key.configs; lists them.';
    END IF;
    RETURN cfg;
END
$$;

CREATE FUNCTION api_key.create_key(
    p_token bigint, p_reference_id text, p_reference_type text, p_name text, p_config_id text, p_prefix text,
    p_expires_in interval, p_permissions jsonb, p_metadata jsonb, p_remaining bigint, p_refill_amount bigint,
    p_refill_interval interval, p_rate_limit_max integer, p_rate_limit_window interval, p_rate_limit_enabled boolean)
RETURNS api_key.created_key
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg api_key.configs;
    v_prefix text;
    v_expires_at timestamptz;
    v_permissions jsonb;
    v_remaining bigint;
    v_refill_amount bigint;
    v_refill_interval interval;
    v_rl_enabled boolean;
    v_rl_max integer;
    v_rl_window interval;
    secret record;
    made api_key.created_key;
BEGIN
    PERFORM api_key.check_reference_id(p_reference_id);
    PERFORM api_key.authorize(api_key.caller_is_service(p_token), p_reference_type, p_reference_id, 'create');
    cfg := api_key.config(p_config_id);

    IF p_name IS NULL AND cfg.name_required THEN
        RAISE EXCEPTION 'name is required by configuration "%"', cfg.id USING ERRCODE = 'null_value_not_allowed';
    END IF;
    v_prefix := coalesce(p_prefix, cfg.prefix);
    IF v_prefix !~ '^[A-Za-z0-9_-]*$' THEN
        RAISE EXCEPTION 'prefix may contain only ASCII letters, digits, ''_'' and ''-''' USING ERRCODE = 'invalid_parameter_value',
              HINT = 'Secret scanners recognise keys by their prefix, e.g. sk_live_.';
    END IF;
    IF length(v_prefix) NOT BETWEEN cfg.prefix_min_length AND cfg.prefix_max_length THEN
        RAISE EXCEPTION 'prefix must be % to % characters long (configuration "%")', cfg.prefix_min_length,
              cfg.prefix_max_length, cfg.id USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_expires_at := api_key.expiry(cfg, p_expires_in);
    v_permissions := coalesce(p_permissions, cfg.default_permissions);

    -- Usage limits: explicit arguments win, the configuration supplies the rest.
    IF p_refill_amount IS NULL AND p_refill_interval IS NULL THEN
        v_refill_amount := cfg.refill_amount;
        v_refill_interval := cfg.refill_interval;
    ELSE
        v_refill_amount := p_refill_amount;
        v_refill_interval := p_refill_interval;
    END IF;
    v_remaining := coalesce(p_remaining, cfg.default_remaining, v_refill_amount);
    v_rl_max := coalesce(p_rate_limit_max, cfg.rate_limit_max);
    v_rl_window := coalesce(p_rate_limit_window, cfg.rate_limit_window);
    v_rl_enabled := coalesce(p_rate_limit_enabled, p_rate_limit_max IS NOT NULL OR p_rate_limit_window IS NOT NULL
                                                   OR cfg.rate_limit_enabled);
    PERFORM api_key.check_key_settings(cfg, p_name, v_permissions, p_metadata, v_remaining, v_refill_amount,
                                       v_refill_interval, v_rl_max, v_rl_window);
    IF v_rl_enabled AND (v_rl_max IS NULL OR v_rl_window IS NULL) THEN
        RAISE EXCEPTION 'a rate limit needs both rate_limit_max and rate_limit_window' USING ERRCODE = 'invalid_parameter_value',
              HINT = 'e.g. rate_limit_max => 100, rate_limit_window => ''1 minute''.';
    END IF;

    SELECT * INTO secret FROM api_key.new_secret(v_prefix, cfg.body_length, cfg.hash_algorithm);
    INSERT INTO api_key.keys (config_id, reference_type, reference_id, name, prefix, start, expires_at, permissions,
                              metadata, remaining, refill_amount, refill_interval, rate_limit_enabled, rate_limit_max,
                              rate_limit_window, created_by)
    VALUES (cfg.id, p_reference_type, p_reference_id, p_name, v_prefix, secret.start, v_expires_at, v_permissions,
            p_metadata, v_remaining, v_refill_amount, v_refill_interval, v_rl_enabled, v_rl_max, v_rl_window,
            api_key.actor())
    RETURNING id, NULL, start, prefix, name, reference_type, reference_id, config_id, expires_at, created_at
         INTO made;
    INSERT INTO api_key.key_secrets (lookup, key_id, algorithm, argon2_hash)
    VALUES (secret.lookup, made.id, cfg.hash_algorithm, secret.argon2_hash);
    PERFORM api_key.audit(p_token, 'create', made.id, p_reference_type, p_reference_id,
                          jsonb_build_object('config_id', cfg.id, 'permissions', v_permissions));
    made.key := secret.key;
    RETURN made;
END
$$;

CREATE FUNCTION @extschema@.api_key_create(
    reference_id text, reference_type text DEFAULT 'user', name text DEFAULT NULL, config_id text DEFAULT NULL,
    prefix text DEFAULT NULL, expires_in interval DEFAULT NULL, permissions jsonb DEFAULT NULL,
    metadata jsonb DEFAULT NULL, remaining bigint DEFAULT NULL, refill_amount bigint DEFAULT NULL,
    refill_interval interval DEFAULT NULL, rate_limit_max integer DEFAULT NULL,
    rate_limit_window interval DEFAULT NULL, rate_limit_enabled boolean DEFAULT NULL)
RETURNS api_key.created_key
LANGUAGE sql VOLATILE
AS $$
    SELECT api_key.create_key(api_key.caller_token(), reference_id, reference_type, name, config_id, prefix, expires_in,
                              permissions, metadata, remaining, refill_amount, refill_interval, rate_limit_max,
                              rate_limit_window, rate_limit_enabled)
$$;
COMMENT ON FUNCTION @extschema@.api_key_create(text, text, text, text, text, interval, jsonb, jsonb, bigint, bigint, interval, integer, interval, boolean) IS
    'Create a key for (reference_type, reference_id). Returns the plaintext key once; only its hash is stored.';

-- The key row, locked, after checking that the caller may p_action it.
CREATE FUNCTION api_key.key_for(p_token bigint, p_id uuid, p_action text) RETURNS api_key.keys
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k api_key.keys;
BEGIN
    IF p_id IS NULL THEN
        RAISE EXCEPTION 'id must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF p_action = 'read' THEN
        SELECT * INTO k FROM api_key.keys WHERE id = p_id;
    ELSE
        SELECT * INTO k FROM api_key.keys WHERE id = p_id FOR NO KEY UPDATE;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'API key % does not exist', p_id USING ERRCODE = 'no_data_found';
    END IF;
    PERFORM api_key.authorize(api_key.caller_is_service(p_token), k.reference_type, k.reference_id, p_action);
    RETURN k;
END
$$;

CREATE FUNCTION @extschema@.api_key_get(id uuid) RETURNS api_key.keys
LANGUAGE sql VOLATILE
AS $$ SELECT api_key.key_for(api_key.caller_token(), id, 'read') $$;
COMMENT ON FUNCTION @extschema@.api_key_get(uuid) IS 'One key (never its hash), if the caller may read it';

CREATE FUNCTION api_key.list_keys(p_token bigint, p_reference_id text, p_reference_type text, p_config_id text,
                                  p_page_size integer, p_after_id uuid)
RETURNS SETOF api_key.keys
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    after_created timestamptz;
BEGIN
    PERFORM api_key.check_reference_id(p_reference_id);
    PERFORM api_key.authorize(api_key.caller_is_service(p_token), p_reference_type, p_reference_id, 'read');
    IF p_page_size IS NULL OR p_page_size NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'page_size must be between 1 and 1000' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_after_id IS NOT NULL THEN
        SELECT k.created_at INTO after_created FROM api_key.keys k
         WHERE k.id = p_after_id AND k.reference_type = p_reference_type AND k.reference_id = p_reference_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'after_id % is not a key of this reference', p_after_id USING ERRCODE = 'no_data_found';
        END IF;
    END IF;
    -- Newest first; the page continues after (created_at, id) of after_id: keyset paging.
    RETURN QUERY
        SELECT * FROM api_key.keys k
         WHERE k.reference_type = p_reference_type AND k.reference_id = p_reference_id
           AND (p_config_id IS NULL OR k.config_id = p_config_id)
           AND (p_after_id IS NULL OR (k.created_at, k.id) < (after_created, p_after_id))
         ORDER BY k.created_at DESC, k.id DESC
         LIMIT p_page_size;
END
$$;

CREATE FUNCTION @extschema@.api_key_list_for_reference(reference_id text, reference_type text DEFAULT 'user',
                                                  config_id text DEFAULT NULL, page_size integer DEFAULT 100,
                                                  after_id uuid DEFAULT NULL)
RETURNS SETOF api_key.keys
LANGUAGE sql VOLATILE
AS $$ SELECT * FROM api_key.list_keys(api_key.caller_token(), reference_id, reference_type, config_id, page_size, after_id) $$;
COMMENT ON FUNCTION @extschema@.api_key_list_for_reference(text, text, text, integer, uuid) IS
    'Keys of a reference, newest first, page_size per page; pass the last id seen as after_id for the next page';

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
