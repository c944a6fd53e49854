-- The documented request pattern on ONE key with credits: authenticate, do the request's work
-- (a little computing), commit. Without the credit writer, the key's row stays locked for the
-- whole transaction, so requests of the key run one after another.
-- pgbench script; variables via -D: n (keys in the set).
\set i 40000001
BEGIN;
SELECT v.valid::int AS ok FROM api_key_authenticate((SELECT k.key FROM bench_keys k WHERE k.i = :i)) v \gset
SELECT count(*) AS work FROM generate_series(1, 2000) \gset
COMMIT;
\set chk 1 / :ok
