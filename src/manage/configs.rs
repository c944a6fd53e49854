//! `api_key_config_create`, `api_key_config_update`, `api_key_config_delete`: service only.

use super::audit::{self, Entry};
use super::config::{self, Config, COLUMNS, COLUMN_COUNT, SETTINGS};
use crate::access::Principal;
use crate::error::{shorten, shorten_quoted, Error, OrRaise};
use crate::permissions::Token;
use crate::pg::clock::{self, interval_arg, interval_from, timestamptz_arg};
use crate::pg::jsonb::Jsonb;
use crate::pg::privileged::as_extension_owner;
use crate::pg::spi;
use crate::pg::subtransaction::{self, OnSuccess};
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

type ConfigRow = pgrx::composite_type!('static, "api_key.configs");

fn column_list(alias: &str) -> String {
    COLUMNS
        .split(',')
        .map(|c| format!("{alias}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn arg_types() -> Vec<pg_sys::Oid> {
    use crate::pg::oids::*;
    vec![
        TEXTOID,
        TEXTOID,
        INT4OID,
        TEXTOID,
        INTERVALOID,
        INTERVALOID,
        INTERVALOID,
        BOOLOID,
        INT4OID,
        INT4OID,
        INT4OID,
        INT4OID,
        BOOLOID,
        JSONBOID,
        BOOLOID,
        INT4OID,
        INTERVALOID,
        INT8OID,
        INT8OID,
        INTERVALOID,
        TEXTARRAYOID,
        BOOLOID,
        TIMESTAMPTZOID,
        TIMESTAMPTZOID,
    ]
}

impl Config {
    /// The configuration's columns as query arguments $1..$23 (`COLUMNS`), then `at` as $24.
    fn args(&self, at: i64) -> Vec<DatumWithOid<'static>> {
        vec![
            self.id.clone().into(),
            self.prefix.clone().into(),
            self.body_length.into(),
            self.hash_algorithm.clone().into(),
            interval_arg(self.default_expires_in),
            interval_arg(self.min_expires_in),
            interval_arg(self.max_expires_in),
            self.name_required.into(),
            self.name_min_length.into(),
            self.name_max_length.into(),
            self.prefix_min_length.into(),
            self.prefix_max_length.into(),
            self.metadata_enabled.into(),
            self.default_permissions.into(),
            self.rate_limit_enabled.into(),
            self.rate_limit_max.into(),
            interval_arg(self.rate_limit_window),
            self.default_remaining.into(),
            self.refill_amount.into(),
            interval_arg(self.refill_interval),
            self.actor_may_raise.clone().into(),
            self.actor_may_create.into(),
            timestamptz_arg(self.refill_anchor),
            timestamptz_arg(Some(at)),
        ]
    }
}

fn required<T>(value: Option<T>, argument: &str) -> Result<T, Error> {
    value.ok_or_else(|| Error::null(argument))
}

/// Create a named key configuration. Service only. Arguments left NULL that have no meaning
/// as NULL (prefix, body_length, the flags and lengths) are 22004.
// A new Rust name for a new SQL signature (0.3.0 added refill_anchor): the C symbol of the old
// one must not change meaning (docs/releasing.md).
#[allow(clippy::too_many_arguments)]
#[pg_extern(volatile, parallel_unsafe, name = "api_key_config_create")]
pub(super) fn api_key_config_create_0_3(
    id: Option<&str>,
    prefix: default!(Option<&str>, "'sk_'"),
    body_length: default!(Option<i32>, 32),
    hash_algorithm: default!(Option<&str>, "'sha256'"),
    default_expires_in: default!(Option<pgrx::datum::Interval>, "NULL"),
    min_expires_in: default!(Option<pgrx::datum::Interval>, "NULL"),
    max_expires_in: default!(Option<pgrx::datum::Interval>, "NULL"),
    name_required: default!(Option<bool>, false),
    name_min_length: default!(Option<i32>, 1),
    name_max_length: default!(Option<i32>, 128),
    prefix_min_length: default!(Option<i32>, 0),
    prefix_max_length: default!(Option<i32>, 32),
    metadata_enabled: default!(Option<bool>, true),
    default_permissions: default!(Option<Jsonb>, "NULL"),
    rate_limit_enabled: default!(Option<bool>, false),
    rate_limit_max: default!(Option<i32>, "NULL"),
    rate_limit_window: default!(Option<pgrx::datum::Interval>, "NULL"),
    default_remaining: default!(Option<i64>, "NULL"),
    refill_amount: default!(Option<i64>, "NULL"),
    refill_interval: default!(Option<pgrx::datum::Interval>, "NULL"),
    actor_may_raise: default!(Option<Vec<Option<String>>>, "'{}'"),
    actor_may_create: default!(Option<bool>, false),
    refill_anchor: default!(Option<TimestampWithTimeZone>, "NULL"),
) -> pgrx::composite_type!('static, "api_key.configs") {
    let principal = Principal::of_caller().or_raise();
    let made = || -> Result<Config, Error> {
        Ok(Config {
            id: required(id, "id")?.to_string(),
            prefix: required(prefix, "prefix")?.to_string(),
            body_length: required(body_length, "body_length")?,
            hash_algorithm: required(hash_algorithm, "hash_algorithm")?.to_string(),
            default_expires_in: default_expires_in.map(interval_from),
            min_expires_in: min_expires_in.map(interval_from),
            max_expires_in: max_expires_in.map(interval_from),
            name_required: required(name_required, "name_required")?,
            name_min_length: required(name_min_length, "name_min_length")?,
            name_max_length: required(name_max_length, "name_max_length")?,
            prefix_min_length: required(prefix_min_length, "prefix_min_length")?,
            prefix_max_length: required(prefix_max_length, "prefix_max_length")?,
            metadata_enabled: required(metadata_enabled, "metadata_enabled")?,
            default_permissions,
            rate_limit_enabled: required(rate_limit_enabled, "rate_limit_enabled")?,
            rate_limit_max,
            rate_limit_window: rate_limit_window.map(interval_from),
            default_remaining,
            refill_amount,
            refill_interval: refill_interval.map(interval_from),
            actor_may_raise: required(actor_may_raise, "actor_may_raise")?
                .into_iter()
                .map(|f| f.ok_or_else(|| Error::null("an element of actor_may_raise")))
                .collect::<Result<_, _>>()?,
            actor_may_create: required(actor_may_create, "actor_may_create")?,
            refill_anchor: refill_anchor.map(crate::pg::clock::micros_of),
        })
    };
    as_extension_owner(|| {
        principal.require_service("api_key_config_create")?;
        let config = made()?;
        config.check()?;
        if config::load(&config.id).is_ok() {
            return Err(Error::new(
                PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION,
                format!("configuration \"{}\" already exists", config.id),
            )
            .hint("Change it with api_key_config_update()."));
        }
        let now = clock::now();
        let placeholders: Vec<String> = (1..=COLUMN_COUNT).map(|n| format!("${n}")).collect();
        let at = COLUMN_COUNT + 1;
        let sql = format!(
            "INSERT INTO api_key.configs AS c ({COLUMNS}, created_at, updated_at) VALUES ({}, ${at}, ${at})
             RETURNING c, pg_catalog.to_jsonb(c)::pg_catalog.text",
            placeholders.join(", ")
        );
        let (row, detail) = Spi::connect_mut(|client| {
            let statement = spi::statement(client, &sql, &arg_types(), true)?;
            let rows = client.update(&*statement, None, &config.args(now)).map_err(spi::failed)?;
            let row = rows.first();
            Ok::<_, Error>((
                row.get::<ConfigRow>(1).map_err(spi::failed)?,
                row.get::<String>(2).map_err(spi::failed)?,
            ))
        })?;
        audit::write(&principal, Entry { at: now, action: "config_create", key_id: None, reference: None, detail })?;
        row.ok_or_else(|| Error::no_such_config(&config.id))
    })
    .or_raise()
}

/// The top-level keys of a settings object, or 22023 when it is not an object.
fn setting_names(settings: Jsonb) -> Result<Vec<String>, Error> {
    if !settings.is_object() {
        return Err(
            Error::invalid("settings must be a JSON object of configuration settings").hint(
                r#"e.g. settings => '{"prefix": "sk_test_", "default_expires_in": "30 days"}'"#,
            ),
        );
    }
    let mut depth = 0usize;
    let mut names = Vec::new();
    for token in settings.tokens() {
        match token {
            Token::BeginObject | Token::BeginArray { .. } => depth += 1,
            Token::EndObject | Token::EndArray => depth = depth.saturating_sub(1),
            Token::Key(k) if depth == 1 => names.push(k),
            _ => {}
        }
    }
    Ok(names)
}

/// Change settings of a configuration: `settings => '{"column": value, …}'` (JSON null clears
/// a setting that may be empty). Applies to keys created afterwards. Service only.
#[pg_extern(volatile, parallel_unsafe)]
fn api_key_config_update(
    id: Option<&str>,
    settings: Option<Jsonb>,
) -> pgrx::composite_type!('static, "api_key.configs") {
    let principal = Principal::of_caller().or_raise();
    as_extension_owner(|| {
        principal.require_service("api_key_config_update")?;
        let id = required(id, "id")?;
        let settings = required(settings, "settings")?;
        if let Some(unknown) = setting_names(settings)?.iter().find(|n| !SETTINGS.contains(&n.as_str())) {
            return Err(Error::invalid(format!(
                "settings: \"{}\" is not a configuration setting",
                shorten(unknown, 64)
            ))
            .hint("The settings are the columns of api_key.configs other than id, created_at and updated_at."));
        }
        let lock = format!("SELECT {COLUMNS} FROM api_key.configs WHERE id OPERATOR(pg_catalog.=) $1 FOR UPDATE");
        Spi::connect_mut(|client| {
            let statement = spi::statement(client, &lock, &[pg_sys::TEXTOID], true)?;
            let rows = client.update(&*statement, None, &[id.into()]).map_err(spi::failed)?;
            if rows.is_empty() {
                return Err(Error::no_such_config(id));
            }
            Ok(())
        })?;
        // PostgreSQL converts each JSON value to its column's type; a value it cannot convert
        // is the caller's mistake (22023), and the conversion's error is rolled back.
        let populate = format!(
            "SELECT {} FROM api_key.configs AS c, LATERAL pg_catalog.jsonb_populate_record(c, $2) AS p
              WHERE c.id OPERATOR(pg_catalog.=) $1",
            column_list("p")
        );
        // The conversion runs in a subtransaction that is rolled back: its error (a value of
        // the wrong type) is the caller's mistake, reported as 22023. A NULL for a setting that
        // may not be NULL is found when the row is read: 22004, naming it.
        let populated = subtransaction::attempt(OnSuccess::Discard, false, || {
            Spi::connect(|client| {
                let statement = spi::statement(client, &populate, &[pg_sys::TEXTOID, pg_sys::JSONBOID], false)
                    .unwrap_or_else(|e| e.raise());
                let rows = client
                    .select(&*statement, Some(1), &[id.into(), settings.into()])
                    .unwrap_or_else(|e| spi::failed(e).raise());
                rows.into_iter().next().map(|row| config::read(&row))
            })
        })
        .map_err(|f| Error::invalid(format!("settings: {}", shorten_quoted(&f.message))))?;
        let updated = populated.ok_or_else(|| Error::no_such_config(id))??;
        updated.check()?;
        let now = clock::now();
        let assignments: Vec<String> = COLUMNS
            .split(',')
            .enumerate()
            .skip(1)
            .map(|(i, c)| format!("{} = ${}", c.trim(), i + 1))
            .collect();
        let (at, given) = (COLUMN_COUNT + 1, COLUMN_COUNT + 2);
        let sql = format!(
            "UPDATE api_key.configs AS c SET {}, updated_at = ${at} WHERE c.id OPERATOR(pg_catalog.=) $1
             RETURNING c, pg_catalog.jsonb_build_object('id', c.id, 'settings', ${given}::pg_catalog.jsonb)::pg_catalog.text",
            assignments.join(", ")
        );
        let mut types = arg_types();
        types.push(pg_sys::JSONBOID);
        let mut args = updated.args(now);
        args.push(settings.into());
        let (row, detail) = Spi::connect_mut(|client| {
            let statement = spi::statement(client, &sql, &types, true)?;
            let rows = client.update(&*statement, None, &args).map_err(spi::failed)?;
            let row = rows.first();
            Ok::<_, Error>((
                row.get::<ConfigRow>(1).map_err(spi::failed)?,
                row.get::<String>(2).map_err(spi::failed)?,
            ))
        })?;
        audit::write(&principal, Entry { at: now, action: "config_update", key_id: None, reference: None, detail })?;
        row.ok_or_else(|| Error::no_such_config(id))
    })
    .or_raise()
}

const HAS_KEYS: &str =
    "SELECT EXISTS (SELECT FROM api_key.keys WHERE config_id OPERATOR(pg_catalog.=) $1)";
const DELETE: &str = "DELETE FROM api_key.configs WHERE id OPERATOR(pg_catalog.=) $1";

/// Delete a configuration that has no keys. Service only.
#[pg_extern(volatile, parallel_unsafe)]
fn api_key_config_delete(id: Option<&str>) -> bool {
    let principal = Principal::of_caller().or_raise();
    as_extension_owner(|| {
        principal.require_service("api_key_config_delete")?;
        let id = required(id, "id")?;
        if id == "default" {
            return Err(Error::invalid("the default configuration cannot be deleted"));
        }
        let deleted = Spi::connect_mut(|client| {
            let has_keys = spi::statement(client, HAS_KEYS, &[pg_sys::TEXTOID], false)?;
            let busy = client
                .select(&*has_keys, Some(1), &[id.into()])
                .map_err(spi::failed)?
                .first()
                .get::<bool>(1)
                .map_err(spi::failed)?
                .unwrap_or(false);
            if busy {
                return Err(Error::new(
                    PgSqlErrorCode::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
                    format!("configuration \"{}\" still has keys", shorten(id, 64)),
                )
                .hint("Revoke its keys first: SELECT api_key_revoke(id) FROM api_key.keys WHERE config_id = ...;"));
            }
            let delete = spi::statement(client, DELETE, &[pg_sys::TEXTOID], true)?;
            Ok(client.update(&*delete, None, &[id.into()]).map_err(spi::failed)?.len())
        })?;
        if deleted == 0 {
            return Err(Error::no_such_config(id));
        }
        let detail = serde_json::json!({ "id": id }).to_string();
        audit::write(&principal, Entry { at: clock::now(), action: "config_delete", key_id: None, reference: None, detail: Some(detail) })?;
        Ok(true)
    })
    .or_raise()
}
