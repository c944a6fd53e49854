//! Verification analytics: every verification counted per key, minute, outcome and tag set,
//! with the credits it spent, and written in batches to `api_key.usage` (rolled up per hour
//! and per day as it is written), read through the views `api_key.usage_by_minute`, `_hour`
//! and `_day` under the same row-level security as the keys (docs/analytics.md).
//!
//! No verification writes for it:
//! - preloaded (`shared_preload_libraries = 'api_key'`): counts add up in shared memory
//!   (`shmem.rs`) and a background worker writes them every `api_key.usage_flush_interval`
//!   (`worker.rs`);
//! - not preloaded: each backend adds them up in its own memory (`local.rs`) and writes them
//!   when one of its own transactions that verified a key commits and a write is due, like
//!   `last_used_at` (never in a transaction that did not verify).
//!
//! A verification is counted when it is answered, whatever its transaction does next (a
//! refused `api_key_authenticate` aborts its transaction, and is still a refusal worth
//! counting). Its credits are counted only when its transaction commits: credits that a
//! rollback gives back to the key were not spent (`pending.rs`).

pub mod local;
pub mod pending;
pub mod shmem;
pub mod tags;
pub mod worker;
pub mod writer;

use crate::gucs::TRACK_USAGE;
use crate::verify::Code;
use tags::TagSet;

/// What counts are added up under: one row of `api_key.usage_by_minute`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Bucket {
    /// The key, or all zeros for a key that was not found.
    pub key: [u8; 16],
    /// Minutes since 2000-01-01 UTC.
    pub minute: i32,
    pub code: Code,
    pub tags: TagSet,
}

/// Verifications and credits added up under one bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub verifications: i64,
    pub credits: i64,
}

impl Counts {
    pub fn add(&mut self, other: Counts) {
        self.verifications = self.verifications.saturating_add(other.verifications);
        self.credits = self.credits.saturating_add(other.credits);
    }
}

/// The minute (since 2000-01-01 UTC) of a time in microseconds.
pub fn minute_of(micros: i64) -> i32 {
    micros
        .div_euclid(60_000_000)
        .clamp(i32::MIN as i64, i32::MAX as i64) as i32
}

/// Count a verification answered `code` for `key` (None: not found) at `now`, which spent
/// `credits` if its transaction commits.
pub fn record(key: Option<[u8; 16]>, code: Code, tags: &TagSet, credits: i64, now: i64) {
    if !TRACK_USAGE.get() {
        return;
    }
    let bucket = Bucket {
        key: key.unwrap_or([0; 16]),
        minute: minute_of(now),
        code,
        tags: tags.clone(),
    };
    local::note_verified();
    add(
        &bucket,
        Counts {
            verifications: 1,
            credits: 0,
        },
    );
    if credits > 0 {
        pending::credits(bucket, credits);
    }
}

/// Adds counts where this backend keeps them: shared memory when preloaded (its own memory
/// when shared memory has no room), else its own memory.
fn add(bucket: &Bucket, counts: Counts) {
    if shmem::available() && shmem::add(bucket, counts) {
        return;
    }
    local::add(bucket, counts);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minutes_start_at_the_epoch_and_floor() {
        assert_eq!(minute_of(0), 0);
        assert_eq!(minute_of(59_999_999), 0);
        assert_eq!(minute_of(60_000_000), 1);
        assert_eq!(minute_of(-1), -1);
        assert_eq!(minute_of(i64::MAX), i32::MAX);
    }
}
