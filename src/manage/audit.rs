//! The audit log: one row per management action, with the actor (or NULL for the service),
//! the database role that called, the key and reference, and what changed. Never a key or a
//! hash. Runs as the extension owner, in the caller's transaction: an action that rolls back
//! leaves no entry.

use crate::access::{Principal, Reference};
use crate::error::Error;
use crate::pg::clock::timestamptz_arg;
use crate::pg::privileged::role_name;
use crate::pg::spi;
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::Uuid;

const INSERT: &str = "
    INSERT INTO api_key.audit_log (at, actor, database_role, action, key_id, reference_type, reference_id, detail)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8::pg_catalog.jsonb)";

/// One audit entry. `detail` is JSON text (built by the caller, or by SQL for row changes).
pub struct Entry<'a> {
    pub at: i64,
    pub action: &'a str,
    pub key_id: Option<Uuid>,
    pub reference: Option<&'a Reference>,
    pub detail: Option<String>,
}

pub fn write(principal: &Principal, entry: Entry<'_>) -> Result<(), Error> {
    Spi::connect_mut(|client| {
        let text = pg_sys::TEXTOID;
        let statement = spi::statement(
            client,
            INSERT,
            &[
                pg_sys::TIMESTAMPTZOID,
                text,
                text,
                text,
                pg_sys::UUIDOID,
                text,
                text,
                text,
            ],
            true,
        )?;
        let args: [DatumWithOid; 8] = [
            timestamptz_arg(Some(entry.at)),
            principal.actor().into(),
            role_name(principal.role()).into(),
            entry.action.into(),
            entry.key_id.into(),
            entry.reference.map(|r| r.kind.as_str()).into(),
            entry.reference.map(|r| r.id.as_str()).into(),
            entry.detail.into(),
        ];
        client
            .update(&*statement, None, &args)
            .map_err(spi::failed)?;
        Ok(())
    })
}
