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
