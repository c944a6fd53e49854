-- Hand-rolled PL/pgSQL verify with credits (guarded UPDATE ... RETURNING), keys spread over the set.
-- pgbench script; variables via -D: n (keys in the set).
\set i 20000000 + random(1, :n)
SELECT v.valid::int AS ok, v.key_id, v.owner FROM handrolled_verify((SELECT k.key FROM bench_keys k WHERE k.i = :i)) v \gset
\set chk 1 / :ok
