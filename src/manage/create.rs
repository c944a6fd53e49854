//! `api_key_create`: a new key for a reference, within its configuration.

use super::audit::{self, Entry};
use super::config::{self, Config};
use super::key_row::{Written, WRITTEN_COLUMNS};
use super::secret::{self, NewSecret};
use crate::access::{self, Action, Principal, Reference};
use crate::calendar::{self, Interval};
use crate::error::{Error, OrRaise};
use crate::key_format;
use crate::permissions::Permissions;
use crate::pg::clock::{self, interval_from, timestamptz_arg};
use crate::pg::jsonb::{self, Jsonb};
use crate::pg::privileged::as_extension_owner;
use crate::pg::spi;
use crate::rules::{self, Limits};
use pgrx::datum::TimestampWithTimeZone;
use pgrx::heap_tuple::PgHeapTuple;
use pgrx::prelude::*;
use pgrx::Uuid;

pub type CreatedKey = pgrx::composite_type!('static, "api_key.created_key");

/// What a key will be, checked.
struct Settings {
    config: Config,
    name: Option<String>,
    prefix: String,
    expires_at: Option<i64>,
    permissions: Option<Jsonb>,
    parsed_permissions: Permissions,
    metadata: Option<Jsonb>,
    limits: Limits,
}

/// 22023 for a name the configuration does not accept.
pub fn check_name(config: &Config, name: Option<&str>) -> Result<(), Error> {
    let Some(name) = name else {
        if config.name_required {
            return Err(Error::name_required(&config.id));
        }
        return Ok(());
    };
    let chars = name.chars().count() as i32;
    if !(config.name_min_length..=config.name_max_length).contains(&chars) {
        return Err(Error::invalid(format!(
            "name must be {} to {} characters long (configuration \"{}\")",
            config.name_min_length, config.name_max_length, config.id
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid("name must not contain control characters"));
    }
    Ok(())
}

pub fn check_metadata(config: &Config, metadata: Option<Jsonb>) -> Result<(), Error> {
    let Some(metadata) = metadata else {
        return Ok(());
    };
    if !config.metadata_enabled {
        return Err(Error::invalid(format!(
            "metadata is not accepted by configuration \"{}\"",
            config.id
        )));
    }
    match jsonb::metadata_problem(metadata) {
        Some(p) => Err(Error::invalid(format!("metadata {p}"))),
        None => Ok(()),
    }
}

pub fn checked_permissions(value: Option<Jsonb>) -> Result<Permissions, Error> {
    match value {
        None => Ok(Permissions::default()),
        Some(v) => jsonb::permissions(v).map_err(|p| {
            Error::invalid(format!("permissions {p}"))
                .hint(r#"Permissions look like {"files": ["read", "write"]}."#)
        }),
    }
}

/// `expires_at` for a key created `now` with `expires_in`, within the configuration's bounds.
fn expiry(config: &Config, expires_in: Option<Interval>, now: i64) -> Result<Option<i64>, Error> {
    let Some(lifetime) = expires_in.or(config.default_expires_in) else {
        if let Some(max) = config.max_expires_in {
            return Err(Error::null("expires_in").hint(format!(
                "Configuration \"{}\" allows keys of at most {}.",
                config.id,
                clock::display_interval(max)
            )));
        }
        return Ok(None);
    };
    rules::check_lifetime("expires_in", lifetime, now).map_err(Error::invalid)?;
    // The configuration's bounds, as the calendar counts from now (a month is not 30 days).
    let expires_at = calendar::add(now, lifetime);
    if let Some(min) = config
        .min_expires_in
        .filter(|m| expires_at < calendar::add(now, *m))
    {
        return Err(Error::invalid(format!(
            "expires_in must be at least {} (configuration \"{}\")",
            clock::display_interval(min),
            config.id
        )));
    }
    if let Some(max) = config
        .max_expires_in
        .filter(|m| expires_at > calendar::add(now, *m))
    {
        return Err(Error::invalid(format!(
            "expires_in must be at most {} (configuration \"{}\")",
            clock::display_interval(max),
            config.id
        )));
    }
    calendar::add(now, lifetime)
        .map(Some)
        .ok_or_else(|| Error::invalid("expires_in is too far in the future"))
}

#[allow(clippy::too_many_arguments)]
fn settings(
    config_id: Option<&str>,
    name: Option<&str>,
    prefix: Option<&str>,
    expires_in: Option<Interval>,
    permissions: Option<Jsonb>,
    metadata: Option<Jsonb>,
    remaining: Option<i64>,
    refill: (Option<i64>, Option<Interval>, Option<i64>),
    rate_limit: (Option<i32>, Option<Interval>, Option<bool>),
    now: i64,
) -> Result<Settings, Error> {
    let config = config::load(config_id.unwrap_or("default"))?;
    check_name(&config, name)?;
    let prefix = prefix.unwrap_or(&config.prefix).to_string();
    if let Some(problem) = key_format::prefix_problem(&prefix) {
        return Err(Error::invalid(format!("prefix {problem}"))
            .hint("Secret scanners recognise keys by their prefix, e.g. sk_live_."));
    }
    if !(config.prefix_min_length..=config.prefix_max_length).contains(&(prefix.len() as i32)) {
        return Err(Error::invalid(format!(
            "prefix must be {} to {} characters long (configuration \"{}\")",
            config.prefix_min_length, config.prefix_max_length, config.id
        )));
    }
    let expires_at = expiry(&config, expires_in, now)?;
    let permissions = permissions.or(config.default_permissions);
    let parsed_permissions = checked_permissions(permissions)?;
    check_metadata(&config, metadata)?;
    // Usage limits: explicit arguments win, the configuration supplies the rest (its values
    // were checked when it was saved).
    for (argument, given) in [
        ("refill_interval", refill.1),
        ("rate_limit_window", rate_limit.1),
    ] {
        if let Some(period) = given {
            rules::check_period(argument, period, now).map_err(Error::invalid)?;
        }
    }
    // A refill given here has its own schedule (refill_anchor, or none); the configuration's
    // refill comes with the configuration's schedule unless refill_anchor moves it.
    let refill = match refill {
        (None, None, None) => Ok(config.refill()),
        (None, None, anchor) => rules::anchored(config.refill(), anchor),
        (amount, interval, anchor) => {
            rules::refill_from(amount, interval).and_then(|r| rules::anchored(r, anchor))
        }
    }
    .map_err(Error::invalid)?;
    let remaining = rules::credits(remaining.or(config.default_remaining), refill);
    if let Some(r) = remaining {
        rules::check_remaining("remaining", r).map_err(Error::invalid)?;
    }
    let (max, window, enabled) = rate_limit;
    let enabled = enabled.unwrap_or(max.is_some() || window.is_some() || config.rate_limit_enabled);
    let rate_limit = rules::rate_limit_from(
        enabled,
        max.or(config.rate_limit_max),
        window.or(config.rate_limit_window),
    )
    .map_err(|p| {
        Error::invalid(p).hint("e.g. rate_limit_max => 100, rate_limit_window => '1 minute'.")
    })?;
    let limits = Limits {
        enabled: true,
        expires_at,
        permissions: parsed_permissions.clone(),
        remaining,
        refill,
        rate_limit,
    };
    Ok(Settings {
        config,
        name: name.map(str::to_string),
        prefix,
        expires_at,
        permissions,
        parsed_permissions,
        metadata,
        limits,
    })
}

fn insert(
    principal: &Principal,
    reference: &Reference,
    s: &Settings,
    secret: &NewSecret,
    id: Uuid,
    now: i64,
) -> Result<(), Error> {
    use crate::pg::oids::*;
    let written = Written {
        name: s.name.as_deref(),
        permissions: s.permissions,
        metadata: s.metadata,
        limits: &s.limits,
    };
    let params = written.params(vec![
        (UUIDOID, id.into()),
        (TEXTOID, s.config.id.as_str().into()),
        (TEXTOID, reference.kind.as_str().into()),
        (TEXTOID, reference.id.as_str().into()),
        (TEXTOID, s.prefix.as_str().into()),
        (TEXTOID, secret.start.as_str().into()),
        (TIMESTAMPTZOID, timestamptz_arg(Some(now))),
        (TEXTOID, principal.actor().into()),
    ]);
    let sql = format!(
        "INSERT INTO api_key.keys (id, config_id, reference_type, reference_id, prefix, start, created_at,
                                   created_by, updated_at, {WRITTEN_COLUMNS})
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $7, {})",
        params.written
    );
    Spi::connect_mut(|client| {
        let statement = spi::statement(client, &sql, &params.types, true)?;
        client
            .update(&*statement, None, &params.args)
            .map_err(spi::failed)?;
        Ok::<_, Error>(())
    })?;
    secret::store(id, secret, &s.config.hash_algorithm, now)
}

/// The `api_key.created_key` row returned by create and rotate. The plaintext goes straight
/// into this row: it never enters a SQL statement the extension runs (where nested-statement
/// logging such as auto_explain's could record it).
#[allow(clippy::too_many_arguments)]
pub fn created_key(
    id: Uuid,
    key: &str,
    start: &str,
    prefix: &str,
    name: Option<&str>,
    reference: &Reference,
    config_id: &str,
    expires_at: Option<i64>,
    created_at: i64,
) -> Result<CreatedKey, Error> {
    let internal = |e: &dyn std::fmt::Display| {
        Error::new(
            pgrx::PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("api_key: building the created_key row failed: {e}"),
        )
    };
    let ts = |t: Option<i64>| t.and_then(|t| TimestampWithTimeZone::try_from(t).ok());
    let mut row =
        PgHeapTuple::new_composite_type("api_key.created_key").map_err(|e| internal(&e))?;
    (|| {
        row.set_by_name("id", id)?;
        row.set_by_name("key", key)?;
        row.set_by_name("start", start)?;
        row.set_by_name("prefix", prefix)?;
        row.set_by_name("name", name)?;
        row.set_by_name("reference_type", reference.kind.as_str())?;
        row.set_by_name("reference_id", reference.id.as_str())?;
        row.set_by_name("config_id", config_id)?;
        row.set_by_name("expires_at", ts(expires_at))?;
        row.set_by_name("created_at", ts(Some(created_at)))
    })()
    .map_err(|e| internal(&e))?;
    Ok(row)
}

/// Create a key owned by `(reference_type, reference_id)`. Returns the plaintext once; only
/// its hash is stored. Acting for an actor, usage limits and permissions stay within the
/// configuration's (see `actor_may_raise`).
// A new Rust name for a new SQL signature (0.3.0 added refill_anchor): the C symbol of the old
// one must not change meaning (docs/releasing.md).
#[allow(clippy::too_many_arguments)]
#[pg_extern(volatile, parallel_unsafe, name = "api_key_create")]
pub(super) fn api_key_create_0_3(
    reference_id: Option<&str>,
    reference_type: default!(Option<&str>, "'user'"),
    name: default!(Option<&str>, "NULL"),
    config_id: default!(Option<&str>, "NULL"),
    prefix: default!(Option<&str>, "NULL"),
    expires_in: default!(Option<pgrx::datum::Interval>, "NULL"),
    permissions: default!(Option<Jsonb>, "NULL"),
    metadata: default!(Option<Jsonb>, "NULL"),
    remaining: default!(Option<i64>, "NULL"),
    refill_amount: default!(Option<i64>, "NULL"),
    refill_interval: default!(Option<pgrx::datum::Interval>, "NULL"),
    rate_limit_max: default!(Option<i32>, "NULL"),
    rate_limit_window: default!(Option<pgrx::datum::Interval>, "NULL"),
    rate_limit_enabled: default!(Option<bool>, "NULL"),
    refill_anchor: default!(Option<TimestampWithTimeZone>, "NULL"),
) -> pgrx::composite_type!('static, "api_key.created_key") {
    let principal = Principal::of_caller().or_raise();
    as_extension_owner(|| {
        let reference = Reference::checked(reference_type, reference_id)?;
        access::authorize(&principal, &reference, Action::Create)?;
        let now = clock::now();
        let s = settings(
            config_id,
            name,
            prefix,
            expires_in.map(interval_from),
            permissions,
            metadata,
            remaining,
            (
                refill_amount,
                refill_interval.map(interval_from),
                refill_anchor.map(crate::pg::clock::micros_of),
            ),
            (
                rate_limit_max,
                rate_limit_window.map(interval_from),
                rate_limit_enabled,
            ),
            now,
        )?;
        s.config.check_creator(&principal)?;
        if let Some(actor) = principal.actor() {
            s.config
                .check_narrowing(actor, &s.config.envelope(), &s.limits)?;
        }
        let secret = secret::generate(&s.prefix, s.config.body_length, &s.config.hash_algorithm)?;
        let id = secret::new_key_id(now);
        insert(&principal, &reference, &s, &secret, id, now)?;
        let detail = serde_json::json!({
            "config_id": s.config.id,
            "permissions": s.parsed_permissions.to_json(),
        });
        audit::write(
            &principal,
            Entry {
                at: now,
                action: "create",
                key_id: Some(id),
                reference: Some(&reference),
                detail: Some(detail.to_string()),
            },
        )?;
        created_key(
            id,
            &secret.key,
            &secret.start,
            &s.prefix,
            s.name.as_deref(),
            &reference,
            &s.config.id,
            s.expires_at,
            now,
        )
    })
    .or_raise()
}
