//! Revoking, rotating and cleaning up keys.

use super::audit::{self, Entry};
use super::config;
use super::create::created_key;
use super::key_row::KeyRow;
use super::secret;
use crate::access::{self, Action, Principal};
use crate::calendar;
use crate::error::{Error, OrRaise};
use crate::pg::clock::{self, interval_from, timestamptz_arg};
use crate::pg::privileged::as_extension_owner;
use crate::pg::spi;
use crate::rules;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::Uuid;

// The key's rate-limit window goes too, unless a verification holds it: never waiting for it
// keeps the lock order one way (a verification locks the window, then the key), so a revoke
// cannot deadlock with a verification; that verification finds the key gone and deletes the
// window itself, and api_key_delete_expired removes any left over.
const REVOKE: &str = "
    WITH gone AS (DELETE FROM api_key.keys AS k WHERE k.id OPERATOR(pg_catalog.=) $1 RETURNING k.name, k.start),
         window_rows AS (SELECT l.ctid FROM api_key.rate_limit_windows AS l
                          WHERE l.key_id OPERATOR(pg_catalog.=) $1 FOR UPDATE SKIP LOCKED),
         windows AS (DELETE FROM api_key.rate_limit_windows AS w USING window_rows
                      WHERE w.ctid OPERATOR(pg_catalog.=) window_rows.ctid)
    SELECT pg_catalog.jsonb_build_object('name', gone.name, 'start', gone.start)::pg_catalog.text FROM gone";

/// Revoke a key: it is deleted (with its hashes) and verifies as NOT_FOUND from then on.
/// True when this call revoked it; false when there is no such key (already revoked, or never
/// one the caller may see). Needs api_key:delete on the key's reference.
#[pg_extern(volatile, parallel_unsafe)]
fn api_key_revoke(id: Option<Uuid>) -> bool {
    let principal = Principal::of_caller().or_raise();
    as_extension_owner(|| {
        let id = id.ok_or_else(|| Error::null("id"))?;
        let Some(key) = KeyRow::visible(&principal, id, Action::Delete)? else {
            return Ok(false);
        };
        let detail = Spi::connect_mut(|client| {
            let statement = spi::statement(client, REVOKE, &[pg_sys::UUIDOID], true)?;
            let rows = client
                .update(&*statement, None, &[id.into()])
                .map_err(spi::failed)?;
            Ok::<_, Error>(
                rows.into_iter()
                    .next()
                    .and_then(|r| r.get::<String>(1).ok().flatten()),
            )
        })?;
        audit::write(
            &principal,
            Entry {
                at: clock::now(),
                action: "revoke",
                key_id: Some(id),
                reference: Some(&key.reference),
                detail,
            },
        )?;
        Ok(true)
    })
    .or_raise()
}

const END_OLD_SECRETS: &str = "
    UPDATE api_key.key_secrets AS s
       SET expires_at = LEAST(COALESCE(s.expires_at, 'infinity'::pg_catalog.timestamptz), $2)
     WHERE s.key_id OPERATOR(pg_catalog.=) $1";

const NEW_START: &str = "
    UPDATE api_key.keys AS k SET start = $2, updated_at = $3 WHERE k.id OPERATOR(pg_catalog.=) $1";

/// A new plaintext for the same key (owner, permissions, limits, credits); the old one keeps
/// verifying until `grace` has passed (zero: at once). Needs api_key:update and api_key:create
/// (a rotation issues a credential), and for an actor a configuration it may create keys of.
/// The new plaintext carries the key's own permissions and limits, whatever the configuration's
/// defaults: keys only the service may re-issue belong in a configuration actors may not
/// create keys of (docs/decisions.md).
#[pg_extern(volatile, parallel_unsafe)]
fn api_key_rotate(
    id: Option<Uuid>,
    grace: default!(Option<pgrx::datum::Interval>, "'0'"),
) -> pgrx::composite_type!('static, "api_key.created_key") {
    let principal = Principal::of_caller().or_raise();
    as_extension_owner(|| {
        let id = id.ok_or_else(|| Error::null("id"))?;
        let grace = grace
            .map(interval_from)
            .ok_or_else(|| Error::null("grace").hint("Pass '0' to stop the old key at once."))?;
        rules::check_grace(grace, clock::now()).map_err(|p| {
            Error::invalid(p).hint("grace is how long the old key keeps working, e.g. '1 hour'.")
        })?;
        let key = KeyRow::for_action(&principal, Some(id), Action::Update)?;
        // A rotation hands out a new working credential with the key's permissions and limits:
        // issuing one is creating, so it needs what creating needs, not only the right to change
        // the key (an actor that may update but not create must not mint keys this way).
        access::authorize(&principal, &key.reference, Action::Create)?;
        let config = config::load(&key.config_id)?;
        config.check_creator(&principal)?;
        let now = clock::now();
        // Bounded above, so this cannot overflow; saturate anyway rather than trust it.
        let old_until = calendar::add(now, grace).unwrap_or(calendar::INFINITY);
        let new = secret::generate(&key.prefix, config.body_length, &config.hash_algorithm)?;
        Spi::connect_mut(|client| {
            use crate::pg::oids::*;
            let end = spi::statement(client, END_OLD_SECRETS, &[UUIDOID, TIMESTAMPTZOID], true)?;
            client
                .update(&*end, None, &[id.into(), timestamptz_arg(Some(old_until))])
                .map_err(spi::failed)?;
            let start =
                spi::statement(client, NEW_START, &[UUIDOID, TEXTOID, TIMESTAMPTZOID], true)?;
            client
                .update(
                    &*start,
                    None,
                    &[
                        id.into(),
                        new.start.as_str().into(),
                        timestamptz_arg(Some(now)),
                    ],
                )
                .map_err(spi::failed)?;
            Ok::<_, Error>(())
        })?;
        secret::store(id, &new, &config.hash_algorithm, now)?;
        let detail = serde_json::json!({ "grace": clock::display_interval(grace) });
        audit::write(
            &principal,
            Entry {
                at: now,
                action: "rotate",
                key_id: Some(id),
                reference: Some(&key.reference),
                detail: Some(detail.to_string()),
            },
        )?;
        created_key(
            id,
            &new.key,
            &new.start,
            &key.prefix,
            key.name.as_deref(),
            &key.reference,
            &key.config_id,
            key.expires_at,
            now,
        )
    })
    .or_raise()
}

const DELETE_EXPIRED: &str = "
    WITH keys AS (DELETE FROM api_key.keys AS k WHERE k.expires_at OPERATOR(pg_catalog.<=) $1 RETURNING k.id),
         secrets AS (DELETE FROM api_key.key_secrets AS s
                      WHERE s.expires_at OPERATOR(pg_catalog.<=) $1
                        AND s.key_id OPERATOR(pg_catalog.<>) ALL (ARRAY(SELECT id FROM keys))
                  RETURNING s.key_id),
         -- The windows of these keys and of keys already gone, unless a verification holds
         -- them (see REVOKE).
         window_rows AS (SELECT l.ctid FROM api_key.rate_limit_windows AS l
                          WHERE l.key_id OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT id FROM keys))
                             OR NOT EXISTS (SELECT FROM api_key.keys AS o WHERE o.id OPERATOR(pg_catalog.=) l.key_id)
                            FOR UPDATE OF l SKIP LOCKED),
         windows AS (DELETE FROM api_key.rate_limit_windows AS w USING window_rows
                      WHERE w.ctid OPERATOR(pg_catalog.=) window_rows.ctid)
    SELECT (SELECT pg_catalog.count(*) FROM keys), (SELECT pg_catalog.count(*) FROM secrets)";

/// Delete expired keys and rotated-away secrets past their grace. Returns how many of both
/// were deleted. Service only.
#[pg_extern(volatile, parallel_unsafe)]
fn api_key_delete_expired() -> i64 {
    let principal = Principal::of_caller().or_raise();
    as_extension_owner(|| {
        principal.require_service("api_key_delete_expired")?;
        let now = clock::now();
        let (keys, secrets) = Spi::connect_mut(|client| {
            let statement =
                spi::statement(client, DELETE_EXPIRED, &[pg_sys::TIMESTAMPTZOID], true)?;
            let row = client
                .update(&*statement, None, &[timestamptz_arg(Some(now))])
                .map_err(spi::failed)?
                .first();
            Ok::<_, Error>((
                row.get::<i64>(1).map_err(spi::failed)?.unwrap_or(0),
                row.get::<i64>(2).map_err(spi::failed)?.unwrap_or(0),
            ))
        })?;
        let detail = serde_json::json!({ "keys": keys, "rotated_secrets": secrets });
        audit::write(
            &principal,
            Entry {
                at: now,
                action: "delete_expired",
                key_id: None,
                reference: None,
                detail: Some(detail.to_string()),
            },
        )?;
        Ok(keys + secrets)
    })
    .or_raise()
}
