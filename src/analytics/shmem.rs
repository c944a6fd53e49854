//! Usage counts in shared memory, when the library is preloaded: verifications add to a slot
//! per bucket (key, minute, outcome, tag set) in a few hundred nanoseconds under a partition
//! LWLock, and the background worker (`worker.rs`) takes a database's slots out and writes
//! them. Nothing here can raise: every function is plain arithmetic under a lock that it
//! releases itself, so it may run in commit and abort callbacks.
//!
//! Slots: `PARTITIONS` open-addressing tables; a bucket that finds no free slot within
//! `MAX_PROBE` stays in the backend's memory (`local.rs`) and moves here when a transaction
//! ends. Taking a database's slots out rebuilds the partition without them, so slots never
//! need tombstones.
//!
//! Tag sets are stored once each, in a dictionary of `api_key.usage_tag_sets` entries that
//! lives until the server stops (slots refer to them by number). When it is full, a new tag
//! set is counted as the tag set `{(other)}` (docs/analytics.md).

use super::tags::TagSet;
use super::{Bucket, Counts};
use crate::gucs::{USAGE_SLOTS, USAGE_TAG_SETS};
use crate::pg::shared_memory;
use crate::verify::Code;
use pgrx::pg_sys::{self, Oid};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CStr;
use std::hash::{Hash, Hasher};

const PARTITIONS: usize = 16;
const MAX_PROBE: usize = 64;
/// Dictionary entries a tag set is looked for in (from its hash's place) before it counts as
/// `{(other)}`: a full dictionary costs a bounded look.
const MAX_TAG_PROBE: usize = 64;
const SEGMENT: &CStr = c"api_key usage counts";
const TRANCHE: &CStr = c"api_key_usage";
/// The tag set number of a tag set that found no room in the dictionary.
const OTHER: u16 = u16::MAX;

#[repr(C)]
#[derive(Clone, Copy)]
struct Slot {
    key: [u8; 16],
    database: Oid,
    minute: i32,
    /// 0: no tags; else 1 + the dictionary entry; `OTHER`.
    tag_set: u16,
    code: u8,
    live: bool,
    verifications: i64,
    credits: i64,
}

#[repr(C)]
struct TagSetEntry {
    database: Oid,
    len: u16,
    used: bool,
    bytes: [u8; super::tags::MAX_JOINED_BYTES],
}

struct Shared {
    /// The database the last flush worker connected to (see `worker.rs`).
    connected: *const std::sync::atomic::AtomicU32,
    slots: *mut Slot,
    per_partition: usize,
    tag_sets: *mut TagSetEntry,
    tag_set_count: usize,
    /// `PARTITIONS` partition locks, then the dictionary's.
    locks: *mut pg_sys::LWLockPadded,
}

static mut SHARED: Option<Shared> = None;

thread_local! {
    /// Dictionary numbers of the tag sets this backend has seen (its database's).
    static KNOWN: RefCell<HashMap<TagSet, u16>> = RefCell::new(HashMap::new());
}

fn slot_count() -> usize {
    (USAGE_SLOTS.get().max(1024) as usize).div_ceil(PARTITIONS) * PARTITIONS
}

fn tag_set_count() -> usize {
    USAGE_TAG_SETS.get().clamp(1, OTHER as i32 - 1) as usize
}

/// Room before the slots, for `connected`.
const HEADER: usize = 64;

fn bytes_needed() -> usize {
    HEADER
        + slot_count() * std::mem::size_of::<Slot>()
        + tag_set_count() * std::mem::size_of::<TagSetEntry>()
}

/// Called from `_PG_init`: registers the segment when the library is being preloaded.
pub fn init() {
    shared_memory::register(shared_memory::Segment {
        name: SEGMENT,
        bytes: bytes_needed,
        tranche: TRANCHE,
        locks: PARTITIONS + 1,
        attach,
    });
}

fn attach(base: *mut u8, locks: *mut pg_sys::LWLockPadded) {
    // SAFETY: the segment holds the header, slot_count() slots, then tag_set_count() entries;
    // SHARED is written once per process, while shared memory is attached.
    unsafe {
        let slots = base.add(HEADER).cast::<Slot>();
        SHARED = Some(Shared {
            connected: base.cast(),
            slots,
            per_partition: slot_count() / PARTITIONS,
            tag_sets: slots.add(slot_count()).cast::<TagSetEntry>(),
            tag_set_count: tag_set_count(),
            locks,
        });
    }
}

/// Whether counts go to shared memory (the library was preloaded).
pub fn available() -> bool {
    // SAFETY: SHARED is written once, before any backend runs queries.
    unsafe { (*(&raw const SHARED)).is_some() }
}

fn shared() -> Option<&'static Shared> {
    // SAFETY: SHARED is written once, at startup.
    unsafe { (*(&raw const SHARED)).as_ref() }
}

fn database() -> Oid {
    // SAFETY: reads a backend-global set at connection.
    unsafe { pg_sys::MyDatabaseId }
}

fn locked<R>(
    shared: &Shared,
    i: usize,
    mode: pg_sys::LWLockMode::Type,
    f: impl FnOnce() -> R,
) -> R {
    // SAFETY: the tranche attached with the segment has PARTITIONS + 1 locks; callers pass
    // a partition number or PARTITIONS.
    unsafe { shared_memory::locked(shared.locks, i, mode, f) }
}

fn hash_of(value: &impl Hash) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// The dictionary number of `tags` in this database (0 for none), adding it if need be;
/// `OTHER` when the dictionary is full.
fn tag_set_number(shared: &Shared, tags: &TagSet) -> u16 {
    if tags.is_empty() {
        return 0;
    }
    if let Some(n) = KNOWN.with(|k| k.borrow().get(tags).copied()) {
        return n;
    }
    let database = database();
    let joined = tags.joined().as_bytes();
    let start = (hash_of(&(database.to_u32(), joined)) % shared.tag_set_count as u64) as usize;
    let find = |insert: bool| -> Option<u16> {
        for step in 0..MAX_TAG_PROBE.min(shared.tag_set_count) {
            let i = (start + step) % shared.tag_set_count;
            // SAFETY: i < tag_set_count; entries are read and written under the dictionary
            // lock only.
            let entry = unsafe { &mut *shared.tag_sets.add(i) };
            if !entry.used {
                if !insert {
                    return None;
                }
                entry.database = database;
                entry.len = joined.len() as u16;
                entry.bytes[..joined.len()].copy_from_slice(joined);
                entry.used = true;
                return Some(i as u16 + 1);
            }
            if entry.database == database && &entry.bytes[..entry.len as usize] == joined {
                return Some(i as u16 + 1);
            }
        }
        None
    };
    let dictionary = PARTITIONS;
    let number = locked(shared, dictionary, pg_sys::LWLockMode::LW_SHARED, || {
        find(false)
    })
    .or_else(|| {
        locked(shared, dictionary, pg_sys::LWLockMode::LW_EXCLUSIVE, || {
            find(true)
        })
    });
    // Remembered either way: a tag set that found no room is not looked for again.
    let n = number.unwrap_or(OTHER);
    KNOWN.with(|k| k.borrow_mut().insert(tags.clone(), n));
    n
}

/// The tag set a number stands for, in this database.
fn tag_set(shared: &Shared, number: u16) -> TagSet {
    let other = TagSet::other;
    match number {
        0 => TagSet::default(),
        OTHER => other(),
        n => locked(shared, PARTITIONS, pg_sys::LWLockMode::LW_SHARED, || {
            // SAFETY: numbers handed out are 1 + an index below tag_set_count.
            let entry = unsafe { &*shared.tag_sets.add(n as usize - 1) };
            std::str::from_utf8(&entry.bytes[..entry.len as usize])
                .ok()
                .and_then(TagSet::from_joined)
        })
        .unwrap_or_else(other),
    }
}

/// The partition of a slot's bucket, and where its probe starts in it.
fn place(shared: &Shared, s: &Slot) -> (usize, usize) {
    let h = hash_of(&(s.key, s.database.to_u32(), s.minute, s.tag_set, s.code));
    let partition = (h % PARTITIONS as u64) as usize;
    let start = ((h / PARTITIONS as u64) % shared.per_partition as u64) as usize;
    (partition, start)
}

/// Adds `counts` to the slot of `s`'s bucket in its partition (the caller holds the lock);
/// false when no slot is free within the probe distance.
///
/// # Safety
/// The caller holds the exclusive lock of `s`'s partition.
unsafe fn add_locked(shared: &Shared, partition: usize, start: usize, s: &Slot) -> bool {
    for step in 0..MAX_PROBE.min(shared.per_partition) {
        let i = (start + step) % shared.per_partition;
        // SAFETY: i < per_partition, in the caller's locked partition.
        let slot = unsafe { &mut *shared.slots.add(partition * shared.per_partition + i) };
        if !slot.live {
            *slot = *s;
            slot.live = true;
            return true;
        }
        if slot.key == s.key
            && slot.database == s.database
            && slot.minute == s.minute
            && slot.tag_set == s.tag_set
            && slot.code == s.code
        {
            slot.verifications = slot.verifications.saturating_add(s.verifications);
            slot.credits = slot.credits.saturating_add(s.credits);
            return true;
        }
    }
    false
}

/// Adds counts of this database to shared memory; false when there is no room.
pub fn add(bucket: &Bucket, counts: Counts) -> bool {
    let Some(shared) = shared() else {
        return false;
    };
    let s = Slot {
        key: bucket.key,
        database: database(),
        minute: bucket.minute,
        tag_set: tag_set_number(shared, &bucket.tags),
        code: bucket.code.index(),
        live: true,
        verifications: counts.verifications,
        credits: counts.credits,
    };
    let (partition, start) = place(shared, &s);
    locked(shared, partition, pg_sys::LWLockMode::LW_EXCLUSIVE, || {
        // SAFETY: we hold the partition's exclusive lock.
        unsafe { add_locked(shared, partition, start, &s) }
    })
}

/// The databases that have counts waiting.
pub fn databases_with_counts() -> Vec<Oid> {
    let Some(shared) = shared() else {
        return Vec::new();
    };
    let mut found: Vec<Oid> = Vec::new();
    for partition in 0..PARTITIONS {
        locked(shared, partition, pg_sys::LWLockMode::LW_SHARED, || {
            for i in 0..shared.per_partition {
                // SAFETY: i < per_partition, under the partition's lock.
                let slot = unsafe { &*shared.slots.add(partition * shared.per_partition + i) };
                if slot.live && !found.contains(&slot.database) {
                    found.push(slot.database);
                }
            }
        });
    }
    found
}

/// The flush worker notes the database it connected to; the launcher reads it.
pub fn note_connected(database: Oid) {
    if let Some(shared) = shared() {
        // SAFETY: an atomic in the segment's header.
        unsafe { &*shared.connected }.store(database.to_u32(), std::sync::atomic::Ordering::SeqCst);
    }
}

pub fn connected() -> Oid {
    shared().map_or(pg_sys::InvalidOid, |shared| {
        // SAFETY: an atomic in the segment's header.
        Oid::from(unsafe { &*shared.connected }.load(std::sync::atomic::Ordering::SeqCst))
    })
}

/// Forgets a database's counts (it was dropped: no worker can connect to it); how many
/// verifications they held.
pub fn discard(database: Oid) -> i64 {
    let Some(shared) = shared() else {
        return 0;
    };
    take_of(shared, database, None)
        .iter()
        .map(|s| s.verifications)
        .sum()
}

/// Takes this database's counts out of shared memory: those of minutes before `before` (the
/// minutes that are over, so that each is written once), or all.
pub fn take(before: Option<i32>) -> Vec<(Bucket, Counts)> {
    let Some(shared) = shared() else {
        return Vec::new();
    };
    take_of(shared, database(), before)
        .into_iter()
        .filter_map(|s| {
            Some((
                Bucket {
                    key: s.key,
                    minute: s.minute,
                    code: Code::from_index(s.code)?,
                    tags: tag_set(shared, s.tag_set),
                },
                Counts {
                    verifications: s.verifications,
                    credits: s.credits,
                },
            ))
        })
        .collect()
}

/// Takes the slots of `database` (of minutes before `before`, if given) out of shared memory.
fn take_of(shared: &Shared, database: Oid, before: Option<i32>) -> Vec<Slot> {
    let mut taken: Vec<Slot> = Vec::new();
    let mut others: Vec<Slot> = Vec::with_capacity(shared.per_partition);
    for partition in 0..PARTITIONS {
        others.clear();
        locked(shared, partition, pg_sys::LWLockMode::LW_EXCLUSIVE, || {
            // SAFETY: the partition's slots, under its exclusive lock.
            let slots = unsafe {
                std::slice::from_raw_parts_mut(
                    shared.slots.add(partition * shared.per_partition),
                    shared.per_partition,
                )
            };
            for slot in slots.iter().filter(|s| s.live) {
                if slot.database == database && before.is_none_or(|b| slot.minute < b) {
                    taken.push(*slot);
                } else {
                    others.push(*slot);
                }
            }
            // Rebuilt without the slots taken: no tombstones, and the others find their slots
            // again (they fit: the partition held them all before).
            // SAFETY: zeroed slots are free slots.
            unsafe { std::ptr::write_bytes(slots.as_mut_ptr(), 0, slots.len()) };
            for s in &others {
                let (_, start) = place(shared, s);
                // SAFETY: we hold the partition's exclusive lock.
                unsafe { add_locked(shared, partition, start, s) };
            }
        });
    }
    taken
}
