//! The C symbols of earlier releases' SQL declarations whose signature has changed since.
//!
//! Released upgrade scripts are never edited, and they `CREATE FUNCTION … AS 'MODULE_PATHNAME',
//! '<symbol>'`: upgrading from 0.1.0 runs the 0.1.0→0.2.0 script against this library, so every
//! symbol a released script names must stay. Keeping them also keeps a database working between
//! installing the package and `ALTER EXTENSION api_key UPDATE`, when it still has the previous
//! release's declarations. Each shim takes the old arguments and calls the current function;
//! none has SQL of its own (`sql = false`).

use crate::pg::jsonb::Jsonb;
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use pgrx::Uuid;

/// 0.2.0's `api_key_create` (no `refill_anchor`).
#[allow(clippy::too_many_arguments)]
#[pg_extern(volatile, parallel_unsafe, sql = false)]
fn api_key_create(
    reference_id: Option<&str>,
    reference_type: Option<&str>,
    name: Option<&str>,
    config_id: Option<&str>,
    prefix: Option<&str>,
    expires_in: Option<pgrx::datum::Interval>,
    permissions: Option<Jsonb>,
    metadata: Option<Jsonb>,
    remaining: Option<i64>,
    refill_amount: Option<i64>,
    refill_interval: Option<pgrx::datum::Interval>,
    rate_limit_max: Option<i32>,
    rate_limit_window: Option<pgrx::datum::Interval>,
    rate_limit_enabled: Option<bool>,
) -> pgrx::composite_type!('static, "api_key.created_key") {
    super::create::api_key_create_0_3(
        reference_id,
        reference_type,
        name,
        config_id,
        prefix,
        expires_in,
        permissions,
        metadata,
        remaining,
        refill_amount,
        refill_interval,
        rate_limit_max,
        rate_limit_window,
        rate_limit_enabled,
        None,
    )
}

/// 0.2.0's `api_key_update` (no `refill_anchor`).
#[allow(clippy::too_many_arguments)]
#[pg_extern(volatile, parallel_unsafe, sql = false)]
fn api_key_update(
    id: Option<Uuid>,
    name: Option<&str>,
    enabled: Option<bool>,
    expires_at: Option<TimestampWithTimeZone>,
    permissions: Option<Jsonb>,
    metadata: Option<Jsonb>,
    remaining: Option<i64>,
    refill_amount: Option<i64>,
    refill_interval: Option<pgrx::datum::Interval>,
    rate_limit_enabled: Option<bool>,
    rate_limit_max: Option<i32>,
    rate_limit_window: Option<pgrx::datum::Interval>,
    clear: Option<Vec<Option<String>>>,
) -> pgrx::composite_type!('static, "api_key.keys") {
    super::change::api_key_update_0_3(
        id,
        name,
        enabled,
        expires_at,
        permissions,
        metadata,
        remaining,
        refill_amount,
        refill_interval,
        rate_limit_enabled,
        rate_limit_max,
        rate_limit_window,
        clear,
        None,
    )
}

/// 0.2.0's `api_key_config_create` (no `refill_anchor`).
#[allow(clippy::too_many_arguments)]
#[pg_extern(volatile, parallel_unsafe, sql = false)]
fn api_key_config_create(
    id: Option<&str>,
    prefix: Option<&str>,
    body_length: Option<i32>,
    hash_algorithm: Option<&str>,
    default_expires_in: Option<pgrx::datum::Interval>,
    min_expires_in: Option<pgrx::datum::Interval>,
    max_expires_in: Option<pgrx::datum::Interval>,
    name_required: Option<bool>,
    name_min_length: Option<i32>,
    name_max_length: Option<i32>,
    prefix_min_length: Option<i32>,
    prefix_max_length: Option<i32>,
    metadata_enabled: Option<bool>,
    default_permissions: Option<Jsonb>,
    rate_limit_enabled: Option<bool>,
    rate_limit_max: Option<i32>,
    rate_limit_window: Option<pgrx::datum::Interval>,
    default_remaining: Option<i64>,
    refill_amount: Option<i64>,
    refill_interval: Option<pgrx::datum::Interval>,
    actor_may_raise: Option<Vec<Option<String>>>,
    actor_may_create: Option<bool>,
) -> pgrx::composite_type!('static, "api_key.configs") {
    super::configs::api_key_config_create_0_3(
        id,
        prefix,
        body_length,
        hash_algorithm,
        default_expires_in,
        min_expires_in,
        max_expires_in,
        name_required,
        name_min_length,
        name_max_length,
        prefix_min_length,
        prefix_max_length,
        metadata_enabled,
        default_permissions,
        rate_limit_enabled,
        rate_limit_max,
        rate_limit_window,
        default_remaining,
        refill_amount,
        refill_interval,
        actor_may_raise,
        actor_may_create,
        None,
    )
}

/// 0.2.0's `api_key_verify` (no `tags`).
#[pg_extern(volatile, parallel_unsafe, security_definer, sql = false)]
fn api_key_verify(
    key: Option<&str>,
    permissions: Option<Jsonb>,
    cost: Option<i32>,
    config_id: Option<&str>,
) -> pgrx::composite_type!('static, "api_key.verification") {
    crate::verify::api_key_verify_0_3(key, permissions, cost, config_id, None)
}

/// 0.2.0's `api_key_authenticate` (no `tags`).
#[pg_extern(volatile, parallel_unsafe, security_definer, sql = false)]
fn api_key_authenticate(
    key: Option<&str>,
    permissions: Option<Jsonb>,
    cost: Option<i32>,
    config_id: Option<&str>,
) -> pgrx::composite_type!('static, "api_key.verification") {
    crate::verify::api_key_authenticate_0_3(key, permissions, cost, config_id, None)
}
