//! Credits spent without holding the key's row past the verification (preloaded only).
//!
//! Spending in the verifying transaction (`usage::spend`'s UPDATE) keeps the key's row locked
//! until that transaction ends: with `BEGIN; SELECT api_key_authenticate(…); <the request's
//! work>; COMMIT`, every request of the key waited for the previous request's whole
//! transaction. Instead, a verification puts its spend in a queue in shared memory and waits
//! for the database's credit writer (`credit_writer.rs`), a background worker that applies
//! the spends of everyone waiting in one transaction of its own, commits it (so an answered
//! spend is durable), and wakes them with their answers. The row is locked only inside the
//! writer's short transaction.
//!
//! Rolling back gives credits back, as before, but afterwards: the spends of a transaction (or
//! savepoint) that rolls back are queued as refunds, which the writer applies shortly after. A
//! crash before that keeps them spent (never more credits than paid for).
//!
//! Without preloading, with `api_key.credit_writer = off`, on a queue that is full, or when no
//! writer can start (`max_worker_processes`), the verification spends in its own transaction
//! as before. Everything here runs under one LWLock and is plain code that cannot raise, so it
//! may run in abort callbacks.

use crate::gucs::CREDIT_WRITER;
use crate::pg::compat::{my_proc_number, wake};
use crate::pg::shared_memory;
use crate::pg::transaction_list::List;
use pgrx::pg_sys::{self, Oid};
use pgrx::Uuid;
use std::ffi::CStr;

const REQUESTS: usize = 1024;
/// Databases with a writer at once.
const WRITERS: usize = 64;
/// Spends of one transaction remembered for refunds; beyond, they stay spent on rollback.
const MAX_REMEMBERED: usize = 4096;
const SEGMENT: &CStr = c"api_key credit queue";
const TRANCHE: &CStr = c"api_key_credit_queue";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum State {
    Free = 0,
    Queued = 1,
    Taken = 2,
    Done = 3,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Kind {
    Spend = 0,
    Refund = 1,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Outcome {
    /// The writer could not decide (it failed or stopped): spend in the transaction instead.
    Retry = 0,
    /// Spent; `left` credits left.
    Spent = 1,
    /// Too few credits; nothing spent.
    TooFew = 2,
    /// The key changed since it was read (or is gone): nothing spent.
    KeyChanged = 3,
    /// The writer stopped while its transaction may have committed: whether it was spent is
    /// not known.
    Unknown = 4,
}

/// One queued request, in shared memory.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Request {
    pub state: State,
    pub kind: Kind,
    pub outcome: Outcome,
    /// The waiter left (cancelled): a spend it can no longer use is refunded.
    pub abandoned: bool,
    /// The writer found the key's row locked by another transaction (and queued it again).
    pub locked: bool,
    pub database: Oid,
    pub key: [u8; 16],
    pub cost: i64,
    /// The refill time the verification found due, if it found one (a refund: the key's last
    /// refill after the spend).
    pub refill_due: Option<i64>,
    pub now: i64,
    /// The key's version the verification checked (a refund: the version it spent).
    pub updated_at: i64,
    /// Who waits (a proc number), or -1.
    pub waiter: i32,
    pub left: Option<i64>,
    /// When the key was last refilled (or created), for a `TooFew` answer.
    pub refilled: i64,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Writer {
    database: Oid,
    /// Its proc number once running, -1 while starting.
    procno: i32,
    used: bool,
    /// When it was started (microseconds): one that has not registered within
    /// `STARTUP_GRACE` never will (it could not connect, or not be forked).
    since: i64,
}

/// How long a writer may take to start.
const STARTUP_GRACE: i64 = 5_000_000;

impl Writer {
    fn alive(&self) -> bool {
        self.used && (self.procno >= 0 || crate::pg::clock::now() - self.since < STARTUP_GRACE)
    }
}

struct Shared {
    requests: *mut Request,
    writers: *mut Writer,
    locks: *mut pg_sys::LWLockPadded,
}

static mut SHARED: Option<Shared> = None;

fn bytes_needed() -> usize {
    REQUESTS * std::mem::size_of::<Request>() + WRITERS * std::mem::size_of::<Writer>()
}

/// Called from `_PG_init`: registers the segment when the library is being preloaded.
pub fn init() {
    shared_memory::register(shared_memory::Segment {
        name: SEGMENT,
        bytes: bytes_needed,
        tranche: TRANCHE,
        locks: 1,
        attach,
    });
}

fn attach(base: *mut u8, locks: *mut pg_sys::LWLockPadded) {
    let requests = base.cast::<Request>();
    // SAFETY: the segment holds REQUESTS requests then WRITERS writers, zeroed when new: every
    // field's zero is a valid value (Free, Spend, Retry, None, false, 0);
    // SHARED is written once per process, while shared memory is attached.
    unsafe {
        SHARED = Some(Shared {
            requests,
            writers: requests.add(REQUESTS).cast::<Writer>(),
            locks,
        });
    }
}

fn shared() -> Option<&'static Shared> {
    // SAFETY: SHARED is written once, at startup.
    unsafe { (*(&raw const SHARED)).as_ref() }
}

/// Runs `f` with the requests, under the queue's lock.
pub fn with_requests<R>(f: impl FnOnce(&mut [Request]) -> R) -> Option<R> {
    with_queue(|requests, _| f(requests))
}

/// Runs `f` with the requests and writers, under the queue's lock.
fn with_queue<R>(f: impl FnOnce(&mut [Request], &mut [Writer]) -> R) -> Option<R> {
    let shared = shared()?;
    // SAFETY: the tranche attached with the segment has one lock, and the segment's arrays
    // are touched only under it.
    Some(unsafe {
        shared_memory::locked(shared.locks, 0, pg_sys::LWLockMode::LW_EXCLUSIVE, || {
            f(
                std::slice::from_raw_parts_mut(shared.requests, REQUESTS),
                std::slice::from_raw_parts_mut(shared.writers, WRITERS),
            )
        })
    })
}

fn database() -> Oid {
    // SAFETY: reads a backend-global set at connection.
    unsafe { pg_sys::MyDatabaseId }
}

/// Whether spends go through the queue here: preloaded, enabled, and on a primary.
pub fn available() -> bool {
    // SAFETY: reads a backend-global flag.
    shared().is_some() && CREDIT_WRITER.get() && !unsafe { pg_sys::RecoveryInProgress() }
}

/// The database's writer: Some(procno) when running (-1 while starting), None when none (or
/// one that failed to start).
fn writer_of(writers: &[Writer], database: Oid) -> Option<i32> {
    writers
        .iter()
        .find(|w| w.alive() && w.database == database)
        .map(|w| w.procno)
}

/// What `claim_writer` found.
enum Claim {
    /// A writer runs or is starting.
    Exists,
    /// Claimed: start one. `failed`: the previous start never registered.
    Claimed { failed: bool },
    /// No room for another database's writer.
    Full,
}

/// Claims the writer entry of `database` for a writer about to be started.
fn claim_writer(writers: &mut [Writer], database: Oid) -> Claim {
    if writer_of(writers, database).is_some() {
        return Claim::Exists;
    }
    let stale = writers
        .iter()
        .position(|w| w.used && w.database == database);
    let Some(i) = stale.or_else(|| writers.iter().position(|w| !w.used)) else {
        return Claim::Full;
    };
    writers[i] = Writer {
        database,
        procno: -1,
        used: true,
        since: crate::pg::clock::now(),
    };
    Claim::Claimed {
        failed: stale.is_some(),
    }
}

/// Forgets the writer entry of `database` (its writer could not start, or exited).
pub fn release_writer(database: Oid) {
    with_queue(|_, writers| {
        for w in writers
            .iter_mut()
            .filter(|w| w.used && w.database == database)
        {
            w.used = false;
        }
    });
}

/// The running writer of this database registers its proc number; false if it has no entry
/// (it was released: it should not run).
pub fn register_writer() -> bool {
    let (database, me) = (database(), my_proc_number());
    with_queue(|_, writers| {
        match writers
            .iter_mut()
            .find(|w| w.used && w.database == database)
        {
            Some(w) => {
                w.procno = me;
                true
            }
            None => false,
        }
    })
    .unwrap_or(false)
}

/// Starts a writer for `database` unless one runs or is starting. False when none runs and
/// none could be started. When the last one started never registered (the database takes no
/// connections, or was dropped), the refunds queued for it are dropped (they stay spent) and
/// none is started this time: the verifications spend in their own transactions.
pub fn ensure_writer(database: Oid) -> bool {
    let claim = with_queue(|requests, writers| {
        let claim = claim_writer(writers, database);
        let mut dropped = 0;
        if let Claim::Claimed { failed: true } = claim {
            for r in requests.iter_mut().filter(|r| {
                r.state == State::Queued && r.database == database && r.kind == Kind::Refund
            }) {
                r.state = State::Free;
                dropped += 1;
            }
        }
        (claim, dropped)
    });
    match claim {
        Some((Claim::Exists, _)) => true,
        Some((Claim::Claimed { failed: false }, _)) => {
            super::credit_writer::start(database) || {
                release_writer(database);
                false
            }
        }
        Some((Claim::Claimed { failed: true }, dropped)) => {
            release_writer(database);
            pgrx::log!("api_key: the credit writer of database {database:?} did not start; {dropped} queued refunds were dropped (those credits stay spent)");
            false
        }
        Some((Claim::Full, _)) | None => false,
    }
}

/// Databases with queued requests and no writer (refunds queued by an aborting transaction).
pub fn databases_without_writer() -> Vec<Oid> {
    with_queue(|requests, writers| {
        let mut found: Vec<Oid> = Vec::new();
        for r in requests.iter().filter(|r| r.state == State::Queued) {
            if writer_of(writers, r.database).is_none() && !found.contains(&r.database) {
                found.push(r.database);
            }
        }
        found
    })
    .unwrap_or_default()
}

/// Queues a request of this database; its slot, and the writer to wake (None: none running).
fn enqueue(request: Request) -> Option<(usize, Option<i32>)> {
    with_queue(|requests, writers| {
        let slot = requests.iter().position(|r| r.state == State::Free)?;
        requests[slot] = request;
        Some((slot, writer_of(writers, request.database)))
    })
    .flatten()
}

/// What the writer answered a spend.
pub struct Answer {
    pub outcome: Outcome,
    pub left: Option<i64>,
    /// The key's last refill (after the spend, for `Spent`; as it is, for `TooFew`).
    pub refilled: i64,
}

thread_local! {
    /// The slot this backend waits for, if any: a backend that exits while waiting (FATAL:
    /// terminated, or its client gone) leaves it to the writer, as a cancelled wait does.
    static WAITING: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
    static EXIT_CALLBACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn abandon_at_exit(_code: std::os::raw::c_int, _arg: pg_sys::Datum) {
    if let Some(slot) = WAITING.with(|w| w.take()) {
        abandon(slot);
    }
}

/// Spend `cost` credits of `key_id` through the writer, waiting for its answer. None when the
/// spend must happen in the verifying transaction instead (no queue, no room, no writer).
pub fn spend(
    key_id: Uuid,
    cost: i64,
    refill_due: Option<i64>,
    now: i64,
    updated_at: i64,
) -> Option<Answer> {
    if !available() {
        return None;
    }
    let database = database();
    let request = Request {
        state: State::Queued,
        kind: Kind::Spend,
        outcome: Outcome::Retry,
        abandoned: false,
        locked: false,
        database,
        key: *key_id.as_bytes(),
        cost,
        refill_due,
        now,
        updated_at,
        waiter: my_proc_number(),
        left: None,
        refilled: 0,
    };
    let (slot, writer) = enqueue(request)?;
    let waiting = Waiting::new(slot);
    match writer {
        Some(procno) => wake(procno),
        None => {
            if !ensure_writer(database) {
                return waiting.withdraw();
            }
        }
    }
    let answer = waiting.wait();
    if answer.outcome == Outcome::Spent {
        remember(Spent {
            key: *key_id.as_bytes(),
            cost,
            version: updated_at,
            refilled: answer.refilled,
        });
    }
    Some(answer)
}

/// A request this backend waits for. Dropped while unwinding (a cancel or timeout raised while
/// waiting), it leaves the request to the writer, marked abandoned: a spend that nobody will
/// use is refunded.
struct Waiting {
    slot: usize,
}

impl Waiting {
    fn new(slot: usize) -> Waiting {
        if !EXIT_CALLBACK.with(|c| c.replace(true)) {
            // SAFETY: registers a callback for this backend's exit.
            unsafe { pg_sys::before_shmem_exit(Some(abandon_at_exit), pg_sys::Datum::from(0)) };
        }
        WAITING.with(|w| w.set(Some(slot)));
        Waiting { slot }
    }

    /// No longer waiting: the slot was freed (or handed back) by the caller.
    fn done(self) {
        WAITING.with(|w| w.set(None));
        std::mem::forget(self);
    }

    /// Takes the request back before the writer saw it; None (spend in the transaction), or
    /// the answer if the writer was faster.
    fn withdraw(self) -> Option<Answer> {
        let slot = self.slot;
        match self.withdraw_now() {
            Some(_) => None,
            None => Some(Waiting::new(slot).wait()),
        }
    }

    /// Waits for the writer's answer. While another transaction holds the key's row, the
    /// writer leaves the request queued; after `deadlock_timeout` (or `lock_timeout`, if
    /// shorter) of that, or at once when this transaction may hold the row itself, the request
    /// is taken back and the spend made in this transaction, which waits for the row as any
    /// statement does: with deadlock detection and `lock_timeout`.
    fn wait(self) -> Answer {
        let database = database();
        let mut locked_since: Option<std::time::Instant> = None;
        loop {
            let (done, locked) = with_queue(|requests, _| {
                let r = &mut requests[self.slot];
                let done = (r.state == State::Done).then(|| {
                    r.state = State::Free;
                    Answer {
                        outcome: r.outcome,
                        left: r.left,
                        refilled: r.refilled,
                    }
                });
                (done, r.locked && r.state == State::Queued)
            })
            .unwrap_or((None, false));
            if let Some(answer) = done {
                self.done();
                return answer;
            }
            if locked {
                let since = *locked_since.get_or_insert_with(std::time::Instant::now);
                if may_hold_the_row() || since.elapsed() >= lock_patience() {
                    if let Some(answer) = (Waiting { slot: self.slot }).withdraw_now() {
                        self.done();
                        return answer;
                    }
                    WAITING.with(|w| w.set(Some(self.slot)));
                }
            }
            // SAFETY: waits on this backend's own latch, as PostgreSQL's own waits do; the
            // writer (or the postmaster's death) sets it.
            unsafe {
                pg_sys::WaitLatch(
                    pg_sys::MyLatch,
                    (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH)
                        as i32,
                    if locked { 20 } else { 1000 },
                    pg_sys::PG_WAIT_EXTENSION,
                );
                pg_sys::ResetLatch(pg_sys::MyLatch);
            }
            pgrx::check_for_interrupts!();
            // A writer that exited without answering answered `Retry`; one that never started
            // (the postmaster could not fork) is started again.
            let queued_without_writer = with_queue(|requests, writers| {
                requests[self.slot].state == State::Queued && writer_of(writers, database).is_none()
            })
            .unwrap_or(false);
            if queued_without_writer && !ensure_writer(database) {
                if let Some(answer) = (Waiting { slot: self.slot }).withdraw_now() {
                    self.done();
                    return answer;
                }
                WAITING.with(|w| w.set(Some(self.slot)));
            }
        }
    }

    /// Takes the request back if the writer has not taken it: a `Retry` answer (spend in the
    /// transaction); None when the writer has it.
    fn withdraw_now(self) -> Option<Answer> {
        let slot = self.slot;
        self.done();
        let taken_back = with_queue(|requests, _| {
            let r = &mut requests[slot];
            let queued = r.state == State::Queued;
            if queued {
                r.state = State::Free;
            }
            queued
        })
        .unwrap_or(true);
        taken_back.then_some(Answer {
            outcome: Outcome::Retry,
            left: None,
            refilled: 0,
        })
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        WAITING.with(|w| w.set(None));
        abandon(self.slot);
    }
}

/// Leaves a request whose waiter is gone (a cancel, a timeout, an exit) to the writer: taken
/// back if it is still queued, marked abandoned if the writer has it (a spend it makes is then
/// refunded), turned into a refund if it was spent already.
fn abandon(slot: usize) {
    let refund = with_queue(|requests, writers| {
        let r = &mut requests[slot];
        match r.state {
            State::Queued => r.state = State::Free,
            State::Taken => r.abandoned = true,
            State::Done if r.outcome == Outcome::Spent => {
                r.kind = Kind::Refund;
                r.waiter = -1;
                r.refill_due = Some(r.refilled);
                r.state = State::Queued;
                return writer_of(writers, r.database);
            }
            State::Done => r.state = State::Free,
            State::Free => {}
        }
        None
    })
    .flatten();
    if let Some(procno) = refund {
        wake(procno);
    }
}

/// How long a verification waits in the queue for a key whose row another transaction holds,
/// before it waits for the row itself: `deadlock_timeout`, or `lock_timeout` if set and shorter.
fn lock_patience() -> std::time::Duration {
    // SAFETY: reads two integer settings of this backend.
    let (deadlock, lock) = unsafe { (pg_sys::DeadlockTimeout, pg_sys::LockTimeout) };
    let ms = if lock > 0 {
        deadlock.min(lock)
    } else {
        deadlock
    };
    std::time::Duration::from_millis(ms.max(1) as u64)
}

/// Whether this transaction may hold a lock on a row: it has a transaction id. (One without
/// cannot have locked or changed a row; one with may be the very holder the writer waits
/// for, so it spends in its own transaction at once rather than wait for itself.)
fn may_hold_the_row() -> bool {
    crate::pg::bookkeeping::writes_anyway()
}

struct Spent {
    key: [u8; 16],
    cost: i64,
    /// The key's version when spent, and its last refill after the spend (`credits::Refund`).
    version: i64,
    refilled: i64,
}

thread_local! {
    static SPENT: &'static List<Spent> = List::new(|_| {}, refund);
}

/// Remembers a spend of the current transaction, to refund it if the transaction (or its
/// savepoint) rolls back.
fn remember(spent: Spent) {
    if spent.cost != 0 && SPENT.with(|s| s.len()) < MAX_REMEMBERED {
        SPENT.with(|s| s.push(spent));
    }
}

/// Queues refunds for the spends of a transaction or savepoint that rolled back.
fn refund(refunds: Vec<Spent>) {
    let database = database();
    for x in refunds {
        let queued = enqueue(Request {
            state: State::Queued,
            kind: Kind::Refund,
            outcome: Outcome::Retry,
            abandoned: false,
            locked: false,
            database,
            key: x.key,
            cost: x.cost,
            refill_due: Some(x.refilled),
            now: 0,
            updated_at: x.version,
            waiter: -1,
            left: None,
            refilled: 0,
        });
        match queued {
            // No writer running: the launcher starts one for queued refunds.
            Some((_, Some(procno))) => wake(procno),
            Some((_, None)) => {}
            None => {
                pgrx::log!("api_key: the credit queue is full; a rolled-back spend stays spent")
            }
        }
    }
}
