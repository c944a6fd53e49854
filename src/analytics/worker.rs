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
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
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
        pgrx::log!("api_key: could not start a worker to write usage counts (max_worker_processes?)");
        return true;
    };
    // Not WaitForBackgroundWorkerShutdown: it would wait forever for a worker that a server
    // shutting down never starts, and ignores SIGTERM.
    let deadline = std::time::Instant::now() + FLUSH_TIMEOUT;
    loop {
        match worker.pid() {
            Err(BackgroundWorkerStatus::Stopped) | Err(BackgroundWorkerStatus::PostmasterDied) => {
                return true
            }
            _ if std::time::Instant::now() > deadline => {
                pgrx::log!("api_key: a usage flush took longer than {FLUSH_TIMEOUT:?}; stopping it");
                worker.terminate();
                return true;
            }
            _ => {}
        }
        // The postmaster sets our latch when the worker's state changes (notify pid).
        if !BackgroundWorker::wait_latch(Some(Duration::from_millis(100))) {
            worker.terminate();
            return false;
        }
    }
}

/// A flush worker: connects to the database it was started for, writes its counts, exits.
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn api_key_usage_flush(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGTERM);
    let database = pg_sys::Oid::from(arg.value() as u32);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(database), None);
    BackgroundWorker::transaction(|| {
        crate::pg::bookkeeping::commit_locally();
        if let Err(e) = writer::flush(false) {
            pgrx::log!("api_key: usage counts not written: {}", e.message);
        }
    });
}
