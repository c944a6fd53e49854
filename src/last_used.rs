//! `last_used_at` without a WAL write per verification. A use is recorded only when the stored
//! `last_used_at` is older than `api_key.last_used_precision` (so a key is written at most
//! once per precision period, however often it is used); each backend keeps recorded uses in
//! memory and writes them in one UPDATE when half the precision period has passed since its
//! last write, or when 1024 keys are waiting. Rows locked by
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

const MAX_PENDING: usize = 1024;

struct Pending {
    times: HashMap<[u8; 16], i64>,
    last_flush: i64,
    exit_hook: bool,
}

thread_local! {
    static PENDING: RefCell<Pending> =
        RefCell::new(Pending { times: HashMap::new(), last_flush: 0, exit_hook: false });
}

// Rows are found through the primary key (id = ANY), locked without waiting, and written only
// if the new time is later.
const FLUSH: &str = "
    UPDATE api_key.keys k SET last_used_at = u.at
      FROM (SELECT l.id, x.at
              FROM (SELECT id FROM api_key.keys WHERE id = ANY($1) FOR UPDATE SKIP LOCKED) AS l
              JOIN unnest($1::uuid[], $2::timestamptz[]) AS x(id, at) ON x.id = l.id) AS u
     WHERE k.id = u.id AND (k.last_used_at IS NULL OR k.last_used_at < u.at)";

/// Note that `key_id`, whose stored `last_used_at` is `stored`, was used now; write the batch
/// if it is due.
pub fn record(key_id: Uuid, stored: Option<i64>) {
    // SAFETY: reads the clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let precision = LAST_USED_PRECISION.get() as i64 * 1_000_000;
    if stored.is_some_and(|at| now - at < precision) {
        return;
    }
    let interval = precision / 2;
    let batch = PENDING.with(|p| {
        let mut p = p.borrow_mut();
        if p.last_flush == 0 {
            // A fresh backend starts its clock now, so that a burst of short-lived
            // connections does not write on every first call.
            p.last_flush = now;
        }
        if !p.exit_hook {
            p.exit_hook = true;
            // SAFETY: registers a plain callback for this backend's exit.
            unsafe { pg_sys::before_shmem_exit(Some(flush_at_exit), pg_sys::Datum::from(0)) };
        }
        p.times.insert(*key_id.as_bytes(), now);
        let due = now - p.last_flush >= interval || p.times.len() >= MAX_PENDING;
        if !due || !can_write() {
            return None;
        }
        p.last_flush = now;
        Some(std::mem::take(&mut p.times))
    });
    if let Some(batch) = batch {
        crate::usage::with_pinned_search_path(|client| flush(client, batch));
    }
}

/// A read-only transaction (or a standby) verifies fine but cannot write usage times.
fn can_write() -> bool {
    // SAFETY: reads backend-global flags.
    unsafe { !pg_sys::XactReadOnly && !pg_sys::RecoveryInProgress() }
}

fn flush(client: &mut SpiClient<'_>, batch: HashMap<[u8; 16], i64>) {
    let mut ids = Vec::with_capacity(batch.len());
    let mut times = Vec::with_capacity(batch.len());
    for (id, at) in batch {
        ids.push(Uuid::from_bytes(id));
        times.push(TimestampWithTimeZone::try_from(at).unwrap_or_else(|_| TimestampWithTimeZone::positive_infinity()));
    }
    if let Err(e) = client.update(FLUSH, None, &[ids.into(), times.into()]) {
        crate::errors::raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("api_key: writing last_used_at failed: {e}"));
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
    // SAFETY: no transaction is open (checked above). The snapshot is what SPI needs to run
    // a statement outside of a portal.
    unsafe {
        pg_sys::StartTransactionCommand();
        let namespace = pg_sys::get_namespace_oid(c"api_key".as_ptr(), true);
        let keys = if namespace == pg_sys::InvalidOid {
            pg_sys::InvalidOid
        } else {
            pg_sys::get_relname_relid(c"keys".as_ptr(), namespace)
        };
        if keys != pg_sys::InvalidOid {
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
            // The session's role may not write api_key.keys (verification does it as the
            // extension owner, through SECURITY DEFINER); here, act as the table's owner.
            if let Some(owner) = crate::run_as_owner::owner_of(pg_sys::RelationRelationId, keys) {
                crate::run_as_owner::as_role(owner, || {
                    crate::usage::with_pinned_search_path(|client| flush(client, batch))
                });
            }
            pg_sys::PopActiveSnapshot();
        }
        pg_sys::CommitTransactionCommand();
    }
}
