//! Usage counts in this backend's memory: all of them when the library is not preloaded, and,
//! when it is, those that found no room in shared memory (they move there when a transaction
//! ends).
//!
//! Not preloaded, the backend writes them itself (`writer::write_quietly`), on the side of a
//! COMMIT (`pg::bookkeeping`), only in a transaction that verified a key or writes anyway, and
//! only when a write is due: `api_key.usage_flush_interval` since the last one, or `BATCH`
//! buckets waiting. So a busy backend writes one batch per interval, an idle one never, and a
//! plain `SELECT` or another client's request on a pooled connection never. It also writes
//! them when it exits normally. A backend that is killed loses what it held.

use super::{shmem, writer, Bucket, Counts};
use crate::gucs::USAGE_FLUSH_INTERVAL;
use crate::pg::bookkeeping;
use crate::pg::compat::local_xid;
use pgrx::pg_guard;
use pgrx::pg_sys;
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

/// How long an exiting backend waits for another writer.
const EXIT_PATIENCE: Duration = Duration::from_secs(15);
/// Buckets that make a write due however recent the last one (of the minutes that are over).
const BATCH: usize = 16_384;
/// Buckets held at most; beyond, new buckets are not counted (and the loss is logged).
const MAX_HELD: usize = 65_536;

struct Held {
    counts: HashMap<Bucket, Counts>,
    /// Verifications not counted because `MAX_HELD` buckets were held.
    lost: i64,
    last_write: i64,
    hooks: bool,
    /// The local transaction id of the last transaction that verified a key.
    verified_in: u32,
}

thread_local! {
    static HELD: RefCell<Held> = RefCell::new(Held {
        counts: HashMap::new(),
        lost: 0,
        last_write: 0,
        hooks: false,
        verified_in: 0,
    });
}

/// The current transaction verified a key: its commit may write what is due.
pub fn note_verified() {
    HELD.with(|h| {
        let mut h = h.borrow_mut();
        h.verified_in = local_xid();
        if !h.hooks {
            h.hooks = true;
            h.last_write = crate::pg::clock::now();
            // SAFETY: registers plain callbacks for this backend's commits and exit.
            unsafe {
                pg_sys::RegisterXactCallback(Some(at_transaction_end), std::ptr::null_mut());
                pg_sys::before_shmem_exit(Some(at_exit), pg_sys::Datum::from(0));
            }
        }
    });
}

/// Adds counts to this backend's memory.
pub fn add(bucket: &Bucket, counts: Counts) {
    HELD.with(|h| {
        let mut h = h.borrow_mut();
        if h.counts.len() >= MAX_HELD && !h.counts.contains_key(bucket) {
            h.lost = h.lost.saturating_add(counts.verifications);
            return;
        }
        h.counts.entry(bucket.clone()).or_default().add(counts);
    });
}

/// Everything held, taken out (for `api_key_flush_usage`).
pub fn take_all() -> Vec<(Bucket, Counts)> {
    HELD.with(|h| {
        std::mem::take(&mut h.borrow_mut().counts)
            .into_iter()
            .collect()
    })
}

/// Puts back counts that could not be written.
pub fn put_back(counts: Vec<(Bucket, Counts)>) {
    for (bucket, c) in counts {
        add(&bucket, c);
    }
}

/// Verifications lost for lack of room since the last call (logged by the writer).
pub fn take_lost() -> i64 {
    HELD.with(|h| std::mem::take(&mut h.borrow_mut().lost))
}

/// Preloaded: moves what shared memory now has room for there.
fn move_to_shared_memory() {
    let held = take_all();
    let mut kept = Vec::new();
    for (bucket, counts) in held {
        if !shmem::add(&bucket, counts) {
            kept.push((bucket, counts));
        }
    }
    put_back(kept);
}

/// The buckets of the minutes that are over (each minute's counts written once), if a write is
/// due: `api_key.usage_flush_interval` since the last one, or `BATCH` buckets waiting.
fn due_batch(now: i64) -> Option<Vec<(Bucket, Counts)>> {
    HELD.with(|h| {
        let mut h = h.borrow_mut();
        let interval = USAGE_FLUSH_INTERVAL.get() as i64 * 1_000_000;
        if h.counts.is_empty() || (now - h.last_write < interval && h.counts.len() < BATCH) {
            return None;
        }
        let current = super::minute_of(now);
        let over: Vec<Bucket> = h
            .counts
            .keys()
            .filter(|b| b.minute < current)
            .cloned()
            .collect();
        if over.is_empty() {
            return None;
        }
        h.last_write = now;
        Some(
            over.into_iter()
                .filter_map(|b| h.counts.remove(&b).map(|c| (b, c)))
                .collect(),
        )
    })
}

fn asked_for_it() -> bool {
    HELD.with(|h| h.borrow().verified_in == local_xid()) || bookkeeping::writes_anyway()
}

#[pg_guard]
unsafe extern "C-unwind" fn at_transaction_end(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    if shmem::available() {
        // Commit and abort callbacks cannot raise: moving counts into shared memory is plain
        // arithmetic under a lightweight lock.
        if matches!(
            event,
            XACT_EVENT_COMMIT | XACT_EVENT_ABORT | XACT_EVENT_PREPARE
        ) && HELD.with(|h| !h.borrow().counts.is_empty())
        {
            move_to_shared_memory();
        }
        return;
    }
    if event != XACT_EVENT_PRE_COMMIT || !bookkeeping::may_write_at_commit() || !asked_for_it() {
        return;
    }
    let Some(batch) = due_batch(crate::pg::clock::now()) else {
        return;
    };
    bookkeeping::commit_locally();
    if let Err(unwritten) = writer::write_quietly(batch, Duration::ZERO) {
        put_back(unwritten);
    }
}

/// At a normal exit: preloaded, into shared memory; else written in a transaction of its own,
/// waiting a little for another writer (backends of a pool often exit together). What still
/// cannot be placed is lost, and the server log says how much.
#[pg_guard]
unsafe extern "C-unwind" fn at_exit(code: std::os::raw::c_int, _arg: pg_sys::Datum) {
    if shmem::available() {
        move_to_shared_memory();
    } else {
        let held = take_all();
        if !held.is_empty() {
            bookkeeping::at_exit(code, || {
                for chunk in held.chunks(BATCH) {
                    if let Err(unwritten) = writer::write_quietly(chunk.to_vec(), EXIT_PATIENCE) {
                        put_back(unwritten);
                    }
                }
            });
        }
    }
    let lost: i64 = take_all().iter().map(|(_, c)| c.verifications).sum::<i64>() + take_lost();
    if lost > 0 {
        pgrx::log!("api_key: {lost} verifications were not counted in the usage analytics: the backend exited before they could be written (see docs/analytics.md)");
    }
}
