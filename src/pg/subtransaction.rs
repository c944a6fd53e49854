//! Work whose failure must not become the caller's failure: run it in an internal
//! subtransaction (as PL/pgSQL does for a block with an EXCEPTION clause), and on an error roll
//! the subtransaction back, which releases its locks, restores the user id and every setting
//! changed inside, and hand the error back as a value.

use pgrx::pg_sys::{self, panic::CaughtError, PgTryBuilder};
use pgrx::PgSqlErrorCode;
use std::panic::AssertUnwindSafe;

/// An error that was caught and rolled back.
#[derive(Debug, Clone)]
pub struct Failure {
    pub sqlstate: PgSqlErrorCode,
    pub message: String,
    /// A cancel or statement timeout that PostgreSQL itself raised (not one that code raised
    /// with that SQLSTATE).
    pub genuine_cancel: bool,
}

impl Failure {
    /// The five-character SQLSTATE, e.g. `42501`.
    pub fn sqlstate_text(&self) -> String {
        // SAFETY: unpack_sql_state returns a pointer to a static buffer, copied at once.
        unsafe {
            std::ffi::CStr::from_ptr(pg_sys::unpack_sql_state(self.sqlstate as i32))
                .to_string_lossy()
                .into_owned()
        }
    }
}

/// What to do with the work's effects when it succeeds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum OnSuccess {
    Keep,
    Discard,
}

fn failure_of(caught: &CaughtError) -> Failure {
    let (report, from_postgres) = match caught {
        CaughtError::PostgresError(r) => (r, true),
        CaughtError::ErrorReport(r) => (r, false),
        CaughtError::RustPanic { ereport, .. } => (ereport, false),
    };
    let sqlstate = report.sql_error_code();
    Failure {
        sqlstate,
        message: report.message().to_string(),
        // PostgreSQL raises cancels and statement timeouts in one place; anything else with
        // that SQLSTATE (RAISE … USING ERRCODE = '57014' in application code) is forged.
        genuine_cancel: from_postgres
            && sqlstate == PgSqlErrorCode::ERRCODE_QUERY_CANCELED
            && report.function_name() == Some("ProcessInterrupts"),
    }
}

/// Runs `f` in a subtransaction. Every error comes back as `Err` (a serialization failure or a
/// deadlock too: the work was rolled back, and the transaction goes on), except a genuine
/// cancel or statement timeout, which belongs to the statement the user is running and is
/// raised again; with `swallow_cancel` that too becomes a value (bookkeeping at commit, where
/// raising would fail the user's COMMIT).
pub fn attempt<R>(
    on_success: OnSuccess,
    swallow_cancel: bool,
    f: impl FnOnce() -> R,
) -> Result<R, Failure> {
    // SAFETY: the PL/pgSQL exception-block protocol: begin, switch back to the caller's memory
    // context, and on either path release or roll back, then restore context and owner.
    let (context, owner) = unsafe {
        let context = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(context);
        (context, owner)
    };
    let f = AssertUnwindSafe(f);
    // The error is moved once, on the failure path only: its size does not matter.
    #[allow(clippy::result_large_err)]
    let outcome: Result<R, CaughtError> = PgTryBuilder::new(AssertUnwindSafe(move || {
        let f = f;
        Ok((f.0)())
    }))
    .catch_others(Err)
    .execute();
    // SAFETY: the subtransaction begun above is the current one (f's own subtransactions were
    // closed by f, or by the abort that brought us here).
    unsafe {
        match (&outcome, on_success) {
            (Ok(_), OnSuccess::Keep) => pg_sys::ReleaseCurrentSubTransaction(),
            _ => pg_sys::RollbackAndReleaseCurrentSubTransaction(),
        }
        pg_sys::MemoryContextSwitchTo(context);
        pg_sys::CurrentResourceOwner = owner;
    }
    match outcome {
        Ok(value) => Ok(value),
        Err(caught) => {
            let failure = failure_of(&caught);
            if failure.genuine_cancel && !swallow_cancel {
                caught.rethrow();
            }
            Err(failure)
        }
    }
}
