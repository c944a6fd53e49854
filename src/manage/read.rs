//! `api_key_get` and `api_key_list_for_reference`.

use super::config;
use super::key_row::{whole_row, KeyRow, KeysRow};
use crate::access::{self, Action, Principal, Reference};
use crate::error::{Error, OrRaise};
use crate::key_id;
use crate::pg::clock::{micros_of, timestamptz_arg};
use crate::pg::privileged::as_extension_owner;
use crate::pg::spi;
use pgrx::prelude::*;
use pgrx::Uuid;

/// One key (never its hash), if the caller may read it; P0002 otherwise.
#[pg_extern(volatile, parallel_unsafe)]
fn api_key_get(id: Option<Uuid>) -> pgrx::composite_type!('static, "api_key.keys") {
    let principal = Principal::of_caller().or_raise();
    as_extension_owner(|| {
        let key = KeyRow::for_action(&principal, id, Action::Read)?;
        whole_row(key.id)
    })
    .or_raise()
}

const POSITION: &str = "
    SELECT k.created_at FROM api_key.keys AS k
     WHERE k.id OPERATOR(pg_catalog.=) $1
       AND k.reference_type OPERATOR(pg_catalog.=) $2 AND k.reference_id OPERATOR(pg_catalog.=) $3";

// Newest first; a page continues after (created_at, id) of the cursor: keyset paging on the
// index keys_by_reference, so every page costs the same.
const PAGE: &str = "
    SELECT k FROM api_key.keys AS k
     WHERE k.reference_type OPERATOR(pg_catalog.=) $1 AND k.reference_id OPERATOR(pg_catalog.=) $2
       AND ($3::pg_catalog.text IS NULL OR k.config_id OPERATOR(pg_catalog.=) $3)
       AND ($4::pg_catalog.timestamptz IS NULL OR ROW(k.created_at, k.id) OPERATOR(pg_catalog.<) ROW($4, $5))
     ORDER BY k.created_at DESC, k.id DESC
     LIMIT $6";

/// Where the page after `after_id` starts: the key's `created_at` when it is still there,
/// else the time its id carries. A cursor does not depend on its key still existing.
fn position(reference: &Reference, after_id: Uuid) -> Result<i64, Error> {
    let stored = Spi::connect(|client| {
        use crate::pg::oids::*;
        let statement = spi::statement(client, POSITION, &[UUIDOID, TEXTOID, TEXTOID], false)?;
        let args = [
            after_id.into(),
            reference.kind.as_str().into(),
            reference.id.as_str().into(),
        ];
        Ok::<_, Error>(
            client
                .select(&*statement, Some(1), &args)
                .map_err(spi::failed)?
                .next()
                .and_then(|r| {
                    r.get::<pgrx::datum::TimestampWithTimeZone>(1)
                        .ok()
                        .flatten()
                })
                .map(micros_of),
        )
    })?;
    stored
        .or_else(|| key_id::created_at(after_id.as_bytes()))
        .ok_or_else(|| {
            Error::invalid(format!(
                "after_id {after_id} is not a key of this reference"
            ))
            .hint("Start again from the first page (after_id => NULL).")
        })
}

/// Keys of a reference, newest first, `page_size` (1 to 1000) per page; pass the last id of a
/// page as `after_id` for the next. Needs api_key:read on the reference.
#[pg_extern(volatile, parallel_unsafe)]
fn api_key_list_for_reference(
    reference_id: Option<&str>,
    reference_type: default!(Option<&str>, "'user'"),
    config_id: default!(Option<&str>, "NULL"),
    page_size: default!(Option<i32>, 100),
    after_id: default!(Option<Uuid>, "NULL"),
) -> SetOfIterator<'static, pgrx::composite_type!('static, "api_key.keys")> {
    let principal = Principal::of_caller().or_raise();
    let rows = as_extension_owner(|| {
        let reference = Reference::checked(reference_type, reference_id)?;
        access::authorize(&principal, &reference, Action::Read)?;
        let page_size = page_size.ok_or_else(|| Error::null("page_size"))?;
        if !(1..=1000).contains(&page_size) {
            return Err(Error::invalid("page_size must be between 1 and 1000"));
        }
        if let Some(config_id) = config_id {
            config::load(config_id)?;
        }
        let after = after_id.map(|id| position(&reference, id)).transpose()?;
        Spi::connect(|client| {
            use crate::pg::oids::*;
            let statement = spi::statement(
                client,
                PAGE,
                &[TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID, UUIDOID, INT4OID],
                false,
            )?;
            let args = [
                reference.kind.as_str().into(),
                reference.id.as_str().into(),
                config_id.into(),
                timestamptz_arg(after),
                after_id.into(),
                page_size.into(),
            ];
            let mut rows = Vec::new();
            for row in client
                .select(&*statement, None, &args)
                .map_err(spi::failed)?
            {
                if let Some(k) = row.get::<KeysRow>(1).map_err(spi::failed)? {
                    rows.push(k);
                }
            }
            Ok(rows)
        })
    })
    .or_raise();
    SetOfIterator::new(rows)
}
