//! Credits spent by the current transaction, counted in the analytics only when it commits (or
//! is prepared): a rollback, or `ROLLBACK TO SAVEPOINT` past the verification, gives them back
//! to the key, so they were not spent. The callbacks only move counts between this backend's
//! lists and the store (`super::add`), which cannot raise.

use super::{Bucket, Counts};
use pgrx::pg_sys;
use std::cell::{Cell, RefCell};

struct Spent {
    bucket: Bucket,
    credits: i64,
    /// The subtransaction that spent them: rolling it back gives them back.
    subxact: pg_sys::SubTransactionId,
}

/// Spent credits remembered per transaction, at most; beyond, they are counted at once (a
/// transaction that verifies that many keys with credits is a batch job, rarely rolled back).
const MAX_SPENT: usize = 4096;

thread_local! {
    static SPENT: RefCell<Vec<Spent>> = const { RefCell::new(Vec::new()) };
    static CALLBACKS: Cell<bool> = const { Cell::new(false) };
}

/// Remember `credits` spent under `bucket` until the transaction ends.
pub fn credits(bucket: Bucket, credits: i64) {
    if !CALLBACKS.with(|c| c.replace(true)) {
        // SAFETY: registers plain callbacks for this backend's transaction events.
        unsafe {
            pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
            pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
        }
    }
    // SAFETY: reads backend state.
    let subxact = unsafe { pg_sys::GetCurrentSubTransactionId() };
    let full = SPENT.with(|s| s.borrow().len() >= MAX_SPENT);
    if full {
        super::add(&bucket, Counts { verifications: 0, credits });
        return;
    }
    SPENT.with(|s| {
        s.borrow_mut().push(Spent {
            bucket,
            credits,
            subxact,
        })
    });
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    let spent = match event {
        XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT | XACT_EVENT_PREPARE => {
            SPENT.with(|s| std::mem::take(&mut *s.borrow_mut()))
        }
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => {
            SPENT.with(|s| s.borrow_mut().clear());
            return;
        }
        _ => return,
    };
    for s in spent {
        super::add(
            &s.bucket,
            Counts {
                verifications: 0,
                credits: s.credits,
            },
        );
    }
}

/// Subtransaction ids grow: what a rolled-back level (or one inside it) spent has an id at
/// least its own.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    sub: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    SPENT.with(|s| {
        let mut s = s.borrow_mut();
        if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
            s.retain(|x| x.subxact < sub);
        } else if event == pg_sys::SubXactEvent::SUBXACT_EVENT_COMMIT_SUB {
            for x in s.iter_mut().filter(|x| x.subxact == sub) {
                x.subxact = parent;
            }
        }
    });
}
