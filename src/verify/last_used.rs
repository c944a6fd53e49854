//! `last_used_at` without a WAL write per verification. A use is recorded only when the stored
//! `last_used_at` is older than `api_key.last_used_precision` (so a key is written at most
//! once per precision period, however often it is used); each backend keeps recorded uses in
//! memory and writes them, at most `BATCH` at a time, when a write is due (half the
//! precision period since the last one, or `BATCH` keys waiting) and one of its transactions
//! commits that verified a key itself or already writes, and when it exits normally.
//!
//! Only those transactions: one that neither verified nor wrote (a plain `SELECT`, another
//! client's request on a pooled connection) stays without a transaction id, so its COMMIT
//! writes no WAL. Where the flush is the only write (at commit, or the transaction of its own
//! at exit), it commits with `synchronous_commit = local`: never waiting for a standby.
//!
//! Even so this is bookkeeping added to a COMMIT that did not ask for it, so it must never fail
//! or block it:
//!
//! - it takes its table lock only if it is free at once (`ConditionalLockRelationOid`), and
//!   skips rows locked by others (`FOR UPDATE SKIP LOCKED`): it never waits, so no
//!   `lock_timeout` or deadlock can reach the COMMIT;
//! - it runs in a subtransaction: any error (and a cancel arriving meanwhile) is rolled back
//!   and swallowed, the uses are kept for a later try, and the COMMIT goes on;
//! - it runs as the table's owner with a pinned search path (`pg::privileged`), since the
//!   committing role may not write the table and its search path is its own.
//!
//! Transactions that see one snapshot for their whole life (REPEATABLE READ, SERIALIZABLE) and
//! read-only ones never write. A backend that dies or is terminated loses its pending uses. So
//! `last_used_at` is precise to the precision period plus the flush delay, best effort.

use crate::gucs::LAST_USED_PRECISION;
use crate::pg::bookkeeping;
use crate::pg::compat::local_xid;
use crate::pg::privileged::{as_extension_owner, keys_relation};
use crate::pg::spi;
use pgrx::prelude::*;
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
    /// The local transaction id of the last transaction that verified a key.
    verified_in: u32,
}

thread_local! {
    static PENDING: RefCell<Pending> =
        RefCell::new(Pending { times: HashMap::new(), last_flush: 0, hooks: false, verified_in: 0 });
}

// Rows are found through the primary key (id = ANY), locked without waiting, and written only
// if the new time is later.
const FLUSH: &str = "
    UPDATE api_key.keys AS k SET last_used_at = u.at
      FROM (SELECT l.id, x.at
              FROM (SELECT s.id FROM api_key.keys AS s WHERE s.id OPERATOR(pg_catalog.=) ANY ($1)
                       FOR UPDATE SKIP LOCKED) AS l
              JOIN ROWS FROM (pg_catalog.unnest($1::pg_catalog.uuid[]), pg_catalog.unnest($2::pg_catalog.timestamptz[])) AS x(id, at)
                ON x.id OPERATOR(pg_catalog.=) l.id) AS u
     WHERE k.id OPERATOR(pg_catalog.=) u.id
       AND (k.last_used_at IS NULL OR k.last_used_at OPERATOR(pg_catalog.<) u.at)";

/// Note that `key_id`, whose stored `last_used_at` is `stored`, was used at `now`.
pub fn record(key_id: Uuid, stored: Option<i64>, now: i64) {
    PENDING.with(|p| p.borrow_mut().verified_in = local_xid());
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

/// Puts back uses that could not be written, unless newer ones arrived meanwhile.
fn keep_for_later(batch: Vec<([u8; 16], i64)>) {
    PENDING.with(|p| {
        let mut p = p.borrow_mut();
        for (id, at) in batch {
            if p.times.len() < MAX_PENDING || p.times.contains_key(&id) {
                let slot = p.times.entry(id).or_insert(at);
                *slot = (*slot).max(at);
            }
        }
    });
}

/// Did the committing transaction verify a key, or does it write anyway?
fn asked_for_it() -> bool {
    PENDING.with(|p| p.borrow().verified_in == local_xid()) || bookkeeping::writes_anyway()
}

#[pg_guard]
unsafe extern "C-unwind" fn flush_at_commit(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    if event != pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT {
        return;
    }
    if !bookkeeping::may_write_at_commit() || !asked_for_it() {
        return;
    }
    let Some(batch) = due_batch(crate::pg::clock::now()) else {
        return;
    };
    bookkeeping::commit_locally();
    write(batch);
}

/// Writes `batch` in the current transaction, never raising and never waiting; what is not
/// written is kept for a later try.
fn write(batch: Vec<([u8; 16], i64)>) {
    let Some(keys) = keys_relation() else {
        return; // the extension was dropped: nothing to write to
    };
    let attempt = batch.clone();
    let lock = move || {
        // SAFETY: a lock request that returns false instead of waiting; held to the end of
        // the subtransaction's parent when granted, like any lock a statement takes.
        unsafe { pg_sys::ConditionalLockRelationOid(keys, pg_sys::RowExclusiveLock as i32) }
    };
    let written = bookkeeping::quietly(lock, move || {
        as_extension_owner(|| {
            Spi::connect_mut(|client| {
                use crate::pg::oids::*;
                let ids: Vec<Uuid> = attempt
                    .iter()
                    .map(|(id, _)| Uuid::from_bytes(*id))
                    .collect();
                let times: Vec<Option<i64>> = attempt.iter().map(|(_, at)| Some(*at)).collect();
                let statement =
                    spi::statement(client, FLUSH, &[UUIDARRAYOID, TIMESTAMPTZARRAYOID], true)?;
                let times_arg = crate::pg::clock::timestamptz_array(times);
                client
                    .update(&*statement, None, &[ids.into(), times_arg])
                    .map_err(spi::failed)?;
                Ok(())
            })
        })
    });
    if !written {
        keep_for_later(batch);
    }
}

/// On a normal backend exit, write what is pending in a transaction of its own.
#[pg_guard]
unsafe extern "C-unwind" fn flush_at_exit(code: std::os::raw::c_int, _arg: pg_sys::Datum) {
    let batch: Vec<_> = PENDING.with(|p| {
        std::mem::take(&mut p.borrow_mut().times)
            .into_iter()
            .collect()
    });
    if batch.is_empty() {
        return;
    }
    bookkeeping::at_exit(code, || {
        for chunk in batch.chunks(BATCH) {
            write(chunk.to_vec());
        }
    });
}
