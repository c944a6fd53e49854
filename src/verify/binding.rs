//! The authenticated transaction: `api_key_authenticate` binds the current transaction to a
//! verified key, and policies ask `api_key_current_*()` / `api_key_has_permission()`.
//!
//! The binding is a Rust value in this backend, tagged with the local transaction id. No GUC
//! holds it, so `SET`/`set_config` cannot forge it; and a new transaction (the next client of
//! a pooled connection) has a new local transaction id, so it sees nothing without a callback.

use crate::permissions::Permissions;
use crate::pg::compat::local_xid;
use pgrx::prelude::*;
use pgrx::Uuid;
use std::cell::RefCell;

pub struct Binding {
    pub lxid: u32,
    /// The subtransaction that bound it: rolling that back unbinds.
    pub subxact: pg_sys::SubTransactionId,
    pub key_id: Uuid,
    pub reference_type: String,
    pub reference_id: String,
    pub permissions: Permissions,
}

thread_local! {
    static BOUND: RefCell<Option<Binding>> = const { RefCell::new(None) };
    static CALLBACK_REGISTERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

pub fn bind(binding: Binding) {
    if !CALLBACK_REGISTERED.with(|c| c.replace(true)) {
        // SAFETY: registers a callback for this backend's subtransaction events.
        unsafe { pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut()) };
    }
    BOUND.with(|b| *b.borrow_mut() = Some(binding));
}

/// `ROLLBACK TO SAVEPOINT` undoes an authentication made after the savepoint (its credit
/// was rolled back too); `RELEASE` hands the binding to the enclosing transaction level.
#[pg_guard]
unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    sub: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    BOUND.with(|b| {
        let mut b = b.borrow_mut();
        let Some(binding) = b.as_mut() else { return };
        if binding.lxid != local_xid() || binding.subxact < sub {
            return;
        }
        if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
            *b = None;
        } else if event == pg_sys::SubXactEvent::SUBXACT_EVENT_COMMIT_SUB && binding.subxact == sub
        {
            binding.subxact = parent;
        }
    });
}

fn with_current<R>(f: impl FnOnce(&Binding) -> R) -> Option<R> {
    let lxid = local_xid();
    BOUND.with(|b| b.borrow().as_ref().filter(|b| b.lxid == lxid).map(f))
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
