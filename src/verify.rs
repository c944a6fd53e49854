//! `api_key_verify` and `api_key_authenticate`: the hot path, in one file.
//!
//! Order of checks (DESIGN.md): format and checksum (no table touched) → exists → enabled →
//! expiry → permissions → rate limit → credits. A refused verification consumes neither
//! credits nor rate-limit allowance. One index probe (secret joined to key) answers every
//! check up to permissions; a rate-limited key adds one upsert on an UNLOGGED row, a key with
//! credits one guarded UPDATE (durable: credits must survive a crash).

use crate::hashing::{self, Algorithm};
use crate::rate_limit_shmem::{self, Decision};
use crate::{context, key_format, last_used, rate_limit};
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiError};
use crate::errors::{raise, raise_with_detail, raise_with_hint};
use pgrx::heap_tuple::PgHeapTuple;
use pgrx::{JsonB, PgTupleDesc, Uuid};
use std::cell::RefCell;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Valid,
    NotFound,
    Disabled,
    Expired,
    UsageExceeded,
    RateLimited,
    InsufficientPermissions,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Valid => "VALID",
            Code::NotFound => "NOT_FOUND",
            Code::Disabled => "DISABLED",
            Code::Expired => "EXPIRED",
            Code::UsageExceeded => "USAGE_EXCEEDED",
            Code::RateLimited => "RATE_LIMITED",
            Code::InsufficientPermissions => "INSUFFICIENT_PERMISSIONS",
        }
    }
}

/// What a verification found. Fields of the key are filled whenever the key was found, so a
/// caller can tell *which* key was refused (never for NOT_FOUND).
pub struct Outcome {
    pub code: Code,
    pub key_id: Option<Uuid>,
    pub reference_type: Option<String>,
    pub reference_id: Option<String>,
    pub config_id: Option<String>,
    pub name: Option<String>,
    pub permissions: Option<JsonB>,
    pub metadata: Option<JsonB>,
    pub remaining: Option<i64>,
    pub rate_limit_remaining: Option<i32>,
    pub retry_after_ms: Option<i64>,
    pub expires_at: Option<TimestampWithTimeZone>,
}

impl Outcome {
    fn not_found() -> Self {
        Outcome {
            code: Code::NotFound,
            key_id: None,
            reference_type: None,
            reference_id: None,
            config_id: None,
            name: None,
            permissions: None,
            metadata: None,
            remaining: None,
            rate_limit_remaining: None,
            retry_after_ms: None,
            expires_at: None,
        }
    }
}

/// The statements of the hot path, planned once per backend and kept.
struct Statements {
    lookup: OwnedPreparedStatement,
    rate_admit: OwnedPreparedStatement,
    rate_peek: OwnedPreparedStatement,
    rate_undo: OwnedPreparedStatement,
    spend: OwnedPreparedStatement,
    credits_left: OwnedPreparedStatement,
}

thread_local! {
    static STATEMENTS: RefCell<Option<std::rc::Rc<Statements>>> = const { RefCell::new(None) };
    static RESULT_TYPE: std::cell::Cell<pg_sys::Oid> = const { std::cell::Cell::new(pg_sys::InvalidOid) };
}

const LOOKUP: &str = "
    SELECT k.id, k.enabled, k.expires_at, s.expires_at, s.algorithm, s.argon2_hash,
           k.reference_type, k.reference_id, k.config_id, k.name, k.permissions, k.metadata,
           ($2::jsonb IS NULL OR coalesce(k.permissions, '{}') @> $2::jsonb),
           k.remaining, k.rate_limit_enabled, k.rate_limit_max,
           (extract(epoch FROM k.rate_limit_window) * 1000000)::bigint,
           now() >= coalesce(k.expires_at, 'infinity') OR now() >= coalesce(s.expires_at, 'infinity'),
           least(k.expires_at, s.expires_at)
      FROM api_key.key_secrets s JOIN api_key.keys k ON k.id = s.key_id
     WHERE s.lookup = $1";

// Opens a window, or counts one more in the open window, only if that admits the call: the
// row lock taken by ON CONFLICT makes concurrent callers queue, so exactly `max` get in.
const RATE_ADMIT: &str = "
    INSERT INTO api_key.rate_limit_windows AS w (key_id, window_start, admitted)
    VALUES ($1, $4, 1)
    ON CONFLICT (key_id) DO UPDATE
       SET window_start = CASE WHEN w.window_start + $3 * interval '1 microsecond' <= $4 THEN $4 ELSE w.window_start END,
           admitted     = CASE WHEN w.window_start + $3 * interval '1 microsecond' <= $4 THEN 1 ELSE w.admitted + 1 END
     WHERE w.window_start + $3 * interval '1 microsecond' <= $4 OR w.admitted < $2
    RETURNING w.admitted";

const RATE_PEEK: &str = "
    SELECT admitted, (extract(epoch FROM window_start) * 1000000)::bigint
      FROM api_key.rate_limit_windows WHERE key_id = $1";

const RATE_UNDO: &str = "
    UPDATE api_key.rate_limit_windows SET admitted = admitted - 1 WHERE key_id = $1 AND admitted > 0";

// Credits: refill (top up to refill_amount) when an interval has passed since the last
// refill, then spend. The WHERE re-checks on the newest row version under concurrency
// (READ COMMITTED's EvalPlanQual), so remaining never goes below zero.
const SPEND: &str = "
    UPDATE api_key.keys SET
           remaining = CASE WHEN refill_interval IS NOT NULL
                             AND coalesce(last_refill_at, created_at) + refill_interval <= now()
                            THEN greatest(remaining, refill_amount) ELSE remaining END - $2,
           last_refill_at = CASE WHEN refill_interval IS NOT NULL
                                  AND coalesce(last_refill_at, created_at) + refill_interval <= now()
                                 THEN now() ELSE last_refill_at END
     WHERE id = $1 AND remaining IS NOT NULL
       AND CASE WHEN refill_interval IS NOT NULL
                 AND coalesce(last_refill_at, created_at) + refill_interval <= now()
                THEN greatest(remaining, refill_amount) ELSE remaining END >= greatest($2, 1)
    RETURNING remaining";

const CREDITS_LEFT: &str = "SELECT remaining FROM api_key.keys WHERE id = $1";

fn spi_failed(e: SpiError) -> ! {
    raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("api_key: internal query failed: {e}"))
}

fn statements(client: &SpiClient<'_>) -> std::rc::Rc<Statements> {
    if let Some(s) = STATEMENTS.with(|s| s.borrow().clone()) {
        return s;
    }
    let uuid = pg_sys::UUIDOID;
    let prep = |q: &str, args: &[pg_sys::Oid]| {
        let oids: Vec<_> = args.iter().map(|o| pg_sys::PgOid::from(*o)).collect();
        client.prepare_mut(q, &oids).unwrap_or_else(|e| spi_failed(e)).keep()
    };
    let s = std::rc::Rc::new(Statements {
        lookup: prep(LOOKUP, &[pg_sys::BYTEAOID, pg_sys::JSONBOID]),
        rate_admit: prep(RATE_ADMIT, &[uuid, pg_sys::INT4OID, pg_sys::INT8OID, pg_sys::TIMESTAMPTZOID]),
        rate_peek: prep(RATE_PEEK, &[uuid]),
        rate_undo: prep(RATE_UNDO, &[uuid]),
        spend: prep(SPEND, &[uuid, pg_sys::INT8OID]),
        credits_left: prep(CREDITS_LEFT, &[uuid]),
    });
    STATEMENTS.with(|cell| *cell.borrow_mut() = Some(s.clone()));
    s
}

/// Verify `key`; the shared core of `api_key_verify` and `api_key_authenticate`.
pub fn verify(key: Option<&str>, requested: Option<JsonB>, cost: i32, config_id: Option<&str>) -> Outcome {
    if cost < 0 {
        raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "cost must not be negative");
    }
    if let Some(req) = &requested {
        if let Some(problem) = crate::permissions::shape_problem(&req.0) {
            raise_with_hint(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("permissions {problem}"),
                r#"Ask like {"files": ["read"]}."#,
            );
        }
    }
    let Some(parsed) = key.and_then(key_format::parse) else { return Outcome::not_found() };
    let full_digest = hashing::sha256(parsed.key.as_bytes());
    let lookup_id_digest = parsed.key.len().checked_sub(key_format::CHECKSUM_LEN + key_format::ARGON2_SECRET_LEN)
        .filter(|n| *n > 0)
        .map(|_| hashing::sha256(parsed.lookup_id().as_bytes()));

    Spi::connect_mut(|client| {
        let st = statements(client);
        // A SHA-256 key is found by its digest; an Argon2id key by the digest of its lookup id.
        let mut table = client
            .update(&st.lookup, None, &[full_digest.to_vec().into(), requested.as_ref().map(|r| JsonB(r.0.clone())).into()])
            .unwrap_or_else(|e| spi_failed(e));
        if table.is_empty() {
            if let Some(d) = lookup_id_digest {
                table = client
                    .update(&st.lookup, None, &[d.to_vec().into(), requested.into()])
                    .unwrap_or_else(|e| spi_failed(e));
            }
        }
        if table.is_empty() {
            return Outcome::not_found();
        }
        let row = table.first();
        macro_rules! col {
            ($t:ty, $i:expr) => {
                row.get::<$t>($i).unwrap_or_else(|e| spi_failed(e))
            };
        }
        let algorithm = col!(String, 5).and_then(|a| Algorithm::from_name(&a));
        if algorithm == Some(Algorithm::Argon2id) {
            let ok = col!(String, 6).is_some_and(|h| hashing::argon2id_verify(parsed.key, &h));
            if !ok {
                return Outcome::not_found();
            }
        }
        let key_id: Uuid = col!(Uuid, 1).expect("keys.id is NOT NULL");
        let mut out = Outcome {
            code: Code::Valid,
            key_id: Some(key_id),
            reference_type: col!(String, 7),
            reference_id: col!(String, 8),
            config_id: col!(String, 9),
            name: col!(String, 10),
            permissions: col!(JsonB, 11),
            metadata: col!(JsonB, 12),
            remaining: col!(i64, 14),
            rate_limit_remaining: None,
            retry_after_ms: None,
            expires_at: col!(TimestampWithTimeZone, 19),
        };
        // A key asked for under another configuration is not one we know there.
        if config_id.is_some_and(|c| out.config_id.as_deref() != Some(c)) {
            return Outcome::not_found();
        }
        if !col!(bool, 2).unwrap_or(false) {
            out.code = Code::Disabled;
            return out;
        }
        if col!(bool, 18).unwrap_or(false) {
            out.code = Code::Expired;
            return out;
        }
        if !col!(bool, 13).unwrap_or(false) {
            out.code = Code::InsufficientPermissions;
            return out;
        }

        let mut admitted_by_rate_limit = false;
        if col!(bool, 15).unwrap_or(false) {
            let max = col!(i32, 16).unwrap_or(i32::MAX);
            let window = col!(i64, 17).unwrap_or(0);
            match admit(client, &st, key_id, max, window) {
                Admission::Admitted { admitted } => {
                    out.rate_limit_remaining = Some(rate_limit::remaining(max, admitted));
                    admitted_by_rate_limit = true;
                }
                Admission::Refused { retry_after_ms } => {
                    out.code = Code::RateLimited;
                    out.rate_limit_remaining = Some(0);
                    out.retry_after_ms = Some(retry_after_ms);
                    return out;
                }
            }
        }

        if out.remaining.is_some() {
            let spent = client
                .update(&st.spend, None, &[key_id.into(), (cost as i64).into()])
                .unwrap_or_else(|e| spi_failed(e));
            if spent.is_empty() {
                if admitted_by_rate_limit {
                    undo_admission(client, &st, key_id);
                    out.rate_limit_remaining = out.rate_limit_remaining.map(|r| r + 1);
                }
                let left = client.update(&st.credits_left, None, &[key_id.into()]).unwrap_or_else(|e| spi_failed(e));
                out.remaining = left.first().get::<i64>(1).ok().flatten();
                out.code = Code::UsageExceeded;
                return out;
            }
            out.remaining = spent.first().get::<i64>(1).ok().flatten();
        }
        last_used::record(client, key_id);
        out
    })
}

enum Admission {
    Admitted { admitted: i32 },
    Refused { retry_after_ms: i64 },
}

/// Count one verification against the key's window: in shared memory when the library was
/// preloaded (no WAL, no xid), else in the UNLOGGED table (no WAL for the row; the
/// transaction's commit record remains).
fn admit(client: &mut SpiClient<'_>, st: &Statements, key_id: Uuid, max: i32, window: i64) -> Admission {
    // SAFETY: reads the clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    if rate_limit_shmem::available() {
        match rate_limit_shmem::admit(key_id.as_bytes(), max, window, now) {
            Decision::Admitted { admitted } => return Admission::Admitted { admitted },
            Decision::Refused { window_end } => {
                return Admission::Refused { retry_after_ms: rate_limit::retry_after_ms(0, window_end, now) }
            }
            Decision::NoRoom => {}
        }
    }
    let now_tz = TimestampWithTimeZone::try_from(now).unwrap_or_else(|_| TimestampWithTimeZone::positive_infinity());
    let admit = client
        .update(&st.rate_admit, None, &[key_id.into(), max.into(), window.into(), now_tz.into()])
        .unwrap_or_else(|e| spi_failed(e));
    if admit.is_empty() {
        let peek = client.update(&st.rate_peek, None, &[key_id.into()]).unwrap_or_else(|e| spi_failed(e)).first();
        let unix_now = now + POSTGRES_EPOCH_IN_UNIX_MICROS;
        let start = peek.get::<i64>(2).ok().flatten().unwrap_or(unix_now);
        return Admission::Refused { retry_after_ms: rate_limit::retry_after_ms(start, window, unix_now) };
    }
    Admission::Admitted { admitted: admit.first().get::<i32>(1).ok().flatten().unwrap_or(max) }
}

/// Give back an admission when a later check (credits) refuses the verification.
fn undo_admission(client: &mut SpiClient<'_>, st: &Statements, key_id: Uuid) {
    if rate_limit_shmem::available() {
        // SAFETY: reads the clock.
        rate_limit_shmem::undo(key_id.as_bytes(), unsafe { pg_sys::GetCurrentTimestamp() });
    }
    // The key may have been counted in the table (no room in shared memory); undo there too
    // (a no-op when it has no row).
    client.update(&st.rate_undo, None, &[key_id.into()]).unwrap_or_else(|e| spi_failed(e));
}

/// 2000-01-01 in Unix microseconds.
const POSTGRES_EPOCH_IN_UNIX_MICROS: i64 = 946_684_800_000_000;

fn result_tuple(out: Outcome) -> PgHeapTuple<'static, pgrx::AllocatedByRust> {
    let mut oid = RESULT_TYPE.with(|c| c.get());
    if oid == pg_sys::InvalidOid {
        oid = PgTupleDesc::for_composite_type("api_key.verification")
            .map(|d| d.oid())
            .unwrap_or_else(|| raise(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, "type api_key.verification is missing"));
        RESULT_TYPE.with(|c| c.set(oid));
    }
    let desc = PgTupleDesc::for_composite_type_by_oid(oid)
        .unwrap_or_else(|| raise(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, "type api_key.verification is missing"));
    let datums = [
        Some(out.code == Code::Valid).into_datum(),
        out.code.as_str().into_datum(),
        out.key_id.into_datum(),
        out.reference_type.into_datum(),
        out.reference_id.into_datum(),
        out.config_id.into_datum(),
        out.name.into_datum(),
        out.permissions.into_datum(),
        out.metadata.into_datum(),
        out.remaining.into_datum(),
        out.rate_limit_remaining.into_datum(),
        out.retry_after_ms.into_datum(),
        out.expires_at.into_datum(),
    ];
    // SAFETY: the datums follow the column types of api_key.verification, in order.
    unsafe { PgHeapTuple::from_datums(desc, datums) }
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("api_key: {e}")))
}

/// Verify an API key: exactly one row, never an error for any key value.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn api_key_verify(
    key: Option<&str>,
    permissions: default!(Option<JsonB>, "NULL"),
    cost: default!(Option<i32>, 1),
    config_id: default!(Option<&str>, "NULL"),
) -> pgrx::composite_type!('static, "api_key.verification") {
    result_tuple(verify(key, permissions, cost.unwrap_or(1), config_id))
}

/// Verify a key and bind the current transaction to it, for row-level-security policies.
/// Raises SQLSTATE 28000 with the verification code when the key is not valid.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn api_key_authenticate(
    key: Option<&str>,
    permissions: default!(Option<JsonB>, "NULL"),
    cost: default!(Option<i32>, 1),
    config_id: default!(Option<&str>, "NULL"),
) -> pgrx::composite_type!('static, "api_key.verification") {
    let out = verify(key, permissions, cost.unwrap_or(1), config_id);
    if out.code != Code::Valid {
        raise_with_detail(
            PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
            format!("API key not accepted: {}", out.code.as_str()),
            format!("code={}", out.code.as_str()),
        );
    }
    context::bind(context::Binding {
        lxid: crate::caller::local_xid(),
        // SAFETY of expects: a VALID outcome always carries the key's id and owner.
        key_id: out.key_id.expect("valid outcome has a key id"),
        reference_type: out.reference_type.clone().expect("valid outcome has an owner"),
        reference_id: out.reference_id.clone().expect("valid outcome has an owner"),
        permissions: out.permissions.as_ref().map(|p| p.0.clone()),
    });
    result_tuple(out)
}
