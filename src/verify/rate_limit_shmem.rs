//! Rate-limit windows in shared memory, used when the library is preloaded
//! (`shared_preload_libraries = 'api_key'`). Counting then costs no transaction id, no heap
//! write and no WAL at all: a few hundred nanoseconds under a partition LWLock. Without
//! preloading, `usage.rs` counts in the UNLOGGED table `api_key.rate_limit_windows` instead.
//! Both storages apply the same arithmetic (`rate_limit.rs`) and give admissions back the same
//! way (a later refusal, or a rollback: `admissions.rs`). Both forget the current windows when
//! the server restarts.
//!
//! Windows belong to a key *in a database*: a slot is identified by the key id and the
//! database's oid, so a restored copy of a database in the same cluster (same key ids) counts
//! its own windows.
//!
//! Layout: `PARTITIONS` partitions, each an open-addressing table of `Slot`s guarded by its own
//! LWLock. A slot whose window has closed is free for reuse; slots never return to empty, so a
//! key, when present, always sits before the first empty slot of its probe sequence. A key that
//! finds no slot within `MAX_PROBE` is counted in the table; from then on that partition is
//! *overflowed*: a window opens in it only through `usage.rs`, which first makes sure that the
//! key has no window open in the table, so a window is never counted in both places.

use crate::gucs::RATE_LIMIT_SLOTS;
use crate::pg::shared_memory;
use crate::rate_limit::{self, Taken, Window};
use pgrx::pg_sys;
use pgrx::pg_sys::Oid;
use std::ffi::CStr;
use std::sync::atomic::{AtomicU32, Ordering};

const PARTITIONS: usize = 16;
const MAX_PROBE: usize = 64;
const SEGMENT: &CStr = c"api_key rate limits";
const TRANCHE: &CStr = c"api_key_rate_limits";

#[repr(C)]
#[derive(Clone, Copy)]
struct Slot {
    key: [u8; 16],
    /// Microseconds (Postgres epoch) when the window closes.
    window_end: i64,
    admitted: i32,
    database: Oid,
}

struct Shared {
    slots: *mut Slot,
    per_partition: usize,
    locks: *mut pg_sys::LWLockPadded,
    /// Per partition, set (under the partition's lock) once a key found no slot there: from
    /// then on a window opens in that partition only through `usage.rs`'s slow path.
    overflowed: *const AtomicU32,
}

/// Room before the slots: the partitions' overflow flags, on their own cache line.
const HEADER: usize = 64;
const _: () = assert!(PARTITIONS * std::mem::size_of::<AtomicU32>() <= HEADER);

static mut SHARED: Option<Shared> = None;

fn slot_count() -> usize {
    let per = (RATE_LIMIT_SLOTS.get().max(1024) as usize).div_ceil(PARTITIONS);
    per * PARTITIONS
}

fn bytes_needed() -> usize {
    HEADER + slot_count() * std::mem::size_of::<Slot>()
}

/// Called from `_PG_init`: registers the segment when the library is being preloaded.
pub fn init() {
    shared_memory::register(shared_memory::Segment {
        name: SEGMENT,
        bytes: bytes_needed,
        tranche: TRANCHE,
        locks: PARTITIONS,
        attach,
    });
}

fn attach(base: *mut u8, locks: *mut pg_sys::LWLockPadded) {
    // SAFETY: the segment is the header, then slot_count() slots; SHARED is written once per
    // process, while shared memory is attached.
    unsafe {
        SHARED = Some(Shared {
            slots: base.add(HEADER).cast::<Slot>(),
            per_partition: slot_count() / PARTITIONS,
            locks,
            overflowed: base.cast::<AtomicU32>(),
        });
    }
}

/// Whether counting happens in shared memory (the library was preloaded).
pub fn available() -> bool {
    // SAFETY: SHARED is written once, before any backend runs queries.
    unsafe { (*(&raw const SHARED)).is_some() }
}

fn shared() -> &'static Shared {
    // SAFETY: callers check `available()` first; SHARED is written once, at startup.
    unsafe {
        (*(&raw const SHARED))
            .as_ref()
            .expect("shared memory is initialised")
    }
}

/// What the shared-memory counter decided.
pub enum Decision {
    Admitted {
        admitted: i32,
        /// How to give it back.
        taken: Taken,
    },
    Refused {
        window_end: i64,
    },
    /// The key has no open window here and the partition has overflowed: decide where its
    /// window opens in `usage.rs`'s slow path.
    Closed,
    /// No slot free within the probe distance (the partition is now overflowed): count in the
    /// table instead.
    NoRoom,
}

/// Whether `admit` may open a window for a key that has none open.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// Only while the partition has never overflowed (the fast path).
    UnlessOverflowed,
    /// Always: the caller holds the key's window lock and found no window open in the table.
    Checked,
}

fn database() -> Oid {
    // SAFETY: reads a backend-global set at connection.
    unsafe { pg_sys::MyDatabaseId }
}

/// Runs `f` on the partition of `key` (in this database) under its exclusive lock, with the
/// slot of the key (or a reusable slot) found by probing, whether that slot is the key's, and
/// the partition's overflow flag.
fn with_slot<R>(
    key: &[u8; 16],
    now: i64,
    f: impl FnOnce(Option<&mut Slot>, bool, &AtomicU32) -> R,
) -> R {
    let database = database();
    // SAFETY: `available()` was checked by the caller; the slots of a partition are only
    // touched under that partition's LWLock; nothing inside can raise an ERROR (pure Rust
    // arithmetic), so the lock is always released by the code below.
    unsafe {
        let shared = shared();
        let hash = u64::from_le_bytes(key[8..].try_into().unwrap_or([0; 8]))
            ^ (database.to_u32() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let partition = (hash % PARTITIONS as u64) as usize;
        let base = shared.slots.add(partition * shared.per_partition);
        let lock = &raw mut (*shared.locks.add(partition)).lock;
        pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let start = ((hash / PARTITIONS as u64) % shared.per_partition as u64) as usize;
        let mut reusable: Option<usize> = None;
        let mut hit: Option<usize> = None;
        for step in 0..MAX_PROBE.min(shared.per_partition) {
            let i = (start + step) % shared.per_partition;
            let slot = &*base.add(i);
            if slot.key == *key && slot.database == database {
                hit = Some(i);
                break;
            }
            let empty = slot.key == [0; 16];
            if reusable.is_none() && (empty || slot.window_end <= now) {
                reusable = Some(i);
            }
            if empty {
                break;
            }
        }
        let overflowed = &*shared.overflowed.add(partition);
        let result = match (hit, reusable) {
            (Some(i), _) => f(Some(&mut *base.add(i)), true, overflowed),
            (None, Some(i)) => f(Some(&mut *base.add(i)), false, overflowed),
            (None, None) => f(None, false, overflowed),
        };
        pg_sys::LWLockRelease(lock);
        result
    }
}

impl Slot {
    /// The key's window, when this slot holds `key` (of this database).
    fn window_of(&self, is_key: bool) -> Option<Window> {
        is_key.then_some(Window {
            end: self.window_end,
            admitted: self.admitted,
        })
    }
}

/// Admit one verification of `key` if its window allows it (`rate_limit::admit`); a window
/// opened now ends at `opens_until`. Times in microseconds.
pub fn admit(key: &[u8; 16], max: i32, opens_until: i64, now: i64, opening: Opening) -> Decision {
    with_slot(key, now, |slot, is_key, overflowed| {
        let stored = slot.as_ref().and_then(|s| s.window_of(is_key));
        let opens = !rate_limit::is_open(stored, now);
        if opens && opening == Opening::UnlessOverflowed && overflowed.load(Ordering::Relaxed) != 0
        {
            return Decision::Closed;
        }
        let Some(slot) = slot else {
            // Set under the partition lock: whoever probes this key next sees it.
            overflowed.store(1, Ordering::Relaxed);
            return Decision::NoRoom;
        };
        match rate_limit::admit(stored, max, opens_until, now) {
            rate_limit::Decision::Admitted { window, taken } => {
                *slot = Slot {
                    key: *key,
                    window_end: window.end,
                    admitted: window.admitted,
                    database: database(),
                };
                Decision::Admitted {
                    admitted: window.admitted,
                    taken,
                }
            }
            rate_limit::Decision::Refused { window_end } => Decision::Refused { window_end },
        }
    })
}

/// Give back one admission (the verification was refused later, or its transaction rolled
/// back) in the window it was counted in (`rate_limit::give_back`).
pub fn give_back(key: &[u8; 16], taken: Taken, now: i64) {
    with_slot(key, now, |slot, is_key, _| {
        if let Some(slot) = slot.filter(|_| is_key) {
            let w = rate_limit::give_back(
                Window {
                    end: slot.window_end,
                    admitted: slot.admitted,
                },
                taken,
            );
            // A window closed again (its opening given back) keeps the key: slots never
            // return to empty (see the module's comment).
            slot.window_end = w.end;
            slot.admitted = w.admitted;
        }
    })
}
