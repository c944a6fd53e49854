//! The credit writer of a database: a background worker that applies the spends and refunds
//! queued in `credit_queue.rs`, in transactions of its own, and answers the verifications
//! waiting for them once its transaction has committed.
//!
//! Each round takes every request queued for its database, locks each key's row once
//! (`FOR NO KEY UPDATE SKIP LOCKED`: it never waits for another transaction), applies the
//! requests of the key in their order (`credits.rs`), writes the row once, and commits: one
//! commit for every verification waiting, however many (group commit). A key whose row another
//! transaction holds (a management call in progress) stays queued for the next round.
//!
//! Started by the first verification that needs it, it exits after `IDLE` without requests (so
//! that `DROP DATABASE`, which waits five seconds for other sessions to leave, is not refused
//! because of it), and on SIGTERM. A writer that fails answers `Retry`: the verifications then
//! spend in their own transactions.

use super::credit_queue::{self, Kind, Outcome, Request, State};
use crate::credits::{self, Balance, Spent};
use crate::pg::clock::{self, timestamptz_arg};
use crate::pg::spi;
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::Uuid;
use std::collections::BTreeMap;
use std::time::Duration;

/// A writer with nothing to do for this long exits.
const IDLE: i64 = 2_000_000;
/// Requests applied in one transaction at most.
const ROUND: usize = 512;

const LOCK_KEY: &str = "
    SELECT k.remaining, k.refill_amount, COALESCE(k.last_refill_at, k.created_at), k.updated_at
      FROM api_key.keys AS k WHERE k.id OPERATOR(pg_catalog.=) $1
       FOR NO KEY UPDATE SKIP LOCKED";

const KEY_EXISTS: &str = "SELECT true FROM api_key.keys AS k WHERE k.id OPERATOR(pg_catalog.=) $1";

const STORE: &str = "
    UPDATE api_key.keys AS k
       SET remaining = $2,
           last_refill_at = CASE WHEN $4 THEN $3 ELSE k.last_refill_at END
     WHERE k.id OPERATOR(pg_catalog.=) $1";

/// Starts the writer of `database` (a dynamic background worker).
pub fn start(database: pg_sys::Oid) -> bool {
    BackgroundWorkerBuilder::new("api_key credit writer")
        .set_type("api_key credit writer")
        .set_function("api_key_credit_writer")
        .set_library("api_key")
        .enable_spi_access()
        .set_argument(Some(pg_sys::Datum::from(database.to_u32())))
        .set_restart_time(None)
        .load_dynamic()
        .is_ok()
}

/// The writer's main loop.
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn api_key_credit_writer(arg: pg_sys::Datum) {
    // SIGTERM ends the writer at its next interrupt check, never inside a commit; waits for
    // table locks are interrupted too.
    crate::pg::compat::die_on_sigterm();
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP);
    let database = pg_sys::Oid::from(arg.value() as u32);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(database), None);
    if !credit_queue::register_writer() {
        return;
    }
    // SAFETY: registers a callback for this process's exit.
    unsafe { pg_sys::before_shmem_exit(Some(at_exit), pg_sys::Datum::from(0)) };
    let mut idle_since = clock::now();
    loop {
        let round = take_round();
        if round.is_empty() {
            if clock::now() - idle_since > IDLE && leave_if_idle() {
                return;
            }
            if !BackgroundWorker::wait_latch(Some(Duration::from_millis(100))) {
                return;
            }
            pgrx::check_for_interrupts!();
            continue;
        }
        idle_since = clock::now();
        let answers = apply(&round);
        let progress = answers.iter().any(|(_, a)| a.is_some());
        publish(answers);
        IN_ROUND.with(|r| r.set(false));
        if !progress && !BackgroundWorker::wait_latch(Some(Duration::from_millis(10))) {
            return;
        }
        pgrx::check_for_interrupts!();
    }
}

/// Leaves the writer entry if nothing is queued for this database (under the queue's lock, so
/// a request queued later starts a new writer); true when it left.
fn leave_if_idle() -> bool {
    // SAFETY: reads a backend-global set at connection.
    let database = unsafe { pg_sys::MyDatabaseId };
    credit_queue::with_requests(|requests| {
        !requests
            .iter()
            .any(|r| r.state == State::Queued && r.database == database)
    })
    .unwrap_or(true)
        && {
            credit_queue::release_writer(database);
            true
        }
}

/// Takes the requests queued for this database (at most `ROUND`), oldest slot first.
fn take_round() -> Vec<(usize, Request)> {
    // SAFETY: reads a backend-global set at connection.
    let database = unsafe { pg_sys::MyDatabaseId };
    credit_queue::with_requests(|requests| {
        let mut round = Vec::new();
        for (i, r) in requests.iter_mut().enumerate() {
            if r.state == State::Queued && r.database == database && round.len() < ROUND {
                r.state = State::Taken;
                round.push((i, *r));
            }
        }
        round
    })
    .unwrap_or_default()
}

/// What the round decided for one request; None: the key was locked, try again next round.
type Answer = Option<(Outcome, Option<i64>, i64)>;

/// Applies a round in one transaction; every answer `Retry` if it failed.
fn apply(round: &[(usize, Request)]) -> Vec<(usize, Answer)> {
    IN_ROUND.with(|r| r.set(true));
    let attempt = std::panic::AssertUnwindSafe(|| {
        // SAFETY: a transaction of this worker's own, committed below (or aborted on error).
        unsafe {
            pg_sys::SetCurrentStatementStartTimestamp();
            pg_sys::StartTransactionCommand();
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        }
        let answers = Spi::connect_mut(|client| apply_in(client, round));
        // SAFETY: pops the snapshot pushed above and commits: once this returns, every spend
        // of the round is durable (as synchronous_commit makes any commit).
        unsafe {
            pg_sys::PopActiveSnapshot();
            pg_sys::CommitTransactionCommand();
        }
        answers
    });
    PgTryBuilder::new(attempt)
        .catch_others(|e| {
            // SAFETY: the transaction is in an aborted state after the error: end it.
            unsafe { pg_sys::AbortCurrentTransaction() };
            pgrx::log!("api_key: the credit writer failed a round: {e:?}");
            round
                .iter()
                .map(|(slot, _)| (*slot, Some((Outcome::Retry, None, 0))))
                .collect()
        })
        .execute()
}

fn apply_in(client: &mut SpiClient<'_>, round: &[(usize, Request)]) -> Vec<(usize, Answer)> {
    use crate::pg::oids::*;
    // Keys in a fixed order (no deadlock between writers and anyone locking several keys),
    // each key's requests in their order.
    let mut by_key: BTreeMap<[u8; 16], Vec<&(usize, Request)>> = BTreeMap::new();
    for r in round {
        by_key.entry(r.1.key).or_default().push(r);
    }
    let lock = spi::statement(client, LOCK_KEY, &[UUIDOID], true).unwrap_or_else(|e| e.raise());
    let exists = spi::statement(client, KEY_EXISTS, &[UUIDOID], true).unwrap_or_else(|e| e.raise());
    let store = spi::statement(
        client,
        STORE,
        &[UUIDOID, INT8OID, TIMESTAMPTZOID, BOOLOID],
        true,
    )
    .unwrap_or_else(|e| e.raise());
    let mut answers = Vec::with_capacity(round.len());
    // The table's lock only if it is free at once: a transaction that holds a conflicting one
    // (CREATE INDEX, LOCK TABLE) may be one of the verifications waiting for this round, and
    // its wait is invisible to the deadlock detector. Its requests stay queued ("locked"), and
    // it spends in its own transaction.
    let free = crate::pg::privileged::keys_relation().is_some_and(|keys| {
        // SAFETY: a lock request that answers at once, held to the end of this transaction.
        unsafe { pg_sys::ConditionalLockRelationOid(keys, pg_sys::RowExclusiveLock as i32) }
    });
    if !free {
        return round.iter().map(|(slot, _)| (*slot, None)).collect();
    }
    for (key, requests) in by_key {
        let id = Uuid::from_bytes(key);
        let rows = client
            .update(&*lock, None, &[id.into()])
            .unwrap_or_else(|e| spi::failed(e).raise());
        let balance = (!rows.is_empty()).then(|| {
            let row = rows.first();
            let micros = |i: usize| {
                row.get::<pgrx::datum::TimestampWithTimeZone>(i)
                    .ok()
                    .flatten()
                    .map_or(0, clock::micros_of)
            };
            Balance {
                remaining: row.get::<i64>(1).ok().flatten(),
                refill_amount: row.get::<i64>(2).ok().flatten(),
                refilled: micros(3),
                version: micros(4),
            }
        });
        let Some(mut balance) = balance else {
            let locked = !client
                .update(&*exists, None, &[id.into()])
                .unwrap_or_else(|e| spi::failed(e).raise())
                .is_empty();
            for (slot, _) in requests {
                // Locked by another transaction: next round. Gone: nothing to spend or refund.
                answers.push((*slot, (!locked).then_some((Outcome::KeyChanged, None, 0))));
            }
            continue;
        };
        let before = balance;
        for (slot, r) in requests {
            let answer = match r.kind {
                Kind::Refund => {
                    let back = credits::Refund {
                        cost: r.cost,
                        version: r.updated_at,
                        refilled: r.refill_due.unwrap_or(0),
                    };
                    credits::refund(&mut balance, back);
                    (Outcome::Spent, balance.remaining, 0)
                }
                Kind::Spend => {
                    let ask = credits::Spend {
                        cost: r.cost,
                        refill_due: r.refill_due,
                        now: r.now,
                        version: r.updated_at,
                    };
                    match credits::spend(&mut balance, ask) {
                        Spent::Spent { left } => (Outcome::Spent, Some(left), balance.refilled),
                        Spent::TooFew { left, refilled } => (Outcome::TooFew, left, refilled),
                        Spent::KeyChanged => (Outcome::KeyChanged, None, 0),
                    }
                }
            };
            answers.push((*slot, Some(answer)));
        }
        if balance != before {
            client
                .update(
                    &*store,
                    None,
                    &[
                        id.into(),
                        balance.remaining.into(),
                        timestamptz_arg(Some(balance.refilled)),
                        (balance.refilled != before.refilled).into(),
                    ],
                )
                .unwrap_or_else(|e| spi::failed(e).raise());
        }
    }
    answers
}

/// Hands the answers to the waiting verifications (and wakes them), puts back the requests of
/// locked keys, and turns a spend whose waiter left into a refund.
fn publish(answers: Vec<(usize, Answer)>) {
    let mut wake = Vec::new();
    credit_queue::with_requests(|requests| {
        for (slot, answer) in answers {
            let r = &mut requests[slot];
            let Some((outcome, left, refilled)) = answer else {
                r.state = State::Queued;
                r.locked = true;
                continue;
            };
            match r.kind {
                Kind::Refund => r.state = State::Free,
                Kind::Spend if r.abandoned && outcome == Outcome::Spent => {
                    r.kind = Kind::Refund;
                    r.waiter = -1;
                    r.refill_due = Some(refilled);
                    r.state = State::Queued;
                }
                Kind::Spend if r.abandoned => r.state = State::Free,
                Kind::Spend => {
                    r.outcome = outcome;
                    r.left = left;
                    r.refilled = refilled;
                    r.state = State::Done;
                    wake.push(r.waiter);
                }
            }
        }
    });
    for procno in wake {
        crate::pg::compat::wake(procno);
    }
}

thread_local! {
    /// A round is between its transaction's start and its answers: whether it committed is
    /// not known to the exit callback.
    static IN_ROUND: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// On exit (SIGTERM, an error, `pg_terminate_backend`), answers what this writer took and
/// leaves its entry: `Retry` when its round had not started, `Unknown` when it may have
/// committed.
#[pg_guard]
unsafe extern "C-unwind" fn at_exit(_code: std::os::raw::c_int, _arg: pg_sys::Datum) {
    // SAFETY: reads a backend-global set at connection.
    let database = unsafe { pg_sys::MyDatabaseId };
    let mut wake = Vec::new();
    credit_queue::with_requests(|requests| {
        for r in requests
            .iter_mut()
            .filter(|r| r.state == State::Taken && r.database == database)
        {
            let undecided = IN_ROUND.with(|r| r.get());
            if r.kind == Kind::Spend && !r.abandoned {
                r.outcome = if undecided {
                    Outcome::Unknown
                } else {
                    Outcome::Retry
                };
                r.state = State::Done;
                wake.push(r.waiter);
            } else if undecided {
                // A refund, or a spend nobody waits for, that may have been applied: applying
                // it again could give back twice; dropping it keeps credits spent at worst.
                r.state = State::Free;
            } else {
                r.state = State::Queued;
            }
        }
    });
    credit_queue::release_writer(database);
    for procno in wake {
        crate::pg::compat::wake(procno);
    }
}
