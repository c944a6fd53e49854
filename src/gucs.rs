//! Every setting of the extension, in one place.

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

/// `api_key.actor`: who management calls act for, usually `SET LOCAL` per transaction so that
/// it never outlives the request on a pooled connection. Read by SQL with
/// `current_setting('api_key.actor', true)`; defined here so that `SHOW` documents it.
pub static ACTOR: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `api_key.last_used_precision`: `last_used_at` is written at most once per key per this many
/// seconds, batched per backend (see `last_used.rs`).
pub static LAST_USED_PRECISION: GucSetting<i32> = GucSetting::<i32>::new(300);

/// `api_key.rate_limit_slots`: keys with an open rate-limit window that shared memory holds
/// (32 bytes each, 8 MiB by default) when the library is preloaded. Keep it at least twice the
/// number of keys rate limited within one window: open addressing stays fast when half full. Beyond that, counting falls back to the
/// table for the keys that find no slot.
pub static RATE_LIMIT_SLOTS: GucSetting<i32> = GucSetting::<i32>::new(262_144);

/// `api_key.credit_writer`: with preloading, spend credits through the credit writer (no row
/// lock held past the verification; `verify/credit_queue.rs`).
pub static CREDIT_WRITER: GucSetting<bool> = GucSetting::<bool>::new(true);

/// `api_key.track_usage`: count verifications for the usage analytics (`src/analytics`).
pub static TRACK_USAGE: GucSetting<bool> = GucSetting::<bool>::new(true);

/// `api_key.usage_flush_interval`: seconds between writes of usage counts (the background
/// worker's, when preloaded; each backend's own, when not).
pub static USAGE_FLUSH_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(10);

/// `api_key.usage_minute_retention`: minutes that per-minute usage rows are kept.
pub static USAGE_MINUTE_RETENTION: GucSetting<i32> = GucSetting::<i32>::new(7 * 24 * 60);

/// `api_key.usage_hour_retention`: minutes that per-hour usage rows are kept.
pub static USAGE_HOUR_RETENTION: GucSetting<i32> = GucSetting::<i32>::new(90 * 24 * 60);

/// `api_key.usage_slots`: buckets (key × minute × outcome × tag set) that shared memory holds
/// between two flushes when the library is preloaded (48 bytes each, 12 MiB by default: a
/// minute of 100,000 keys in use and the next one).
pub static USAGE_SLOTS: GucSetting<i32> = GucSetting::<i32>::new(262_144);

/// `api_key.usage_tag_sets`: distinct tag sets counted in shared memory until the server
/// stops (520 bytes each); beyond, a new tag set is counted as `{(other)}`.
pub static USAGE_TAG_SETS: GucSetting<i32> = GucSetting::<i32>::new(1024);

pub fn init() {
    GucRegistry::define_string_guc(
        c"api_key.actor",
        c"The user that api_key management calls act for.",
        c"Set it per transaction (SET LOCAL). Unset (never set, RESET, or set to NULL/DEFAULT): the caller acts as the service, which only roles granted api_key_admin (or superusers) may. Empty is refused.",
        &ACTOR,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"api_key.last_used_precision",
        c"Precision of last_used_at, in seconds.",
        c"A key's last_used_at is written at most once per period, in batches, so that verification costs no WAL write per call.",
        &LAST_USED_PRECISION,
        1,
        3600,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_bool_guc(
        c"api_key.credit_writer",
        c"Spend credits through the background credit writer (with shared_preload_libraries = 'api_key').",
        c"The key's row is then locked only inside the writer's short transactions, never until the verifying transaction ends; rolled-back spends are refunded after. Off: spend in the verifying transaction.",
        &CREDIT_WRITER,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"api_key.track_usage",
        c"Count verifications for the usage analytics (api_key.usage_by_minute and others).",
        c"Counting costs no write per verification; counts are written in batches.",
        &TRACK_USAGE,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"api_key.usage_flush_interval",
        c"Seconds between writes of usage counts.",
        c"With preloading, the background worker writes every interval; without, each backend writes when one of its transactions that verified a key commits and an interval has passed. A crash loses at most one interval of counts.",
        &USAGE_FLUSH_INTERVAL,
        1,
        3600,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"api_key.usage_minute_retention",
        c"How long per-minute usage rows are kept.",
        c"Older rows are removed at each flush; their counts remain in the hour and day rows.",
        &USAGE_MINUTE_RETENTION,
        1,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MIN,
    );
    GucRegistry::define_int_guc(
        c"api_key.usage_hour_retention",
        c"How long per-hour usage rows are kept.",
        c"Older rows are removed at each flush; their counts remain in the day rows, which are kept until deleted.",
        &USAGE_HOUR_RETENTION,
        1,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MIN,
    );
    // A server-start setting can only be defined while the library is being preloaded.
    // SAFETY: reads a backend-global flag.
    if !unsafe { pgrx::pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    GucRegistry::define_int_guc(
        c"api_key.rate_limit_slots",
        c"Rate-limit windows held in shared memory (with shared_preload_libraries = 'api_key').",
        c"Set at server start. Keys beyond it are counted in the table api_key.rate_limit_windows.",
        &RATE_LIMIT_SLOTS,
        1024,
        64 * 1024 * 1024,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"api_key.usage_slots",
        c"Usage buckets held in shared memory between two flushes (with shared_preload_libraries = 'api_key').",
        c"Set at server start. A bucket is a key, minute, outcome and tag set. Buckets beyond it wait in the backend's memory.",
        &USAGE_SLOTS,
        1024,
        16 * 1024 * 1024,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"api_key.usage_tag_sets",
        c"Distinct tag sets counted until the server stops (with shared_preload_libraries = 'api_key').",
        c"Set at server start. Beyond it, a new tag set is counted as {(other)}.",
        &USAGE_TAG_SETS,
        1,
        16384,
        GucContext::Postmaster,
        GucFlags::default(),
    );
}
