//! Bookkeeping written on the side of a transaction that did not ask for it (`last_used_at`,
//! usage counts): it must never fail, block or slow down that transaction's COMMIT.
//!
//! - `quietly` runs the write in a subtransaction: any error (and a cancel arriving meanwhile)
//!   is rolled back and swallowed, and the caller keeps what was not written for a later try;
//! - its lock is taken only if it is free at once, so no `lock_timeout` or deadlock reaches
//!   the COMMIT;
//! - where the write is the only one of the transaction, `commit_locally` keeps the COMMIT
//!   from waiting for a synchronous standby on its account;
//! - `at_exit` writes what a backend still holds when it exits normally, in a transaction of
//!   its own, as PostgreSQL's own exit callbacks do.

use crate::error::Error;
use crate::pg::subtransaction::{self, OnSuccess};
use pgrx::prelude::*;

/// May the current transaction write bookkeeping at commit? Not in a read-only transaction or
/// on a standby, and not in one that sees one snapshot for its whole life (REPEATABLE READ,
/// SERIALIZABLE: a write there can fail with a serialization error, for nothing).
pub fn may_write_at_commit() -> bool {
    // SAFETY: reads backend-global state.
    unsafe { pg_sys::XactIsoLevel < pg_sys::XACT_REPEATABLE_READ as i32 && can_write() }
}

/// A read-only transaction (or a standby) cannot write.
pub fn can_write() -> bool {
    // SAFETY: reads backend-global flags.
    unsafe { !pg_sys::XactReadOnly && !pg_sys::RecoveryInProgress() }
}

/// Does the current transaction write anyway (it has a transaction id)?
pub fn writes_anyway() -> bool {
    // SAFETY: reads the current transaction's state.
    unsafe { pg_sys::GetTopTransactionIdIfAny() != pg_sys::InvalidTransactionId }
}

/// `SET LOCAL synchronous_commit = local` for the current transaction, when bookkeeping is
/// its only write: flushed to the local WAL, never waiting for a synchronous standby (one that
/// is down or slow would otherwise hang a commit, or a backend's exit, on our account). Losing
/// such a write in a failover costs bookkeeping that is a little older.
pub fn commit_locally() {
    if writes_anyway() {
        return;
    }
    // SAFETY: sets a user-settable parameter for the current transaction only; with elevel 0
    // a failure is reported by the return value, never raised.
    unsafe {
        pg_sys::set_config_option(
            c"synchronous_commit".as_ptr(),
            c"local".as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_LOCAL,
            true,
            0,
            false,
        );
    }
}

/// Runs `write` in a subtransaction with a snapshot, once `lock` (which must not wait) has
/// granted its lock. Never raises; true when it was written.
pub fn quietly(lock: impl FnOnce() -> bool, write: impl FnOnce() -> Result<(), Error>) -> bool {
    let written = subtransaction::attempt(OnSuccess::Keep, true, move || {
        if !lock() {
            return false;
        }
        // SAFETY: SPI needs a snapshot outside of a portal; popped below (an error in between
        // aborts the subtransaction, which resets the snapshot stack).
        unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
        let result = write();
        // SAFETY: pops the snapshot pushed above.
        unsafe { pg_sys::PopActiveSnapshot() };
        result.is_ok()
    });
    matches!(written, Ok(true))
}

/// On a normal backend exit (`code` 0, no transaction open), runs `write` in a transaction of
/// its own that commits locally. Nothing here may raise: an error at exit becomes FATAL noise,
/// so every failure is swallowed and what was not written is lost.
pub fn at_exit(code: std::os::raw::c_int, write: impl FnOnce()) {
    // SAFETY: reads backend-global state.
    let in_transaction = unsafe { pg_sys::IsTransactionOrTransactionBlock() };
    if code != 0 || in_transaction {
        return;
    }
    let write = std::panic::AssertUnwindSafe(write);
    // SAFETY: no transaction is open (checked above): this one is ours, and it is ended on
    // both paths (committed, or aborted if the commit itself fails).
    unsafe {
        let ok = PgTryBuilder::new(move || {
            let write = write;
            pg_sys::StartTransactionCommand();
            commit_locally();
            if can_write() {
                (write.0)();
            }
            pg_sys::CommitTransactionCommand();
            true
        })
        .catch_others(|_| false)
        .execute();
        if !ok {
            pg_sys::AbortCurrentTransaction();
        }
    }
}
