//! A key as management reads it, and the checks every call on one key starts with: the key
//! must exist and be readable by the caller (else it "does not exist": an id reveals
//! nothing), and the caller must be allowed the action (else 42501).

use crate::access::{self, Action, Principal, Reference};
use crate::calendar::Interval;
use crate::error::Error;
use crate::pg::clock::{interval_arg, interval_from, micros_of, timestamptz_arg};
use crate::pg::jsonb::{self, Jsonb};
use crate::pg::spi;
use crate::rules::{self, Limits};
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::Uuid;

pub type KeysRow = pgrx::composite_type!('static, "api_key.keys");

pub struct KeyRow {
    pub id: Uuid,
    pub config_id: String,
    pub reference: Reference,
    pub name: Option<String>,
    pub prefix: String,
    pub enabled: bool,
    pub expires_at: Option<i64>,
    pub permissions: Option<Jsonb>,
    pub metadata: Option<Jsonb>,
    pub remaining: Option<i64>,
    pub refill_amount: Option<i64>,
    pub refill_interval: Option<Interval>,
    pub rate_limit_enabled: bool,
    pub rate_limit_max: Option<i32>,
    pub rate_limit_window: Option<Interval>,
    pub refill_anchor: Option<i64>,
}

const SELECT: &str = "
    SELECT k.id, k.config_id, k.reference_type, k.reference_id, k.name, k.prefix, k.enabled, k.expires_at,
           k.permissions, k.metadata, k.remaining, k.refill_amount, k.refill_interval, k.rate_limit_enabled,
           k.rate_limit_max, k.rate_limit_window, k.refill_anchor
      FROM api_key.keys AS k WHERE k.id OPERATOR(pg_catalog.=) $1";

const WHOLE_ROW: &str = "SELECT k FROM api_key.keys AS k WHERE k.id OPERATOR(pg_catalog.=) $1";

impl KeyRow {
    /// The key `id` as it is now; `lock` takes the row lock an update needs.
    pub fn load(id: Uuid, lock: bool) -> Result<Option<KeyRow>, Error> {
        let sql = if lock {
            format!("{SELECT} FOR NO KEY UPDATE")
        } else {
            SELECT.to_string()
        };
        Spi::connect_mut(|client| {
            let statement = spi::statement(client, &sql, &[pg_sys::UUIDOID], lock)?;
            let rows = client
                .update(&*statement, Some(1), &[id.into()])
                .map_err(spi::failed)?;
            let Some(row) = rows.into_iter().next() else {
                return Ok(None);
            };
            let text = |n| row.get::<String>(n).map_err(spi::failed);
            let interval = |n| {
                row.get::<pgrx::datum::Interval>(n)
                    .map(|v| v.map(interval_from))
                    .map_err(spi::failed)
            };
            Ok(Some(KeyRow {
                id,
                config_id: text(2)?.unwrap_or_default(),
                reference: Reference {
                    kind: text(3)?.unwrap_or_default(),
                    id: text(4)?.unwrap_or_default(),
                },
                name: text(5)?,
                prefix: text(6)?.unwrap_or_default(),
                enabled: row.get::<bool>(7).map_err(spi::failed)?.unwrap_or(false),
                expires_at: row
                    .get::<pgrx::datum::TimestampWithTimeZone>(8)
                    .map_err(spi::failed)?
                    .map(micros_of),
                permissions: row.get::<Jsonb>(9).map_err(spi::failed)?,
                metadata: row.get::<Jsonb>(10).map_err(spi::failed)?,
                remaining: row.get::<i64>(11).map_err(spi::failed)?,
                refill_amount: row.get::<i64>(12).map_err(spi::failed)?,
                refill_interval: interval(13)?,
                rate_limit_enabled: row.get::<bool>(14).map_err(spi::failed)?.unwrap_or(false),
                rate_limit_max: row.get::<i32>(15).map_err(spi::failed)?,
                rate_limit_window: interval(16)?,
                refill_anchor: row
                    .get::<pgrx::datum::TimestampWithTimeZone>(17)
                    .map_err(spi::failed)?
                    .map(micros_of),
            }))
        })
    }

    /// The key for `action` by `principal`: P0002 when it does not exist or the principal may
    /// not read it, 42501 when it may read but not do `action`. Locked unless reading.
    pub fn for_action(
        principal: &Principal,
        id: Option<Uuid>,
        action: Action,
    ) -> Result<KeyRow, Error> {
        let id = id.ok_or_else(|| Error::null("id"))?;
        Self::visible(principal, id, action)?.ok_or_else(|| Error::no_such_key(&id))
    }

    /// Like `for_action`, but `None` for a key that does not exist or is not readable.
    pub fn visible(
        principal: &Principal,
        id: Uuid,
        action: Action,
    ) -> Result<Option<KeyRow>, Error> {
        let Some(key) = KeyRow::load(id, false)? else {
            return Ok(None);
        };
        if access::decide(principal, &key.reference, Action::Read)?.is_err() {
            return Ok(None);
        }
        if action == Action::Read {
            return Ok(Some(key));
        }
        access::authorize(principal, &key.reference, action)?;
        // Locked only now, so that a refused caller holds no lock; the owner never changes.
        KeyRow::load(id, true)
    }

    pub fn limits(&self) -> Limits {
        let refill = rules::refill_from(self.refill_amount, self.refill_interval)
            .ok()
            .flatten()
            .map(|r| rules::Refill {
                anchor: self.refill_anchor,
                ..r
            });
        let rate_limit = rules::rate_limit_from(
            self.rate_limit_enabled,
            self.rate_limit_max,
            self.rate_limit_window,
        )
        .ok()
        .flatten();
        Limits {
            enabled: self.enabled,
            expires_at: self.expires_at,
            permissions: jsonb::held_permissions(self.permissions),
            remaining: self.remaining,
            refill,
            rate_limit,
        }
    }
}

/// What create and update write of a key's settings, as parameters in the order of
/// `WRITTEN_COLUMNS`.
pub struct Written<'a> {
    pub name: Option<&'a str>,
    pub permissions: Option<Jsonb>,
    pub metadata: Option<Jsonb>,
    pub limits: &'a Limits,
}

pub const WRITTEN_COLUMNS: &str = "name, enabled, expires_at, permissions, metadata, remaining, \
     refill_amount, refill_interval, rate_limit_enabled, rate_limit_max, rate_limit_window, refill_anchor";

/// A statement's parameters: `leading` ones as `$1`…, then `WRITTEN_COLUMNS`' values.
pub struct Params<'a> {
    pub types: Vec<pg_sys::Oid>,
    pub args: Vec<DatumWithOid<'a>>,
    /// `$k, …, $n`: the placeholders of `WRITTEN_COLUMNS`, in their order.
    pub written: String,
}

impl Written<'_> {
    pub fn params<'a>(&self, leading: Vec<(pg_sys::Oid, DatumWithOid<'a>)>) -> Params<'a> {
        use crate::pg::oids::*;
        let l = self.limits;
        let written: [(pg_sys::Oid, DatumWithOid<'a>); 12] = [
            (TEXTOID, self.name.map(str::to_string).into()),
            (BOOLOID, l.enabled.into()),
            (TIMESTAMPTZOID, timestamptz_arg(l.expires_at)),
            (JSONBOID, self.permissions.into()),
            (JSONBOID, self.metadata.into()),
            (INT8OID, l.remaining.into()),
            (INT8OID, l.refill.map(|r| r.amount).into()),
            (INTERVALOID, interval_arg(l.refill.map(|r| r.interval))),
            (BOOLOID, l.rate_limit.is_some().into()),
            (INT4OID, l.rate_limit.map(|r| r.max).into()),
            (INTERVALOID, interval_arg(l.rate_limit.map(|r| r.window))),
            (
                TIMESTAMPTZOID,
                timestamptz_arg(l.refill.and_then(|r| r.anchor)),
            ),
        ];
        let first = leading.len() + 1;
        let placeholders: Vec<String> = (first..first + written.len())
            .map(|n| format!("${n}"))
            .collect();
        let (types, args) = leading.into_iter().chain(written).unzip();
        Params {
            types,
            args,
            written: placeholders.join(", "),
        }
    }
}

/// The whole `api_key.keys` row of `id`, as functions return it.
pub fn whole_row(id: Uuid) -> Result<KeysRow, Error> {
    Spi::connect(|client| {
        let statement = spi::statement(client, WHOLE_ROW, &[pg_sys::UUIDOID], false)?;
        client
            .select(&*statement, Some(1), &[id.into()])
            .map_err(spi::failed)?
            .first()
            .get::<KeysRow>(1)
            .map_err(spi::failed)?
            .ok_or_else(|| Error::no_such_key(&id))
    })
}
