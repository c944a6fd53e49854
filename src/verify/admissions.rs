//! Rate-limit admissions counted in shared memory by the current transaction, given back if it
//! rolls back, so that the two storages answer the same: a window counted in the table loses
//! a rolled-back admission with the row version that counted it, and one in shared memory
//! loses it here. A cancelled or timed-out verification, a failed `api_key_authenticate`
//! transaction and `ROLLBACK TO SAVEPOINT` all give back what they took; a committed (or
//! prepared) transaction keeps it.
//!
//! The callbacks run during commit and abort, where nothing may raise: they only touch this
//! backend's list and shared memory (`rate_limit_shmem::give_back`, which cannot raise).

use super::rate_limit_shmem;
use crate::pg::clock;
use crate::rate_limit::Taken as Admission;
use pgrx::pg_sys;
use std::cell::{Cell, RefCell};

struct Taken {
    key: [u8; 16],
    admission: Admission,
    /// The subtransaction that took it: rolling that back gives it back.
    subxact: pg_sys::SubTransactionId,
}

thread_local! {
    static TAKEN: RefCell<Vec<Taken>> = const { RefCell::new(Vec::new()) };
    static CALLBACKS: Cell<bool> = const { Cell::new(false) };
}

/// Remember an admission counted in shared memory, until the transaction ends.
pub fn taken(key: &[u8; 16], admission: Admission) {
    if !CALLBACKS.with(|c| c.replace(true)) {
        // SAFETY: registers plain callbacks for this backend's transaction events.
        unsafe {
            pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
            pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
        }
    }
    // SAFETY: reads backend state.
    let subxact = unsafe { pg_sys::GetCurrentSubTransactionId() };
    TAKEN.with(|t| {
        t.borrow_mut().push(Taken {
            key: *key,
            admission,
            subxact,
        })
    });
}

/// Give back an admission now (a later check refused the verification), and forget it.
pub fn give_back_now(key: &[u8; 16], admission: Admission) {
    TAKEN.with(|t| {
        let mut t = t.borrow_mut();
        if let Some(i) = t
            .iter()
            .rposition(|x| x.key == *key && x.admission == admission)
        {
            t.remove(i);
        }
    });
    rate_limit_shmem::give_back(key, admission, clock::now());
}

fn give_back_where(keep: impl Fn(&Taken) -> bool) {
    let returned: Vec<Taken> = TAKEN.with(|t| {
        let mut t = t.borrow_mut();
        let (kept, returned) = std::mem::take(&mut *t).into_iter().partition(|x| keep(x));
        *t = kept;
        returned
    });
    if returned.is_empty() {
        return;
    }
    let now = clock::now();
    // Newest first, so that the admission that opened a window is given back last and can put
    // back the window it replaced.
    for x in returned.into_iter().rev() {
        rate_limit_shmem::give_back(&x.key, x.admission, now);
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => give_back_where(|_| false),
        XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT | XACT_EVENT_PREPARE => {
            TAKEN.with(|t| t.borrow_mut().clear())
        }
        _ => {}
    }
}

/// `ROLLBACK TO SAVEPOINT` gives back what was taken after the savepoint; `RELEASE` hands it to
/// the enclosing level. Subtransaction ids grow, so what a rolled-back level (or a level
/// inside it) took has an id at least its own.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    sub: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        give_back_where(|x| x.subxact < sub);
    } else if event == pg_sys::SubXactEvent::SUBXACT_EVENT_COMMIT_SUB {
        TAKEN.with(|t| {
            for x in t.borrow_mut().iter_mut().filter(|x| x.subxact == sub) {
                x.subxact = parent;
            }
        });
    }
}
