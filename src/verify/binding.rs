//! The authenticated transaction: `api_key_authenticate` binds the current transaction to a
//! verified key, and policies ask `api_key_current_*()` / `api_key_has_permission()`.
//!
//! The binding is a Rust value in this backend, tagged with the local transaction id. No GUC
//! holds it, so `SET`/`set_config` cannot forge it; and a new transaction (the next client of
//! a pooled connection) has a new local transaction id, so it sees nothing without a callback.
//! Savepoints nest: rolling back to one undoes the authentications made after it, and gives
//! back the one made before.

use crate::permissions::Permissions;
use crate::pg::compat::local_xid;
use pgrx::prelude::*;
use pgrx::Uuid;
use std::cell::{Cell, RefCell};

pub struct Binding {
    pub lxid: u32,
    /// The subtransaction that bound it: rolling that back undoes it.
    pub subxact: pg_sys::SubTransactionId,
    pub key_id: Uuid,
    pub reference_type: String,
    pub reference_id: String,
    pub permissions: Permissions,
}

thread_local! {
    /// Bindings of the current transaction, the newest last: a re-authentication in a
    /// savepoint that is rolled back gives the previous binding back.
    static BOUND: RefCell<Vec<Binding>> = const { RefCell::new(Vec::new()) };
    static CALLBACK_REGISTERED: Cell<bool> = const { Cell::new(false) };
    /// Application code is running (`access::application_code`): it sees no binding.
    static HIDDEN: Cell<u32> = const { Cell::new(0) };
}

pub fn bind(binding: Binding) {
    if !CALLBACK_REGISTERED.with(|c| c.replace(true)) {
        // SAFETY: registers a callback for this backend's subtransaction events.
        unsafe { pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut()) };
    }
    BOUND.with(|b| {
        let mut b = b.borrow_mut();
        b.retain(|old| old.lxid == binding.lxid);
        b.push(binding);
    });
}

/// `ROLLBACK TO SAVEPOINT` undoes the authentications made after the savepoint (their credits
/// were rolled back too); `RELEASE` hands them to the enclosing transaction level.
#[pg_guard]
unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    sub: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    let lxid = local_xid();
    BOUND.with(|b| {
        let mut b = b.borrow_mut();
        if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
            b.retain(|binding| binding.lxid != lxid || binding.subxact < sub);
        } else if event == pg_sys::SubXactEvent::SUBXACT_EVENT_COMMIT_SUB {
            for binding in b.iter_mut().filter(|x| x.lxid == lxid && x.subxact == sub) {
                binding.subxact = parent;
            }
        }
    });
}

/// Runs `f` with the binding hidden: application code called by the extension must not see
/// (or act on) the key of the transaction it runs in.
pub fn hidden<R>(f: impl FnOnce() -> R) -> R {
    struct Shown;
    impl Drop for Shown {
        fn drop(&mut self) {
            HIDDEN.with(|h| h.set(h.get() - 1));
        }
    }
    HIDDEN.with(|h| h.set(h.get() + 1));
    let _shown = Shown;
    f()
}

fn with_current<R>(f: impl FnOnce(&Binding) -> R) -> Option<R> {
    if HIDDEN.with(Cell::get) > 0 {
        return None;
    }
    let lxid = local_xid();
    BOUND.with(|b| b.borrow().iter().rev().find(|b| b.lxid == lxid).map(f))
}

/// The key this transaction was authenticated with, or NULL.
#[pg_extern(stable, parallel_restricted)]
fn api_key_current_key_id() -> Option<Uuid> {
    with_current(|b| b.key_id)
}

/// The owner type of the key this transaction was authenticated with, or NULL.
#[pg_extern(stable, parallel_restricted)]
fn api_key_current_reference_type() -> Option<String> {
    with_current(|b| b.reference_type.clone())
}

/// The owner id of the key this transaction was authenticated with, or NULL.
#[pg_extern(stable, parallel_restricted)]
fn api_key_current_reference_id() -> Option<String> {
    with_current(|b| b.reference_id.clone())
}

/// Does the key this transaction was authenticated with grant `action` on `resource`?
/// False when the transaction is not authenticated.
#[pg_extern(stable, parallel_restricted)]
fn api_key_has_permission(resource: Option<&str>, action: Option<&str>) -> bool {
    let (Some(resource), Some(action)) = (resource, action) else {
        return false;
    };
    with_current(|b| b.permissions.holds(resource, action)).unwrap_or(false)
}
