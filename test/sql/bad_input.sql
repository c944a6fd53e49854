-- Bad input: every mistake is a clear error with a standard SQLSTATE, naming the argument,
-- and writes nothing. (try() returns the SQLSTATE and message instead of raising.)
CREATE EXTENSION api_key;
CREATE FUNCTION try(statement text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE statement;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || left(SQLERRM, 160);
END
$$;
SELECT id AS kid FROM api_key_create(reference_id => 'alice') \gset

SELECT case_, try(statement) FROM (VALUES
    ('null reference_id',        $$SELECT api_key_create(reference_id => NULL)$$),
    ('empty reference_id',       $$SELECT api_key_create(reference_id => '')$$),
    ('huge reference_id',        $$SELECT api_key_create(reference_id => repeat('x', 1000000))$$),
    ('newline in reference_id',  $$SELECT api_key_create(reference_id => E'a\nb')$$),
    ('null reference_type',      $$SELECT api_key_create(reference_id => 'a', reference_type => NULL)$$),
    ('unknown reference_type',   $$SELECT api_key_create(reference_id => 'a', reference_type => 'planet')$$),
    ('unknown config',           $$SELECT api_key_create(reference_id => 'a', config_id => 'nope')$$),
    ('prefix with a space',      $$SELECT api_key_create(reference_id => 'a', prefix => 'sk live')$$),
    ('prefix with a quote',      $$SELECT api_key_create(reference_id => 'a', prefix => 'sk''_')$$),
    ('prefix without separator', $$SELECT api_key_create(reference_id => 'a', prefix => 'sk')$$),
    ('prefix not from a letter', $$SELECT api_key_create(reference_id => 'a', prefix => '1sk_')$$),
    ('huge prefix',              $$SELECT api_key_create(reference_id => 'a', prefix => repeat('p', 1000000))$$),
    ('empty name',               $$SELECT api_key_create(reference_id => 'a', name => '')$$),
    ('huge name',                $$SELECT api_key_create(reference_id => 'a', name => repeat('n', 1000000))$$),
    ('negative expires_in',      $$SELECT api_key_create(reference_id => 'a', expires_in => '-1 day')$$),
    ('zero expires_in',          $$SELECT api_key_create(reference_id => 'a', expires_in => '0')$$),
    ('absurd expires_in',        $$SELECT api_key_create(reference_id => 'a', expires_in => '100000000 years')$$),
    ('expires_in over 100 years', $$SELECT api_key_create(reference_id => 'a', expires_in => '101 years')$$),
    ('permissions: array',       $$SELECT api_key_create(reference_id => 'a', permissions => '["files"]')$$),
    ('permissions: string',      $$SELECT api_key_create(reference_id => 'a', permissions => '"files"')$$),
    ('permissions: not strings', $$SELECT api_key_create(reference_id => 'a', permissions => '{"files": [1]}')$$),
    ('permissions: null action', $$SELECT api_key_create(reference_id => 'a', permissions => '{"files": null}')$$),
    ('metadata: array',          $$SELECT api_key_create(reference_id => 'a', metadata => '[1, 2]')$$),
    ('metadata: number',         $$SELECT api_key_create(reference_id => 'a', metadata => '42')$$),
    ('negative remaining',       $$SELECT api_key_create(reference_id => 'a', remaining => -1)$$),
    ('zero refill_amount',       $$SELECT api_key_create(reference_id => 'a', refill_amount => 0, refill_interval => '1 day')$$),
    ('refill without interval',  $$SELECT api_key_create(reference_id => 'a', refill_amount => 10)$$),
    ('negative refill_interval', $$SELECT api_key_create(reference_id => 'a', refill_amount => 1, refill_interval => '-1 day')$$),
    ('zero rate_limit_max',      $$SELECT api_key_create(reference_id => 'a', rate_limit_max => 0, rate_limit_window => '1 s')$$),
    ('negative window',          $$SELECT api_key_create(reference_id => 'a', rate_limit_max => 5, rate_limit_window => '-1 s')$$),
    ('window over 10 years',     $$SELECT api_key_create(reference_id => 'a', rate_limit_max => 5, rate_limit_window => '11 years')$$),
    ('max without window',       $$SELECT api_key_create(reference_id => 'a', rate_limit_max => 5)$$),
    ('get: null id',             $$SELECT api_key_get(NULL)$$),
    ('get: unknown id',          $$SELECT api_key_get('00000000-0000-4000-8000-000000000000')$$),
    ('get: not a uuid',          $$SELECT api_key_get('nope')$$),
    ('update: unknown id',       $$SELECT api_key_update('00000000-0000-4000-8000-000000000000', name => 'x')$$),
    ('update: bad clear',        format($$SELECT api_key_update(%L, clear => '{id}')$$, :'kid')),
    ('update: bad metadata',     format($$SELECT api_key_update(%L, metadata => '"x"')$$, :'kid')),
    ('update: negative remaining', format($$SELECT api_key_update(%L, remaining => -5)$$, :'kid')),
    ('update: expiry in the past', format($$SELECT api_key_update(%L, expires_at => now() - interval '1 minute')$$, :'kid')),
    ('update: null in clear',    format($$SELECT api_key_update(%L, clear => ARRAY[NULL])$$, :'kid')),
    ('update: refill, no remaining', format($$SELECT api_key_update(%L, refill_amount => 5, refill_interval => '1 day', clear => '{remaining}')$$, :'kid')),
    ('rotate: negative grace',   format($$SELECT api_key_rotate(%L, grace => '-1 hour')$$, :'kid')),
    ('rotate: null grace',       format($$SELECT api_key_rotate(%L, grace => NULL)$$, :'kid')),
    ('rotate: grace of 11 years', format($$SELECT api_key_rotate(%L, grace => '11 years')$$, :'kid')),
    ('list: zero page_size',     $$SELECT api_key_list_for_reference('alice', page_size => 0)$$),
    ('list: null page_size',     $$SELECT api_key_list_for_reference('alice', page_size => NULL)$$),
    ('list: foreign after_id',   $$SELECT api_key_list_for_reference('bob', after_id => '00000000-0000-4000-8000-000000000000')$$),
    ('verify: negative cost',    $$SELECT api_key_verify('x', cost => -1)$$),
    ('verify: null cost',        $$SELECT api_key_verify('x', cost => NULL)$$),
    ('verify: bad permissions',  $$SELECT api_key_verify('x', permissions => '["files"]')$$),
    ('config: duplicate',        $$SELECT api_key_config_create('default')$$),
    ('config: bad id',           $$SELECT api_key_config_create('has space')$$),
    ('config: short body',       $$SELECT api_key_config_create('c1', body_length => 8)$$),
    ('config: bad hash',         $$SELECT api_key_config_create('c1', hash_algorithm => 'md5')$$),
    ('config: null body_length', $$SELECT api_key_config_create('c1', body_length => NULL)$$),
    ('config: prefix no separator', $$SELECT api_key_config_create('c1', prefix => 'live')$$),
    ('config: bad actor_may_raise', $$SELECT api_key_config_create('c1', actor_may_raise => '{everything}')$$),
    ('config: short argon2',     $$SELECT api_key_config_create('c1', hash_algorithm => 'argon2id', body_length => 32)$$),
    ('config: min > max',        $$SELECT api_key_config_create('c1', min_expires_in => '2 days', max_expires_in => '1 day')$$),
    ('config: unknown setting',  $$SELECT api_key_config_update('default', '{"colour": "red"}')$$),
    ('config: wrong type',       $$SELECT api_key_config_update('default', '{"body_length": "long"}')$$),
    ('config: null prefix',      $$SELECT api_key_config_update('default', '{"prefix": null}')$$),
    ('config: settings array',   $$SELECT api_key_config_update('default', '[]')$$),
    ('config: null settings',    $$SELECT api_key_config_update('default', NULL)$$),
    ('config: unknown update',   $$SELECT api_key_config_update('nope', '{}')$$),
    ('config: delete default',   $$SELECT api_key_config_delete('default')$$),
    ('config: delete unknown',   $$SELECT api_key_config_delete('nope')$$),
    ('membership: no column',    $$SELECT api_key_use_membership_table('pg_class', organization_column => 'nope')$$),
    ('membership: column type',  $$SELECT api_key_use_membership_table('pg_class', organization_column => 'relname', user_column => 'relname', role_column => 'reltuples')$$),
    ('reference type: builtin',  $$SELECT api_key_register_reference_type('user', 'lower(text)')$$),
    ('reference type: bad fn',   $$SELECT api_key_register_reference_type('project', 'lower(text)')$$)
) AS cases(case_, statement);

-- Nothing was written by any of them.
SELECT count(*) AS keys, (SELECT count(*) FROM api_key.key_secrets) AS secrets,
       (SELECT count(*) FROM api_key.configs) AS configs FROM api_key.keys;
SELECT prefix, body_length, metadata_enabled FROM api_key.configs WHERE id = 'default';

-- Revoking a key that is not there (unknown, already revoked, or not the caller's to see) is
-- no error: there is nothing to revoke.
SELECT api_key_revoke('00000000-0000-4000-8000-000000000000') AS revoked;

-- A configuration's own rules.
SELECT id FROM api_key_config_create('strict', prefix => 'st_', name_required => true, name_max_length => 10,
                                     min_expires_in => '1 hour', max_expires_in => '30 days', metadata_enabled => false,
                                     prefix_min_length => 3);
SELECT case_, try(statement) FROM (VALUES
    ('name required',        $$SELECT api_key_create(reference_id => 'a', config_id => 'strict', expires_in => '1 day')$$),
    ('name too long',        $$SELECT api_key_create(reference_id => 'a', config_id => 'strict', name => 'much too long', expires_in => '1 day')$$),
    ('expiry required',      $$SELECT api_key_create(reference_id => 'a', config_id => 'strict', name => 'n')$$),
    ('expiry too short',     $$SELECT api_key_create(reference_id => 'a', config_id => 'strict', name => 'n', expires_in => '1 minute')$$),
    ('expiry too long',      $$SELECT api_key_create(reference_id => 'a', config_id => 'strict', name => 'n', expires_in => '1 year')$$),
    ('prefix too short',     $$SELECT api_key_create(reference_id => 'a', config_id => 'strict', name => 'n', expires_in => '1 day', prefix => 'x_')$$),
    ('metadata refused',     $$SELECT api_key_create(reference_id => 'a', config_id => 'strict', name => 'n', expires_in => '1 day', metadata => '{}')$$),
    ('all good',             $$SELECT api_key_create(reference_id => 'a', config_id => 'strict', name => 'n', expires_in => '1 day')$$),
    ('delete in use',        $$SELECT api_key_config_delete('strict')$$)
) AS cases(case_, statement);

DROP FUNCTION try(text);
DROP EXTENSION api_key;
