-- Managing configurations: service only. Operators may also read api_key.configs at psql.

-- Raise 22023 naming the setting when a configuration is not usable. The table's CHECK
-- constraints are the backstop; this gives the clear message.
CREATE FUNCTION api_key.check_config(c api_key.configs) RETURNS void
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    problem text;
BEGIN
    problem := CASE
        WHEN c.id IS NULL THEN 'id must not be null'
        WHEN c.id !~ '^[A-Za-z0-9_.:-]{1,64}$' THEN 'id must be 1 to 64 letters, digits or _ . : -'
        WHEN c.prefix IS NULL OR c.prefix !~ '^[A-Za-z0-9_-]{0,32}$' THEN 'prefix must be up to 32 ASCII letters, digits, _ or -'
        WHEN c.body_length IS NULL OR c.body_length NOT BETWEEN 22 AND 128 THEN 'body_length must be between 22 and 128'
        WHEN c.hash_algorithm IS NULL OR c.hash_algorithm NOT IN ('sha256', 'argon2id') THEN 'hash_algorithm must be sha256 or argon2id'
        WHEN c.hash_algorithm = 'argon2id' AND c.body_length < 40 THEN 'body_length must be at least 40 for argon2id (16 lookup + 24 secret characters)'
        WHEN c.default_expires_in <= interval '0' THEN 'default_expires_in must be positive'
        WHEN c.min_expires_in <= interval '0' THEN 'min_expires_in must be positive'
        WHEN c.max_expires_in <= interval '0' THEN 'max_expires_in must be positive'
        WHEN c.min_expires_in > c.max_expires_in THEN 'min_expires_in must not exceed max_expires_in'
        WHEN c.default_expires_in < c.min_expires_in OR c.default_expires_in > c.max_expires_in THEN 'default_expires_in must lie between min_expires_in and max_expires_in'
        WHEN c.name_required IS NULL OR c.metadata_enabled IS NULL OR c.rate_limit_enabled IS NULL THEN 'name_required, metadata_enabled and rate_limit_enabled must not be null'
        WHEN c.name_min_length IS NULL OR c.name_min_length < 0 THEN 'name_min_length must be zero or more'
        WHEN c.name_max_length IS NULL OR c.name_max_length NOT BETWEEN 1 AND 1024 THEN 'name_max_length must be between 1 and 1024'
        WHEN c.name_min_length > c.name_max_length THEN 'name_min_length must not exceed name_max_length'
        WHEN c.prefix_min_length IS NULL OR c.prefix_min_length NOT BETWEEN 0 AND 32 THEN 'prefix_min_length must be between 0 and 32'
        WHEN c.prefix_max_length IS NULL OR c.prefix_max_length NOT BETWEEN 0 AND 32 THEN 'prefix_max_length must be between 0 and 32'
        WHEN c.prefix_min_length > c.prefix_max_length THEN 'prefix_min_length must not exceed prefix_max_length'
        WHEN length(c.prefix) NOT BETWEEN c.prefix_min_length AND c.prefix_max_length THEN 'prefix must respect prefix_min_length and prefix_max_length'
        WHEN c.default_permissions IS NOT NULL AND api_key.permissions_problem(c.default_permissions) IS NOT NULL
            THEN 'default_permissions ' || api_key.permissions_problem(c.default_permissions)
        WHEN c.rate_limit_max <= 0 THEN 'rate_limit_max must be positive'
        WHEN c.rate_limit_window <= interval '0' THEN 'rate_limit_window must be positive'
        WHEN c.rate_limit_enabled AND (c.rate_limit_max IS NULL OR c.rate_limit_window IS NULL) THEN 'rate_limit_enabled needs rate_limit_max and rate_limit_window'
        WHEN c.default_remaining < 0 THEN 'default_remaining must not be negative'
        WHEN c.refill_amount <= 0 THEN 'refill_amount must be positive'
        WHEN c.refill_interval <= interval '0' THEN 'refill_interval must be positive'
        WHEN (c.refill_amount IS NULL) <> (c.refill_interval IS NULL) THEN 'refill_amount and refill_interval go together'
    END;
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION 'configuration: %', problem USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

CREATE FUNCTION api_key.config_create(p_token bigint, c api_key.configs) RETURNS api_key.configs
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM api_key.require_service(api_key.caller_is_service(p_token), 'api_key_config_create');
    c.created_at := now();
    c.updated_at := now();
    PERFORM api_key.check_config(c);
    IF EXISTS (SELECT 1 FROM api_key.configs WHERE id = c.id) THEN
        RAISE EXCEPTION 'configuration "%" already exists', c.id USING ERRCODE = 'unique_violation',
              HINT = 'Change it with api_key_config_update().';
    END IF;
    INSERT INTO api_key.configs SELECT c.*;
    PERFORM api_key.audit(p_token, 'config_create', NULL, NULL, NULL, to_jsonb(c));
    RETURN c;
END
$$;

CREATE FUNCTION @extschema@.api_key_config_create(
    id text, prefix text DEFAULT 'sk_', body_length integer DEFAULT 32, hash_algorithm text DEFAULT 'sha256',
    default_expires_in interval DEFAULT NULL, min_expires_in interval DEFAULT NULL, max_expires_in interval DEFAULT NULL,
    name_required boolean DEFAULT false, name_min_length integer DEFAULT 1, name_max_length integer DEFAULT 128,
    prefix_min_length integer DEFAULT 0, prefix_max_length integer DEFAULT 32, metadata_enabled boolean DEFAULT true,
    default_permissions jsonb DEFAULT NULL, rate_limit_enabled boolean DEFAULT false, rate_limit_max integer DEFAULT NULL,
    rate_limit_window interval DEFAULT NULL, default_remaining bigint DEFAULT NULL, refill_amount bigint DEFAULT NULL,
    refill_interval interval DEFAULT NULL)
RETURNS api_key.configs
LANGUAGE sql VOLATILE
AS $$
    SELECT api_key.config_create(api_key.caller_token(), ROW(
        id, prefix, body_length, hash_algorithm, default_expires_in, min_expires_in, max_expires_in, name_required,
        name_min_length, name_max_length, prefix_min_length, prefix_max_length, metadata_enabled, default_permissions,
        rate_limit_enabled, rate_limit_max, rate_limit_window, default_remaining, refill_amount, refill_interval,
        NULL, NULL)::api_key.configs)
$$;
COMMENT ON FUNCTION @extschema@.api_key_config_create(text, text, integer, text, interval, interval, interval, boolean, integer, integer, integer, integer, boolean, jsonb, boolean, integer, interval, bigint, bigint, interval) IS
    'Create a named key configuration. Service only.';

CREATE FUNCTION api_key.config_update(p_token bigint, p_id text, p_settings jsonb) RETURNS api_key.configs
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c api_key.configs;
    unknown text;
BEGIN
    PERFORM api_key.require_service(api_key.caller_is_service(p_token), 'api_key_config_update');
    IF p_settings IS NULL OR jsonb_typeof(p_settings) <> 'object' THEN
        RAISE EXCEPTION 'settings must be a JSON object of configuration columns' USING ERRCODE = 'invalid_parameter_value',
              HINT = 'e.g. settings => ''{"prefix": "sk_test_", "default_expires_in": "30 days"}''';
    END IF;
    SELECT s.key INTO unknown FROM jsonb_object_keys(p_settings) AS s(key)
     WHERE s.key IN ('id', 'created_at', 'updated_at')
        OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                        WHERE a.attrelid = 'api_key.configs'::regclass AND a.attname = s.key AND a.attnum > 0);
    IF FOUND THEN
        RAISE EXCEPTION 'settings: "%" is not a configuration setting', left(unknown, 64) USING ERRCODE = 'invalid_parameter_value',
              HINT = 'The settings are the columns of api_key.configs other than id, created_at and updated_at.';
    END IF;
    SELECT * INTO c FROM api_key.configs WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'configuration "%" does not exist', left(p_id, 64) USING ERRCODE = 'undefined_object';
    END IF;
    BEGIN
        c := jsonb_populate_record(c, p_settings);
    EXCEPTION WHEN data_exception THEN
        RAISE EXCEPTION 'settings: %', SQLERRM USING ERRCODE = 'invalid_parameter_value';
    END;
    c.updated_at := now();
    PERFORM api_key.check_config(c);
    UPDATE api_key.configs SET (prefix, body_length, hash_algorithm, default_expires_in, min_expires_in, max_expires_in,
        name_required, name_min_length, name_max_length, prefix_min_length, prefix_max_length, metadata_enabled,
        default_permissions, rate_limit_enabled, rate_limit_max, rate_limit_window, default_remaining, refill_amount,
        refill_interval, updated_at) =
        (c.prefix, c.body_length, c.hash_algorithm, c.default_expires_in, c.min_expires_in, c.max_expires_in,
         c.name_required, c.name_min_length, c.name_max_length, c.prefix_min_length, c.prefix_max_length,
         c.metadata_enabled, c.default_permissions, c.rate_limit_enabled, c.rate_limit_max, c.rate_limit_window,
         c.default_remaining, c.refill_amount, c.refill_interval, c.updated_at)
     WHERE id = p_id;
    PERFORM api_key.audit(p_token, 'config_update', NULL, NULL, NULL, jsonb_build_object('id', p_id, 'settings', p_settings));
    RETURN c;
END
$$;

CREATE FUNCTION @extschema@.api_key_config_update(id text, settings jsonb) RETURNS api_key.configs
LANGUAGE sql VOLATILE
AS $$ SELECT api_key.config_update(api_key.caller_token(), id, settings) $$;
COMMENT ON FUNCTION @extschema@.api_key_config_update(text, jsonb) IS
    'Change settings of a configuration: settings => ''{"column": value, …}'' (JSON null clears). Applies to keys created afterwards. Service only.';

CREATE FUNCTION api_key.config_delete(p_token bigint, p_id text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM api_key.require_service(api_key.caller_is_service(p_token), 'api_key_config_delete');
    IF p_id = 'default' THEN
        RAISE EXCEPTION 'the default configuration cannot be deleted' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT 1 FROM api_key.keys WHERE config_id = p_id) THEN
        RAISE EXCEPTION 'configuration "%" still has keys', p_id USING ERRCODE = 'dependent_objects_still_exist',
              HINT = 'Revoke its keys first: SELECT api_key_revoke(id) FROM api_key.keys WHERE config_id = ...;';
    END IF;
    DELETE FROM api_key.configs WHERE id = p_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'configuration "%" does not exist', left(p_id, 64) USING ERRCODE = 'undefined_object';
    END IF;
    PERFORM api_key.audit(p_token, 'config_delete', NULL, NULL, NULL, jsonb_build_object('id', p_id));
    RETURN true;
END
$$;

CREATE FUNCTION @extschema@.api_key_config_delete(id text) RETURNS boolean
LANGUAGE sql VOLATILE
AS $$ SELECT api_key.config_delete(api_key.caller_token(), id) $$;
COMMENT ON FUNCTION @extschema@.api_key_config_delete(text) IS 'Delete a configuration that has no keys. Service only.';
