//! Differences between the PostgreSQL versions the extension builds for (15 to 18), in one
//! place.

use pgrx::pg_sys;

/// The backend's local transaction id: unique per transaction in this backend, so anything
/// tagged with it dies with the transaction without a callback. PostgreSQL 17 moved it into
/// `PGPROC.vxid`.
pub fn local_xid() -> u32 {
    // SAFETY: MyProc is set for every backend that can run SQL, before any function call.
    unsafe {
        #[cfg(any(feature = "pg15", feature = "pg16"))]
        {
            (*pg_sys::MyProc).lxid
        }
        #[cfg(not(any(feature = "pg15", feature = "pg16")))]
        {
            (*pg_sys::MyProc).vxid.lxid
        }
    }
}

/// `index_beginscan`: PostgreSQL 18 added an instrumentation argument (NULL: none).
///
/// # Safety
/// As `index_beginscan`: open relations and a registered snapshot.
pub unsafe fn index_beginscan(
    heap: pg_sys::Relation,
    index: pg_sys::Relation,
    snapshot: pg_sys::Snapshot,
    nkeys: i32,
    norderbys: i32,
) -> pg_sys::IndexScanDesc {
    // SAFETY: the caller's promise, passed on.
    unsafe {
        #[cfg(not(feature = "pg18"))]
        {
            pg_sys::index_beginscan(heap, index, snapshot, nkeys, norderbys)
        }
        #[cfg(feature = "pg18")]
        {
            pg_sys::index_beginscan(
                heap,
                index,
                snapshot,
                std::ptr::null_mut(),
                nkeys,
                norderbys,
            )
        }
    }
}

/// This backend's number in `ProcGlobal->allProcs` (PostgreSQL 17 made it a global).
pub fn my_proc_number() -> i32 {
    // SAFETY: MyProc / MyProcNumber are set for every process attached to shared memory.
    unsafe {
        #[cfg(any(feature = "pg15", feature = "pg16"))]
        {
            (*pg_sys::MyProc).pgprocno
        }
        #[cfg(not(any(feature = "pg15", feature = "pg16")))]
        {
            pg_sys::MyProcNumber
        }
    }
}

/// Wakes the process with number `procno` (its latch).
pub fn wake(procno: i32) {
    if procno < 0 {
        return;
    }
    // SAFETY: procno was read from a live registration in shared memory; SetLatch on another
    // process's latch is how PostgreSQL wakes it (a stale number wakes some process spuriously,
    // which every waiter tolerates).
    unsafe {
        let proc_ = (*pg_sys::ProcGlobal).allProcs.add(procno as usize);
        pg_sys::SetLatch(&raw mut (*proc_).procLatch);
    }
}

/// A background worker connected to a database ends on SIGTERM as a backend does (`die`: at
/// the next interrupt check, which every lock and latch wait makes), instead of PostgreSQL's
/// default for workers, which raises FATAL from the signal handler wherever the worker is.
pub fn die_on_sigterm() {
    unsafe extern "C-unwind" {
        /// PostgreSQL's SIGTERM handler for backends (tcop/postgres.c): sets ProcDiePending.
        fn die(postgres_signal_arg: std::ffi::c_int);
    }
    // SAFETY: installs PostgreSQL's own handler, before signals are unblocked.
    unsafe {
        #[cfg(not(feature = "pg18"))]
        {
            pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(die));
        }
        #[cfg(feature = "pg18")]
        {
            pg_sys::pqsignal_be(pg_sys::SIGTERM as i32, Some(die));
        }
    }
}
