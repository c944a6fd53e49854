-- api_key_verify, ONE key with credits verified by every client.
-- pgbench script; variables via -D: n (keys in the set).
\set i 40000001
SELECT v.valid::int AS ok, v.key_id, v.reference_id FROM api_key_verify((SELECT k.key FROM bench_keys k WHERE k.i = :i)) v \gset
\set chk 1 / :ok
