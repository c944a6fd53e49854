-- Schema of the database "bench_scale": plain keys only, grown from 100,000 to 1,000,000.
-- Keys 1..100,000 belong to organization "org_big" (the listing scenario); the rest to users.
CREATE EXTENSION IF NOT EXISTS api_key;
CREATE EXTENSION IF NOT EXISTS pg_prewarm;
CREATE TABLE bench_keys (i integer PRIMARY KEY, key text NOT NULL);
