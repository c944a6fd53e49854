//! Pointing the extension at application code: a membership table, and custom reference types
//! with their authorizers. Service only. Registration checks that the caller could itself do
//! what the extension will later do on its behalf (read those columns; act as the function's
//! owner), since the extension runs them as their owner (`access::application_code`).

use super::audit::{self, Entry};
use crate::access::Principal;
use crate::error::{shorten, Error, OrRaise};
use crate::pg::clock;
use crate::pg::privileged::{as_extension_owner, relation_owner, role_name};
use crate::pg::spi;
use crate::pg::{RegClass, RegProcedure};
use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

const RELATION: &str = "
    SELECT c.relkind::pg_catalog.text, c.oid::pg_catalog.regclass::pg_catalog.text
      FROM pg_catalog.pg_class AS c WHERE c.oid OPERATOR(pg_catalog.=) $1";

// The column's type, or its base type for a domain; the built-in types below print without
// any application code (no user-defined output function or cast).
const COLUMN: &str = "
    SELECT a.attnum,
           pg_catalog.format_type(CASE WHEN t.typtype OPERATOR(pg_catalog.=) 'd' THEN t.typbasetype ELSE t.oid END, NULL),
           pg_catalog.has_column_privilege($3, a.attrelid, a.attnum, 'SELECT')
      FROM pg_catalog.pg_attribute AS a JOIN pg_catalog.pg_type AS t ON t.oid OPERATOR(pg_catalog.=) a.atttypid
     WHERE a.attrelid OPERATOR(pg_catalog.=) $1 AND a.attname OPERATOR(pg_catalog.=) $2::pg_catalog.name
       AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped";

const PLAIN_TYPES: [&str; 8] = [
    "text",
    "character varying",
    "character",
    "name",
    "uuid",
    "smallint",
    "integer",
    "bigint",
];

// One row at most (its key is the constant `singleton`): a new table replaces the last.
const SET_SOURCE: &str = "
    INSERT INTO api_key.membership_source AS s (relation, organization_column, user_column, role_column)
    VALUES ($1, $2, $3, $4)
    ON CONFLICT (singleton) DO UPDATE
       SET relation = excluded.relation, organization_column = excluded.organization_column,
           user_column = excluded.user_column, role_column = excluded.role_column";

const RESET_SOURCE: &str = "DELETE FROM api_key.membership_source";

fn check_column(relation: Oid, table: &str, column: &str, caller: Oid) -> Result<(), Error> {
    let found = Spi::connect(|client| {
        use crate::pg::oids::*;
        let statement = spi::statement(client, COLUMN, &[OIDOID, TEXTOID, OIDOID], false)?;
        let rows = client
            .select(
                &*statement,
                Some(1),
                &[relation.into(), column.into(), caller.into()],
            )
            .map_err(spi::failed)?;
        Ok::<_, Error>(rows.into_iter().next().map(|r| {
            (
                r.get::<String>(2).ok().flatten().unwrap_or_default(),
                r.get::<bool>(3).ok().flatten().unwrap_or(false),
            )
        }))
    })?;
    let Some((kind, may_select)) = found else {
        return Err(Error::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
            format!("column \"{}\" does not exist in {table}", shorten(column, 64)),
        )
        .hint("Name the organization, user and role columns: organization_column => ..., user_column => ..., role_column => ..."));
    };
    if !PLAIN_TYPES.contains(&kind.as_str()) {
        return Err(Error::invalid(format!(
            "column \"{column}\" of {table} is of type {kind}; membership columns must be text, varchar, char, name, uuid or an integer"
        )));
    }
    // Membership is read as the table's owner: the caller must be allowed to read it too,
    // or this would be a way to read what it may not.
    if !may_select {
        return Err(Error::denied(format!(
            "permission denied: {} may not read column \"{column}\" of {table}",
            role_name(caller)
        ))
        .hint("GRANT SELECT on the membership table to the role that configures it."));
    }
    Ok(())
}

/// Read organization membership live from an application table (e.g. better-auth's
/// `member`), as that table's owner. NULL: back to api_key.members. Service only.
#[pg_extern(volatile, parallel_unsafe)]
fn api_key_use_membership_table(
    relation: Option<RegClass>,
    organization_column: default!(Option<&str>, "'organization_id'"),
    user_column: default!(Option<&str>, "'user_id'"),
    role_column: default!(Option<&str>, "'role'"),
) {
    let principal = Principal::of_caller().or_raise();
    as_extension_owner(|| {
        principal.require_service("api_key_use_membership_table")?;
        let now = clock::now();
        let Some(RegClass(relation)) = relation else {
            Spi::connect_mut(|client| {
                let statement = spi::statement(client, RESET_SOURCE, &[], true)?;
                client.update(&*statement, None, &[]).map_err(spi::failed)?;
                Ok::<_, Error>(())
            })?;
            return record_source(&principal, now, serde_json::json!({ "relation": null }));
        };
        let columns = [
            (organization_column, "organization_column"),
            (user_column, "user_column"),
            (role_column, "role_column"),
        ]
        .map(|(value, argument)| value.ok_or_else(|| Error::null(argument)));
        let [organization_column, user_column, role_column] = columns;
        let (organization_column, user_column, role_column) =
            (organization_column?, user_column?, role_column?);
        let (kind, table) = Spi::connect(|client| {
            let statement = spi::statement(client, RELATION, &[pg_sys::OIDOID], false)?;
            let row = client
                .select(&*statement, Some(1), &[relation.into()])
                .map_err(spi::failed)?
                .first();
            Ok::<_, Error>((
                row.get::<String>(1)
                    .map_err(spi::failed)?
                    .unwrap_or_default(),
                row.get::<String>(2)
                    .map_err(spi::failed)?
                    .unwrap_or_default(),
            ))
        })?;
        if !["r", "v", "m", "f", "p"].contains(&kind.as_str()) {
            return Err(Error::invalid(format!(
                "{table} is not a table or view: membership must be read from one"
            )));
        }
        for column in [organization_column, user_column, role_column] {
            check_column(relation, &table, column, principal.role())?;
        }
        // The extension reads it as its owner (so that code attached to it never runs with the
        // extension owner's rights): the registering role must be able to act as that owner,
        // or this would read what it may not (a view that shows its owner more, a table whose
        // row-level security hides rows from the caller).
        let owner = relation_owner(relation).unwrap_or_default();
        may_act_as(&principal, owner, &table)
            .map_err(|e| e.hint("Point at a table or view owned by the configuring role (or a role it is a member of)."))?;

        Spi::connect_mut(|client| {
            use crate::pg::oids::*;
            let statement = spi::statement(
                client,
                SET_SOURCE,
                &[REGCLASSOID, TEXTOID, TEXTOID, TEXTOID],
                true,
            )?;
            let args = [
                unsafe { pgrx::datum::DatumWithOid::new(relation, REGCLASSOID) },
                organization_column.into(),
                user_column.into(),
                role_column.into(),
            ];
            client
                .update(&*statement, None, &args)
                .map_err(spi::failed)?;
            Ok::<_, Error>(())
        })?;
        let detail = serde_json::json!({
            "relation": table,
            "organization_column": organization_column,
            "user_column": user_column,
            "role_column": role_column,
        });
        record_source(&principal, now, detail)
    })
    .or_raise()
}

/// The audit entry of a change of membership source.
fn record_source(principal: &Principal, now: i64, detail: serde_json::Value) -> Result<(), Error> {
    let entry = Entry {
        at: now,
        action: "membership_source",
        key_id: None,
        reference: None,
        detail: Some(detail.to_string()),
    };
    audit::write(principal, entry)
}

const FUNCTION: &str = "
    SELECT p.prorettype OPERATOR(pg_catalog.=) 'pg_catalog.bool'::pg_catalog.regtype
           AND p.pronargs OPERATOR(pg_catalog.=) 3 AND NOT p.proretset AND p.prokind OPERATOR(pg_catalog.=) 'f'
           AND p.proargtypes[0] OPERATOR(pg_catalog.=) 'pg_catalog.text'::pg_catalog.regtype
           AND p.proargtypes[1] OPERATOR(pg_catalog.=) 'pg_catalog.text'::pg_catalog.regtype
           AND p.proargtypes[2] OPERATOR(pg_catalog.=) 'pg_catalog.text'::pg_catalog.regtype,
           p.proowner, p.oid::pg_catalog.regprocedure::pg_catalog.text
      FROM pg_catalog.pg_proc AS p WHERE p.oid OPERATOR(pg_catalog.=) $1";

const REGISTER: &str = "
    INSERT INTO api_key.reference_types AS t (reference_type, authorizer, created_at) VALUES ($1, $2, $3)
    ON CONFLICT (reference_type) DO UPDATE SET authorizer = excluded.authorizer";

fn type_name_problem(name: &str) -> Option<&'static str> {
    let ok = (1..=63).contains(&name.len())
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_');
    if !ok {
        Some("Use lower-case letters, digits and _, starting with a letter.")
    } else if name == "user" || name == "organization" {
        Some("user and organization are built in.")
    } else {
        None
    }
}

/// Register a custom owner type (project, store, …) and its
/// `authorizer(actor text, reference_id text, action text) returns boolean`, which runs as
/// its owner. Service only; the caller must be able to act as that owner.
#[pg_extern(volatile, parallel_unsafe)]
fn api_key_register_reference_type(reference_type: Option<&str>, authorizer: Option<RegProcedure>) {
    let principal = Principal::of_caller().or_raise();
    as_extension_owner(|| {
        principal.require_service("api_key_register_reference_type")?;
        let reference_type = reference_type.ok_or_else(|| Error::null("reference_type"))?;
        let RegProcedure(authorizer) = authorizer.ok_or_else(|| Error::null("authorizer"))?;
        if let Some(hint) = type_name_problem(reference_type) {
            return Err(Error::invalid(format!(
                "reference_type \"{}\" is not allowed",
                shorten(reference_type, 64)
            ))
            .hint(hint));
        }
        let (shape_ok, owner, signature) = Spi::connect(|client| {
            let statement = spi::statement(client, FUNCTION, &[pg_sys::OIDOID], false)?;
            let rows = client.select(&*statement, Some(1), &[authorizer.into()]).map_err(spi::failed)?;
            let row = rows.into_iter().next().ok_or_else(|| {
                Error::new(PgSqlErrorCode::ERRCODE_UNDEFINED_FUNCTION, "the authorizer does not exist")
            })?;
            Ok::<_, Error>((
                row.get::<bool>(1).map_err(spi::failed)?.unwrap_or(false),
                row.get::<Oid>(2).map_err(spi::failed)?.unwrap_or_default(),
                row.get::<String>(3).map_err(spi::failed)?.unwrap_or_default(),
            ))
        })?;
        if !shape_ok {
            return Err(Error::invalid(format!(
                "authorizer {signature} must take (actor text, reference_id text, action text) and return boolean"
            )));
        }
        may_act_as(&principal, owner, &format!("authorizer {signature}"))
            .map_err(|e| e.hint("Register a function owned by the registering role."))?;
        let now = clock::now();
        Spi::connect_mut(|client| {
            use crate::pg::oids::*;
            let statement = spi::statement(client, REGISTER, &[TEXTOID, REGPROCEDUREOID, TIMESTAMPTZOID], true)?;
            let args = [
                reference_type.into(),
                unsafe { pgrx::datum::DatumWithOid::new(authorizer, REGPROCEDUREOID) },
                clock::timestamptz_arg(Some(now)),
            ];
            client.update(&*statement, None, &args).map_err(spi::failed)?;
            Ok::<_, Error>(())
        })?;
        let detail = serde_json::json!({ "reference_type": reference_type, "authorizer": signature });
        audit::write(&principal, Entry {
            at: now,
            action: "register_reference_type",
            key_id: None,
            reference: None,
            detail: Some(detail.to_string()),
        })
    })
    .or_raise()
}

/// Whether the registering role may act as `owner`, whose code or data (`what`) the extension
/// will run or read with `owner`'s rights: registering must not reach further than the caller.
fn may_act_as(principal: &Principal, owner: pg_sys::Oid, what: &str) -> Result<(), Error> {
    // SAFETY: a catalog lookup on two role oids.
    if unsafe { pg_sys::has_privs_of_role(principal.role(), owner) } {
        return Ok(());
    }
    Err(Error::denied(format!(
        "permission denied: {what} belongs to {}, which {} may not act as",
        role_name(owner),
        role_name(principal.role())
    )))
}
