//! The background workers that write usage counts from shared memory (preloaded only).
//!
//! A background worker connects to one database for its whole life, and counts come from
//! every database that verifies keys. So a launcher, connected to none, wakes every
//! `api_key.usage_flush_interval`, and for each database with counts waiting starts a
//! short-lived worker connected to it, which writes them (`writer::flush`) and exits. A worker
//! that stayed connected would make `DROP DATABASE` fail; one that lives for a flush is waited
//! for by it.
//!
//! What shared memory holds when the server stops or crashes is lost: at most one interval of
//! counts (docs/analytics.md).
//!
//! The launcher also starts the credit writer of a database that has refunds queued and no
//! writer (`verify/credit_queue.rs`): verifications start their writer themselves, refunds
//! are queued by aborting transactions, which cannot.

use super::{shmem, writer};
use crate::gucs::USAGE_FLUSH_INTERVAL;
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, BgWorkerStartTime,
    SignalWakeFlags,
};
use pgrx::prelude::*;
use std::time::Duration;

/// Called from `_PG_init` while preloading: registers the launcher.
pub fn register() {
    // SAFETY: reads a backend-global flag.
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    BackgroundWorkerBuilder::new("api_key usage launcher")
        .set_type("api_key usage launcher")
        .set_function("api_key_usage_launcher")
        .set_library("api_key")
        .enable_shmem_access(None)
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(10)))
        .load();
}

fn interval() -> Duration {
    Duration::from_secs(USAGE_FLUSH_INTERVAL.get().max(1) as u64)
}

/// The launcher's main loop.
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn api_key_usage_launcher(_arg: pg_sys::Datum) {
    // SIGTERM keeps PostgreSQL's default for workers: exit at once (with code 1, so that the
    // postmaster starts the launcher again unless the server is stopping).
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP);
    while BackgroundWorker::wait_latch(Some(interval())) {
        if BackgroundWorker::sighup_received() {
            // SAFETY: rereads postgresql.conf, as every worker does on SIGHUP.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        // Refunds queued by transactions that rolled back, in a database whose credit writer
        // had exited: start one.
        for database in crate::verify::credit_queue::databases_without_writer() {
            crate::verify::credit_queue::ensure_writer(database);
        }
        for database in shmem::databases_with_counts() {
            if !flush_in(database) {
                return;
            }
        }
    }
}

/// Longest a flush may take before the launcher stops it (its counts go back to shared
/// memory, for the next try).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts a worker that writes `database`'s counts, and waits for it to end. False when the
/// launcher itself must stop (SIGTERM: the server is shutting down, and starts no worker).
fn flush_in(database: pg_sys::Oid) -> bool {
    // SAFETY: reads this process's pid.
    let me = unsafe { pg_sys::MyProcPid };
    // Cleared before the worker starts: it notes its database once connected.
    shmem::note_connected(pg_sys::InvalidOid);
    let started = BackgroundWorkerBuilder::new("api_key usage flush")
        .set_type("api_key usage flush")
        .set_function("api_key_usage_flush")
        .set_library("api_key")
        .enable_spi_access()
        .set_argument(Some(pg_sys::Datum::from(database.to_u32())))
        .set_notify_pid(me)
        .set_restart_time(None)
        .load_dynamic();
    let Ok(worker) = started else {
        pgrx::log!(
            "api_key: could not start a worker to write usage counts (max_worker_processes?)"
        );
        return true;
    };
    let stopped = wait_for(worker);
    if stopped && shmem::connected() != database {
        // It could not connect: the database was dropped (or takes no connections). Its
        // counts can never be written.
        let lost = shmem::discard(database);
        if lost > 0 {
            pgrx::log!("api_key: {lost} verifications of database {database:?}, which cannot be connected to (dropped?), were not counted");
        }
    }
    stopped || BackgroundWorker::wait_latch(Some(Duration::ZERO))
}

/// Waits for a flush worker to stop (stopping it after `FLUSH_TIMEOUT`); false when the
/// postmaster is gone.
fn wait_for(worker: pgrx::bgworkers::DynamicBackgroundWorker) -> bool {
    // Not WaitForBackgroundWorkerShutdown: it would wait forever for a worker that a server
    // shutting down never starts.
    let deadline = std::time::Instant::now() + FLUSH_TIMEOUT;
    let mut terminated = false;
    loop {
        match worker.pid() {
            Err(BackgroundWorkerStatus::Stopped) => return true,
            Err(BackgroundWorkerStatus::PostmasterDied) => return false,
            Ok(pid) if !terminated && std::time::Instant::now() > deadline => {
                pgrx::log!(
                    "api_key: a usage flush took longer than {FLUSH_TIMEOUT:?}; stopping it"
                );
                // SAFETY: signals our own worker, which ends at its next interrupt check (its
                // counts go back to shared memory with its transaction).
                unsafe { libc::kill(pid, libc::SIGTERM) };
                terminated = true;
            }
            _ => {}
        }
        // The postmaster sets our latch when the worker's state changes (notify pid).
        if !BackgroundWorker::wait_latch(Some(Duration::from_millis(100))) {
            return false;
        }
    }
}

/// How long a flush worker waits for another writer (a transaction that called
/// `api_key_flush_usage()` and is still open) before leaving the counts for the next round.
const WRITER_PATIENCE: Duration = Duration::from_secs(2);

/// A flush worker: connects to the database it was started for, writes its counts, exits. An
/// error rolls its transaction back, which puts the counts back in shared memory.
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn api_key_usage_flush(arg: pg_sys::Datum) {
    crate::pg::compat::die_on_sigterm();
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::empty());
    let database = pg_sys::Oid::from(arg.value() as u32);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(database), None);
    shmem::note_connected(database);
    BackgroundWorker::transaction(|| {
        crate::pg::bookkeeping::commit_locally();
        // The minutes that are over: each minute's counts are written once.
        let before = Some(super::minute_of(crate::pg::clock::now()));
        if let Err(e) = writer::flush(true, before, false, Some(WRITER_PATIENCE)) {
            e.raise();
        }
    });
}
