-- Hand-rolled PL/pgSQL verify with credits on ONE key verified by every client (the reference
-- for verify_hot_credits: any durable per-key counter serializes on the row lock until commit).
-- pgbench script; variables via -D: n (unused).
\set i 40000001
SELECT v.valid::int AS ok, v.key_id, v.owner FROM handrolled_verify((SELECT k.key FROM bench_keys k WHERE k.i = :i)) v \gset
\set chk 1 / :ok
