//! Credit operations for the service: add, subtract, set. Each is one atomic change of a key's
//! `remaining` (the row is locked, the new balance computed with checked arithmetic, written,
//! and audited with the balance before and after), so concurrent verifications and other
//! operations never lose an update: `api_key_update(remaining => …)` sets a balance read
//! earlier, these change the balance as it is.

use super::audit::{self, Entry};
use super::key_row::KeyRow;
use crate::access::Principal;
use crate::error::{shorten, Error, OrRaise};
use crate::pg::clock::{self, timestamptz_arg};
use crate::pg::privileged::as_extension_owner;
use crate::pg::spi;
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use pgrx::Uuid;

// A balance changed by a number is not a change of the key's settings: `updated_at`, which a
// verification waiting on the key checks (`verify/usage.rs`), stays, and that verification's
// guarded spend simply sees the new balance. A balance set outright, or unlimited credits
// given or taken away ($4), is a new version: a refund of a spend made before it (the credit
// writer's, `verify/credit_queue.rs`) must not undo it.
const STORE: &str = "
    UPDATE api_key.keys AS k
       SET remaining = $2, updated_at = CASE WHEN $4 THEN $3 ELSE k.updated_at END
     WHERE k.id OPERATOR(pg_catalog.=) $1";

/// Longest `reason`, in characters.
const MAX_REASON_CHARS: usize = 1000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Operation {
    Add,
    Subtract,
    Set,
}

impl Operation {
    fn function(self) -> &'static str {
        match self {
            Operation::Add => "api_key_credits_add",
            Operation::Subtract => "api_key_credits_subtract",
            Operation::Set => "api_key_credits_set",
        }
    }

    fn audit_action(self) -> &'static str {
        match self {
            Operation::Add => "credits_add",
            Operation::Subtract => "credits_subtract",
            Operation::Set => "credits_set",
        }
    }
}

/// The balance after `op` with `amount` on a key that has `before` (None: unlimited) and a
/// refill or not; the problem (SQLSTATE, message, hint) when it cannot be applied.
fn balance_after(
    op: Operation,
    before: Option<i64>,
    amount: Option<i64>,
    has_refill: bool,
) -> Result<Option<i64>, Error> {
    match op {
        Operation::Set => match amount {
            Some(n) if n < 0 => Err(Error::invalid("remaining must not be negative")),
            None if has_refill => Err(Error::invalid(
                "remaining cannot be made unlimited while the key has a refill",
            )
            .hint("Clear the refill first: api_key_update(id, clear => '{remaining,refill}').")),
            n => Ok(n),
        },
        Operation::Add | Operation::Subtract => {
            let amount = amount.ok_or_else(|| Error::null("amount"))?;
            if amount <= 0 {
                return Err(Error::invalid("amount must be positive"));
            }
            let Some(before) = before else {
                return Err(Error::invalid("the key's credits are unlimited")
                    .hint("Give it a balance first: api_key_credits_set(id, <credits>)."));
            };
            if op == Operation::Add {
                before.checked_add(amount).map(Some).ok_or_else(|| {
                    Error::new(
                        PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
                        format!("remaining would exceed {}", i64::MAX),
                    )
                })
            } else if amount > before {
                Err(Error::invalid(format!(
                    "amount {amount} is more than the {before} credits left"
                ))
                .hint(
                    "Subtract at most what is left, or set the balance with api_key_credits_set.",
                ))
            } else {
                Ok(Some(before - amount))
            }
        }
    }
}

fn check_reason(reason: Option<&str>) -> Result<(), Error> {
    if reason.is_some_and(|r| r.chars().count() > MAX_REASON_CHARS) {
        return Err(Error::invalid(format!(
            "reason must be at most {MAX_REASON_CHARS} characters long"
        )));
    }
    Ok(())
}

fn operate(
    op: Operation,
    id: Option<Uuid>,
    amount: Option<i64>,
    reason: Option<&str>,
) -> Option<i64> {
    let principal = Principal::of_caller().or_raise();
    as_extension_owner(|| {
        principal.require_service(op.function())?;
        let id = id.ok_or_else(|| Error::null("id"))?;
        check_reason(reason)?;
        let key = KeyRow::load(id, true)?.ok_or_else(|| Error::no_such_key(&id))?;
        let after = balance_after(op, key.remaining, amount, key.refill_amount.is_some())?;
        let now = clock::now();
        Spi::connect_mut(|client| {
            use crate::pg::oids::*;
            let store = spi::statement(
                client,
                STORE,
                &[UUIDOID, INT8OID, TIMESTAMPTZOID, BOOLOID],
                true,
            )?;
            let new_version = op == Operation::Set || after.is_none() != key.remaining.is_none();
            client
                .update(
                    &*store,
                    None,
                    &[
                        id.into(),
                        after.into(),
                        timestamptz_arg(Some(now)),
                        new_version.into(),
                    ],
                )
                .map_err(spi::failed)?;
            Ok::<_, Error>(())
        })?;
        let detail = serde_json::json!({
            "amount": amount,
            "remaining_before": key.remaining,
            "remaining": after,
            "reason": reason.map(|r| shorten(r, MAX_REASON_CHARS)),
        });
        audit::write(
            &principal,
            Entry {
                at: now,
                action: op.audit_action(),
                key_id: Some(id),
                reference: Some(&key.reference),
                detail: Some(detail.to_string()),
            },
        )?;
        Ok(after)
    })
    .or_raise()
}

/// Add `amount` (> 0) credits to key `id`, atomically; returns the balance after. Service only
/// (42501 otherwise). 22023 when the key's credits are unlimited or `amount` is not positive,
/// 22003 when the balance would exceed the largest bigint, P0002 for an unknown key. Audited as
/// `credits_add` with the balance before and after, and `reason`.
#[pg_extern(volatile, parallel_unsafe)]
fn api_key_credits_add(
    id: Option<Uuid>,
    amount: Option<i64>,
    reason: default!(Option<&str>, "NULL"),
) -> Option<i64> {
    operate(Operation::Add, id, amount, reason)
}

/// Subtract `amount` (> 0) credits from key `id`, atomically, never below zero; returns the
/// balance after. Service only. 22023 when fewer than `amount` are left (nothing is taken), when
/// the key's credits are unlimited, or `amount` is not positive; P0002 for an unknown key.
/// Audited as `credits_subtract`.
#[pg_extern(volatile, parallel_unsafe)]
fn api_key_credits_subtract(
    id: Option<Uuid>,
    amount: Option<i64>,
    reason: default!(Option<&str>, "NULL"),
) -> Option<i64> {
    operate(Operation::Subtract, id, amount, reason)
}

/// Set key `id`'s balance to `remaining` (>= 0; NULL: unlimited, refused while the key has a
/// refill); returns it. Service only. Audited as `credits_set` with the balance before.
#[pg_extern(volatile, parallel_unsafe)]
fn api_key_credits_set(
    id: Option<Uuid>,
    remaining: Option<i64>,
    reason: default!(Option<&str>, "NULL"),
) -> Option<i64> {
    operate(Operation::Set, id, remaining, reason)
}

/// When the key `k` (a row of `api_key.keys`, as `api_key_get` or a query under row-level
/// security returns it) next refills its credits: `refill_interval` after the last refill (or
/// creation), or on its calendar schedule (`refill_anchor`) the first point after it. NULL when
/// the key has no refill. A refill happens at the first verification at or after that time.
/// Reads nothing but the row it is given.
#[pg_extern(stable, parallel_safe)]
fn api_key_next_refill_at(
    k: Option<pgrx::composite_type!("api_key.keys")>,
) -> Option<TimestampWithTimeZone> {
    let k = k?;
    let micros = |name: &str| -> Option<i64> {
        k.get_by_name::<TimestampWithTimeZone>(name)
            .ok()
            .flatten()
            .map(crate::pg::clock::micros_of)
    };
    let interval = k
        .get_by_name::<pgrx::datum::Interval>("refill_interval")
        .ok()
        .flatten()
        .map(crate::pg::clock::interval_from)?;
    let since = micros("last_refill_at").or_else(|| micros("created_at"))?;
    crate::rules::next_refill(interval, micros("refill_anchor"), since)
        .and_then(|at| TimestampWithTimeZone::try_from(at).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balances_change_exactly_or_not_at_all() {
        let after = |op, before, amount, refill| balance_after(op, before, amount, refill).ok();
        assert_eq!(
            after(Operation::Add, Some(5), Some(3), false),
            Some(Some(8))
        );
        assert_eq!(
            after(Operation::Add, Some(i64::MAX - 1), Some(2), false),
            None
        );
        assert_eq!(after(Operation::Add, None, Some(3), false), None);
        assert_eq!(after(Operation::Add, Some(5), Some(0), false), None);
        assert_eq!(
            after(Operation::Subtract, Some(5), Some(5), false),
            Some(Some(0))
        );
        assert_eq!(after(Operation::Subtract, Some(5), Some(6), false), None);
        assert_eq!(after(Operation::Subtract, Some(5), Some(-1), false), None);
        assert_eq!(after(Operation::Set, Some(5), Some(0), true), Some(Some(0)));
        assert_eq!(after(Operation::Set, Some(5), None, false), Some(None));
        assert_eq!(after(Operation::Set, Some(5), None, true), None);
        assert_eq!(after(Operation::Set, None, Some(-1), false), None);
    }
}
