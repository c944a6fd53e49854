//! `last_used_at` without a WAL write per verification. A use is recorded only when the stored
//! `last_used_at` is older than `api_key.last_used_precision` (so a key is written at most
//! once per precision period, however often it is used); each backend keeps recorded uses in
//! memory and writes them, at most `BATCH` at a time, when a transaction that verified commits
//! and a write is due (half the precision period since the last one, or `BATCH` keys waiting).
//!
//! Writing at commit (an `XACT_EVENT_PRE_COMMIT` callback) rather than inside the verification
//! means the rows are locked only while the transaction commits: a verification at the start of
//! a long request transaction does not hold other keys' rows for the whole request. Small
//! batches spread the cost instead of stalling one verification. Transactions that see a
//! snapshot for their whole life (REPEATABLE READ, SERIALIZABLE) never write: a concurrent
//! update of one of those rows would fail their commit. Rows locked by
//! a concurrent transaction are skipped rather than waited for (no deadlock with credit
//! updates); their time is written by a later flush. A backend that exits normally writes what
//! is pending on its way out (a `before_shmem_exit` callback, as PostgreSQL itself does to drop
//! temporary tables); one that dies or is terminated loses it. So `last_used_at` is precise to
//! the flush interval, best effort.

use crate::gucs::LAST_USED_PRECISION;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::Uuid;
use std::cell::RefCell;
use std::collections::HashMap;

/// Most rows written by one commit; also the backlog that makes a write due.
const BATCH: usize = 128;
/// Uses kept in memory at most (beyond it, new uses are dropped until the backlog drains).
const MAX_PENDING: usize = 65_536;

struct Pending {
    times: HashMap<[u8; 16], i64>,
    last_flush: i64,
    hooks: bool,
}

thread_local! {
    static PENDING: RefCell<Pending> =
        RefCell::new(Pending { times: HashMap::new(), last_flush: 0, hooks: false });
}

// Rows are found through the primary key (id = ANY), locked without waiting, and written only
// if the new time is later.
const FLUSH: &str = "
    UPDATE api_key.keys k SET last_used_at = u.at
      FROM (SELECT l.id, x.at
              FROM (SELECT id FROM api_key.keys WHERE id = ANY($1) FOR UPDATE SKIP LOCKED) AS l
              JOIN unnest($1::uuid[], $2::timestamptz[]) AS x(id, at) ON x.id = l.id) AS u
     WHERE k.id = u.id AND (k.last_used_at IS NULL OR k.last_used_at < u.at)";

/// Note that `key_id`, whose stored `last_used_at` is `stored`, was used now.
pub fn record(key_id: Uuid, stored: Option<i64>) {
    // SAFETY: reads the clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    if stored.is_some_and(|at| now - at < precision()) {
        return;
    }
    PENDING.with(|p| {
        let mut p = p.borrow_mut();
        if p.last_flush == 0 {
            // A fresh backend starts its clock now, so that a burst of short-lived
            // connections does not write on every first call (they write at exit).
            p.last_flush = now;
        }
        if !p.hooks {
            p.hooks = true;
            // SAFETY: registers plain callbacks for this backend's commits and exit.
            unsafe {
                pg_sys::RegisterXactCallback(Some(flush_at_commit), std::ptr::null_mut());
                pg_sys::before_shmem_exit(Some(flush_at_exit), pg_sys::Datum::from(0));
            }
        }
        if p.times.len() < MAX_PENDING || p.times.contains_key(key_id.as_bytes()) {
            p.times.insert(*key_id.as_bytes(), now);
        }
    });
}

fn precision() -> i64 {
    LAST_USED_PRECISION.get() as i64 * 1_000_000
}

/// Up to `BATCH` pending uses, if a write is due.
fn due_batch(now: i64) -> Option<Vec<([u8; 16], i64)>> {
    PENDING.with(|p| {
        let mut p = p.borrow_mut();
        if p.times.is_empty() || (now - p.last_flush < precision() / 2 && p.times.len() < BATCH) {
            return None;
        }
        p.last_flush = now;
        let ids: Vec<[u8; 16]> = p.times.keys().take(BATCH).copied().collect();
        Some(
            ids.into_iter()
                .filter_map(|id| p.times.remove(&id).map(|at| (id, at)))
                .collect(),
        )
    })
}

#[pg_guard]
unsafe extern "C-unwind" fn flush_at_commit(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    if event != pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT {
        return;
    }
    // SAFETY: reads backend-global state.
    let snapshot_for_life = unsafe { pg_sys::XactIsoLevel >= pg_sys::XACT_REPEATABLE_READ as i32 };
    if snapshot_for_life || !can_write() {
        return;
    }
    // SAFETY: reads the clock.
    let Some(batch) = due_batch(unsafe { pg_sys::GetCurrentTimestamp() }) else {
        return;
    };
    // SAFETY: the transaction is still open at PRE_COMMIT.
    unsafe { flush_as_owner(batch) };
}

/// Writes `batch` in the current transaction as the owner of `api_key.keys`: commit and exit
/// callbacks run as the session's role, which may not write the table (verification writes
/// it through SECURITY DEFINER). Does nothing when the table is not there.
///
/// # Safety
/// A transaction must be open.
unsafe fn flush_as_owner(batch: impl IntoIterator<Item = ([u8; 16], i64)>) {
    // SAFETY: catalog lookups inside the open transaction; the snapshot is what SPI needs to
    // run a statement outside of a portal, popped below.
    unsafe {
        let namespace = pg_sys::get_namespace_oid(c"api_key".as_ptr(), true);
        if namespace == pg_sys::InvalidOid {
            return;
        }
        let keys = pg_sys::get_relname_relid(c"keys".as_ptr(), namespace);
        if keys == pg_sys::InvalidOid {
            return;
        }
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        if let Some(owner) = crate::run_as_owner::owner_of(pg_sys::RelationRelationId, keys) {
            crate::run_as_owner::as_role(owner, || {
                crate::usage::with_pinned_search_path(|client| flush(client, batch))
            });
        }
        pg_sys::PopActiveSnapshot();
    }
}

/// A read-only transaction (or a standby) verifies fine but cannot write usage times.
fn can_write() -> bool {
    // SAFETY: reads backend-global flags.
    unsafe { !pg_sys::XactReadOnly && !pg_sys::RecoveryInProgress() }
}

fn flush(client: &mut SpiClient<'_>, batch: impl IntoIterator<Item = ([u8; 16], i64)>) {
    let batch: Vec<_> = batch.into_iter().collect();
    let mut ids = Vec::with_capacity(batch.len());
    let mut times = Vec::with_capacity(batch.len());
    for (id, at) in batch {
        ids.push(Uuid::from_bytes(id));
        times.push(
            TimestampWithTimeZone::try_from(at)
                .unwrap_or_else(|_| TimestampWithTimeZone::positive_infinity()),
        );
    }
    if let Err(e) = client.update(FLUSH, None, &[ids.into(), times.into()]) {
        crate::errors::raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("api_key: writing last_used_at failed: {e}"),
        );
    }
}

/// On a normal backend exit, write what is pending in a transaction of its own, as
/// PostgreSQL's own exit callbacks do (RemoveTempRelationsCallback). An error here would be
/// promoted to FATAL (the backend is exiting anyway), so the write is attempted only when the
/// extension's table is there; losing a few `last_used_at` times is acceptable, a noisy exit
/// is not.
#[pg_guard]
unsafe extern "C-unwind" fn flush_at_exit(code: std::os::raw::c_int, _arg: pg_sys::Datum) {
    let batch = PENDING.with(|p| std::mem::take(&mut p.borrow_mut().times));
    // SAFETY: reads backend-global state.
    let in_transaction = unsafe { pg_sys::IsTransactionOrTransactionBlock() };
    if code != 0 || batch.is_empty() || in_transaction || !can_write() {
        return;
    }
    // SAFETY: no transaction is open (checked above): this one is ours.
    unsafe {
        pg_sys::StartTransactionCommand();
        flush_as_owner(batch);
        pg_sys::CommitTransactionCommand();
    }
}
