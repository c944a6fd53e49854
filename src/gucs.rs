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
}
