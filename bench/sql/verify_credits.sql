-- api_key_verify, keys with credits (remaining 1e9, cost 1), spread over the set.
-- pgbench script; variables via -D: n (keys in the set).
\set i 20000000 + random(1, :n)
SELECT v.valid::int AS ok, v.key_id, v.reference_id FROM api_key_verify((SELECT k.key FROM bench_keys k WHERE k.i = :i)) v \gset
\set chk 1 / :ok
