-- api_key 0.2.0 → 0.3.0. Once released, never edit this file; fix forward in the next script.
--
-- 0.3.0 adds reset_at to api_key.verification, the service's credit operations (add,
-- subtract, set) and refills on a calendar
-- schedule: a refill_anchor column in api_key.keys and api_key.configs, a refill_anchor
-- argument at the end of api_key_create, api_key_update and api_key_config_create (which are
-- therefore dropped and created again: their oids change), and api_key_next_refill_at(k).
-- Every row is kept; existing refills keep refilling as before (no anchor). The library's
-- rate-limit changes (docs/usage-control.md) need no SQL.
--
-- It also adds the usage analytics: the table api_key.usage, the views usage_by_minute,
-- _hour and _day, api_key_flush_usage(), and a tags argument at the end of api_key_verify and
-- api_key_authenticate (dropped and created again: their oids change).
-- tests/test_upgrade.py checks that the result is identical to a fresh install of 0.3.0.

\echo Use "ALTER EXTENSION api_key UPDATE TO '0.3.0'" to load this file. \quit

CREATE FUNCTION @extschema@."api_key_credits_add"(
	"id" uuid,
	"amount" bigint,
	"reason" TEXT DEFAULT NULL
) RETURNS bigint
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'api_key_credits_add_wrapper';

CREATE FUNCTION @extschema@."api_key_credits_subtract"(
	"id" uuid,
	"amount" bigint,
	"reason" TEXT DEFAULT NULL
) RETURNS bigint
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'api_key_credits_subtract_wrapper';

CREATE FUNCTION @extschema@."api_key_credits_set"(
	"id" uuid,
	"remaining" bigint,
	"reason" TEXT DEFAULT NULL
) RETURNS bigint
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'api_key_credits_set_wrapper';

-- As sql/security.sql grants every api_key_* function; the functions themselves refuse
-- everyone but the service.
REVOKE EXECUTE ON FUNCTION @extschema@.api_key_credits_add(uuid, bigint, text),
    @extschema@.api_key_credits_subtract(uuid, bigint, text),
    @extschema@.api_key_credits_set(uuid, bigint, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.api_key_credits_add(uuid, bigint, text),
    @extschema@.api_key_credits_subtract(uuid, bigint, text),
    @extschema@.api_key_credits_set(uuid, bigint, text) TO api_key_user, api_key_admin;

COMMENT ON FUNCTION @extschema@.api_key_credits_add(uuid, bigint, text) IS
    'Add amount credits to a key, atomically; returns the balance after. Audited with reason. Service only.';
COMMENT ON FUNCTION @extschema@.api_key_credits_subtract(uuid, bigint, text) IS
    'Subtract amount credits from a key, atomically, never below zero (22023, nothing taken); returns the balance after. Audited with reason. Service only.';
COMMENT ON FUNCTION @extschema@.api_key_credits_set(uuid, bigint, text) IS
    'Set a key''s credit balance (NULL: unlimited, unless it has a refill); returns it. Audited with reason. Service only.';

-- What a caller needs to answer an HTTP request: when the refusing limit resets.
ALTER TYPE api_key.verification ADD ATTRIBUTE reset_at timestamptz;

-- Calendar refills.
ALTER TABLE api_key.configs ADD COLUMN refill_anchor timestamptz,
    ADD CONSTRAINT configs_refill_anchor_needs_refill CHECK (refill_anchor IS NULL OR refill_interval IS NOT NULL);
COMMENT ON COLUMN api_key.configs.refill_anchor IS 'Refills on a calendar schedule: at refill_anchor + k × refill_interval (UTC), instead of refill_interval after the last refill';
ALTER TABLE api_key.keys ADD COLUMN refill_anchor timestamptz;
COMMENT ON COLUMN api_key.keys.refill_anchor IS 'Refills on a calendar schedule: at refill_anchor + k × refill_interval (UTC), instead of refill_interval after the last refill; see api_key_next_refill_at(k)';

DROP FUNCTION @extschema@.api_key_create(text, text, text, text, text, interval, jsonb, jsonb, bigint, bigint, interval, integer, interval, boolean);
DROP FUNCTION @extschema@.api_key_update(uuid, text, boolean, timestamp with time zone, jsonb, jsonb, bigint, bigint, interval, boolean, integer, interval, text[]);
DROP FUNCTION @extschema@.api_key_config_create(text, text, integer, text, interval, interval, interval, boolean, integer, integer, integer, integer, boolean, jsonb, boolean, integer, interval, bigint, bigint, interval, text[], boolean);

CREATE FUNCTION @extschema@."api_key_create"(
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
	"rate_limit_enabled" bool DEFAULT NULL,
	"refill_anchor" timestamp with time zone DEFAULT NULL
) RETURNS api_key.created_key
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'api_key_create_0_3_wrapper';

CREATE FUNCTION @extschema@."api_key_update"(
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
	"clear" TEXT[] DEFAULT NULL,
	"refill_anchor" timestamp with time zone DEFAULT NULL
) RETURNS api_key.keys
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'api_key_update_0_3_wrapper';

CREATE FUNCTION @extschema@."api_key_config_create"(
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
	"actor_may_create" bool DEFAULT false,
	"refill_anchor" timestamp with time zone DEFAULT NULL
) RETURNS api_key.configs
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'api_key_config_create_0_3_wrapper';

CREATE FUNCTION @extschema@."api_key_next_refill_at"(
	"k" api_key.keys
) RETURNS timestamp with time zone
STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'api_key_next_refill_at_wrapper';

REVOKE EXECUTE ON FUNCTION @extschema@.api_key_create(text, text, text, text, text, interval, jsonb, jsonb, bigint, bigint, interval, integer, interval, boolean, timestamp with time zone),
    @extschema@.api_key_update(uuid, text, boolean, timestamp with time zone, jsonb, jsonb, bigint, bigint, interval, boolean, integer, interval, text[], timestamp with time zone),
    @extschema@.api_key_config_create(text, text, integer, text, interval, interval, interval, boolean, integer, integer, integer, integer, boolean, jsonb, boolean, integer, interval, bigint, bigint, interval, text[], boolean, timestamp with time zone),
    @extschema@.api_key_next_refill_at(api_key.keys) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.api_key_create(text, text, text, text, text, interval, jsonb, jsonb, bigint, bigint, interval, integer, interval, boolean, timestamp with time zone),
    @extschema@.api_key_update(uuid, text, boolean, timestamp with time zone, jsonb, jsonb, bigint, bigint, interval, boolean, integer, interval, text[], timestamp with time zone),
    @extschema@.api_key_config_create(text, text, integer, text, interval, interval, interval, boolean, integer, integer, integer, integer, boolean, jsonb, boolean, integer, interval, bigint, bigint, interval, text[], boolean, timestamp with time zone),
    @extschema@.api_key_next_refill_at(api_key.keys) TO api_key_user, api_key_admin;

COMMENT ON FUNCTION @extschema@.api_key_create(text, text, text, text, text, interval, jsonb, jsonb, bigint, bigint, interval, integer, interval, boolean, timestamp with time zone) IS
    'Create a key for (reference_type, reference_id). Returns the plaintext key once; only its hash is stored.';
COMMENT ON FUNCTION @extschema@.api_key_update(uuid, text, boolean, timestamp with time zone, jsonb, jsonb, bigint, bigint, interval, boolean, integer, interval, text[], timestamp with time zone) IS
    'Change a key. NULL arguments leave a field as it is; clear => ''{expires_at,remaining}'' sets fields to NULL. Actors may only narrow limits and permissions.';
COMMENT ON FUNCTION @extschema@.api_key_config_create(text, text, integer, text, interval, interval, interval, boolean, integer, integer, integer, integer, boolean, jsonb, boolean, integer, interval, bigint, bigint, interval, text[], boolean, timestamp with time zone) IS
    'Create a named key configuration. Service only.';
COMMENT ON FUNCTION @extschema@.api_key_next_refill_at(api_key.keys) IS
    'When the key (a row of api_key.keys) next refills its credits: refill_interval after the last refill, or the next point of its calendar schedule (refill_anchor); NULL without a refill.';

-- 0.3.0: verification analytics (src/analytics). Counts are added up in memory and written
-- in batches as minute rows; completed hours are rolled up into hour rows and completed days
-- into day rows by the flush (api_key.usage_rollup says how far), and the views add up what
-- is not rolled up yet. Minute and hour rows are removed after api_key.usage_minute_retention
-- / usage_hour_retention once rolled up. Read through api_key.usage_by_minute, _hour and _day.
CREATE TABLE api_key.usage (
    resolution     text NOT NULL CHECK (resolution IN ('minute', 'hour', 'day')),
    bucket         timestamptz NOT NULL,
    key_id         uuid,
    code           text NOT NULL,
    tags           text[] NOT NULL,
    reference_type text,
    reference_id   text,
    config_id      text,
    verifications  bigint NOT NULL,
    credits_spent  bigint NOT NULL,
    CONSTRAINT usage_bucket UNIQUE NULLS NOT DISTINCT (resolution, bucket, key_id, code, tags)
);
COMMENT ON TABLE api_key.usage IS 'Verifications per key, bucket (minute, hour, day), code and tag set, with the credits they spent; written in batches (see api_key_flush_usage). Read it through api_key.usage_by_minute, _hour and _day.';
COMMENT ON COLUMN api_key.usage.key_id IS 'NULL for verifications of keys that were not found';
COMMENT ON COLUMN api_key.usage.reference_id IS 'The key''s owner when the counts were written; NULL for keys not found, or deleted before their counts were written';
CREATE INDEX usage_by_reference ON api_key.usage (reference_type, reference_id, resolution, bucket);
CREATE INDEX usage_by_key ON api_key.usage (key_id, resolution, bucket);
CREATE TABLE api_key.usage_rollup (
    resolution text PRIMARY KEY CHECK (resolution IN ('hour', 'day')),
    through    timestamptz NOT NULL
);
COMMENT ON TABLE api_key.usage_rollup IS 'How far the usage is rolled up: hour rows count the minute rows before through (resolution hour), day rows the hour rows before it (day). No row: nothing rolled up yet.';
SELECT pg_catalog.pg_extension_config_dump('api_key.usage', '');
SELECT pg_catalog.pg_extension_config_dump('api_key.usage_rollup', '');
ALTER TABLE api_key.usage ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_key.usage FORCE ROW LEVEL SECURITY;
ALTER TABLE api_key.usage_rollup ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_key.usage_rollup FORCE ROW LEVEL SECURITY;

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

REVOKE ALL ON api_key.usage, api_key.usage_rollup, api_key.usage_by_minute, api_key.usage_by_hour, api_key.usage_by_day FROM PUBLIC;
GRANT SELECT ON api_key.usage, api_key.usage_rollup, api_key.usage_by_minute, api_key.usage_by_hour, api_key.usage_by_day
    TO api_key_user, api_key_admin;

DROP FUNCTION @extschema@.api_key_verify(text, jsonb, integer, text);
DROP FUNCTION @extschema@.api_key_authenticate(text, jsonb, integer, text);

CREATE FUNCTION @extschema@."api_key_verify"(
	"key" TEXT,
	"permissions" jsonb DEFAULT NULL,
	"cost" INT DEFAULT 1,
	"config_id" TEXT DEFAULT NULL,
	"tags" TEXT[] DEFAULT NULL
) RETURNS api_key.verification
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'api_key_verify_0_3_wrapper';

CREATE FUNCTION @extschema@."api_key_authenticate"(
	"key" TEXT,
	"permissions" jsonb DEFAULT NULL,
	"cost" INT DEFAULT 1,
	"config_id" TEXT DEFAULT NULL,
	"tags" TEXT[] DEFAULT NULL
) RETURNS api_key.verification
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'api_key_authenticate_0_3_wrapper';

CREATE FUNCTION @extschema@."api_key_flush_usage"() RETURNS bigint
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'api_key_flush_usage_wrapper';

REVOKE EXECUTE ON FUNCTION @extschema@.api_key_verify(text, jsonb, integer, text, text[]),
    @extschema@.api_key_authenticate(text, jsonb, integer, text, text[]),
    @extschema@.api_key_flush_usage() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.api_key_verify(text, jsonb, integer, text, text[]),
    @extschema@.api_key_authenticate(text, jsonb, integer, text, text[]),
    @extschema@.api_key_flush_usage() TO api_key_user, api_key_admin;

COMMENT ON FUNCTION @extschema@.api_key_verify(text, jsonb, integer, text, text[]) IS
    'Verify an API key: exactly one row (valid, code, key and usage), never an error for any key value. Checks existence, enabled, expiry, permissions, rate limit, credits; a refused call consumes nothing. Counted, with its tags, in the usage analytics.';
COMMENT ON FUNCTION @extschema@.api_key_authenticate(text, jsonb, integer, text, text[]) IS
    'Verify a key and bind the current transaction to it (see api_key_current_*); raises 28000 with the code when not valid.';
COMMENT ON FUNCTION @extschema@.api_key_flush_usage() IS
    'Write the usage counts waiting in memory now (the background flush does it every api_key.usage_flush_interval) and apply the retention settings; returns the rows written';
