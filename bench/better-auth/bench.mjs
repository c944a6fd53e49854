// The better-auth peer: better-auth 1.7.5 with its api-key plugin, on the same PostgreSQL
// cluster as the api_key scenarios (database given by PGDATABASE, default "better_auth").
//
//   node bench.mjs            migrate, create a user and BENCH_BA_KEYS keys through
//                             auth.api.createApiKey, then drive auth.api.verifyApiKey from
//                             BENCH_BA_WORKERS concurrent async workers for BENCH_SECONDS
//                             (after BENCH_WARMUP seconds of warm-up), rate limiting off, then on.
//
// Writes a JSON summary to BENCH_OUT (or stdout): ops/s, p50/p99 latency measured in Node
// around each verifyApiKey call, errors, WAL bytes per verification.
import { betterAuth } from "better-auth";
import { getMigrations } from "better-auth/db/migration";
import { apiKey } from "@better-auth/api-key";
import pg from "pg";
import { writeFileSync } from "node:fs";
import { performance } from "node:perf_hooks";

const env = process.env;
const SECONDS = Number(env.BENCH_SECONDS ?? 15);
const WARMUP = Number(env.BENCH_WARMUP ?? 3);
const KEYS = Number(env.BENCH_BA_KEYS ?? 10000);
const WORKERS = Number(env.BENCH_BA_WORKERS ?? 8);
const HOUR_MS = 3600 * 1000;
const RATE_MAX = 1_000_000; // like the api_key rate-limited keys: admits everything

const pool = new pg.Pool({
  host: env.PGHOST ?? "127.0.0.1",
  port: Number(env.PGPORT ?? 5432),
  user: env.PGUSER ?? "postgres",
  database: env.PGDATABASE ?? "better_auth",
  max: WORKERS, // one connection per worker, like pgbench -c 8
});

function authOptions(rateLimitEnabled) {
  return {
    secret: "api-key-benchmark-secret-not-for-production-0123456789",
    baseURL: "http://localhost:3000",
    database: pool,
    telemetry: { enabled: false },
    logger: { level: "error" },
    plugins: [
      apiKey({
        rateLimit: rateLimitEnabled
          ? { enabled: true, timeWindow: HOUR_MS, maxRequests: RATE_MAX }
          : { enabled: false },
      }),
    ],
  };
}

async function walLsn() {
  const r = await pool.query("SELECT pg_current_wal_lsn()::text AS lsn");
  return r.rows[0].lsn;
}
async function walBytes(from, to) {
  const r = await pool.query("SELECT pg_wal_lsn_diff($1::pg_lsn, $2::pg_lsn)::bigint AS d", [to, from]);
  return Number(r.rows[0].d);
}

function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  const rank = Math.ceil((p / 100) * sorted.length); // nearest rank, like bench/report.py
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1];
}

async function forEachConcurrently(count, workers, fn) {
  let next = 0;
  await Promise.all(
    Array.from({ length: workers }, async () => {
      for (;;) {
        const i = next++;
        if (i >= count) return;
        await fn(i);
      }
    }),
  );
}

// Drive verifyApiKey for `seconds` from WORKERS async workers picking random keys.
async function drive(auth, keys, seconds, latencies) {
  const codes = {};
  let ok = 0;
  let failed = 0;
  const start = performance.now();
  const end = start + seconds * 1000;
  await Promise.all(
    Array.from({ length: WORKERS }, async () => {
      while (performance.now() < end) {
        const key = keys[Math.floor(Math.random() * keys.length)];
        const t0 = performance.now();
        let r;
        try {
          r = await auth.api.verifyApiKey({ body: { key } });
        } catch (e) {
          r = { valid: false, error: { code: String(e?.body?.code ?? e?.message ?? e) } };
        }
        const t1 = performance.now();
        if (latencies) latencies.push(t1 - t0);
        if (r?.valid) ok++;
        else {
          failed++;
          const c = r?.error?.code ?? "UNKNOWN";
          codes[c] = (codes[c] ?? 0) + 1;
        }
      }
    }),
  );
  return { ok, failed, codes, elapsed: (performance.now() - start) / 1000 };
}

async function main() {
  const t0 = performance.now();
  // better-auth's own migration (what `npx auth migrate` runs), before any auth instance exists.
  const { runMigrations } = await getMigrations(authOptions(true));
  await runMigrations();
  const authOn = betterAuth(authOptions(true));
  const authOff = betterAuth(authOptions(false));
  const ctx = await authOn.$context;
  let user = await ctx.internalAdapter.findUserByEmail("bench@example.com");
  user = user?.user ?? (await ctx.internalAdapter.createUser({ email: "bench@example.com", name: "Bench", emailVerified: true }));

  // Keys are created through the plugin's own API (server-side, with userId), rate limit
  // switched on per key; the "off" run switches it off in the plugin configuration.
  const keys = new Array(KEYS);
  await forEachConcurrently(KEYS, WORKERS, async (i) => {
    const r = await authOn.api.createApiKey({
      body: {
        userId: user.id,
        name: `k${i}`,
        rateLimitEnabled: true,
        rateLimitMax: RATE_MAX,
        rateLimitTimeWindow: HOUR_MS,
      },
    });
    keys[i] = r.key;
  });
  await pool.query("VACUUM ANALYZE");
  await pool.query("CHECKPOINT");
  const loadSeconds = (performance.now() - t0) / 1000;

  const results = [];
  for (const [name, auth] of [
    ["better_auth_no_rate_limit", authOff],
    ["better_auth_rate_limit", authOn],
  ]) {
    await drive(auth, keys, WARMUP, null);
    const lat = [];
    const lsn0 = await walLsn();
    const w0 = Date.now() / 1000;
    const r = await drive(auth, keys, SECONDS, lat);
    const w1 = Date.now() / 1000;
    const wal = await walBytes(lsn0, await walLsn());
    lat.sort((a, b) => a - b);
    const n = r.ok + r.failed;
    results.push({
      name,
      ops: n / r.elapsed,
      p50_ms: percentile(lat, 50),
      p99_ms: percentile(lat, 99),
      transactions: n,
      errors: r.failed,
      error_codes: r.codes,
      seconds: r.elapsed,
      wal_bytes_per_op: n ? wal / n : null,
      window: [w0, w1],
    });
    process.stderr.write(`${name}: ${(n / r.elapsed).toFixed(0)} ops/s, ${r.failed} errors\n`);
  }
  const out = JSON.stringify({ keys: KEYS, workers: WORKERS, load_seconds: loadSeconds, scenarios: results }, null, 2);
  if (env.BENCH_OUT) writeFileSync(env.BENCH_OUT, out + "\n");
  else console.log(out);
  await pool.end();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
