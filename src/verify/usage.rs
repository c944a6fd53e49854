//! The usage checks of a verification that write: the rate-limit window (in shared memory
//! when preloaded, else an UNLOGGED row) and credits (a guarded, durable UPDATE). Called by
//! `verify` only for keys that have them; keys without limits never get here.
//!
//! `api_key_verify` is SECURITY DEFINER and runs these statements with the caller's search
//! path in effect: every type, function and operator in them is schema-qualified, so nothing
//! resolves through a schema the caller controls. Times are computed here, in Rust, with
//! calendar arithmetic (`calendar.rs`), and reach SQL as values.

use super::rate_limit_shmem::{self, Decision};
use crate::calendar::{self, Interval};
use crate::error::{Error, OrRaise};
use crate::pg::clock::timestamptz_arg;
use crate::pg::spi;
use crate::rate_limit;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::Uuid;

// Opens a window, or counts one more in the open window, only if that admits the call: the
// row lock taken by ON CONFLICT makes concurrent callers queue, so exactly `max` get in.
// $1 key, $2 max, $3 end of a window opened now, $4 now.
const RATE_ADMIT: &str = "
    INSERT INTO api_key.rate_limit_windows AS w (key_id, window_end, admitted)
    VALUES ($1, $3, 1)
    ON CONFLICT (key_id) DO UPDATE
       SET window_end = CASE WHEN w.window_end OPERATOR(pg_catalog.<=) $4 THEN $3 ELSE w.window_end END,
           admitted   = CASE WHEN w.window_end OPERATOR(pg_catalog.<=) $4 THEN 1
                             ELSE w.admitted OPERATOR(pg_catalog.+) 1 END
     WHERE w.window_end OPERATOR(pg_catalog.<=) $4 OR w.admitted OPERATOR(pg_catalog.<) $2
    RETURNING w.admitted";

const RATE_PEEK: &str = "
    SELECT w.window_end FROM api_key.rate_limit_windows AS w WHERE w.key_id OPERATOR(pg_catalog.=) $1";

const RATE_UNDO: &str = "
    UPDATE api_key.rate_limit_windows AS w SET admitted = w.admitted OPERATOR(pg_catalog.-) 1
     WHERE w.key_id OPERATOR(pg_catalog.=) $1 AND w.admitted OPERATOR(pg_catalog.>) 0";

// Credits: refill (top up to refill_amount) when `verify` found a refill due ($3), then spend.
// A refill happens only if the key still has the refill time `verify` read ($4): of two
// concurrent verifications at the boundary, the second sees the first's refill (READ
// COMMITTED re-checks the newest row version) and does not refill again. The WHERE is
// re-checked the same way, so remaining never goes below zero.
const SPEND: &str = "
    UPDATE api_key.keys AS k SET
           remaining = (CASE WHEN $3 AND COALESCE(k.last_refill_at, k.created_at) OPERATOR(pg_catalog.=) $4
                             THEN GREATEST(k.remaining, k.refill_amount) ELSE k.remaining END)
                       OPERATOR(pg_catalog.-) $2,
           last_refill_at = CASE WHEN $3 AND COALESCE(k.last_refill_at, k.created_at) OPERATOR(pg_catalog.=) $4
                                 THEN $5 ELSE k.last_refill_at END
     WHERE k.id OPERATOR(pg_catalog.=) $1 AND k.remaining IS NOT NULL
       AND (CASE WHEN $3 AND COALESCE(k.last_refill_at, k.created_at) OPERATOR(pg_catalog.=) $4
                 THEN GREATEST(k.remaining, k.refill_amount) ELSE k.remaining END)
           OPERATOR(pg_catalog.>=) GREATEST($2, 1::pg_catalog.int8)
    RETURNING k.remaining";

const CREDITS_LEFT: &str =
    "SELECT k.remaining FROM api_key.keys AS k WHERE k.id OPERATOR(pg_catalog.=) $1";

/// The first column of the first row a statement returns; None when it returns no row.
fn first<T: pgrx::FromDatum + pgrx::IntoDatum>(
    client: &mut SpiClient<'_>,
    sql: &str,
    types: &[pg_sys::Oid],
    args: &[pgrx::datum::DatumWithOid<'_>],
) -> Option<Option<T>> {
    let statement = spi::statement(client, sql, types, true).or_raise();
    let table = client
        .update(&*statement, None, args)
        .unwrap_or_else(|e| spi::failed(e).raise());
    if table.is_empty() {
        return None;
    }
    Some(table.first().get::<T>(1).ok().flatten())
}

/// May this transaction write (not READ ONLY, not on a standby)?
pub fn can_write() -> bool {
    // SAFETY: reads backend-global flags.
    unsafe { !(pg_sys::XactReadOnly || pg_sys::RecoveryInProgress()) }
}

/// Credits (and rate-limit windows kept in the table) are written by the verification itself.
pub fn require_read_write() {
    if !can_write() {
        Error::new(
            PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            "verifying a key with credits or a rate limit needs a read-write transaction",
        )
        .hint("Verify on the primary, outside READ ONLY transactions; keys without usage limits verify anywhere.")
        .raise();
    }
}

/// Spend `cost` credits, refilling first when `refill_due` (the refill time `verify` read):
/// `Ok(left)` when admitted, `Err(left)` when there were too few.
pub fn spend(
    key_id: Uuid,
    cost: i32,
    refill_due: Option<i64>,
    now: i64,
) -> Result<Option<i64>, Option<i64>> {
    use crate::pg::oids::*;
    Spi::connect_mut(|client| {
        let args = [
            key_id.into(),
            (cost as i64).into(),
            refill_due.is_some().into(),
            timestamptz_arg(refill_due),
            timestamptz_arg(Some(now)),
        ];
        let types = [UUIDOID, INT8OID, BOOLOID, TIMESTAMPTZOID, TIMESTAMPTZOID];
        match first::<i64>(client, SPEND, &types, &args) {
            Some(left) => Ok(left),
            None => Err(first::<i64>(client, CREDITS_LEFT, &[UUIDOID], &[key_id.into()]).flatten()),
        }
    })
}

/// Where an admitted verification was counted, so that it can be given back there.
#[derive(Clone, Copy)]
pub enum Counter {
    SharedMemory { window_end: i64 },
    Table,
}

pub enum Admission {
    Admitted { admitted: i32, counter: Counter },
    Refused { retry_after_ms: i64 },
}

const RATE_OPEN_IN_TABLE: &str = "
    SELECT true FROM api_key.rate_limit_windows AS w
     WHERE w.key_id OPERATOR(pg_catalog.=) $1 AND w.window_end OPERATOR(pg_catalog.>) $2";

/// Retry after this long when a window could not be counted at all.
const UNCOUNTABLE_RETRY_MS: i64 = 1000;

thread_local! {
    static WARNED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A window whose key found no slot in shared memory, in a transaction that cannot write the
/// table: it cannot be counted, so it is refused (a limit that cannot be enforced is not
/// waived), and the operator is told once per backend that the slots are too few.
fn uncountable() -> Admission {
    if !WARNED.with(|w| w.replace(true)) {
        pgrx::warning!(
            "api_key: rate-limit windows do not fit in shared memory, and this transaction cannot count them in the table; raise api_key.rate_limit_slots"
        );
    }
    Admission::Refused {
        retry_after_ms: UNCOUNTABLE_RETRY_MS,
    }
}

/// Count one verification against the key's window: in shared memory when the library was
/// preloaded (no WAL, no xid), else in the UNLOGGED table (no WAL for the row; the
/// transaction's commit record remains). A window opened now ends `window` later, as the
/// calendar counts (`calendar::add_period`); one that would end beyond PostgreSQL's range never
/// ends.
///
/// A key that found no free slot is counted in the table, and keeps being counted there until
/// its window ends: once that has happened in this server's life, a window that would open in
/// shared memory first checks the table, so that no window is counted in both places.
pub fn admit(key_id: Uuid, max: i32, window: Interval, now: i64) -> Admission {
    use crate::pg::oids::*;
    let window_end = calendar::add_period(now, window).unwrap_or(calendar::INFINITY);
    let writable = can_write();
    if rate_limit_shmem::available() {
        let key = key_id.as_bytes();
        let in_table = rate_limit_shmem::overflowed()
            && !rate_limit_shmem::has_open_window(key, now)
            && Spi::connect(|client| {
                let statement = spi::statement(
                    client,
                    RATE_OPEN_IN_TABLE,
                    &[UUIDOID, TIMESTAMPTZOID],
                    false,
                )
                .or_raise();
                client
                    .select(
                        &*statement,
                        Some(1),
                        &[key_id.into(), timestamptz_arg(Some(now))],
                    )
                    .map(|rows| !rows.is_empty())
                    .unwrap_or_else(|e| spi::failed(e).raise())
            });
        if !in_table {
            match rate_limit_shmem::admit(key, max, window_end, now) {
                Decision::Admitted {
                    admitted,
                    window_end,
                } => {
                    return Admission::Admitted {
                        admitted,
                        counter: Counter::SharedMemory { window_end },
                    }
                }
                Decision::Refused { window_end } => {
                    return Admission::Refused {
                        retry_after_ms: rate_limit::retry_after_ms(window_end, now),
                    }
                }
                Decision::NoRoom => rate_limit_shmem::mark_overflowed(),
            }
        }
        if !writable {
            return uncountable();
        }
    }
    require_read_write();
    Spi::connect_mut(|client| {
        let args = [
            key_id.into(),
            max.into(),
            timestamptz_arg(Some(window_end)),
            timestamptz_arg(Some(now)),
        ];
        let types = [UUIDOID, INT4OID, TIMESTAMPTZOID, TIMESTAMPTZOID];
        if let Some(admitted) = first::<i32>(client, RATE_ADMIT, &types, &args) {
            let admitted = admitted.unwrap_or(max);
            return Admission::Admitted {
                admitted,
                counter: Counter::Table,
            };
        }
        let end = first::<pgrx::datum::TimestampWithTimeZone>(
            client,
            RATE_PEEK,
            &[UUIDOID],
            &[key_id.into()],
        )
        .flatten()
        .map_or(window_end, crate::pg::clock::micros_of);
        // Another backend may have opened the window with a clock reading a little later than
        // ours: never announce more than one window.
        Admission::Refused {
            retry_after_ms: rate_limit::retry_after_ms(end.min(window_end), now),
        }
    })
}

/// Give back an admission, where it was counted, when a later check (credits) refuses the
/// verification.
pub fn undo_admission(key_id: Uuid, counter: Counter, now: i64) {
    match counter {
        Counter::SharedMemory { window_end } => {
            rate_limit_shmem::undo(key_id.as_bytes(), window_end, now)
        }
        Counter::Table => Spi::connect_mut(|client| {
            first::<i32>(client, RATE_UNDO, &[pg_sys::UUIDOID], &[key_id.into()]);
        }),
    }
}
