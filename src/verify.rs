//! `api_key_verify` and `api_key_authenticate`: the hot path, in one file.
//!
//! Order of checks (DESIGN.md): format and checksum (no table touched) → exists → enabled →
//! expiry → permissions → rate limit → credits. A refused verification consumes neither
//! credits nor rate-limit allowance.
//!
//! Cost: the key is read by two primary-key index probes without SQL (`lookup.rs`). A key
//! with a rate limit adds a few hundred nanoseconds in shared memory when the library is
//! preloaded, else one upsert of an UNLOGGED row; a key with credits adds one guarded UPDATE,
//! durable because credits must survive a crash.

use crate::errors::{raise, raise_with_detail, raise_with_hint};
use crate::hashing;
use crate::lookup::{self, StoredKey};
use crate::rate_limit_shmem::{self, Decision};
use crate::{context, key_format, last_used, permissions, rate_limit};
use pgrx::heap_tuple::PgHeapTuple;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiError};
use pgrx::{JsonB, PgTupleDesc, Uuid};
use std::cell::{Cell, RefCell};
use std::rc::Rc;

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

/// What a verification found: the code, and the key whenever it was found (so a caller can
/// tell which key was refused), with what the usage checks left.
pub struct Outcome {
    pub code: Code,
    pub key: Option<StoredKey>,
    pub remaining: Option<i64>,
    pub rate_limit_remaining: Option<i32>,
    pub retry_after_ms: Option<i64>,
}

impl Outcome {
    fn refused(code: Code, key: StoredKey) -> Self {
        let remaining = key.remaining;
        Outcome { code, key: Some(key), remaining, rate_limit_remaining: None, retry_after_ms: None }
    }

    fn not_found() -> Self {
        Outcome { code: Code::NotFound, key: None, remaining: None, rate_limit_remaining: None, retry_after_ms: None }
    }
}

/// The write statements of the hot path, planned once per backend and kept.
struct Statements {
    rate_admit: OwnedPreparedStatement,
    rate_peek: OwnedPreparedStatement,
    rate_undo: OwnedPreparedStatement,
    spend: OwnedPreparedStatement,
    credits_left: OwnedPreparedStatement,
}

thread_local! {
    static STATEMENTS: RefCell<Option<Rc<Statements>>> = const { RefCell::new(None) };
    static RESULT_TYPE: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
}

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
// refill, then spend. The WHERE is re-checked on the newest row version under concurrency
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

/// 2000-01-01 in Unix microseconds.
const POSTGRES_EPOCH_IN_UNIX_MICROS: i64 = 946_684_800_000_000;

pub fn spi_failed(e: SpiError) -> ! {
    raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("api_key: internal query failed: {e}"))
}

/// Runs SQL of the extension with `search_path` pinned to `pg_catalog` (a SECURITY DEFINER
/// function must not resolve names through the caller's path). Cheaper than a `SET` clause
/// on the function, and only paid by verifications that write.
pub fn with_pinned_search_path<R>(f: impl FnOnce(&mut SpiClient<'_>) -> R) -> R {
    // SAFETY: the override is popped below; if `f` raises, transaction (or subtransaction)
    // abort pops it, as PostgreSQL does for its own users of the override stack.
    unsafe {
        let path = pg_sys::palloc0(std::mem::size_of::<pg_sys::OverrideSearchPath>()).cast::<pg_sys::OverrideSearchPath>();
        (*path).addCatalog = true;
        pg_sys::PushOverrideSearchPath(path);
    }
    let result = Spi::connect_mut(f);
    // SAFETY: pops the override pushed above.
    unsafe { pg_sys::PopOverrideSearchPath() };
    result
}

fn statements(client: &SpiClient<'_>) -> Rc<Statements> {
    if let Some(s) = STATEMENTS.with(|s| s.borrow().clone()) {
        return s;
    }
    let uuid = pg_sys::UUIDOID;
    let prep = |q: &str, args: &[pg_sys::Oid]| {
        let oids: Vec<_> = args.iter().map(|o| pg_sys::PgOid::from(*o)).collect();
        client.prepare_mut(q, &oids).unwrap_or_else(|e| spi_failed(e)).keep()
    };
    let s = Rc::new(Statements {
        rate_admit: prep(RATE_ADMIT, &[uuid, pg_sys::INT4OID, pg_sys::INT8OID, pg_sys::TIMESTAMPTZOID]),
        rate_peek: prep(RATE_PEEK, &[uuid]),
        rate_undo: prep(RATE_UNDO, &[uuid]),
        spend: prep(SPEND, &[uuid, pg_sys::INT8OID]),
        credits_left: prep(CREDITS_LEFT, &[uuid]),
    });
    STATEMENTS.with(|cell| *cell.borrow_mut() = Some(s.clone()));
    s
}

fn check_arguments(requested: Option<&JsonB>, cost: i32) {
    if cost < 0 {
        raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "cost must not be negative");
    }
    if let Some(problem) = requested.and_then(|r| permissions::shape_problem(&r.0)) {
        raise_with_hint(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("permissions {problem}"),
            r#"Ask like {"files": ["read"]}."#,
        );
    }
}

fn find(key: &str) -> Option<StoredKey> {
    let parsed = key_format::parse(key)?;
    // A SHA-256 key is found by its digest; an Argon2id key by the digest of its lookup id,
    // then checked with Argon2.
    if let Some(found) = lookup::find(&hashing::sha256(parsed.key.as_bytes())) {
        return Some(found).filter(|k| k.argon2_hash.is_none());
    }
    if parsed.key.len() <= key_format::CHECKSUM_LEN + key_format::ARGON2_SECRET_LEN {
        return None;
    }
    let found = lookup::find(&hashing::sha256(parsed.lookup_id().as_bytes()))?;
    let hash = found.argon2_hash.as_deref()?;
    hashing::argon2id_verify(parsed.key, hash).then_some(found)
}

fn held_permissions(key: &StoredKey) -> Option<serde_json::Value> {
    // SAFETY: the datum is a detoasted jsonb copy.
    key.permissions.and_then(|d| unsafe { JsonB::from_datum(d, false) }).map(|j| j.0)
}

/// Verify `key`; the shared core of `api_key_verify` and `api_key_authenticate`.
pub fn verify(key: Option<&str>, requested: Option<JsonB>, cost: i32, config_id: Option<&str>) -> Outcome {
    check_arguments(requested.as_ref(), cost);
    let Some(found) = key.and_then(find) else { return Outcome::not_found() };
    // A key asked for under another configuration is not one we know there.
    if config_id.is_some_and(|c| found.config_id != c) {
        return Outcome::not_found();
    }
    if !found.enabled {
        return Outcome::refused(Code::Disabled, found);
    }
    // SAFETY: reads the transaction start time, i.e. now().
    let now = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
    if found.expires_at.is_some_and(|at| now >= at) {
        return Outcome::refused(Code::Expired, found);
    }
    if let Some(req) = &requested {
        if !permissions::grants(held_permissions(&found).as_ref(), &req.0) {
            return Outcome::refused(Code::InsufficientPermissions, found);
        }
    }
    let writes = found.remaining.is_some() || (found.rate_limit.is_some() && !rate_limit_shmem::available());
    if writes {
        require_read_write();
    }
    let key_id = Uuid::from_bytes(found.id);
    let mut out = Outcome::refused(Code::Valid, found);
    let key = out.key.as_ref().expect("set just above");

    let mut counted = None;
    if let Some((max, window)) = key.rate_limit {
        match admit(key_id, max, window) {
            Admission::Admitted { admitted } => {
                out.rate_limit_remaining = Some(rate_limit::remaining(max, admitted));
                counted = Some(max);
            }
            Admission::Refused { retry_after_ms } => {
                out.code = Code::RateLimited;
                out.rate_limit_remaining = Some(0);
                out.retry_after_ms = Some(retry_after_ms);
                return out;
            }
        }
    }
    if key.remaining.is_some() {
        match spend(key_id, cost) {
            Ok(left) => out.remaining = left,
            Err(left) => {
                if counted.is_some() {
                    undo_admission(key_id);
                    out.rate_limit_remaining = out.rate_limit_remaining.map(|r| r + 1);
                }
                out.remaining = left;
                out.code = Code::UsageExceeded;
                return out;
            }
        }
    }
    last_used::record(key_id, key.last_used_at);
    out
}

/// Credits (and rate-limit windows kept in the table) are written by the verification itself.
fn require_read_write() {
    // SAFETY: reads backend-global flags.
    if unsafe { pg_sys::XactReadOnly || pg_sys::RecoveryInProgress() } {
        raise_with_hint(
            PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            "verifying a key with credits or a rate limit needs a read-write transaction",
            "Verify on the primary, outside READ ONLY transactions; keys without usage limits verify anywhere.",
        );
    }
}

/// Spend `cost` credits: `Ok(left)` when admitted, `Err(left)` when there were too few.
fn spend(key_id: Uuid, cost: i32) -> Result<Option<i64>, Option<i64>> {
    with_pinned_search_path(|client| {
        let st = statements(client);
        let spent = client.update(&st.spend, None, &[key_id.into(), (cost as i64).into()]).unwrap_or_else(|e| spi_failed(e));
        if spent.is_empty() {
            let left = client.update(&st.credits_left, None, &[key_id.into()]).unwrap_or_else(|e| spi_failed(e));
            return Err(left.first().get::<i64>(1).ok().flatten());
        }
        Ok(spent.first().get::<i64>(1).ok().flatten())
    })
}

enum Admission {
    Admitted { admitted: i32 },
    Refused { retry_after_ms: i64 },
}

/// Count one verification against the key's window: in shared memory when the library was
/// preloaded (no WAL, no xid), else in the UNLOGGED table (no WAL for the row; the
/// transaction's commit record remains).
fn admit(key_id: Uuid, max: i32, window: i64) -> Admission {
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
    with_pinned_search_path(|client| {
        let st = statements(client);
        let admit = client
            .update(&st.rate_admit, None, &[key_id.into(), max.into(), window.into(), now_tz.into()])
            .unwrap_or_else(|e| spi_failed(e));
        if admit.is_empty() {
            let peek = client.update(&st.rate_peek, None, &[key_id.into()]).unwrap_or_else(|e| spi_failed(e)).first();
            let unix_now = now + POSTGRES_EPOCH_IN_UNIX_MICROS;
            let start = peek.get::<i64>(2).ok().flatten().unwrap_or(unix_now);
            // Another backend may have opened the window with a clock reading a little later
            // than ours: never announce more than one window.
            let retry = rate_limit::retry_after_ms(start, window, unix_now).min(rate_limit::retry_after_ms(0, window, 0));
            return Admission::Refused { retry_after_ms: retry };
        }
        Admission::Admitted { admitted: admit.first().get::<i32>(1).ok().flatten().unwrap_or(max) }
    })
}

/// Give back an admission when a later check (credits) refuses the verification.
fn undo_admission(key_id: Uuid) {
    if rate_limit_shmem::available() {
        // SAFETY: reads the clock.
        rate_limit_shmem::undo(key_id.as_bytes(), unsafe { pg_sys::GetCurrentTimestamp() });
    }
    // The key may have been counted in the table (no room in shared memory); undo there too
    // (a no-op when it has no row).
    with_pinned_search_path(|client| {
        let st = statements(client);
        client.update(&st.rate_undo, None, &[key_id.into()]).unwrap_or_else(|e| spi_failed(e));
    });
}

fn result_tuple(out: Outcome) -> PgHeapTuple<'static, pgrx::AllocatedByRust> {
    let mut oid = RESULT_TYPE.with(|c| c.get());
    // The type is re-created with the extension: a cached OID that no longer names a row type
    // is looked up again (a syscache probe).
    // SAFETY: plain syscache lookup; InvalidOid for a type that is gone.
    if oid == pg_sys::InvalidOid || unsafe { pg_sys::get_typ_typrelid(oid) } == pg_sys::InvalidOid {
        oid = PgTupleDesc::for_composite_type("api_key.verification")
            .map(|d| d.oid())
            .unwrap_or_else(|| raise(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, "type api_key.verification is missing"));
        RESULT_TYPE.with(|c| c.set(oid));
    }
    let desc = PgTupleDesc::for_composite_type_by_oid(oid)
        .unwrap_or_else(|| raise(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, "type api_key.verification is missing"));
    let k = out.key.as_ref();
    let expires_at = k.and_then(|k| k.expires_at).map(|t| pg_sys::Datum::from(t));
    let datums = [
        (out.code == Code::Valid).into_datum(),
        out.code.as_str().into_datum(),
        k.map(|k| Uuid::from_bytes(k.id)).into_datum(),
        k.map(|k| k.reference_type.as_str()).into_datum(),
        k.map(|k| k.reference_id.as_str()).into_datum(),
        k.map(|k| k.config_id.as_str()).into_datum(),
        k.and_then(|k| k.name.as_deref()).into_datum(),
        k.and_then(|k| k.permissions),
        k.and_then(|k| k.metadata),
        out.remaining.into_datum(),
        out.rate_limit_remaining.into_datum(),
        out.retry_after_ms.into_datum(),
        expires_at,
    ];
    // SAFETY: the datums follow the column types of api_key.verification, in order (jsonb
    // values are detoasted copies; expires_at is a timestamptz by value).
    unsafe { PgHeapTuple::from_datums(desc, datums) }
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("api_key: {e}")))
}

/// Verify an API key: exactly one row, never an error for any key value.
///
/// SECURITY DEFINER without a `SET search_path` clause: the reads resolve no names through the
/// search path (`lookup.rs`), and the writes run under `with_pinned_search_path`.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
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
fn api_key_authenticate(
    key: Option<&str>,
    permissions: default!(Option<JsonB>, "NULL"),
    cost: default!(Option<i32>, 1),
    config_id: default!(Option<&str>, "NULL"),
) -> pgrx::composite_type!('static, "api_key.verification") {
    let out = verify(key, permissions, cost.unwrap_or(1), config_id);
    let Some(found) = out.key.as_ref().filter(|_| out.code == Code::Valid) else {
        raise_with_detail(
            PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
            format!("API key not accepted: {}", out.code.as_str()),
            format!("code={}", out.code.as_str()),
        );
    };
    context::bind(context::Binding {
        lxid: crate::caller::local_xid(),
        // SAFETY: reads backend state.
        subxact: unsafe { pg_sys::GetCurrentSubTransactionId() },
        key_id: Uuid::from_bytes(found.id),
        reference_type: found.reference_type.clone(),
        reference_id: found.reference_id.clone(),
        permissions: held_permissions(found),
    });
    result_tuple(out)
}
