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
