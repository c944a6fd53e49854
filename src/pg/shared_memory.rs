//! Shared memory of the extension, when the library is preloaded: each user (`rate_limit_shmem`,
//! `analytics::shmem`, `credit_queue`) registers a segment from `_PG_init`, and one pair of
//! hooks requests and attaches them all, as PostgreSQL documents for add-ins: sizes and
//! LWLock tranches requested in `shmem_request_hook`, segments created (zeroed) or found in
//! `shmem_startup_hook` under `AddinShmemInitLock`.

use pgrx::pg_sys;
use std::ffi::CStr;

/// One segment: its name, size and LWLock tranche, and what to do once it is attached.
pub struct Segment {
    pub name: &'static CStr,
    pub bytes: fn() -> usize,
    pub tranche: &'static CStr,
    pub locks: usize,
    /// Called in every process that attaches, with the segment (zeroed when new) and its locks.
    pub attach: fn(base: *mut u8, locks: *mut pg_sys::LWLockPadded),
}

static mut SEGMENTS: Vec<Segment> = Vec::new();
static mut PREV_REQUEST_HOOK: pg_sys::shmem_request_hook_type = None;
static mut PREV_STARTUP_HOOK: pg_sys::shmem_startup_hook_type = None;

/// Registers `segment`, from `_PG_init` while the library is being preloaded (else nothing:
/// its users then see no shared memory).
pub fn register(segment: Segment) {
    // SAFETY: _PG_init runs single-threaded in the postmaster; the hooks are chained as
    // PostgreSQL documents, once.
    unsafe {
        if !pg_sys::process_shared_preload_libraries_in_progress {
            return;
        }
        let segments = &mut *(&raw mut SEGMENTS);
        if segments.is_empty() {
            PREV_REQUEST_HOOK = pg_sys::shmem_request_hook;
            pg_sys::shmem_request_hook = Some(request);
            PREV_STARTUP_HOOK = pg_sys::shmem_startup_hook;
            pg_sys::shmem_startup_hook = Some(startup);
        }
        segments.push(segment);
    }
}

fn segments() -> &'static [Segment] {
    // SAFETY: written only by `register`, in _PG_init, before any hook runs.
    unsafe { &*(&raw const SEGMENTS) }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn request() {
    // SAFETY: called by the postmaster during shared memory sizing.
    unsafe {
        if let Some(prev) = PREV_REQUEST_HOOK {
            // The previous hook is PostgreSQL C code: pg_guard_ffi_boundary turns its longjmp
            // into a Rust unwind, which is what the lint guards against.
            #[allow(ffi_unwind_calls)]
            pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| prev());
        }
        for s in segments() {
            pg_sys::RequestAddinShmemSpace((s.bytes)());
            pg_sys::RequestNamedLWLockTranche(s.tranche.as_ptr(), s.locks as i32);
        }
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn startup() {
    // SAFETY: runs in the postmaster (and in each backend under EXEC_BACKEND) while shared
    // memory is being attached; AddinShmemInitLock serialises initialisation.
    unsafe {
        if let Some(prev) = PREV_STARTUP_HOOK {
            // See `request`.
            #[allow(ffi_unwind_calls)]
            pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| prev());
        }
        let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock; // AddinShmemInitLock
        pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let attached: Vec<(*mut u8, *mut pg_sys::LWLockPadded)> = segments()
            .iter()
            .map(|s| {
                let bytes = (s.bytes)();
                let mut found = false;
                let base = pg_sys::ShmemInitStruct(s.name.as_ptr(), bytes, &mut found).cast::<u8>();
                if !found {
                    std::ptr::write_bytes(base, 0, bytes);
                }
                (base, pg_sys::GetNamedLWLockTranche(s.tranche.as_ptr()))
            })
            .collect();
        pg_sys::LWLockRelease(init_lock);
        for (s, (base, locks)) in segments().iter().zip(attached) {
            (s.attach)(base, locks);
        }
    }
}

/// Runs `f` under lock `i` of a tranche. `f` must be plain Rust that cannot raise an ERROR,
/// so that the lock is always released here.
///
/// # Safety
/// `locks` is an attached tranche (as `Segment::attach` received it) with more than `i` locks.
pub unsafe fn locked<R>(
    locks: *mut pg_sys::LWLockPadded,
    i: usize,
    mode: pg_sys::LWLockMode::Type,
    f: impl FnOnce() -> R,
) -> R {
    // SAFETY: the caller's promise.
    unsafe {
        let lock = &raw mut (*locks.add(i)).lock;
        pg_sys::LWLockAcquire(lock, mode);
        let result = f();
        pg_sys::LWLockRelease(lock);
        result
    }
}
