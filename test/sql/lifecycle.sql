-- The key lifecycle at psql, as the service (a superuser with no actor).
CREATE EXTENSION api_key;

-- Create: the plaintext comes back once. Its shape: prefix, 32 base62 characters, 6 of checksum.
SELECT id, key, start FROM api_key_create(reference_id => 'alice', name => 'laptop',
                                          permissions => '{"files": ["read", "write"]}') \gset k_
SELECT :'k_key' ~ '^sk_[0-9A-Za-z]{38}$' AS well_formed, left(:'k_key', 9) = :'k_start' AS start_matches;

-- Verify: valid, with the owner and permissions.
SELECT valid, code, reference_type, reference_id, name, permissions, remaining, rate_limit_remaining
  FROM api_key_verify(:'k_key');
SELECT valid, code FROM api_key_verify(:'k_key', permissions => '{"files": ["read"]}');
SELECT valid, code FROM api_key_verify(:'k_key', permissions => '{"files": ["delete"]}');
SELECT valid, code FROM api_key_verify(:'k_key', permissions => '{"billing": ["read"]}');

-- Anything else is NOT_FOUND, in exactly one row, never an error.
SELECT valid, code, key_id FROM api_key_verify(NULL);
SELECT valid, code FROM api_key_verify('');
SELECT valid, code FROM api_key_verify('sk_live_definitely_not_a_key');
SELECT valid, code FROM api_key_verify(repeat('x', 1000000));
SELECT valid, code FROM api_key_verify(left(:'k_key', -1) || CASE WHEN right(:'k_key', 1) = 'a' THEN 'b' ELSE 'a' END);

-- An expiry set by update must lie in the future: to stop a key now, disable or revoke it.
SELECT expires_at FROM api_key_update(:'k_id', expires_at => now() - interval '1 minute');

-- Disabled beats expired beats missing permissions. (The key is made expired by hand, as time
-- would make it.)
SELECT name, enabled FROM api_key_update(:'k_id', enabled => false);
UPDATE api_key.keys SET expires_at = now() - interval '1 minute' WHERE id = :'k_id';
SELECT code FROM api_key_verify(:'k_key', permissions => '{"billing": ["read"]}');
SELECT name, enabled FROM api_key_update(:'k_id', enabled => true);
SELECT code, expires_at < now() AS in_the_past FROM api_key_verify(:'k_key');
SELECT expires_at FROM api_key_update(:'k_id', clear => '{expires_at}');
SELECT code FROM api_key_verify(:'k_key');

-- Rate limit 2 per hour, 3 credits: the refused call costs nothing.
SELECT id, key FROM api_key_create(reference_id => 'alice', name => 'ci', remaining => 3,
                                   rate_limit_max => 2, rate_limit_window => '1 hour') \gset r_
SELECT code, remaining, rate_limit_remaining FROM api_key_verify(:'r_key');
SELECT code, remaining, rate_limit_remaining FROM api_key_verify(:'r_key');
SELECT code, remaining, rate_limit_remaining, retry_after_ms BETWEEN 3590000 AND 3600000 AS retry_in_an_hour
  FROM api_key_verify(:'r_key');
SELECT remaining FROM api_key.keys WHERE id = :'r_id';

-- Credits: cost, and USAGE_EXCEEDED without spending.
SELECT key FROM api_key_create(reference_id => 'alice', name => 'metered', remaining => 10) \gset c_
SELECT code, remaining FROM api_key_verify(:'c_key', cost => 7);
SELECT code, remaining FROM api_key_verify(:'c_key', cost => 7);
SELECT code, remaining FROM api_key_verify(:'c_key', cost => 3);
SELECT code, remaining FROM api_key_verify(:'c_key', cost => 0);

-- List, newest first; no hash in sight.
SELECT name, remaining, rate_limit_enabled, permissions FROM api_key_list_for_reference('alice');
SELECT count(*) AS pages_of_one FROM api_key_list_for_reference('alice', page_size => 1);
-- A cursor is a position, not a row: paging after a key revoked meanwhile goes on.
SELECT id AS gone_id FROM api_key_create(reference_id => 'alice', name => 'short-lived') \gset
SELECT api_key_revoke(:'gone_id');
SELECT name FROM api_key_list_for_reference('alice', after_id => :'gone_id');

-- Rotate with a grace period: both work; rotate again without grace: the old ones expire.
SELECT key AS new_key FROM api_key_rotate(:'k_id', grace => '1 hour') \gset
SELECT (SELECT code FROM api_key_verify(:'k_key')) AS old, (SELECT code FROM api_key_verify(:'new_key')) AS new;
SELECT key AS newest_key FROM api_key_rotate(:'k_id') \gset
SELECT (SELECT code FROM api_key_verify(:'k_key')) AS old, (SELECT code FROM api_key_verify(:'new_key')) AS new,
       (SELECT code FROM api_key_verify(:'newest_key')) AS newest;

-- Revoke: gone; revoking again finds nothing to revoke.
SELECT api_key_revoke(:'r_id');
SELECT code FROM api_key_verify(:'r_key');
SELECT api_key_revoke(:'r_id');

-- Delete expired: removes expired keys and rotated-away secrets, and counts both.
SELECT id AS e_id FROM api_key_create(reference_id => 'alice', name => 'temporary', expires_in => '1 hour') \gset
UPDATE api_key.keys SET expires_at = now() - interval '1 second' WHERE id = :'e_id';
SELECT api_key_delete_expired();
SELECT detail FROM api_key.audit_log WHERE action = 'delete_expired';
SELECT count(*) AS secrets_of_rotated_key FROM api_key.key_secrets WHERE key_id = :'k_id';
SELECT count(*) AS expired_keys_left FROM api_key.keys WHERE id = :'e_id';

-- The audit log: who did what.
SELECT action, actor, database_role FROM api_key.audit_log ORDER BY id;

DROP EXTENSION api_key;
