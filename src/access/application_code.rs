//! The one boundary through which the extension runs application code: a custom reference
//! type's authorizer, and an application's membership table (with whatever its owner attached
//! to it: policies, views, functions in them).
//!
//! Callers are running as the extension's owner (a superuser). Application code must never
//! run with those rights, nor leave anything behind that would change what the extension's
//! code does next. So each call, as PostgreSQL does around index expressions and
//! `REFRESH MATERIALIZED VIEW`:
//!
//! - runs as the owner of the function or relation, in a security-restricted operation (no
//!   `SET ROLE`, no session-level changes such as temporary tables);
//! - runs with `search_path = pg_catalog, pg_temp` (application code names its own objects);
//! - runs in a subtransaction that is always rolled back: every setting it changed (also with
//!   `set_config(…, false)`), every row it wrote, every lock it took is undone, and the user
//!   id and security context are restored;
//! - an error it raises is caught and becomes a `Failure` (a refusal for the caller), except a
//!   genuine cancel or statement timeout, which reaches the client as itself (one the code
//!   raises itself with that SQLSTATE is a refusal like any other error);
//! - it does not see the transaction's authenticated key (`api_key_current_*` answer NULL
//!   inside), and an `api_key_authenticate` it calls is undone with the subtransaction.
//!
//! What PostgreSQL itself does not roll back cannot be undone here: session-level advisory
//! locks, sequence values, the random seed. Nor can the code be kept from reading the session's
//! settings or the rows of the transaction it runs in. Registering an authorizer or a
//! membership table is trusting that code with the sessions that trigger it (docs).

use crate::pg::privileged::{function_owner, relation_owner, PinnedPath};
use crate::pg::spi;
use crate::pg::subtransaction::{self, Failure, OnSuccess};
use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::ffi::CStr;

/// Runs `f` as `owner` inside the sandbox described above.
fn sandboxed<R>(owner: Oid, f: impl FnOnce() -> R) -> Result<R, Failure> {
    subtransaction::attempt(OnSuccess::Discard, false, || {
        let (mut saved_user, mut saved_context) = (pg_sys::InvalidOid, 0);
        // SAFETY: switches the user id for the duration of `f`; the subtransaction's rollback
        // restores it (and the GUC nest level) on every path.
        unsafe {
            pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
            pg_sys::SetUserIdAndSecContext(
                owner,
                saved_context
                    | (pg_sys::SECURITY_LOCAL_USERID_CHANGE | pg_sys::SECURITY_RESTRICTED_OPERATION)
                        as i32,
            );
        }
        let path = PinnedPath::enter();
        let result = crate::verify::binding::hidden(f);
        path.restore(false);
        // SAFETY: restores what was saved above.
        unsafe { pg_sys::SetUserIdAndSecContext(saved_user, saved_context) };
        result
    })
}

fn gone(what: String) -> Failure {
    Failure {
        sqlstate: PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
        message: what,
        genuine_cancel: false,
    }
}

/// `authorizer(actor, reference_id, action)`, called as the authorizer's owner. `Ok(None)`
/// when it answered NULL.
pub fn authorizer_answer(
    authorizer: Oid,
    actor: &str,
    reference_id: &str,
    action: &str,
) -> Result<Option<bool>, Failure> {
    let owner = function_owner(authorizer).ok_or_else(|| {
        gone(format!(
            "the authorizer (function {}) no longer exists",
            authorizer.to_u32()
        ))
    })?;
    sandboxed(owner, || {
        // SAFETY: the function was checked at registration to take three text arguments and
        // return boolean; the fmgr call frame is built for exactly three arguments, with the
        // database's default collation (text comparisons inside need one).
        unsafe {
            let mut flinfo: pg_sys::FmgrInfo = std::mem::zeroed();
            pg_sys::fmgr_info(authorizer, &mut flinfo);
            let size = std::mem::size_of::<pg_sys::FunctionCallInfoBaseData>()
                + 3 * std::mem::size_of::<pg_sys::NullableDatum>();
            let fcinfo = pg_sys::palloc0(size).cast::<pg_sys::FunctionCallInfoBaseData>();
            (*fcinfo).flinfo = &mut flinfo;
            (*fcinfo).nargs = 3;
            (*fcinfo).fncollation = pg_sys::DEFAULT_COLLATION_OID;
            let args = (*fcinfo).args.as_mut_slice(3);
            for (slot, value) in args.iter_mut().zip([actor, reference_id, action]) {
                slot.value = value.into_datum().unwrap_or(pg_sys::Datum::from(0));
                slot.isnull = false;
            }
            // fmgr_info always sets fn_addr (it raises for a function it cannot call).
            let call = flinfo.fn_addr.expect("fmgr_info sets fn_addr");
            // A raw function pointer is not wrapped like pg_sys's functions: guard it, so that an
            // error the authorizer raises (a longjmp) becomes a Rust unwind to the subtransaction.
            #[allow(ffi_unwind_calls)]
            let result = pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| call(fcinfo));
            (!(*fcinfo).isnull).then(|| result.value() != 0)
        }
    })
}

/// Where membership lives when it is the application's: a relation and three of its columns.
pub struct MembershipTable {
    pub relation: Oid,
    pub organization_column: String,
    pub user_column: String,
    pub role_column: String,
}

fn quoted(ident: &str) -> String {
    let c = std::ffi::CString::new(ident).unwrap_or_default();
    // SAFETY: quote_identifier returns its argument or a palloc'd quoted copy.
    unsafe {
        CStr::from_ptr(pg_sys::quote_identifier(c.as_ptr()))
            .to_string_lossy()
            .into_owned()
    }
}

impl MembershipTable {
    /// The role of `user_id` in `organization_id`, read as the relation's owner.
    pub fn role_of(&self, organization_id: &str, user_id: &str) -> Result<Option<String>, Failure> {
        // SAFETY: syscache lookups; NULL for a relation that is gone.
        let (name, namespace) = unsafe {
            let name = pg_sys::get_rel_name(self.relation);
            (name, pg_sys::get_rel_namespace(self.relation))
        };
        let owner = relation_owner(self.relation);
        let (false, Some(owner)) = (name.is_null(), owner) else {
            return Err(gone(format!(
                "the membership table (relation {}) no longer exists",
                self.relation.to_u32()
            )));
        };
        // SAFETY: both names come from the catalogs just above.
        let (schema, table) = unsafe {
            (
                CStr::from_ptr(pg_sys::get_namespace_name(namespace))
                    .to_string_lossy()
                    .into_owned(),
                CStr::from_ptr(name).to_string_lossy().into_owned(),
            )
        };
        // Identifiers are quoted; the values are bound parameters. The columns were checked
        // at registration to be of built-in types whose text form needs no application code.
        // Compared byte for byte (collation "C"), as user ids are compared everywhere else: a
        // case-insensitive collation on the table must not make "ALICE" a member as "alice".
        let sql = format!(
            "SELECT m.{}::pg_catalog.text FROM {}.{} AS m \
              WHERE m.{}::pg_catalog.text COLLATE pg_catalog.\"C\" OPERATOR(pg_catalog.=) $1 \
                AND m.{}::pg_catalog.text COLLATE pg_catalog.\"C\" OPERATOR(pg_catalog.=) $2 LIMIT 1",
            quoted(&self.role_column),
            quoted(&schema),
            quoted(&table),
            quoted(&self.organization_column),
            quoted(&self.user_column),
        );
        sandboxed(owner, || {
            Spi::connect(|client| {
                let text = pg_sys::TEXTOID;
                let statement = spi::statement(client, &sql, &[text, text], false)
                    .unwrap_or_else(|e| e.raise());
                let rows = client
                    .select(
                        &*statement,
                        Some(1),
                        &[organization_id.into(), user_id.into()],
                    )
                    .unwrap_or_else(|e| spi::failed(e).raise());
                rows.into_iter()
                    .next()
                    .and_then(|row| row.get::<String>(1).ok().flatten())
            })
        })
    }
}
