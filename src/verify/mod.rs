//! `api_key_verify` and `api_key_authenticate`: the hot path, in one file.
//!
//! Order of checks (docs/reference.md): format and checksum (no table touched) → exists →
//! enabled → expiry → permissions → rate limit → credits. A refused verification consumes
//! neither credits nor rate-limit allowance. Every time-based check uses the wall clock at
//! the verification (`pg::clock`), not the transaction's start.
//!
//! Cost: the key is read by two primary-key index probes without SQL (`lookup.rs`). A key
//! with a rate limit adds a few hundred nanoseconds in shared memory when the library is
//! preloaded, else a locked read and a guarded write of an UNLOGGED row; a key with credits
//! adds a durable spend: by the credit writer's transaction when preloaded (`credit_queue.rs`:
//! nothing stays locked after the call), else one guarded UPDATE in this transaction. Both
//! guards check that the key is still the version that was read (`updated_at`): a verification
//! that waited starts again when it is not. Every outcome is then counted for the usage
//! analytics (`crate::analytics`), in memory.

pub mod admissions;
pub mod binding;
pub mod credit_queue;
pub mod credit_writer;
pub mod last_used;
pub mod lookup;
pub mod rate_limit_shmem;
pub mod usage;

use crate::analytics::{self, tags::TagSet};
use crate::error::{Error, OrRaise};
use crate::hashing;
use crate::key_format;
use crate::permissions::Permissions;
use crate::pg::clock;
use crate::pg::jsonb::{self, Jsonb};
use crate::rate_limit;
use lookup::StoredKey;
use pgrx::heap_tuple::PgHeapTuple;
use pgrx::prelude::*;
use pgrx::{Array, PgTupleDesc, Uuid};
use std::cell::Cell;
use usage::Admission;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    /// Every code, in a fixed order (its index is how shared memory stores it).
    pub const ALL: [Code; 7] = [
        Code::Valid,
        Code::NotFound,
        Code::Disabled,
        Code::Expired,
        Code::UsageExceeded,
        Code::RateLimited,
        Code::InsufficientPermissions,
    ];

    pub fn index(self) -> u8 {
        Code::ALL.iter().position(|&c| c == self).unwrap_or(0) as u8
    }

    pub fn from_index(index: u8) -> Option<Code> {
        Code::ALL.get(index as usize).copied()
    }

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
    /// When the limit that refused (or, for a valid call, the rate-limit window) resets.
    pub reset_at: Option<i64>,
}

impl Outcome {
    fn with_key(code: Code, key: StoredKey) -> Self {
        let remaining = key.remaining;
        Outcome {
            code,
            key: Some(key),
            remaining,
            rate_limit_remaining: None,
            retry_after_ms: None,
            reset_at: None,
        }
    }

    fn not_found() -> Self {
        Outcome {
            code: Code::NotFound,
            key: None,
            remaining: None,
            rate_limit_remaining: None,
            retry_after_ms: None,
            reset_at: None,
        }
    }
}

thread_local! {
    static RESULT_TYPE: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
}

/// What a verification asks for, checked: 22023 for a malformed request, 22004 for a NULL
/// cost. (The key argument never raises.)
struct Request {
    permissions: Option<Permissions>,
    cost: i32,
    tags: TagSet,
}

fn requested(
    permissions: Option<Jsonb>,
    cost: Option<i32>,
    tags: Option<Array<&str>>,
) -> Result<Request, Error> {
    let cost = cost.ok_or_else(|| Error::null("cost"))?;
    if cost < 0 {
        return Err(Error::invalid("cost must not be negative"));
    }
    let permissions = permissions
        .map(|p| {
            jsonb::permissions(p).map_err(|problem| {
                Error::invalid(format!("permissions {problem}"))
                    .hint(r#"Ask like {"files": ["read"]}."#)
            })
        })
        .transpose()?;
    let tags = match tags {
        None => TagSet::default(),
        Some(tags) => {
            let items: Vec<Option<String>> = tags.iter().map(|t| t.map(str::to_owned)).collect();
            // SAFETY: reads the header of the array argument.
            let dimensions = unsafe { (*tags.into_array_type()).ndim };
            let parsed = if dimensions > 1 {
                Err("must be a one-dimensional array".to_string())
            } else {
                TagSet::parse(items.iter().map(|t| t.as_deref()))
            };
            parsed.map_err(|problem| {
                Error::invalid(format!("tags: {problem}")).hint(format!(
                    "Pass at most {} tags of 1 to {} bytes, like ARRAY['GET /v1/files'].",
                    analytics::tags::MAX_TAGS,
                    analytics::tags::MAX_TAG_BYTES
                ))
            })?
        }
    };
    Ok(Request {
        permissions,
        cost,
        tags,
    })
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

/// What a stored key's permissions grant.
fn held(key: &StoredKey) -> Permissions {
    // SAFETY: the datum is a detoasted jsonb copy made by `lookup`.
    jsonb::held_permissions(key.permissions.map(|d| unsafe { Jsonb::from_raw(d) }))
}

/// How often a verification reads a key that changed under it again before giving up (40001).
const ATTEMPTS: usize = 3;

/// Verify `key`; the shared core of `api_key_verify` and `api_key_authenticate`.
///
/// A key with credits is spent only as the version that was checked: when another transaction
/// changed or revoked it meanwhile (this verification waited for its lock), the verification
/// starts again from a new snapshot, so it answers for the key as that transaction left it.
pub fn verify(
    key: Option<&str>,
    permissions: Option<Jsonb>,
    cost: Option<i32>,
    config_id: Option<&str>,
    tags: Option<Array<&str>>,
) -> Outcome {
    let request = requested(permissions, cost, tags).or_raise();
    let out = verify_checked(key, &request, config_id);
    let credits = match &out.key {
        Some(k) if out.code == Code::Valid && k.remaining.is_some() => request.cost as i64,
        _ => 0,
    };
    let key_id = out.key.as_ref().map(|k| k.id);
    analytics::record(key_id, out.code, &request.tags, credits, clock::now());
    out
}

fn verify_checked(key: Option<&str>, request: &Request, config_id: Option<&str>) -> Outcome {
    let (asked, cost) = (request.permissions.as_ref(), request.cost);
    if let Some(out) = verify_once(key, asked, cost, config_id) {
        return out;
    }
    for _ in 1..ATTEMPTS {
        // SAFETY: a new snapshot (in READ COMMITTED; the transaction's own in REPEATABLE READ,
        // where the spend raised 40001 instead) pushed for the lookup and popped after it; an
        // error in between aborts the transaction, which resets the snapshot stack.
        let again = unsafe {
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
            let again = verify_once(key, asked, cost, config_id);
            pg_sys::PopActiveSnapshot();
            again
        };
        if let Some(out) = again {
            return out;
        }
    }
    Error::new(
        PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
        "api_key: the key kept changing while it was being verified",
    )
    .hint("Retry the transaction.")
    .raise()
}

/// One verification; None when the key changed under it before its credits were spent (and
/// nothing was consumed).
fn verify_once(
    key: Option<&str>,
    asked: Option<&Permissions>,
    cost: i32,
    config_id: Option<&str>,
) -> Option<Outcome> {
    let Some(found) = key.and_then(find) else {
        return Some(Outcome::not_found());
    };
    // A key asked for under another configuration is not one we know there.
    if config_id.is_some_and(|c| found.config_id != c) {
        return Some(Outcome::not_found());
    }
    if !found.enabled {
        return Some(Outcome::with_key(Code::Disabled, found));
    }
    let now = clock::now();
    if found.expires_at.is_some_and(|at| now >= at) {
        return Some(Outcome::with_key(Code::Expired, found));
    }
    if let Some(asked) = asked {
        if !held(&found).grants(asked) {
            return Some(Outcome::with_key(Code::InsufficientPermissions, found));
        }
    }
    // Credits spent through the credit writer need no write here (a READ ONLY transaction on
    // the primary can spend them); the in-transaction spend checks for itself.
    let writes = (found.remaining.is_some() && !credit_queue::available())
        || (found.rate_limit.is_some() && !rate_limit_shmem::available());
    if writes {
        usage::require_read_write();
    }
    let key_id = Uuid::from_bytes(found.id);
    let refill_due = found.refill_interval.and_then(|interval| {
        let since = found.last_refill_at.unwrap_or(found.created_at);
        crate::rules::next_refill(interval, found.refill_anchor, since)
            .is_some_and(|at| at <= now)
            .then_some(since)
    });
    let (rate_limit, has_credits, last_used_at, updated_at) = (
        found.rate_limit,
        found.remaining.is_some(),
        found.last_used_at,
        found.updated_at,
    );
    let (refill_interval, refill_anchor) = (found.refill_interval, found.refill_anchor);
    let refill_amount = found.refill_amount.unwrap_or(0);
    let mut out = Outcome::with_key(Code::Valid, found);

    let mut counted = None;
    if let Some((max, window)) = rate_limit {
        match usage::admit(key_id, max, window, now, updated_at) {
            Admission::Admitted { admitted, counter } => {
                out.rate_limit_remaining = Some(rate_limit::remaining(max, admitted));
                out.reset_at = Some(counter.window_end());
                counted = Some(counter);
            }
            Admission::Refused {
                retry_after_ms,
                window_end,
            } => {
                out.code = Code::RateLimited;
                out.rate_limit_remaining = Some(0);
                out.retry_after_ms = Some(retry_after_ms);
                out.reset_at = window_end;
                return Some(out);
            }
            Admission::KeyChanged => return None,
        }
    }
    if has_credits {
        match usage::spend(key_id, cost, refill_due, now, updated_at) {
            usage::Spend::Spent(left) => out.remaining = left,
            usage::Spend::TooFew { left, refilled } => {
                if let Some(counter) = counted {
                    usage::undo_admission(key_id, counter);
                    out.rate_limit_remaining = out.rate_limit_remaining.map(|r| r + 1);
                }
                out.remaining = left;
                out.code = Code::UsageExceeded;
                // Credits come back at the next refill, if one is still to come and enough,
                // counted from the last refill as it is now (another verification may have
                // made the one this call found due).
                let next_refill = refill_interval.and_then(|interval| {
                    crate::rules::next_refill(interval, refill_anchor, refilled)
                });
                out.reset_at = next_refill.filter(|&at| at > now && refill_amount >= cost as i64);
                out.retry_after_ms = out.reset_at.map(|at| rate_limit::retry_after_ms(at, now));
                return Some(out);
            }
            usage::Spend::KeyChanged => {
                if let Some(counter) = counted {
                    usage::undo_admission(key_id, counter);
                }
                return None;
            }
        }
    }
    last_used::record(key_id, last_used_at, now);
    Some(out)
}

fn result_tuple(out: Outcome) -> PgHeapTuple<'static, pgrx::AllocatedByRust> {
    fn missing<T>() -> T {
        Error::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            "type api_key.verification is missing",
        )
        .raise()
    }
    let mut oid = RESULT_TYPE.with(|c| c.get());
    // The type is re-created with the extension: a cached OID that no longer names a row type
    // is looked up again (a syscache probe).
    // SAFETY: plain syscache lookup; InvalidOid for a type that is gone.
    if oid == pg_sys::InvalidOid || unsafe { pg_sys::get_typ_typrelid(oid) } == pg_sys::InvalidOid {
        oid = PgTupleDesc::for_composite_type("api_key.verification")
            .map(|d| d.oid())
            .unwrap_or_else(missing);
        RESULT_TYPE.with(|c| c.set(oid));
    }
    let desc = PgTupleDesc::for_composite_type_by_oid(oid).unwrap_or_else(missing);
    let k = out.key.as_ref();
    let expires_at = k.and_then(|k| k.expires_at).map(pg_sys::Datum::from);
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
        out.reset_at.map(pg_sys::Datum::from),
    ];
    // A database still on the previous release's type (between installing the package and
    // ALTER EXTENSION UPDATE) has fewer columns: fill those it has.
    let datums = datums.into_iter().take(desc.len());
    // SAFETY: the datums follow the column types of api_key.verification, in order (jsonb
    // values are detoasted copies; expires_at is a timestamptz by value).
    unsafe { PgHeapTuple::from_datums(desc, datums) }.unwrap_or_else(|e| {
        Error::new(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("api_key: {e}"),
        )
        .raise()
    })
}

/// Verify an API key: exactly one row, never an error for any key value.
///
/// SECURITY DEFINER without a `SET search_path` clause: the reads resolve no names
/// (`lookup.rs`), and the few statements that write name everything with its schema
/// (`usage.rs`).
/// `tags` (at most 8, of 1 to 64 bytes) are counted with the outcome in the usage analytics.
#[pg_extern(volatile, parallel_unsafe, security_definer, name = "api_key_verify")]
pub fn api_key_verify_0_3(
    key: Option<&str>,
    permissions: default!(Option<Jsonb>, "NULL"),
    cost: default!(Option<i32>, 1),
    config_id: default!(Option<&str>, "NULL"),
    tags: default!(Option<Array<&str>>, "NULL"),
) -> pgrx::composite_type!('static, "api_key.verification") {
    result_tuple(verify(key, permissions, cost, config_id, tags))
}

/// Verify a key and bind the current transaction to it, for row-level-security policies.
/// Raises SQLSTATE 28000 with the verification code when the key is not valid.
#[pg_extern(
    volatile,
    parallel_unsafe,
    security_definer,
    name = "api_key_authenticate"
)]
pub fn api_key_authenticate_0_3(
    key: Option<&str>,
    permissions: default!(Option<Jsonb>, "NULL"),
    cost: default!(Option<i32>, 1),
    config_id: default!(Option<&str>, "NULL"),
    tags: default!(Option<Array<&str>>, "NULL"),
) -> pgrx::composite_type!('static, "api_key.verification") {
    let out = verify(key, permissions, cost, config_id, tags);
    let Some(found) = out.key.as_ref().filter(|_| out.code == Code::Valid) else {
        Error::new(
            PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
            format!("API key not accepted: {}", out.code.as_str()),
        )
        .detail(format!("code={}", out.code.as_str()))
        .raise();
    };
    binding::bind(binding::Binding {
        lxid: crate::pg::compat::local_xid(),
        // SAFETY: reads backend state.
        subxact: unsafe { pg_sys::GetCurrentSubTransactionId() },
        key_id: Uuid::from_bytes(found.id),
        reference_type: found.reference_type.clone(),
        reference_id: found.reference_id.clone(),
        permissions: held(found),
    });
    result_tuple(out)
}
