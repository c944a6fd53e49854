//! `last_used_at` without a WAL write per verification: each backend remembers the keys it
//! admitted and when, and writes them in one UPDATE at most every
//! `api_key.last_used_flush_interval` seconds (or when 1024 keys are waiting). Rows locked by
//! a concurrent transaction are skipped rather than waited for (no deadlock with credit
//! updates); their time is written by a later flush. A backend that exits normally writes what
//! is pending on its way out (a `before_shmem_exit` callback, as PostgreSQL itself does to drop
//! temporary tables); one that dies or is terminated loses it. So `last_used_at` is precise to
//! the flush interval, best effort.

use crate::gucs::LAST_USED_FLUSH_INTERVAL;
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

const FLUSH: &str = "
    WITH used AS (
        SELECT u.id, u.at FROM unnest($1::uuid[], $2::timestamptz[]) AS u(id, at)
    ), locked AS (
        SELECT k.id, used.at FROM api_key.keys k JOIN used ON used.id = k.id
         WHERE k.last_used_at IS NULL OR k.last_used_at < used.at
         FOR UPDATE OF k SKIP LOCKED
    )
    UPDATE api_key.keys k SET last_used_at = locked.at FROM locked WHERE k.id = locked.id";

/// Note that `key_id` was used now; flush if the batch is due. Called inside the verify SPI
/// connection.
pub fn record(client: &mut SpiClient<'_>, key_id: Uuid) {
    // SAFETY: reads the clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let interval = LAST_USED_FLUSH_INTERVAL.get() as i64 * 1_000_000;
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
        flush(client, batch);
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

/// On a normal backend exit, write what is pending in a transaction of its own. Errors are
/// swallowed: losing a few `last_used_at` times must never turn a clean exit into a failure.
#[pg_guard]
unsafe extern "C-unwind" fn flush_at_exit(code: std::os::raw::c_int, _arg: pg_sys::Datum) {
    let batch = PENDING.with(|p| std::mem::take(&mut p.borrow_mut().times));
    // SAFETY: reads backend-global state.
    let in_transaction = unsafe { pg_sys::IsTransactionOrTransactionBlock() };
    if code != 0 || batch.is_empty() || in_transaction || !can_write() {
        return;
    }
    PgTryBuilder::new(|| {
        // SAFETY: no transaction is open (checked above); this is how PostgreSQL's own exit
        // callbacks (RemoveTempRelationsCallback) run SQL.
        unsafe { pg_sys::StartTransactionCommand() };
        Spi::connect_mut(|client| flush(client, batch));
        unsafe { pg_sys::CommitTransactionCommand() };
    })
    .catch_others(|_| {
        // SAFETY: undo the half-done transaction; the error itself is dropped on purpose.
        unsafe {
            pg_sys::FlushErrorState();
            pg_sys::AbortCurrentTransaction();
        }
    })
    .execute();
}
