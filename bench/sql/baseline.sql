-- Baseline: one index probe on the SHA-256 of the key in a plain table (same keys as verify_plain).
-- pgbench script; variables via -D: n (keys in the set).
\set i random(1, :n)
SELECT 1 AS ok, b.id, b.owner FROM baseline_keys b WHERE b.hash = sha256(convert_to((SELECT k.key FROM bench_keys k WHERE k.i = :i), 'UTF8')) \gset
\set chk 1 / :ok
