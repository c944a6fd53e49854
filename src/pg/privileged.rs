//! Running the extension's own SQL with the extension owner's rights.
//!
//! The public functions are SECURITY INVOKER: at entry, `GetUserId()` is the caller, which is
//! how a management call knows who called it. The work itself (reading membership, writing
//! keys and the audit log) runs as the owner of the extension's tables, the way PostgreSQL's
//! own SECURITY DEFINER functions and `REFRESH MATERIALIZED VIEW` do it: switch the user id
//! with `SetUserIdAndSecContext`, open a GUC nest level, pin `search_path` to
//! `pg_catalog, pg_temp`, and pop the nest level afterwards, so that nothing set inside
//! survives and no name resolves through a schema a caller can write to. Every statement is
//! schema-qualified as well (types, functions and operators): the pinned path is the second
//! line of defence, not the only one.
//!
//! On an error the enclosing (sub)transaction's abort restores the user id and the GUC nest
//! level, as it does for SECURITY DEFINER functions.

use crate::error::Error;
use pgrx::pg_sys::{self, Oid};
use std::cell::Cell;

/// The path every privileged statement runs under.
pub const SAFE_SEARCH_PATH: &std::ffi::CStr = c"pg_catalog, pg_temp";

thread_local! {
    /// (oid of api_key.keys, its owner): looked up once per relation, so a re-created
    /// extension is noticed by its new oid.
    static OWNER: Cell<(Oid, Oid)> = const { Cell::new((pg_sys::InvalidOid, pg_sys::InvalidOid)) };
}

/// The oid of `api_key.keys`, or None when the extension's schema is not there (dropped).
pub fn keys_relation() -> Option<Oid> {
    // SAFETY: syscache lookups; both return InvalidOid when absent.
    unsafe {
        let namespace = pg_sys::get_namespace_oid(c"api_key".as_ptr(), true);
        if namespace == pg_sys::InvalidOid {
            return None;
        }
        let keys = pg_sys::get_relname_relid(c"keys".as_ptr(), namespace);
        (keys != pg_sys::InvalidOid).then_some(keys)
    }
}

/// The owner of a relation, from the syscache.
pub fn relation_owner(relation: Oid) -> Option<Oid> {
    // SAFETY: a syscache lookup by oid; the tuple is released before returning.
    unsafe {
        let tuple = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::RELOID as _,
            pg_sys::Datum::from(relation),
        );
        if tuple.is_null() {
            return None;
        }
        let owner = (*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_class>(tuple)).relowner;
        pg_sys::ReleaseSysCache(tuple);
        Some(owner)
    }
}

/// The owner of a function, from the syscache.
pub fn function_owner(function: Oid) -> Option<Oid> {
    // SAFETY: a syscache lookup by oid; the tuple is released before returning.
    unsafe {
        let tuple = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::PROCOID as _,
            pg_sys::Datum::from(function),
        );
        if tuple.is_null() {
            return None;
        }
        let owner = (*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_proc>(tuple)).proowner;
        pg_sys::ReleaseSysCache(tuple);
        Some(owner)
    }
}

/// The role the extension's own SQL runs as: the owner of `api_key.keys` (the role that ran
/// `CREATE EXTENSION`). It must still be a superuser, or its reads would be filtered by the
/// extension's own row-level-security policies.
fn extension_owner() -> Result<Oid, Error> {
    let keys = keys_relation().ok_or_else(Error::not_installed)?;
    let (cached_keys, cached_owner) = OWNER.with(Cell::get);
    let owner = if cached_keys == keys {
        cached_owner
    } else {
        let owner = relation_owner(keys).ok_or_else(Error::not_installed)?;
        OWNER.with(|c| c.set((keys, owner)));
        owner
    };
    // SAFETY: syscache lookup on a valid role oid.
    if !unsafe { pg_sys::superuser_arg(owner) } {
        return Err(Error::owner_not_superuser());
    }
    Ok(owner)
}

/// A GUC nest level with `search_path` pinned; `restore` pops it.
pub struct PinnedPath {
    nest_level: i32,
}

impl PinnedPath {
    pub fn enter() -> Self {
        // SAFETY: opens a nest level and sets a USERSET parameter at it (GUC_ACTION_SAVE), as
        // fmgr_security_definer does for a function's SET clause.
        unsafe {
            let nest_level = pg_sys::NewGUCNestLevel();
            pg_sys::set_config_option(
                c"search_path".as_ptr(),
                SAFE_SEARCH_PATH.as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
            PinnedPath { nest_level }
        }
    }

    /// Pops the nest level. `keep` = false also undoes every setting changed inside, which
    /// is what a call into application code wants.
    pub fn restore(self, keep: bool) {
        // SAFETY: pops the nest level opened in `enter`; nothing opened a deeper one that is
        // still open (every user of this type restores in LIFO order).
        unsafe { pg_sys::AtEOXact_GUC(keep, self.nest_level) };
    }
}

/// Runs `f` as the extension owner, under the pinned search path. `f` sees the caller nowhere:
/// capture what it needs (the caller's role) before.
pub fn as_extension_owner<R>(f: impl FnOnce() -> Result<R, Error>) -> Result<R, Error> {
    let owner = extension_owner()?;
    let (mut saved_user, mut saved_context) = (pg_sys::InvalidOid, 0);
    // SAFETY: saves and switches the current user id; restored below, and by the enclosing
    // (sub)transaction's abort if `f` raises.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
        pg_sys::SetUserIdAndSecContext(
            owner,
            saved_context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
        );
    }
    let path = PinnedPath::enter();
    let result = f();
    path.restore(true);
    // SAFETY: restores what was saved above.
    unsafe { pg_sys::SetUserIdAndSecContext(saved_user, saved_context) };
    result
}

/// The current user: at the entry of a SECURITY INVOKER function, its caller.
pub fn current_role() -> Oid {
    // SAFETY: reads backend state.
    unsafe { pg_sys::GetUserId() }
}

/// A role's name, or its oid in brackets when it was dropped.
pub fn role_name(role: Oid) -> String {
    // SAFETY: GetUserNameFromId with noerr=true returns NULL for a dropped role.
    unsafe {
        let name = pg_sys::GetUserNameFromId(role, true);
        if name.is_null() {
            format!("[role {}]", role.to_u32())
        } else {
            std::ffi::CStr::from_ptr(name)
                .to_string_lossy()
                .into_owned()
        }
    }
}

/// Superuser, or a role with the privileges of `api_key_admin`: the service.
pub fn is_service_role(role: Oid) -> bool {
    // SAFETY: catalog lookups on a valid role oid; missing_ok avoids an error when the admin
    // role was dropped by hand.
    unsafe {
        if pg_sys::superuser_arg(role) {
            return true;
        }
        let admin = pg_sys::get_role_oid(c"api_key_admin".as_ptr(), true);
        admin != pg_sys::InvalidOid && pg_sys::has_privs_of_role(role, admin)
    }
}
