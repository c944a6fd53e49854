//! The extension's SQL statements, planned once per backend and kept (PostgreSQL re-plans a
//! kept statement by itself when a table it uses changes). Every statement is written with
//! schema-qualified names, types and operators: see `privileged.rs`.

use crate::error::Error;
use pgrx::pg_sys::{Oid, PgOid};
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiError};
use pgrx::PgSqlErrorCode;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

thread_local! {
    static PREPARED: RefCell<HashMap<String, Rc<OwnedPreparedStatement>>> = RefCell::new(HashMap::new());
}

/// Most distinct statements kept (the application-table statements vary with its names).
const MAX_KEPT: usize = 256;

/// A kept plan of `sql` with arguments of `types`. `mutating` statements run with a fresh
/// snapshot and may write; the others read under the calling statement's snapshot.
pub fn statement(
    client: &SpiClient<'_>,
    sql: &str,
    types: &[Oid],
    mutating: bool,
) -> Result<Rc<OwnedPreparedStatement>, Error> {
    let key = format!("{}{sql}", if mutating { "w" } else { "r" });
    if let Some(s) = PREPARED.with(|p| p.borrow().get(&key).cloned()) {
        return Ok(s);
    }
    let oids: Vec<PgOid> = types.iter().map(|o| PgOid::from(*o)).collect();
    let prepared = if mutating {
        client.prepare_mut(sql, &oids)
    } else {
        client.prepare(sql, &oids)
    }
    .map_err(failed)?
    .keep();
    let prepared = Rc::new(prepared);
    PREPARED.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() >= MAX_KEPT {
            p.clear();
        }
        p.insert(key, prepared.clone());
    });
    Ok(prepared)
}

/// An SPI failure that is not a PostgreSQL error (those propagate as themselves): a bug of
/// ours, such as a column read with the wrong type.
pub fn failed(e: SpiError) -> Error {
    Error::new(
        PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        format!("api_key: internal query failed: {e}"),
    )
}
