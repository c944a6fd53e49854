//! Who called: the role that invoked a public management function, carried unforgeably into
//! the SECURITY DEFINER function that does the work.
//!
//! Inside a SECURITY DEFINER function `current_user` is the extension's owner, and Postgres
//! keeps the invoker's role nowhere we can read. So each public wrapper (SECURITY INVOKER)
//! asks `api_key.caller_token()` for a random token bound to the invoking role and the current
//! transaction, and passes it on; the worker trades it back with `api_key.caller_is_service`.
//! A role can only ever obtain a token for itself, and guessing one is a 2^-64 shot.

use pgrx::prelude::*;
use std::cell::RefCell;

struct Token {
    lxid: u32,
    value: i64,
    role: pg_sys::Oid,
}

thread_local! {
    static TOKENS: RefCell<Vec<Token>> = const { RefCell::new(Vec::new()) };
}

/// The backend's local transaction id: unique per transaction in this backend, so anything
/// tagged with it dies with the transaction without a callback.
pub fn local_xid() -> u32 {
    // SAFETY: MyProc is set for every backend that can run SQL, before any function call.
    unsafe { (*pg_sys::MyProc).lxid }
}

/// The role a token of this transaction was issued to.
fn role_of(token: i64) -> Option<pg_sys::Oid> {
    let lxid = local_xid();
    TOKENS.with(|t| {
        t.borrow()
            .iter()
            .find(|tok| tok.lxid == lxid && tok.value == token)
            .map(|tok| tok.role)
    })
}

/// Superuser, or a member (with inherited privileges) of `api_key_admin`.
pub fn is_service_role(role: pg_sys::Oid) -> bool {
    // SAFETY: plain catalog lookups on a valid role oid; missing_ok avoids an error when the
    // admin role was dropped by hand.
    unsafe {
        if pg_sys::superuser_arg(role) {
            return true;
        }
        let admin = pg_sys::get_role_oid(c"api_key_admin".as_ptr(), true);
        admin != pg_sys::InvalidOid && pg_sys::has_privs_of_role(role, admin)
    }
}

#[pg_schema]
mod api_key {
    use super::*;
    use rand::RngCore;

    /// A token naming the current role, valid in this transaction only.
    #[pg_extern(volatile, parallel_unsafe)]
    pub fn caller_token() -> i64 {
        let value = (rand::rngs::OsRng.next_u64() >> 1) as i64;
        // SAFETY: GetUserId only reads backend state.
        let role = unsafe { pg_sys::GetUserId() };
        let lxid = local_xid();
        TOKENS.with(|t| {
            let mut t = t.borrow_mut();
            t.retain(|tok| tok.lxid == lxid);
            if t.len() >= 64 {
                t.remove(0);
            }
            t.push(Token { lxid, value, role });
        });
        value
    }

    /// Whether the role behind `token` may act as the service. Unknown tokens are not.
    #[pg_extern(volatile, parallel_unsafe)]
    pub fn caller_is_service(token: Option<i64>) -> bool {
        token.and_then(role_of).is_some_and(is_service_role)
    }

    /// The name of the role behind `token`, for the audit log.
    #[pg_extern(volatile, parallel_unsafe)]
    pub fn caller_role(token: Option<i64>) -> Option<String> {
        let role = role_of(token?)?;
        // SAFETY: GetUserNameFromId with noerr=true returns NULL for a dropped role.
        unsafe {
            let name = pg_sys::GetUserNameFromId(role, true);
            (!name.is_null()).then(|| {
                std::ffi::CStr::from_ptr(name)
                    .to_string_lossy()
                    .into_owned()
            })
        }
    }
}
