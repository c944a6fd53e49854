//! The usage checks of a verification that write: the rate-limit window (in shared memory
//! when preloaded, else an UNLOGGED row) and credits (a guarded, durable UPDATE). Called by
//! `verify.rs` only for keys that have them; keys without limits never get here.

use crate::errors::{raise, raise_with_hint};
use crate::rate_limit;
use crate::rate_limit_shmem::{self, Decision};
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiError};
use pgrx::Uuid;
use std::cell::RefCell;
use std::rc::Rc;

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
    SELECT (extract(epoch FROM window_start) * 1000000)::bigint
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
    raise(
        PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        format!("api_key: internal query failed: {e}"),
    )
}

/// Runs SQL of the extension with `search_path` pinned to `pg_catalog` (a SECURITY DEFINER
/// function must not resolve names through the caller's path). Cheaper than a `SET` clause
/// on the function, and only paid by verifications that write.
pub fn with_pinned_search_path<R>(f: impl FnOnce(&mut SpiClient<'_>) -> R) -> R {
    // SAFETY: the override is popped below; if `f` raises, transaction (or subtransaction)
    // abort pops it, as PostgreSQL does for its own users of the override stack.
    unsafe {
        let path = pg_sys::palloc0(std::mem::size_of::<pg_sys::OverrideSearchPath>())
            .cast::<pg_sys::OverrideSearchPath>();
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
        client
            .prepare_mut(q, &oids)
            .unwrap_or_else(|e| spi_failed(e))
            .keep()
    };
    let s = Rc::new(Statements {
        rate_admit: prep(
            RATE_ADMIT,
            &[
                uuid,
                pg_sys::INT4OID,
                pg_sys::INT8OID,
                pg_sys::TIMESTAMPTZOID,
            ],
        ),
        rate_peek: prep(RATE_PEEK, &[uuid]),
        rate_undo: prep(RATE_UNDO, &[uuid]),
        spend: prep(SPEND, &[uuid, pg_sys::INT8OID]),
        credits_left: prep(CREDITS_LEFT, &[uuid]),
    });
    STATEMENTS.with(|cell| *cell.borrow_mut() = Some(s.clone()));
    s
}

/// Credits (and rate-limit windows kept in the table) are written by the verification itself.
pub fn require_read_write() {
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
pub fn spend(key_id: Uuid, cost: i32) -> Result<Option<i64>, Option<i64>> {
    with_pinned_search_path(|client| {
        let st = statements(client);
        let spent = client
            .update(&st.spend, None, &[key_id.into(), (cost as i64).into()])
            .unwrap_or_else(|e| spi_failed(e));
        if spent.is_empty() {
            let left = client
                .update(&st.credits_left, None, &[key_id.into()])
                .unwrap_or_else(|e| spi_failed(e));
            return Err(left.first().get::<i64>(1).ok().flatten());
        }
        Ok(spent.first().get::<i64>(1).ok().flatten())
    })
}

/// Where an admitted verification was counted, so that it can be given back there.
#[derive(Clone, Copy)]
pub enum Counter {
    SharedMemory,
    Table,
}

pub enum Admission {
    Admitted { admitted: i32, counter: Counter },
    Refused { retry_after_ms: i64 },
}

/// Count one verification against the key's window: in shared memory when the library was
/// preloaded (no WAL, no xid), else in the UNLOGGED table (no WAL for the row; the
/// transaction's commit record remains).
pub fn admit(key_id: Uuid, max: i32, window: i64) -> Admission {
    // SAFETY: reads the clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    if rate_limit_shmem::available() {
        match rate_limit_shmem::admit(key_id.as_bytes(), max, window, now) {
            Decision::Admitted { admitted } => {
                return Admission::Admitted {
                    admitted,
                    counter: Counter::SharedMemory,
                }
            }
            Decision::Refused { window_end } => {
                return Admission::Refused {
                    retry_after_ms: rate_limit::retry_after_ms(0, window_end, now),
                }
            }
            Decision::NoRoom => {}
        }
    }
    let now_tz = TimestampWithTimeZone::try_from(now)
        .unwrap_or_else(|_| TimestampWithTimeZone::positive_infinity());
    with_pinned_search_path(|client| {
        let st = statements(client);
        let admit = client
            .update(
                &st.rate_admit,
                None,
                &[key_id.into(), max.into(), window.into(), now_tz.into()],
            )
            .unwrap_or_else(|e| spi_failed(e));
        if admit.is_empty() {
            let peek = client
                .update(&st.rate_peek, None, &[key_id.into()])
                .unwrap_or_else(|e| spi_failed(e))
                .first();
            let unix_now = now + POSTGRES_EPOCH_IN_UNIX_MICROS;
            let start = peek.get::<i64>(1).ok().flatten().unwrap_or(unix_now);
            // Another backend may have opened the window with a clock reading a little later
            // than ours: never announce more than one window.
            let one_window_ms = rate_limit::retry_after_ms(0, window, 0);
            let retry = rate_limit::retry_after_ms(start, window, unix_now).min(one_window_ms);
            return Admission::Refused {
                retry_after_ms: retry,
            };
        }
        let admitted = admit.first().get::<i32>(1).ok().flatten().unwrap_or(max);
        Admission::Admitted {
            admitted,
            counter: Counter::Table,
        }
    })
}

/// Give back an admission, where it was counted, when a later check (credits) refuses the
/// verification.
pub fn undo_admission(key_id: Uuid, counter: Counter) {
    match counter {
        // SAFETY: reads the clock.
        Counter::SharedMemory => {
            rate_limit_shmem::undo(key_id.as_bytes(), unsafe { pg_sys::GetCurrentTimestamp() })
        }
        Counter::Table => with_pinned_search_path(|client| {
            let st = statements(client);
            client
                .update(&st.rate_undo, None, &[key_id.into()])
                .unwrap_or_else(|e| spi_failed(e));
        }),
    }
}
