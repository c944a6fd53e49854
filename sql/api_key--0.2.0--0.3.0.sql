-- api_key 0.2.0 → 0.3.0. Once released, never edit this file; fix forward in the next script.
--
-- 0.3.0 adds the service's credit operations (add, subtract, set). Nothing else in the schema
-- changes; the library's rate-limit changes (docs/usage-control.md) need no SQL.
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
