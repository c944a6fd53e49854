//! `api_key_update`: change a key. NULL leaves a field as it is; `clear` sets fields to NULL.
//! Only what the call changes is checked against the key's configuration (tightening a
//! configuration does not lock existing keys). An actor may only narrow usage limits and
//! permissions (`rules.rs`).

use super::audit::{self, Entry};
use super::config;
use super::create::{check_metadata, check_name, checked_permissions};
use super::key_row::{KeyRow, KeysRow, Written, WRITTEN_COLUMNS};
use crate::access::{Action, Principal};
use crate::calendar::{self, Interval};
use crate::error::{shorten, Error, OrRaise};
use crate::pg::clock::{self, interval_from, micros_of, timestamptz_arg};
use crate::pg::jsonb::Jsonb;
use crate::pg::privileged::as_extension_owner;
use crate::pg::spi;
use crate::rules::{self, Limits, RateLimit, Refill};
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use pgrx::Uuid;

/// Fields `clear` may name.
const CLEARABLE: [&str; 7] = [
    "name",
    "expires_at",
    "permissions",
    "metadata",
    "remaining",
    "refill",
    "refill_anchor",
];

fn cleared(clear: Option<Vec<Option<String>>>) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    for field in clear.unwrap_or_default() {
        let field = field.ok_or_else(|| Error::null("an element of clear"))?;
        if !CLEARABLE.contains(&field.as_str()) {
            return Err(
                Error::invalid(format!("clear: cannot clear \"{}\"", shorten(&field, 64))).hint(
                    "clear accepts name, expires_at, permissions, metadata, remaining, refill, refill_anchor.",
                ),
            );
        }
        out.push(field);
    }
    Ok(out)
}

/// The arguments of one update.
struct Change {
    name: Option<String>,
    enabled: Option<bool>,
    expires_at: Option<i64>,
    permissions: Option<Jsonb>,
    metadata: Option<Jsonb>,
    remaining: Option<i64>,
    refill_amount: Option<i64>,
    refill_interval: Option<Interval>,
    refill_anchor: Option<i64>,
    rate_limit_enabled: Option<bool>,
    rate_limit_max: Option<i32>,
    rate_limit_window: Option<Interval>,
    clear: Vec<String>,
}

impl Change {
    fn clears(&self, field: &str) -> bool {
        self.clear.iter().any(|f| f == field)
    }

    fn is_empty(&self) -> bool {
        self.clear.is_empty()
            && self.name.is_none()
            && self.enabled.is_none()
            && self.expires_at.is_none()
            && self.permissions.is_none()
            && self.metadata.is_none()
            && self.remaining.is_none()
            && self.refill_amount.is_none()
            && self.refill_interval.is_none()
            && self.refill_anchor.is_none()
            && self.rate_limit_enabled.is_none()
            && self.rate_limit_max.is_none()
            && self.rate_limit_window.is_none()
    }

    fn conflict(&self) -> Option<&'static str> {
        [
            ("name", self.name.is_some()),
            ("expires_at", self.expires_at.is_some()),
            ("permissions", self.permissions.is_some()),
            ("metadata", self.metadata.is_some()),
            ("remaining", self.remaining.is_some()),
            (
                "refill",
                self.refill_amount.is_some() || self.refill_interval.is_some(),
            ),
            ("refill_anchor", self.refill_anchor.is_some()),
        ]
        .into_iter()
        .find(|(field, given)| *given && self.clears(field))
        .map(|(field, _)| field)
    }
}

/// The key's settings after the change, checked.
struct After {
    name: Option<String>,
    permissions: Option<Jsonb>,
    metadata: Option<Jsonb>,
    limits: Limits,
}

fn expiry(
    change: &Change,
    key: &KeyRow,
    config: &config::Config,
    now: i64,
) -> Result<Option<i64>, Error> {
    if change.clears("expires_at") {
        if config.max_expires_in.is_some() {
            return Err(Error::invalid(format!(
                "expires_at cannot be cleared: configuration \"{}\" has max_expires_in",
                config.id
            )));
        }
        return Ok(None);
    }
    let Some(at) = change.expires_at else {
        return Ok(key.expires_at);
    };
    if at <= now {
        return Err(Error::invalid("expires_at must be in the future")
            .hint("To stop a key now, revoke it or set enabled => false."));
    }
    let latest = [Some(rules::MAX_LIFETIME), config.max_expires_in]
        .into_iter()
        .flatten()
        .filter_map(|max| calendar::add(now, max))
        .min();
    if latest.is_some_and(|latest| at > latest) {
        return Err(Error::invalid(if config.max_expires_in.is_some() {
            format!(
                "expires_at is later than configuration \"{}\" allows",
                config.id
            )
        } else {
            "expires_at must be at most 100 years from now".to_string()
        }));
    }
    Ok(Some(at))
}

fn refill(change: &Change, key: &KeyRow, now: i64) -> Result<Option<Refill>, Error> {
    if change.clears("refill") {
        if change.refill_anchor.is_some() {
            return Err(Error::invalid(
                "refill_anchor is given but the refill is cleared",
            ));
        }
        return Ok(None);
    }
    if let Some(interval) = change.refill_interval {
        rules::check_period("refill_interval", interval, now).map_err(Error::invalid)?;
    }
    let current = key.limits().refill;
    let refill = match (change.refill_amount, change.refill_interval, current) {
        (None, None, current) => current,
        (amount, interval, Some(current)) => {
            // Changing one half of an existing refill keeps the other.
            let amount = amount.unwrap_or(current.amount);
            let interval = interval.unwrap_or(current.interval);
            rules::refill_from(Some(amount), Some(interval)).map_err(Error::invalid)?
        }
        (amount, interval, None) => rules::refill_from(amount, interval).map_err(|p| {
            Error::invalid(p)
                .hint("Pass both, e.g. refill_amount => 1000, refill_interval => '1 day'.")
        })?,
    };
    // The schedule stays unless changed or cleared.
    let anchor = if change.clears("refill_anchor") {
        None
    } else {
        change.refill_anchor.or(current.and_then(|r| r.anchor))
    };
    rules::anchored(refill, anchor).map_err(|p| {
        Error::invalid(p).hint("e.g. refill_interval => '1 month', refill_anchor => '2026-01-01 00:00+00' (monthly on the 1st, UTC).")
    })
}

fn rate_limit(change: &Change, key: &KeyRow, now: i64) -> Result<Option<RateLimit>, Error> {
    // Only given values are checked: a key keeps the limits it was made with.
    if let Some(window) = change.rate_limit_window {
        rules::check_period("rate_limit_window", window, now).map_err(Error::invalid)?;
    }
    rules::rate_limit_from(false, change.rate_limit_max, change.rate_limit_window)
        .map_err(Error::invalid)?;
    let given = change.rate_limit_max.is_some() || change.rate_limit_window.is_some();
    let enabled = change
        .rate_limit_enabled
        .unwrap_or(given || key.rate_limit_enabled);
    if !enabled {
        return Ok(None);
    }
    match (
        change.rate_limit_max.or(key.rate_limit_max),
        change.rate_limit_window.or(key.rate_limit_window),
    ) {
        (Some(max), Some(window)) => Ok(Some(RateLimit { max, window })),
        _ => Err(
            Error::invalid("a rate limit needs both rate_limit_max and rate_limit_window")
                .hint("e.g. rate_limit_max => 100, rate_limit_window => '1 minute'."),
        ),
    }
}

fn after(change: &Change, key: &KeyRow, config: &config::Config, now: i64) -> Result<After, Error> {
    if let Some(field) = change.conflict() {
        return Err(Error::invalid(format!("{field} is both given and cleared")));
    }
    let name = if change.clears("name") {
        if config.name_required {
            return Err(Error::name_required(&config.id));
        }
        None
    } else if let Some(name) = &change.name {
        check_name(config, Some(name))?;
        Some(name.clone())
    } else {
        key.name.clone()
    };
    let permissions = if change.clears("permissions") {
        None
    } else if change.permissions.is_some() {
        checked_permissions(change.permissions)?;
        change.permissions
    } else {
        key.permissions
    };
    let metadata = if change.clears("metadata") {
        None
    } else if change.metadata.is_some() {
        check_metadata(config, change.metadata)?;
        change.metadata
    } else {
        key.metadata
    };
    let refill = refill(change, key, now)?;
    let remaining = if change.clears("remaining") {
        if refill.is_some() {
            return Err(
                Error::invalid("remaining cannot be cleared while the key has a refill")
                    .hint("Clear both: clear => '{remaining,refill}'."),
            );
        }
        None
    } else if let Some(r) = change.remaining {
        rules::check_remaining("remaining", r).map_err(Error::invalid)?;
        Some(r)
    } else {
        rules::credits(key.remaining, refill)
    };
    let limits = Limits {
        enabled: change.enabled.unwrap_or(key.enabled),
        expires_at: expiry(change, key, config, now)?,
        permissions: crate::pg::jsonb::held_permissions(permissions),
        remaining,
        refill,
        rate_limit: rate_limit(change, key, now)?,
    };
    Ok(After {
        name,
        permissions,
        metadata,
        limits,
    })
}

/// The update, with the changed fields (old and new) for the audit log, in one statement: the
/// `old` row is read under the same snapshot as the update.
fn update_sql(written: &str) -> String {
    format!(
        "WITH old AS (SELECT pg_catalog.to_jsonb(o) AS j FROM api_key.keys AS o WHERE o.id OPERATOR(pg_catalog.=) $1),
              new AS (UPDATE api_key.keys AS k SET ({WRITTEN_COLUMNS}) = ({written}), updated_at = $2
                       WHERE k.id OPERATOR(pg_catalog.=) $1
                   RETURNING k, pg_catalog.to_jsonb(k) AS j)
         SELECT new.k,
                (SELECT pg_catalog.jsonb_object_agg(n.key, pg_catalog.jsonb_build_object('from', o.value, 'to', n.value))
                   FROM pg_catalog.jsonb_each(new.j) AS n
                   JOIN pg_catalog.jsonb_each(old.j) AS o ON o.key OPERATOR(pg_catalog.=) n.key
                  WHERE n.value OPERATOR(pg_catalog.<>) o.value
                    AND n.key OPERATOR(pg_catalog.<>) ALL (ARRAY['updated_at', 'last_used_at', 'last_refill_at']))::pg_catalog.text
           FROM new, old"
    )
}

fn write(id: Uuid, a: &After, now: i64) -> Result<(KeysRow, Option<String>), Error> {
    use crate::pg::oids::*;
    let written = Written {
        name: a.name.as_deref(),
        permissions: a.permissions,
        metadata: a.metadata,
        limits: &a.limits,
    };
    let params = written.params(vec![
        (UUIDOID, id.into()),
        (TIMESTAMPTZOID, timestamptz_arg(Some(now))),
    ]);
    Spi::connect_mut(|client| {
        let statement = spi::statement(client, &update_sql(&params.written), &params.types, true)?;
        let rows = client
            .update(&*statement, None, &params.args)
            .map_err(spi::failed)?;
        let row = rows.first();
        let key = row
            .get::<KeysRow>(1)
            .map_err(spi::failed)?
            .ok_or_else(|| Error::no_such_key(&id))?;
        Ok((key, row.get::<String>(2).map_err(spi::failed)?))
    })
}

/// Change a key. NULL arguments leave a field as it is; `clear => '{expires_at,remaining}'`
/// sets fields to NULL. Needs api_key:update on the key's reference.
#[allow(clippy::too_many_arguments)]
// A new Rust name for a new SQL signature (0.3.0 added refill_anchor): the C symbol of the old
// one must not change meaning (docs/releasing.md).
#[pg_extern(volatile, parallel_unsafe, name = "api_key_update")]
pub(super) fn api_key_update_0_3(
    id: Option<Uuid>,
    name: default!(Option<&str>, "NULL"),
    enabled: default!(Option<bool>, "NULL"),
    expires_at: default!(Option<TimestampWithTimeZone>, "NULL"),
    permissions: default!(Option<Jsonb>, "NULL"),
    metadata: default!(Option<Jsonb>, "NULL"),
    remaining: default!(Option<i64>, "NULL"),
    refill_amount: default!(Option<i64>, "NULL"),
    refill_interval: default!(Option<pgrx::datum::Interval>, "NULL"),
    rate_limit_enabled: default!(Option<bool>, "NULL"),
    rate_limit_max: default!(Option<i32>, "NULL"),
    rate_limit_window: default!(Option<pgrx::datum::Interval>, "NULL"),
    clear: default!(Option<Vec<Option<String>>>, "NULL"),
    refill_anchor: default!(Option<TimestampWithTimeZone>, "NULL"),
) -> pgrx::composite_type!('static, "api_key.keys") {
    let principal = Principal::of_caller().or_raise();
    as_extension_owner(|| {
        let key = KeyRow::for_action(&principal, id, Action::Update)?;
        let change = Change {
            name: name.map(str::to_string),
            enabled,
            expires_at: expires_at.map(micros_of),
            permissions,
            metadata,
            remaining,
            refill_amount,
            refill_interval: refill_interval.map(interval_from),
            refill_anchor: refill_anchor.map(micros_of),
            rate_limit_enabled,
            rate_limit_max,
            rate_limit_window: rate_limit_window.map(interval_from),
            clear: cleared(clear)?,
        };
        if change.is_empty() {
            return super::key_row::whole_row(key.id);
        }
        let config = config::load(&key.config_id)?;
        let now = clock::now();
        let after = after(&change, &key, &config, now)?;
        if let Some(actor) = principal.actor() {
            config.check_narrowing(actor, &key.limits(), &after.limits)?;
        }
        let (row, changed) = write(key.id, &after, now)?;
        audit::write(
            &principal,
            Entry {
                at: now,
                action: "update",
                key_id: Some(key.id),
                reference: Some(&key.reference),
                detail: changed,
            },
        )?;
        Ok(row)
    })
    .or_raise()
}
