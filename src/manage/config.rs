//! Configurations: named sets of key format, hashing, expiry bounds, name rules and usage
//! defaults (`api_key.configs`). Read by every key creation; managed by the service only.

use crate::calendar::Interval;
use crate::error::{shorten, Error};
use crate::key_format;
use crate::permissions::Permissions;
use crate::pg::clock::interval_from;
use crate::pg::jsonb::{self, Jsonb};
use crate::pg::spi;
use crate::rules::{self, Field, Limits, RateLimit, Refill};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::SpiHeapTupleData;

/// The columns of `api_key.configs` a configuration consists of, in table order (the same
/// list is the order of `read`).
pub const COLUMNS: &str =
    "id, prefix, body_length, hash_algorithm, default_expires_in, min_expires_in, \
     max_expires_in, name_required, name_min_length, name_max_length, prefix_min_length, \
     prefix_max_length, metadata_enabled, default_permissions, rate_limit_enabled, rate_limit_max, \
     rate_limit_window, default_remaining, refill_amount, refill_interval, actor_may_raise, \
     actor_may_create, refill_anchor";

/// How many columns `COLUMNS` names.
pub const COLUMN_COUNT: usize = 23;

/// The settings `api_key_config_update` accepts: every column but id and the timestamps.
pub const SETTINGS: [&str; 22] = [
    "prefix",
    "body_length",
    "hash_algorithm",
    "default_expires_in",
    "min_expires_in",
    "max_expires_in",
    "name_required",
    "name_min_length",
    "name_max_length",
    "prefix_min_length",
    "prefix_max_length",
    "metadata_enabled",
    "default_permissions",
    "rate_limit_enabled",
    "rate_limit_max",
    "rate_limit_window",
    "default_remaining",
    "refill_amount",
    "refill_interval",
    "actor_may_raise",
    "actor_may_create",
    "refill_anchor",
];

#[derive(Clone)]
pub struct Config {
    pub id: String,
    pub prefix: String,
    pub body_length: i32,
    pub hash_algorithm: String,
    pub default_expires_in: Option<Interval>,
    pub min_expires_in: Option<Interval>,
    pub max_expires_in: Option<Interval>,
    pub name_required: bool,
    pub name_min_length: i32,
    pub name_max_length: i32,
    pub prefix_min_length: i32,
    pub prefix_max_length: i32,
    pub metadata_enabled: bool,
    pub default_permissions: Option<Jsonb>,
    pub rate_limit_enabled: bool,
    pub rate_limit_max: Option<i32>,
    pub rate_limit_window: Option<Interval>,
    pub default_remaining: Option<i64>,
    pub refill_amount: Option<i64>,
    pub refill_interval: Option<Interval>,
    pub actor_may_raise: Vec<String>,
    pub actor_may_create: bool,
    /// The calendar schedule of the refill (`rules::Refill::anchor`), microseconds.
    pub refill_anchor: Option<i64>,
}

/// Reads a row whose columns are `COLUMNS`, in order. A NULL in a column that may not be
/// NULL (a settings object can ask for one) is 22004, naming the setting.
pub fn read(row: &SpiHeapTupleData<'_>) -> Result<Config, Error> {
    fn required<T>(value: Option<T>, setting: &str) -> Result<T, Error> {
        value.ok_or_else(|| Error::null(setting))
    }
    let text = |n, name| required(row.get::<String>(n).map_err(spi::failed)?, name);
    let int = |n, name| required(row.get::<i32>(n).map_err(spi::failed)?, name);
    let flag = |n, name| required(row.get::<bool>(n).map_err(spi::failed)?, name);
    let interval = |n| {
        row.get::<pgrx::datum::Interval>(n)
            .map(|v| v.map(interval_from))
            .map_err(spi::failed)
    };
    let actor_may_raise = required(
        row.get::<Vec<Option<String>>>(21).map_err(spi::failed)?,
        "actor_may_raise",
    )?
    .into_iter()
    .map(|f| f.ok_or_else(|| Error::null("an element of actor_may_raise")))
    .collect::<Result<_, _>>()?;
    Ok(Config {
        id: text(1, "id")?,
        prefix: text(2, "prefix")?,
        body_length: int(3, "body_length")?,
        hash_algorithm: text(4, "hash_algorithm")?,
        default_expires_in: interval(5)?,
        min_expires_in: interval(6)?,
        max_expires_in: interval(7)?,
        name_required: flag(8, "name_required")?,
        name_min_length: int(9, "name_min_length")?,
        name_max_length: int(10, "name_max_length")?,
        prefix_min_length: int(11, "prefix_min_length")?,
        prefix_max_length: int(12, "prefix_max_length")?,
        metadata_enabled: flag(13, "metadata_enabled")?,
        default_permissions: row.get::<Jsonb>(14).map_err(spi::failed)?,
        rate_limit_enabled: flag(15, "rate_limit_enabled")?,
        rate_limit_max: row.get::<i32>(16).map_err(spi::failed)?,
        rate_limit_window: interval(17)?,
        default_remaining: row.get::<i64>(18).map_err(spi::failed)?,
        refill_amount: row.get::<i64>(19).map_err(spi::failed)?,
        refill_interval: interval(20)?,
        actor_may_raise,
        actor_may_create: flag(22, "actor_may_create")?,
        refill_anchor: row
            .get::<pgrx::datum::TimestampWithTimeZone>(23)
            .map_err(spi::failed)?
            .map(crate::pg::clock::micros_of),
    })
}

/// The configuration `id`, or 42704. Runs as the extension owner.
pub fn load(id: &str) -> Result<Config, Error> {
    let sql = format!("SELECT {COLUMNS} FROM api_key.configs WHERE id OPERATOR(pg_catalog.=) $1");
    Spi::connect(|client| {
        let statement = spi::statement(client, &sql, &[pg_sys::TEXTOID], false)?;
        let rows = client
            .select(&*statement, Some(1), &[id.into()])
            .map_err(spi::failed)?;
        match rows.into_iter().next() {
            Some(row) => read(&row),
            None => Err(Error::no_such_config(id)),
        }
    })
}

fn id_problem(id: &str) -> Option<&'static str> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"_.:-".contains(&c));
    (!ok).then_some("must be 1 to 64 ASCII letters, digits or _ . : -")
}

impl Config {
    /// Why this configuration is not usable, naming the setting. Durations are measured from
    /// `now`. Pure but for reading the default permissions' tokens.
    pub fn problem(&self, now: i64) -> Option<String> {
        let lifetime = |name: &str, v: Option<Interval>| {
            v.and_then(|v| rules::check_lifetime(name, v, now).err())
        };
        let period = |name: &str, v: Option<Interval>| {
            v.and_then(|v| rules::check_period(name, v, now).err())
        };
        let lt = |a: Option<Interval>, b: Option<Interval>| match (a, b) {
            (Some(a), Some(b)) => a.comparable() < b.comparable(),
            _ => false,
        };
        if let Some(p) = id_problem(&self.id) {
            return Some(format!("id {p}"));
        }
        if let Some(p) = key_format::prefix_problem(&self.prefix) {
            return Some(format!("prefix {p}"));
        }
        let min_body = if self.hash_algorithm == "argon2id" {
            key_format::MIN_ARGON2_BODY_LEN as i32
        } else {
            key_format::MIN_BODY_LEN as i32
        };
        if !["sha256", "argon2id"].contains(&self.hash_algorithm.as_str()) {
            return Some("hash_algorithm must be sha256 or argon2id".into());
        }
        if !(min_body..=key_format::MAX_BODY_LEN as i32).contains(&self.body_length) {
            return Some(format!(
                "body_length must be between {min_body} and {} for {}",
                key_format::MAX_BODY_LEN,
                self.hash_algorithm
            ));
        }
        for (name, value) in [
            ("default_expires_in", self.default_expires_in),
            ("min_expires_in", self.min_expires_in),
            ("max_expires_in", self.max_expires_in),
        ] {
            if let Some(p) = lifetime(name, value) {
                return Some(p);
            }
        }
        if lt(self.max_expires_in, self.min_expires_in) {
            return Some("min_expires_in must not exceed max_expires_in".into());
        }
        if lt(self.default_expires_in, self.min_expires_in)
            || lt(self.max_expires_in, self.default_expires_in)
        {
            return Some(
                "default_expires_in must lie between min_expires_in and max_expires_in".into(),
            );
        }
        if !(0..=1024).contains(&self.name_min_length)
            || !(1..=1024).contains(&self.name_max_length)
        {
            return Some("name_min_length must be 0 to 1024 and name_max_length 1 to 1024".into());
        }
        if self.name_min_length > self.name_max_length {
            return Some("name_min_length must not exceed name_max_length".into());
        }
        let prefix_bounds = 0..=key_format::MAX_PREFIX_LEN as i32;
        if !prefix_bounds.contains(&self.prefix_min_length)
            || !prefix_bounds.contains(&self.prefix_max_length)
        {
            return Some("prefix_min_length and prefix_max_length must be between 0 and 32".into());
        }
        if self.prefix_min_length > self.prefix_max_length {
            return Some("prefix_min_length must not exceed prefix_max_length".into());
        }
        if !(self.prefix_min_length..=self.prefix_max_length).contains(&(self.prefix.len() as i32))
        {
            return Some("prefix must respect prefix_min_length and prefix_max_length".into());
        }
        if let Some(p) = self
            .default_permissions
            .and_then(|v| jsonb::permissions(v).err())
        {
            return Some(format!("default_permissions {p}"));
        }
        if let Err(p) = rules::rate_limit_from(
            self.rate_limit_enabled,
            self.rate_limit_max,
            self.rate_limit_window,
        ) {
            return Some(p);
        }
        if let Some(p) = period("rate_limit_window", self.rate_limit_window) {
            return Some(p);
        }
        if let Some(p) = self
            .default_remaining
            .and_then(|r| rules::check_remaining("default_remaining", r).err())
        {
            return Some(p);
        }
        match rules::refill_from(self.refill_amount, self.refill_interval) {
            Err(p) => return Some(p),
            Ok(refill) => {
                if let Err(p) = rules::anchored(refill, self.refill_anchor) {
                    return Some(p);
                }
            }
        }
        if let Some(p) = period("refill_interval", self.refill_interval) {
            return Some(p);
        }
        if let Some(bad) = self
            .actor_may_raise
            .iter()
            .find(|f| Field::from_name(f).is_none())
        {
            return Some(format!(
                "actor_may_raise: \"{}\" is not one of enabled, expires_at, permissions, remaining, refill, rate_limit",
                shorten(bad, 32)
            ));
        }
        None
    }

    /// 22023 with the problem, if there is one.
    pub fn check(&self) -> Result<(), Error> {
        match self.problem(crate::pg::clock::now()) {
            Some(p) => Err(Error::invalid(format!("configuration: {p}"))),
            None => Ok(()),
        }
    }

    pub fn refill(&self) -> Option<Refill> {
        let refill = rules::refill_from(self.refill_amount, self.refill_interval)
            .ok()
            .flatten();
        rules::anchored(refill, self.refill_anchor).ok().flatten()
    }

    pub fn rate_limit(&self) -> Option<RateLimit> {
        rules::rate_limit_from(
            self.rate_limit_enabled,
            self.rate_limit_max,
            self.rate_limit_window,
        )
        .ok()
        .flatten()
    }

    pub fn permissions(&self) -> Permissions {
        jsonb::held_permissions(self.default_permissions)
    }

    /// What an actor may create within: the configuration's own defaults.
    pub fn envelope(&self) -> Limits {
        let refill = self.refill();
        Limits {
            enabled: true,
            expires_at: None,
            permissions: self.permissions(),
            remaining: rules::credits(self.default_remaining, refill),
            refill,
            rate_limit: self.rate_limit(),
        }
    }

    /// 42501 unless `principal` may create keys of this configuration.
    pub fn check_creator(&self, principal: &crate::access::Principal) -> Result<(), Error> {
        match principal.actor() {
            Some(actor) if !self.actor_may_create => Err(Error::denied(format!(
                "actor \"{}\" may not create keys of configuration \"{}\": only the service may",
                shorten(actor, 256),
                self.id
            ))
            .hint(format!(
                "Let actors create them: api_key_config_update('{}', '{{\"actor_may_create\": true}}').",
                self.id
            ))),
            _ => Ok(()),
        }
    }

    /// May actors raise `field` past the configuration's (or the key's) value?
    pub fn actor_may_raise(&self, field: Field) -> bool {
        self.actor_may_raise.iter().any(|f| f == field.name())
    }

    /// 42501 when an actor's change lifts a limit this configuration does not let it raise.
    pub fn check_narrowing(
        &self,
        actor: &str,
        before: &Limits,
        after: &Limits,
    ) -> Result<(), Error> {
        match rules::lifted(before, after).into_iter().find(|f| !self.actor_may_raise(*f)) {
            None => Ok(()),
            Some(field) => Err(Error::denied(format!(
                "actor \"{}\" may not {}: usage limits and permissions are set by the service",
                shorten(actor, 256),
                field.refusal()
            ))
            .hint(format!(
                "Ask the service, or let actors raise it on configuration \"{}\": actor_may_raise => '{{{}}}'.",
                self.id,
                field.name()
            ))),
        }
    }
}
