//! The usage checks of a verification that write: the rate-limit window (in shared memory
//! when preloaded, else an UNLOGGED row) and credits (a guarded, durable UPDATE). Called by
//! `verify` only for keys that have them; keys without limits never get here.
//!
//! `api_key_verify` is SECURITY DEFINER and runs these statements with the caller's search
//! path in effect: every type, function and operator in them is schema-qualified, so nothing
//! resolves through a schema the caller controls. Times are computed here, in Rust, with
//! calendar arithmetic (`calendar.rs`), and reach SQL as values.

use super::admissions;
use super::credit_queue;
use super::lookup;
use super::rate_limit_shmem::{self, Decision, Opening};
use crate::calendar::{self, Interval};
use crate::error::{Error, OrRaise};
use crate::pg::clock::timestamptz_arg;
use crate::pg::spi;
use crate::rate_limit::{self, Taken, Window};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::Uuid;

// The table storage of rate-limit windows, used without preloading (and, with it, for keys
// that found no slot in shared memory). The row is locked, the window computed in Rust by
// `rate_limit.rs` (the arithmetic shared memory uses too), and written back: concurrent
// callers queue on the row lock, so exactly `max` get in. A key's first window inserts a
// closed placeholder row first, so that there is always a row to lock.
const WINDOW_ROW: &str = "
    SELECT w.window_end, w.admitted FROM api_key.rate_limit_windows AS w
     WHERE w.key_id OPERATOR(pg_catalog.=) $1 FOR NO KEY UPDATE";

const WINDOW_PLACEHOLDER: &str = "
    INSERT INTO api_key.rate_limit_windows (key_id, window_end, admitted)
    VALUES ($1, '-infinity'::pg_catalog.timestamptz, 0) ON CONFLICT (key_id) DO NOTHING";

// The key's version now (a new snapshot in READ COMMITTED), after waiting for its window.
const KEY_VERSION: &str =
    "SELECT k.updated_at FROM api_key.keys AS k WHERE k.id OPERATOR(pg_catalog.=) $1";

const WINDOW_DELETE: &str =
    "DELETE FROM api_key.rate_limit_windows AS w WHERE w.key_id OPERATOR(pg_catalog.=) $1";

// Counts an admission only if the key is still the version `verify` checked ($4): this
// statement runs after the window's lock was granted, so in READ COMMITTED its snapshot sees
// what a transaction this verification waited for committed.
const WINDOW_COUNT: &str = "
    UPDATE api_key.rate_limit_windows AS w SET window_end = $2, admitted = $3
     WHERE w.key_id OPERATOR(pg_catalog.=) $1
       AND EXISTS (SELECT FROM api_key.keys AS k
                    WHERE k.id OPERATOR(pg_catalog.=) $1 AND k.updated_at OPERATOR(pg_catalog.=) $4)
    RETURNING true";

const WINDOW_STORE: &str = "
    UPDATE api_key.rate_limit_windows AS w SET window_end = $2, admitted = $3
     WHERE w.key_id OPERATOR(pg_catalog.=) $1";

// Credits: refill (top up to refill_amount) when `verify` found a refill due ($3), then spend.
// A refill happens only if the key still has the refill time `verify` read ($4): of two
// concurrent verifications at the boundary, the second sees the first's refill (READ
// COMMITTED re-checks the newest row version) and does not refill again. The WHERE is
// re-checked the same way, so remaining never goes below zero; and it spends only if the key
// is still the version `verify` checked ($6, updated_at, which every management change moves):
// a verification that waited for another transaction's lock on the key must not spend on a
// key that transaction disabled, revoked or narrowed.
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
       AND k.updated_at OPERATOR(pg_catalog.=) $6
    RETURNING k.remaining";

// After a spend that updated nothing: the key as it is now (a new snapshot in READ COMMITTED),
// with the time of its last refill (another verification may have made one meanwhile).
const CREDITS_LEFT: &str = "
    SELECT k.remaining, k.updated_at, COALESCE(k.last_refill_at, k.created_at)
      FROM api_key.keys AS k WHERE k.id OPERATOR(pg_catalog.=) $1";

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

/// What a spend did.
pub enum Spend {
    /// Spent; the credits left.
    Spent(Option<i64>),
    /// Too few credits: nothing spent; the credits left, and when the key was last refilled
    /// (or created).
    TooFew { left: Option<i64>, refilled: i64 },
    /// The key changed (or went) since `verify` read it: nothing spent; verify it again.
    KeyChanged,
}

/// Spend `cost` credits of the key as `verify` read it (`updated_at`), refilling first when
/// `refill_due` (the refill time `verify` read).
pub fn spend(key_id: Uuid, cost: i32, refill_due: Option<i64>, now: i64, updated_at: i64) -> Spend {
    use super::credit_queue::Outcome;
    use crate::pg::oids::*;
    if let Some(answer) = credit_queue::spend(key_id, cost as i64, refill_due, now, updated_at) {
        match answer.outcome {
            Outcome::Spent => return Spend::Spent(answer.left),
            Outcome::TooFew => {
                return Spend::TooFew {
                    left: answer.left,
                    refilled: answer.refilled,
                }
            }
            Outcome::KeyChanged => return Spend::KeyChanged,
            Outcome::Unknown => Error::new(
                PgSqlErrorCode::ERRCODE_TRANSACTION_RESOLUTION_UNKNOWN,
                "api_key: the credit writer stopped while spending; the credits may have been spent",
            )
            .hint("Retry the request; check the key's remaining credits if it matters.")
            .raise(),
            Outcome::Retry => {}
        }
    }
    // In the verifying transaction: it holds the key's row until it ends.
    require_read_write();
    Spi::connect_mut(|client| {
        let args = [
            key_id.into(),
            (cost as i64).into(),
            refill_due.is_some().into(),
            timestamptz_arg(refill_due),
            timestamptz_arg(Some(now)),
            timestamptz_arg(Some(updated_at)),
        ];
        let types = [
            UUIDOID,
            INT8OID,
            BOOLOID,
            TIMESTAMPTZOID,
            TIMESTAMPTZOID,
            TIMESTAMPTZOID,
        ];
        if let Some(left) = first::<i64>(client, SPEND, &types, &args) {
            return Spend::Spent(left);
        }
        let statement = spi::statement(client, CREDITS_LEFT, &[UUIDOID], true).or_raise();
        let rows = client
            .update(&*statement, Some(1), &[key_id.into()])
            .unwrap_or_else(|e| spi::failed(e).raise());
        if rows.is_empty() {
            return Spend::KeyChanged;
        }
        let row = rows.first();
        let left = row.get::<i64>(1).ok().flatten();
        let now_updated = row
            .get::<pgrx::datum::TimestampWithTimeZone>(2)
            .ok()
            .flatten()
            .map(crate::pg::clock::micros_of);
        let refilled = row
            .get::<pgrx::datum::TimestampWithTimeZone>(3)
            .ok()
            .flatten()
            .map_or(0, crate::pg::clock::micros_of);
        if now_updated != Some(updated_at) {
            Spend::KeyChanged
        } else {
            Spend::TooFew { left, refilled }
        }
    })
}

/// Where an admitted verification was counted, so that it can be given back there.
#[derive(Clone, Copy)]
pub enum Counter {
    SharedMemory {
        taken: Taken,
    },
    /// The window as this transaction stored it (it holds the row's lock).
    Table {
        stored: Window,
        taken: Taken,
    },
}

impl Counter {
    /// The end of the window the admission was counted in.
    pub fn window_end(&self) -> i64 {
        match self {
            Counter::SharedMemory { taken } | Counter::Table { taken, .. } => taken.window_end,
        }
    }
}

pub enum Admission {
    Admitted {
        admitted: i32,
        counter: Counter,
    },
    /// `window_end`: when the full window closes (None when it could not be counted at all).
    Refused {
        retry_after_ms: i64,
        window_end: Option<i64>,
    },
    /// The key changed (or went) while this verification waited for its window: nothing was
    /// counted; verify it again.
    KeyChanged,
}

impl Admission {
    fn of_shared_memory(decision: Decision, key: &[u8; 16], now: i64) -> Option<Admission> {
        match decision {
            Decision::Admitted { admitted, taken } => {
                admissions::taken(key, taken);
                Some(Admission::Admitted {
                    admitted,
                    counter: Counter::SharedMemory { taken },
                })
            }
            Decision::Refused { window_end } => Some(Admission::Refused {
                retry_after_ms: rate_limit::retry_after_ms(window_end, now),
                window_end: Some(window_end),
            }),
            Decision::Closed | Decision::NoRoom => None,
        }
    }
}

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
        // The server log, not the client: the operator can act on it, the caller cannot.
        pgrx::log!(
            "api_key: rate-limit windows do not fit in shared memory, and this transaction cannot count them in the table; raise api_key.rate_limit_slots"
        );
    }
    Admission::Refused {
        retry_after_ms: UNCOUNTABLE_RETRY_MS,
        window_end: None,
    }
}

/// A lock per key (in this database) that serialises deciding where a window opens once its
/// shared-memory partition has overflowed. An advisory lock with a field PostgreSQL's SQL
/// functions never use (`objsubid` 0x6b65 in `pg_locks`), so it cannot meet an application's.
struct WindowLock(pg_sys::LOCKTAG);

impl WindowLock {
    /// Waits for the transactions that decided this key's window before: a transaction that
    /// counted it in the table keeps the lock until it ends.
    fn acquire(key_id: Uuid) -> WindowLock {
        let id = key_id.as_bytes();
        let tag = pg_sys::LOCKTAG {
            // SAFETY: reads a backend-global set at connection.
            locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
            locktag_field2: u32::from_le_bytes([id[0], id[1], id[2], id[3]]),
            locktag_field3: u32::from_le_bytes([id[4], id[5], id[6], id[7]])
                ^ u32::from_le_bytes([id[8], id[9], id[10], id[11]])
                ^ u32::from_le_bytes([id[12], id[13], id[14], id[15]]),
            locktag_field4: 0x6b65,
            locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
            locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
        };
        // SAFETY: a transaction-level lock of the user lock method, released at transaction
        // end (or by `release`); waiting is interruptible and deadlock-checked.
        unsafe {
            pg_sys::LockAcquire(&tag, pg_sys::ExclusiveLock as i32, false, false);
        }
        WindowLock(tag)
    }

    /// Released early when the window was counted in shared memory: nobody need wait for the
    /// rest of this transaction.
    fn release(self) {
        // SAFETY: releases the transaction-level lock `acquire` took.
        unsafe {
            pg_sys::LockRelease(&self.0, pg_sys::ExclusiveLock as i32, false);
        }
    }
}

/// Count one verification against the key's window: in shared memory when the library was
/// preloaded (no WAL, no xid), else in the UNLOGGED table (no WAL for the row; the
/// transaction's commit record remains). A window opened now ends `window` later, as the
/// calendar counts (`calendar::add_period`); one that would end beyond PostgreSQL's range never
/// ends.
///
/// With preloading, a key whose partition has overflowed (some key found no slot there) opens
/// its next window under `WindowLock`: it looks for a window open in the table first (and is
/// counted there if there is one), else opens one in shared memory, else (no slot) counts in
/// the table and keeps the lock until the transaction ends. So a window is never open in both
/// places, and a full partition is slower, never wrong.
pub fn admit(key_id: Uuid, max: i32, window: Interval, now: i64, updated_at: i64) -> Admission {
    let opens_until = calendar::add_period(now, window).unwrap_or(calendar::INFINITY);
    if rate_limit_shmem::available() {
        let key = key_id.as_bytes();
        let fast = rate_limit_shmem::admit(key, max, opens_until, now, Opening::UnlessOverflowed);
        if let Some(admission) = Admission::of_shared_memory(fast, key, now) {
            return admission;
        }
        let lock = WindowLock::acquire(key_id);
        // Waiting for the lock may have outlasted a change of the key.
        if Spi::connect_mut(|client| key_changed(client, key_id, updated_at)) {
            lock.release();
            return Admission::KeyChanged;
        }
        if lookup::window_end_in_table(key_id).is_none_or(|end| end <= now) {
            let checked = rate_limit_shmem::admit(key, max, opens_until, now, Opening::Checked);
            if let Some(admission) = Admission::of_shared_memory(checked, key, now) {
                lock.release();
                return admission;
            }
        }
        if !can_write() {
            lock.release();
            return uncountable();
        }
        let admission = admit_in_table(key_id, max, opens_until, now, updated_at);
        // Only a transaction that counted the key in the table must keep others waiting.
        if let Admission::Refused { .. } = admission {
            lock.release();
        }
        return admission;
    }
    require_read_write();
    admit_in_table(key_id, max, opens_until, now, updated_at)
}

/// Has the key changed (or gone) since `verify` read it at `updated_at`? A key that is gone
/// leaves no window behind: this transaction holds the window's lock, so it deletes it.
fn key_changed(client: &mut SpiClient<'_>, key_id: Uuid, updated_at: i64) -> bool {
    use crate::pg::oids::*;
    let now = first::<pgrx::datum::TimestampWithTimeZone>(
        client,
        KEY_VERSION,
        &[UUIDOID],
        &[key_id.into()],
    );
    match now {
        None => {
            let delete = spi::statement(client, WINDOW_DELETE, &[UUIDOID], true).or_raise();
            client
                .update(&*delete, None, &[key_id.into()])
                .unwrap_or_else(|e| spi::failed(e).raise());
            true
        }
        Some(at) => at.map(crate::pg::clock::micros_of) != Some(updated_at),
    }
}

/// The window stored in the table for `key_id`, its row locked (created closed if missing).
fn locked_window(client: &mut SpiClient<'_>, key_id: Uuid) -> Window {
    use crate::pg::oids::*;
    let select = spi::statement(client, WINDOW_ROW, &[UUIDOID], true).or_raise();
    for _ in 0..2 {
        let rows = client
            .update(&*select, Some(1), &[key_id.into()])
            .unwrap_or_else(|e| spi::failed(e).raise());
        if !rows.is_empty() {
            let row = rows.first();
            let end = row
                .get::<pgrx::datum::TimestampWithTimeZone>(1)
                .ok()
                .flatten()
                .map_or(calendar::NEGATIVE_INFINITY, crate::pg::clock::micros_of);
            let admitted = row.get::<i32>(2).ok().flatten().unwrap_or(0);
            return Window { end, admitted };
        }
        // Waits for a concurrent insert of the same key; in a repeatable-read transaction that
        // cannot see it, PostgreSQL raises 40001 (retry), as for any write conflict.
        let insert = spi::statement(client, WINDOW_PLACEHOLDER, &[UUIDOID], true).or_raise();
        client
            .update(&*insert, None, &[key_id.into()])
            .unwrap_or_else(|e| spi::failed(e).raise());
    }
    Error::new(
        PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
        "api_key: the rate-limit window of a key changed while it was being counted",
    )
    .hint("Retry the transaction.")
    .raise()
}

fn store_window(client: &mut SpiClient<'_>, key_id: Uuid, w: Window) {
    use crate::pg::oids::*;
    let store = spi::statement(
        client,
        WINDOW_STORE,
        &[UUIDOID, TIMESTAMPTZOID, INT4OID],
        true,
    )
    .or_raise();
    client
        .update(
            &*store,
            None,
            &[
                key_id.into(),
                timestamptz_arg(Some(w.end)),
                w.admitted.into(),
            ],
        )
        .unwrap_or_else(|e| spi::failed(e).raise());
}

fn admit_in_table(
    key_id: Uuid,
    max: i32,
    opens_until: i64,
    now: i64,
    updated_at: i64,
) -> Admission {
    use crate::pg::oids::*;
    Spi::connect_mut(|client| {
        let stored = locked_window(client, key_id);
        // Waiting for the window's lock may have outlasted a change of the key: an admission
        // is counted only on the version checked (WINDOW_COUNT), a refusal looks again.
        match rate_limit::admit(Some(stored), max, opens_until, now) {
            rate_limit::Decision::Admitted { window, taken } => {
                let args = [
                    key_id.into(),
                    timestamptz_arg(Some(window.end)),
                    window.admitted.into(),
                    timestamptz_arg(Some(updated_at)),
                ];
                let types = [UUIDOID, TIMESTAMPTZOID, INT4OID, TIMESTAMPTZOID];
                if first::<bool>(client, WINDOW_COUNT, &types, &args).is_none() {
                    key_changed(client, key_id, updated_at);
                    return Admission::KeyChanged;
                }
                Admission::Admitted {
                    admitted: window.admitted,
                    counter: Counter::Table {
                        stored: window,
                        taken,
                    },
                }
            }
            rate_limit::Decision::Refused { window_end } => {
                if key_changed(client, key_id, updated_at) {
                    return Admission::KeyChanged;
                }
                Admission::Refused {
                    retry_after_ms: rate_limit::retry_after_ms(window_end, now),
                    window_end: Some(window_end),
                }
            }
        }
    })
}

/// Give back an admission, where it was counted, when a later check (credits) refuses the
/// verification.
pub fn undo_admission(key_id: Uuid, counter: Counter) {
    match counter {
        Counter::SharedMemory { taken } => admissions::give_back_now(key_id.as_bytes(), taken),
        Counter::Table { stored, taken } => Spi::connect_mut(|client| {
            store_window(client, key_id, rate_limit::give_back(stored, taken))
        }),
    }
}
