//! The authenticated transaction: `api_key_authenticate` binds the current transaction to a
//! verified key, and policies ask `api_key_current_*()` / `api_key_has_permission()`.
//!
//! The binding is a Rust value in this backend, tagged with the local transaction id. No GUC
//! holds it, so `SET`/`set_config` cannot forge it; and a new transaction (the next client of
//! a pooled connection) has a new local transaction id, so it sees nothing without a callback.

use crate::caller::local_xid;
use crate::permissions;
use pgrx::prelude::*;
use pgrx::Uuid;
use std::cell::RefCell;

pub struct Binding {
    pub lxid: u32,
    pub key_id: Uuid,
    pub reference_type: String,
    pub reference_id: String,
    pub permissions: Option<serde_json::Value>,
}

thread_local! {
    static BOUND: RefCell<Option<Binding>> = const { RefCell::new(None) };
}

pub fn bind(binding: Binding) {
    BOUND.with(|b| *b.borrow_mut() = Some(binding));
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
    let (Some(resource), Some(action)) = (resource, action) else { return false };
    with_current(|b| permissions::holds(b.permissions.as_ref(), resource, action)).unwrap_or(false)
}
