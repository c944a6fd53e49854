-- api_key_verify, plain keys in database bench_scale; n = 100000 or 1000000 keys in the table.
-- pgbench script; variables via -D: n (keys in the set).
\set i random(1, :n)
SELECT v.valid::int AS ok, v.key_id, v.reference_id FROM api_key_verify((SELECT k.key FROM bench_keys k WHERE k.i = :i)) v \gset
\set chk 1 / :ok
