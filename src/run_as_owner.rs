//! Application-supplied SQL (a custom reference type's authorizer, an application's membership
//! table or view) runs with the rights of the role that owns it, never with the extension
//! owner's. The callers are SECURITY DEFINER functions running as the extension owner (a
//! superuser); calling application code from there would hand it superuser rights. This is
//! what PostgreSQL itself does when it runs index expressions during maintenance: switch to
//! the owner, in a security-restricted operation (no SET ROLE, no session changes).

use crate::errors::raise_with_hint;
use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;
use std::ffi::CStr;
use std::panic::AssertUnwindSafe;

/// Runs `f` as `role`, restoring the caller's identity afterwards, also when `f` raises.
pub fn as_role<R>(role: Oid, f: impl FnOnce() -> R) -> R {
    let mut saved_user = pg_sys::InvalidOid;
    let mut saved_context = 0;
    // SAFETY: reads and sets the backend's current user; restored in `finally`, and by
    // (sub)transaction abort if the error escapes further.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
        let restricted =
            (pg_sys::SECURITY_LOCAL_USERID_CHANGE | pg_sys::SECURITY_RESTRICTED_OPERATION) as i32;
        pg_sys::SetUserIdAndSecContext(role, saved_context | restricted);
    }
    let f = AssertUnwindSafe(f);
    PgTryBuilder::new(move || {
        let f = f;
        (f.0)()
    })
    // SAFETY: restores what was saved above.
    .finally(|| unsafe { pg_sys::SetUserIdAndSecContext(saved_user, saved_context) })
    .execute()
}

/// The owner of a function (`pg_proc`) or relation (`pg_class`), if it still exists.
pub fn owner_of(catalog: Oid, object: Oid) -> Option<Oid> {
    let query = if catalog == pg_sys::ProcedureRelationId {
        "SELECT proowner FROM pg_catalog.pg_proc WHERE oid = $1"
    } else {
        "SELECT relowner FROM pg_catalog.pg_class WHERE oid = $1"
    };
    Spi::connect(|client| {
        let rows = client.select(query, Some(1), &[object.into()]).ok()?;
        if rows.is_empty() {
            return None;
        }
        rows.first().get::<Oid>(1).ok().flatten()
    })
}

fn quoted(ident: &CStr) -> String {
    // SAFETY: quote_identifier returns its argument or a palloc'd quoted copy.
    unsafe {
        CStr::from_ptr(pg_sys::quote_identifier(ident.as_ptr()))
            .to_string_lossy()
            .into_owned()
    }
}

#[pg_schema]
mod api_key {
    use super::*;
    use std::ffi::CString;

    /// `authorizer(actor, reference_id, action)`, called as the authorizer's owner.
    #[pg_extern(volatile, parallel_unsafe)]
    pub fn call_authorizer(
        authorizer: pg_sys::Oid,
        actor: &str,
        reference_id: &str,
        action: &str,
    ) -> bool {
        let owner = owner_of(pg_sys::ProcedureRelationId, authorizer);
        let Some(owner) = owner else {
            raise_with_hint(
                PgSqlErrorCode::ERRCODE_UNDEFINED_FUNCTION,
                format!(
                    "the authorizer (function OID {}) no longer exists",
                    authorizer.to_u32()
                ),
                "Register the reference type again with api_key_register_reference_type().",
            );
        };
        as_role(owner, || {
            // SAFETY: calls a function with three text arguments returning boolean, as checked
            // at registration; the arguments are valid text datums (a &str always converts,
            // so the expects below cannot fire).
            unsafe {
                let result = pg_sys::OidFunctionCall3Coll(
                    authorizer,
                    pg_sys::InvalidOid,
                    actor.into_datum().expect("text datum"),
                    reference_id.into_datum().expect("text datum"),
                    action.into_datum().expect("text datum"),
                );
                result.value() != 0
            }
        })
    }

    /// The role of `user_id` in `organization_id`, read from an application's membership
    /// relation as that relation's owner. Column names are quoted here; no SQL text comes in.
    #[pg_extern(volatile, parallel_unsafe)]
    pub fn member_role_from(
        relation: pg_sys::Oid,
        organization_column: &str,
        user_column: &str,
        role_column: &str,
        organization_id: &str,
        user_id: &str,
    ) -> Option<String> {
        // SAFETY: syscache lookups; both return NULL/InvalidOid for a dropped relation.
        let (name, namespace) = unsafe {
            let name = pg_sys::get_rel_name(relation);
            let namespace = pg_sys::get_rel_namespace(relation);
            (name, namespace)
        };
        if name.is_null() {
            raise_with_hint(
                PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                format!("the membership table (OID {}) no longer exists", relation.to_u32()),
                "Point api_key at the new table with api_key_use_membership_table(...), or back to api_key.members with api_key_use_membership_table(NULL).",
            );
        }
        // SAFETY: both names come from the catalogs just above.
        let qualified = unsafe {
            let schema = CStr::from_ptr(pg_sys::get_namespace_name(namespace));
            format!("{}.{}", quoted(schema), quoted(CStr::from_ptr(name)))
        };
        let column = |c: &str| quoted(&CString::new(c).unwrap_or_default());
        let query = format!(
            "SELECT {}::text FROM {} WHERE {}::text = $1 AND {}::text = $2 LIMIT 1",
            column(role_column),
            qualified,
            column(organization_column),
            column(user_column)
        );
        let owner = owner_of(pg_sys::RelationRelationId, relation).unwrap_or(pg_sys::InvalidOid);
        as_role(owner, || {
            Spi::connect(|client| {
                let rows = client
                    .select(&query, Some(1), &[organization_id.into(), user_id.into()])
                    .unwrap_or_else(|e| crate::usage::spi_failed(e));
                if rows.is_empty() {
                    return None;
                }
                rows.first()
                    .get::<String>(1)
                    .unwrap_or_else(|e| crate::usage::spi_failed(e))
            })
        })
    }
}
