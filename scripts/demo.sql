-- The walkthrough printed by scripts/demo.sh. Runs as the superuser (the service).
\pset pager off
\pset footer off

\echo '--- 1. Create a key for user alice that may read files (the plaintext is shown once)'
SELECT id, key, start, expires_at
  FROM api_key_create(reference_id => 'alice', name => 'laptop', permissions => '{"files": ["read"]}') \gset k_
\echo :k_key

\echo
\echo '--- 2. Verify it, asking for files:read'
SELECT valid, code, reference_type, reference_id, name, permissions
  FROM api_key_verify(:'k_key', permissions => '{"files": ["read"]}');

\echo '--- 3. Verify a key that does not exist'
SELECT valid, code FROM api_key_verify('sk_ThisKeyWasNeverIssuedByAnyoneAtAll000000');

\echo '--- 4. Verify the real key with one character changed (the checksum catches it; no table is read)'
SELECT valid, code
  FROM api_key_verify(overlay(:'k_key' placing (CASE WHEN substr(:'k_key', 10, 1) = 'a' THEN 'b' ELSE 'a' END) from 10 for 1));

\echo '--- 5. An expired key (it lived for one second)'
SELECT key AS expired_key FROM api_key_create(reference_id => 'alice', name => 'old', expires_in => '1 second') \gset
SELECT pg_sleep(1.1) \g /dev/null
SELECT valid, code, expires_at FROM api_key_verify(:'expired_key');

\echo '--- 6. Asking for a permission the key does not hold'
SELECT valid, code, permissions FROM api_key_verify(:'k_key', permissions => '{"files": ["write"]}');

\echo '--- 7. A key with a rate limit of 2 per minute and 5 credits, verified three times'
SELECT key AS limited_key FROM api_key_create(reference_id => 'alice', name => 'ci', remaining => 5,
                                              rate_limit_max => 2, rate_limit_window => '1 minute') \gset
SELECT valid, code, remaining, rate_limit_remaining, retry_after_ms FROM api_key_verify(:'limited_key');
SELECT valid, code, remaining, rate_limit_remaining, retry_after_ms FROM api_key_verify(:'limited_key');
SELECT valid, code, remaining, rate_limit_remaining, retry_after_ms FROM api_key_verify(:'limited_key');

\echo '--- 8. List alice''s keys (no hash anywhere; the plaintext was never stored)'
SELECT name, start, enabled, expires_at, remaining, permissions, created_at
  FROM api_key_list_for_reference('alice');

\echo '--- 9. As the application, acting for alice: row-level security shows her keys, not bob''s'
SELECT count(*) AS bob_keys FROM api_key_create(reference_id => 'bob', name => 'bob''s');
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'demo_app') THEN CREATE ROLE demo_app IN ROLE api_key_user; END IF;
END $$;
BEGIN;
SET LOCAL ROLE demo_app;
SET LOCAL api_key.actor = 'alice';
SELECT reference_id, name FROM api_key.keys ORDER BY name;
COMMIT;
