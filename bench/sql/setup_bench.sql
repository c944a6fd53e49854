-- Schema of the benchmark database "bench" (run once, as the postgres superuser).
-- Everything the benchmark adds lives in schema public, outside the extension's schema.
CREATE EXTENSION IF NOT EXISTS api_key;
CREATE EXTENSION IF NOT EXISTS pg_prewarm;

-- Plaintext keys, for pgbench to pick from by number. Every scenario (the baseline too)
-- fetches its key from here by primary key inside the measured statement, so this lookup
-- costs every scenario the same and the ratios stay fair. Ranges of i:
--   1 ..                plain keys (no limits)                  -> baseline_keys holds their hashes
--   10,000,001 ..       rate-limited keys (1,000,000 per hour)
--   20,000,001 ..       keys with credits (remaining 1e9)       -> handrolled_keys holds their hashes
--   30,000,001          the hot rate-limited key
--   40,000,001          the hot key with credits
--   50,000,001 ..       argon2id keys (configuration "argon")
CREATE TABLE bench_keys (i integer PRIMARY KEY, key text NOT NULL);

-- The baseline: the least any verification can cost, one index probe on the SHA-256 of the key.
CREATE TABLE baseline_keys (
    hash       bytea PRIMARY KEY,
    id         uuid NOT NULL DEFAULT gen_random_uuid(),
    owner      text NOT NULL,
    name       text,
    enabled    boolean NOT NULL DEFAULT true,
    expires_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The hand-rolled competitor for credits: what a competent team writes without the
-- extension. One indexed, guarded UPDATE ... RETURNING on the hot path (remaining never goes
-- below zero under concurrency: the WHERE is re-checked on the newest row version); a
-- second statement only to explain a refusal. Same fillfactor as api_key.keys (HOT updates).
CREATE TABLE handrolled_keys (
    hash       bytea PRIMARY KEY,
    id         uuid NOT NULL DEFAULT gen_random_uuid(),
    owner      text NOT NULL,
    name       text,
    enabled    boolean NOT NULL DEFAULT true,
    expires_at timestamptz,
    remaining  bigint CHECK (remaining >= 0),
    created_at timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 80);

CREATE FUNCTION handrolled_verify(p_key text, p_cost integer DEFAULT 1,
                                  OUT valid boolean, OUT code text, OUT key_id uuid, OUT owner text,
                                  OUT remaining bigint)
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    h bytea := sha256(convert_to(p_key, 'UTF8'));
    k handrolled_keys;
BEGIN
    UPDATE handrolled_keys AS t SET remaining = t.remaining - p_cost
     WHERE t.hash = h AND t.enabled AND (t.expires_at IS NULL OR t.expires_at > now())
       AND t.remaining >= p_cost
    RETURNING t.id, t.owner, t.remaining INTO key_id, owner, remaining;
    IF FOUND THEN
        valid := true;
        code := 'VALID';
        RETURN;
    END IF;
    -- Refused: say why (not on the hot path).
    SELECT * INTO k FROM handrolled_keys t WHERE t.hash = h;
    valid := false;
    code := CASE WHEN k.hash IS NULL THEN 'NOT_FOUND'
                 WHEN NOT k.enabled THEN 'DISABLED'
                 WHEN k.expires_at <= now() THEN 'EXPIRED'
                 ELSE 'USAGE_EXCEEDED' END;
    key_id := k.id;
    owner := k.owner;
    remaining := k.remaining;
END
$$;

-- Argon2id configuration for the slow-hash scenario.
SELECT api_key_config_create(id => 'argon', hash_algorithm => 'argon2id', body_length => 48);
