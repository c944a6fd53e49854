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
use crate::usage::{self, Admission};
use crate::{context, key_format, last_used, permissions, rate_limit, rate_limit_shmem};
use pgrx::heap_tuple::PgHeapTuple;
use pgrx::prelude::*;
use pgrx::{JsonB, PgTupleDesc, Uuid};
use std::cell::Cell;

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
    fn with_key(code: Code, key: StoredKey) -> Self {
        let remaining = key.remaining;
        Outcome {
            code,
            key: Some(key),
            remaining,
            rate_limit_remaining: None,
            retry_after_ms: None,
        }
    }

    fn not_found() -> Self {
        Outcome {
            code: Code::NotFound,
            key: None,
            remaining: None,
            rate_limit_remaining: None,
            retry_after_ms: None,
        }
    }
}

thread_local! {
    static RESULT_TYPE: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
}

fn check_arguments(requested: Option<&JsonB>, cost: i32) {
    if cost < 0 {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "cost must not be negative",
        );
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
    key.permissions
        .and_then(|d| unsafe { JsonB::from_datum(d, false) })
        .map(|j| j.0)
}

/// Verify `key`; the shared core of `api_key_verify` and `api_key_authenticate`.
pub fn verify(
    key: Option<&str>,
    requested: Option<JsonB>,
    cost: i32,
    config_id: Option<&str>,
) -> Outcome {
    check_arguments(requested.as_ref(), cost);
    let Some(found) = key.and_then(find) else {
        return Outcome::not_found();
    };
    // A key asked for under another configuration is not one we know there.
    if config_id.is_some_and(|c| found.config_id != c) {
        return Outcome::not_found();
    }
    if !found.enabled {
        return Outcome::with_key(Code::Disabled, found);
    }
    // SAFETY: reads the transaction start time, i.e. now().
    let now = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
    if found.expires_at.is_some_and(|at| now >= at) {
        return Outcome::with_key(Code::Expired, found);
    }
    if let Some(req) = &requested {
        if !permissions::grants(held_permissions(&found).as_ref(), &req.0) {
            return Outcome::with_key(Code::InsufficientPermissions, found);
        }
    }
    let writes =
        found.remaining.is_some() || (found.rate_limit.is_some() && !rate_limit_shmem::available());
    if writes {
        usage::require_read_write();
    }
    let key_id = Uuid::from_bytes(found.id);
    let (rate_limit, has_credits, last_used_at) = (
        found.rate_limit,
        found.remaining.is_some(),
        found.last_used_at,
    );
    let mut out = Outcome::with_key(Code::Valid, found);

    let mut counted = None;
    if let Some((max, window)) = rate_limit {
        match usage::admit(key_id, max, window) {
            Admission::Admitted { admitted, counter } => {
                out.rate_limit_remaining = Some(rate_limit::remaining(max, admitted));
                counted = Some(counter);
            }
            Admission::Refused { retry_after_ms } => {
                out.code = Code::RateLimited;
                out.rate_limit_remaining = Some(0);
                out.retry_after_ms = Some(retry_after_ms);
                return out;
            }
        }
    }
    if has_credits {
        match usage::spend(key_id, cost) {
            Ok(left) => out.remaining = left,
            Err(left) => {
                if let Some(counter) = counted {
                    usage::undo_admission(key_id, counter);
                    out.rate_limit_remaining = out.rate_limit_remaining.map(|r| r + 1);
                }
                out.remaining = left;
                out.code = Code::UsageExceeded;
                return out;
            }
        }
    }
    last_used::record(key_id, last_used_at);
    out
}

fn result_tuple(out: Outcome) -> PgHeapTuple<'static, pgrx::AllocatedByRust> {
    let mut oid = RESULT_TYPE.with(|c| c.get());
    // The type is re-created with the extension: a cached OID that no longer names a row type
    // is looked up again (a syscache probe).
    // SAFETY: plain syscache lookup; InvalidOid for a type that is gone.
    if oid == pg_sys::InvalidOid || unsafe { pg_sys::get_typ_typrelid(oid) } == pg_sys::InvalidOid {
        oid = PgTupleDesc::for_composite_type("api_key.verification")
            .map(|d| d.oid())
            .unwrap_or_else(|| {
                raise(
                    PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
                    "type api_key.verification is missing",
                )
            });
        RESULT_TYPE.with(|c| c.set(oid));
    }
    let desc = PgTupleDesc::for_composite_type_by_oid(oid).unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            "type api_key.verification is missing",
        )
    });
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
    unsafe { PgHeapTuple::from_datums(desc, datums) }.unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("api_key: {e}"),
        )
    })
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
