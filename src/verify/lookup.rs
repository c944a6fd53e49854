//! Reading a key for verification straight from the two primary-key indexes
//! (`key_secrets.lookup`, then `keys.id`), without SQL: no parse, no plan, no executor start-up.
//! The secret is read index-only when its heap page is all-visible (the index includes what
//! verification needs of it), as PostgreSQL's index-only scans do.
//! This is the part of every verification, valid or not, that touches tables, so it is the
//! part that decides how close `api_key_verify` comes to a bare indexed SELECT.
//!
//! Relations are found by name in schema `api_key` on every call (two syscache probes each),
//! so a dropped and re-created extension is picked up at once; column numbers are found by
//! name and cached per relation OID.

use crate::calendar::Interval;
use pgrx::pg_sys::{self, Datum, Oid};
use pgrx::FromDatum;
use std::cell::RefCell;
use std::ffi::CStr;

/// What verification needs of a key, read under the statement's snapshot.
pub struct StoredKey {
    pub id: [u8; 16],
    pub enabled: bool,
    /// The earlier of the key's and the secret's expiry (microseconds, Postgres epoch).
    pub expires_at: Option<i64>,
    pub argon2_hash: Option<String>,
    pub reference_type: String,
    pub reference_id: String,
    pub config_id: String,
    pub name: Option<String>,
    /// Detoasted copies in the current memory context, ready to return.
    pub permissions: Option<Datum>,
    pub metadata: Option<Datum>,
    pub remaining: Option<i64>,
    pub refill_amount: Option<i64>,
    pub rate_limit: Option<(i32, Interval)>,
    pub refill_interval: Option<Interval>,
    pub refill_anchor: Option<i64>,
    pub last_refill_at: Option<i64>,
    pub created_at: i64,
    /// Changes with every management change of the key: a spend checks it is still the same.
    pub updated_at: i64,
    pub last_used_at: Option<i64>,
}

#[derive(Clone, Copy)]
struct SecretColumns {
    relid: Oid,
    argon2_hash: i32,
}

#[derive(Clone, Copy)]
struct KeyColumns {
    relid: Oid,
    config_id: i32,
    reference_type: i32,
    reference_id: i32,
    name: i32,
    enabled: i32,
    expires_at: i32,
    permissions: i32,
    metadata: i32,
    remaining: i32,
    refill_amount: i32,
    rate_limit_enabled: i32,
    rate_limit_max: i32,
    rate_limit_window: i32,
    refill_interval: i32,
    refill_anchor: i32,
    last_refill_at: i32,
    created_at: i32,
    updated_at: i32,
    last_used_at: i32,
}

thread_local! {
    static COLUMNS: RefCell<Option<(SecretColumns, KeyColumns)>> = const { RefCell::new(None) };
}

unsafe fn attnum(relid: Oid, name: &CStr) -> i32 {
    // SAFETY: plain syscache lookup.
    let n = unsafe { pg_sys::get_attnum(relid, name.as_ptr()) } as i32;
    if n <= 0 {
        crate::error::Error::new(
            pgrx::PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
            format!(
                "api_key: column {} is missing; reinstall the extension",
                name.to_string_lossy()
            ),
        )
        .raise();
    }
    n
}

/// A column added by a later release than the oldest schema this library may meet: between
/// installing a new package and `ALTER EXTENSION api_key UPDATE`, a database still has the
/// previous release's tables, and verification must keep working meanwhile (0 = absent).
unsafe fn attnum_since_upgrade(relid: Oid, name: &CStr) -> i32 {
    // SAFETY: plain syscache lookup.
    (unsafe { pg_sys::get_attnum(relid, name.as_ptr()) } as i32).max(0)
}

fn columns(secrets: Oid, keys: Oid) -> (SecretColumns, KeyColumns) {
    if let Some(mut c) = COLUMNS.with(|c| *c.borrow()) {
        if c.0.relid == secrets && c.1.relid == keys {
            // Looked up on every call (one syscache probe): ALTER EXTENSION UPDATE adds it to
            // the same relation, and a rolled-back update takes it away again.
            // SAFETY: plain syscache lookup on a relation that exists.
            c.1.refill_anchor = unsafe { attnum_since_upgrade(keys, c"refill_anchor") };
            return c;
        }
    }
    // SAFETY: syscache lookups on relations that exist (their OIDs were just resolved).
    let c = unsafe {
        (
            SecretColumns {
                relid: secrets,
                argon2_hash: attnum(secrets, c"argon2_hash"),
            },
            KeyColumns {
                relid: keys,
                config_id: attnum(keys, c"config_id"),
                reference_type: attnum(keys, c"reference_type"),
                reference_id: attnum(keys, c"reference_id"),
                name: attnum(keys, c"name"),
                enabled: attnum(keys, c"enabled"),
                expires_at: attnum(keys, c"expires_at"),
                permissions: attnum(keys, c"permissions"),
                metadata: attnum(keys, c"metadata"),
                remaining: attnum(keys, c"remaining"),
                refill_amount: attnum(keys, c"refill_amount"),
                rate_limit_enabled: attnum(keys, c"rate_limit_enabled"),
                rate_limit_max: attnum(keys, c"rate_limit_max"),
                rate_limit_window: attnum(keys, c"rate_limit_window"),
                refill_interval: attnum(keys, c"refill_interval"),
                refill_anchor: attnum_since_upgrade(keys, c"refill_anchor"),
                last_refill_at: attnum(keys, c"last_refill_at"),
                created_at: attnum(keys, c"created_at"),
                updated_at: attnum(keys, c"updated_at"),
                last_used_at: attnum(keys, c"last_used_at"),
            },
        )
    };
    COLUMNS.with(|cell| *cell.borrow_mut() = Some(c));
    c
}

fn relation(namespace: Oid, name: &CStr) -> Oid {
    // SAFETY: plain syscache lookup.
    let oid = unsafe { pg_sys::get_relname_relid(name.as_ptr(), namespace) };
    if oid == pg_sys::InvalidOid {
        crate::error::Error::new(
            pgrx::PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!(
                "api_key: relation api_key.{} is missing; reinstall the extension",
                name.to_string_lossy()
            ),
        )
        .raise();
    }
    oid
}

/// Opens `heap` and `index` and starts a scan for `index column 1 = value` under the
/// statement's snapshot; `want_index_tuple` asks for index-only reads.
///
/// # Safety
/// `index` must be an index of `heap` whose first column compares with `eq_proc`, and
/// `value` a datum of that column's type.
unsafe fn begin_equality_scan(
    heap_oid: Oid,
    index_oid: Oid,
    eq_proc: u32,
    value: Datum,
    want_index_tuple: bool,
) -> (pg_sys::Relation, pg_sys::Relation, pg_sys::IndexScanDesc) {
    unsafe {
        let heap = pg_sys::table_open(heap_oid, pg_sys::AccessShareLock as i32);
        let index = pg_sys::index_open(index_oid, pg_sys::AccessShareLock as i32);
        let snapshot = if pg_sys::ActiveSnapshotSet() {
            pg_sys::GetActiveSnapshot()
        } else {
            pg_sys::GetTransactionSnapshot()
        };
        // index_rescan copies the key into the scan, so a local is enough.
        let mut key: pg_sys::ScanKeyData = std::mem::zeroed();
        pg_sys::ScanKeyInit(
            &mut key,
            1,
            pg_sys::BTEqualStrategyNumber as u16,
            pg_sys::Oid::from(eq_proc),
            value,
        );
        let scan = crate::pg::compat::index_beginscan(heap, index, snapshot, 1, 0);
        (*scan).xs_want_itup = want_index_tuple;
        pg_sys::index_rescan(scan, &mut key, 1, std::ptr::null_mut(), 0);
        (heap, index, scan)
    }
}

/// One open index scan over a unique index, yielding at most one visible row.
struct UniqueProbe {
    heap: pg_sys::Relation,
    index: pg_sys::Relation,
    slot: *mut pg_sys::TupleTableSlot,
    found: bool,
}

impl UniqueProbe {
    /// # Safety
    /// `heap`/`index` must be a table and its unique single-column index whose column compares
    /// with `eq_proc`; `value` must be a datum of that column's type.
    unsafe fn run(heap_oid: Oid, index_oid: Oid, eq_proc: u32, value: Datum) -> Self {
        unsafe {
            let (heap, index, scan) =
                begin_equality_scan(heap_oid, index_oid, eq_proc, value, false);
            let slot = pg_sys::table_slot_create(heap, std::ptr::null_mut());
            let found =
                pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, slot);
            pg_sys::index_endscan(scan);
            UniqueProbe {
                heap,
                index,
                slot,
                found,
            }
        }
    }

    fn get(&self, attnum: i32) -> Option<Datum> {
        let mut isnull = false;
        // SAFETY: the slot holds a row of `heap` (found = true) and attnum is one of its columns.
        let d = unsafe { pg_sys::slot_getattr(self.slot, attnum, &mut isnull) };
        (!isnull).then_some(d)
    }

    fn text(&self, attnum: i32) -> Option<String> {
        // SAFETY: the column is of type text.
        self.get(attnum)
            .and_then(|d| unsafe { String::from_datum(d, false) })
    }

    fn int8(&self, attnum: i32) -> Option<i64> {
        self.get(attnum).map(|d| d.value() as i64)
    }

    fn bool(&self, attnum: i32) -> Option<bool> {
        self.get(attnum).map(|d| d.value() != 0)
    }

    /// A detoasted copy that outlives the slot.
    fn varlena_copy(&self, attnum: i32) -> Option<Datum> {
        // SAFETY: the column is a varlena type (jsonb).
        self.get(attnum)
            .map(|d| unsafe { Datum::from(pg_sys::pg_detoast_datum_copy(d.cast_mut_ptr())) })
    }

    /// An interval as PostgreSQL stores it: months, days and microseconds.
    fn interval(&self, attnum: i32) -> Option<Interval> {
        self.get(attnum).map(|d| {
            // SAFETY: the column is of type interval (passed by reference).
            let i = unsafe { *d.cast_mut_ptr::<pg_sys::Interval>() };
            Interval::new(i.month, i.day, i.time)
        })
    }
}

/// What the `key_secrets` primary-key index holds of a secret (its INCLUDE columns).
struct Secret {
    key_id: [u8; 16],
    argon2: bool,
    expires_at: Option<i64>,
    argon2_hash: Option<String>,
}

/// Index-only probe of `key_secrets` by `lookup`: the heap is read only when the visibility
/// map does not vouch for the page, or for the Argon2 hash (not in the index).
///
/// # Safety
/// `heap_oid`/`index_oid` must be `api_key.key_secrets` and its primary key
/// `(lookup) INCLUDE (key_id, algorithm, expires_at)`; `lookup` a bytea datum.
unsafe fn probe_secret(
    heap_oid: Oid,
    index_oid: Oid,
    lookup: Datum,
    argon2_hash_att: i32,
) -> Option<Secret> {
    unsafe {
        let (heap, index, scan) =
            begin_equality_scan(heap_oid, index_oid, pg_sys::F_BYTEAEQ, lookup, true);
        let slot = pg_sys::table_slot_create(heap, std::ptr::null_mut());
        let mut vm_buffer: pg_sys::Buffer = pg_sys::InvalidBuffer as pg_sys::Buffer;
        let mut found = None;
        loop {
            let tid = pg_sys::index_getnext_tid(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tid.is_null() {
                break;
            }
            let block = ((*tid).ip_blkid.bi_hi as u32) << 16 | (*tid).ip_blkid.bi_lo as u32;
            let all_visible = pg_sys::visibilitymap_get_status(heap, block, &mut vm_buffer)
                & pg_sys::VISIBILITYMAP_ALL_VISIBLE as u8
                != 0;
            let mut fetched = false;
            if !all_visible {
                if !pg_sys::index_fetch_heap(scan, slot) {
                    continue; // this index entry points at a version we may not see
                }
                fetched = true;
            }
            let mut values = [Datum::from(0); 4];
            let mut nulls = [true; 4];
            pg_sys::index_deform_tuple(
                (*scan).xs_itup,
                (*scan).xs_itupdesc,
                values.as_mut_ptr(),
                nulls.as_mut_ptr(),
            );
            if nulls[1] {
                break;
            }
            let key_id: [u8; 16] = *values[1].cast_mut_ptr::<[u8; 16]>();
            let argon2 =
                !nulls[2] && String::from_datum(values[2], false).as_deref() == Some("argon2id");
            let expires_at = (!nulls[3]).then(|| values[3].value() as i64);
            let mut argon2_hash = None;
            if argon2 && (fetched || pg_sys::index_fetch_heap(scan, slot)) {
                let mut isnull = false;
                let d = pg_sys::slot_getattr(slot, argon2_hash_att, &mut isnull);
                argon2_hash = if isnull {
                    None
                } else {
                    String::from_datum(d, false)
                };
            }
            found = Some(Secret {
                key_id,
                argon2,
                expires_at,
                argon2_hash,
            });
            break;
        }
        if vm_buffer != pg_sys::InvalidBuffer as pg_sys::Buffer {
            pg_sys::ReleaseBuffer(vm_buffer);
        }
        pg_sys::index_endscan(scan);
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::index_close(index, pg_sys::NoLock as i32);
        pg_sys::table_close(heap, pg_sys::NoLock as i32);
        found
    }
}

impl Drop for UniqueProbe {
    fn drop(&mut self) {
        // SAFETY: releases what `run` acquired; the lock is kept until the transaction ends,
        // as for any relation a query reads.
        unsafe {
            pg_sys::ExecDropSingleTupleTableSlot(self.slot);
            pg_sys::index_close(self.index, pg_sys::NoLock as i32);
            pg_sys::table_close(self.heap, pg_sys::NoLock as i32);
        }
    }
}

/// The key whose secret has index value `lookup` (a SHA-256 digest), if any is visible.
pub fn find(lookup: &[u8; 32]) -> Option<StoredKey> {
    // SAFETY: catalog lookups and index probes on the extension's own tables, with datums of
    // the indexed columns' types (bytea, uuid) built just here.
    unsafe {
        let namespace = pg_sys::get_namespace_oid(c"api_key".as_ptr(), true);
        if namespace == pg_sys::InvalidOid {
            return None;
        }
        let secrets = relation(namespace, c"key_secrets");
        let keys = relation(namespace, c"keys");
        let (sc, kc) = columns(secrets, keys);

        // A Vec<u8> or a Uuid always converts to a datum: the expects cannot fire.
        let lookup_datum = pgrx::IntoDatum::into_datum(lookup.to_vec()).expect("bytea datum");
        let secret = probe_secret(
            secrets,
            relation(namespace, c"key_secrets_pkey"),
            lookup_datum,
            sc.argon2_hash,
        )?;
        let (id, argon2, argon2_hash, secret_expires) = (
            secret.key_id,
            secret.argon2,
            secret.argon2_hash,
            secret.expires_at,
        );
        let id_datum = pgrx::IntoDatum::into_datum(pgrx::Uuid::from_bytes(id)).expect("uuid datum");

        let key = UniqueProbe::run(
            keys,
            relation(namespace, c"keys_pkey"),
            pg_sys::F_UUID_EQ,
            id_datum,
        );
        if !key.found {
            return None;
        }
        let key_expires = key.int8(kc.expires_at);
        let expires_at = match (key_expires, secret_expires) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let rate_limit = if key.bool(kc.rate_limit_enabled).unwrap_or(false) {
            Some((
                key.get(kc.rate_limit_max)
                    .map_or(i32::MAX, |d| d.value() as i32),
                key.interval(kc.rate_limit_window).unwrap_or_default(),
            ))
        } else {
            None
        };
        Some(StoredKey {
            id,
            enabled: key.bool(kc.enabled).unwrap_or(false),
            expires_at,
            argon2_hash: if argon2 {
                Some(argon2_hash.unwrap_or_default())
            } else {
                None
            },
            reference_type: key.text(kc.reference_type).unwrap_or_default(),
            reference_id: key.text(kc.reference_id).unwrap_or_default(),
            config_id: key.text(kc.config_id).unwrap_or_default(),
            name: key.text(kc.name),
            permissions: key.varlena_copy(kc.permissions),
            metadata: key.varlena_copy(kc.metadata),
            remaining: key.int8(kc.remaining),
            refill_amount: key.int8(kc.refill_amount),
            rate_limit,
            refill_interval: key.interval(kc.refill_interval),
            refill_anchor: (kc.refill_anchor > 0)
                .then(|| key.int8(kc.refill_anchor))
                .flatten(),
            last_refill_at: key.int8(kc.last_refill_at),
            created_at: key.int8(kc.created_at).unwrap_or(0),
            updated_at: key.int8(kc.updated_at).unwrap_or(0),
            last_used_at: key.int8(kc.last_used_at),
        })
    }
}

/// The end of `key_id`'s window in the table `api_key.rate_limit_windows`, if it has a row
/// there, read under the newest snapshot rather than the statement's: a repeatable-read
/// transaction must still see a window that another transaction committed after it began
/// (`usage.rs` waited for that transaction to end before asking).
pub fn window_end_in_table(key_id: pgrx::Uuid) -> Option<i64> {
    // SAFETY: catalog lookups and a probe of the extension's own table by its primary key with
    // a uuid datum built here; the pushed snapshot is popped before returning (an error in
    // between aborts the transaction, which resets the snapshot stack).
    unsafe {
        let namespace = pg_sys::get_namespace_oid(c"api_key".as_ptr(), true);
        if namespace == pg_sys::InvalidOid {
            return None;
        }
        let heap = relation(namespace, c"rate_limit_windows");
        let index = relation(namespace, c"rate_limit_windows_pkey");
        let window_end = attnum(heap, c"window_end");
        // A Uuid always converts to a datum: the expect cannot fire.
        let id = pgrx::IntoDatum::into_datum(key_id).expect("uuid datum");
        pg_sys::PushActiveSnapshot(pg_sys::GetLatestSnapshot());
        let probe = UniqueProbe::run(heap, index, pg_sys::F_UUID_EQ, id);
        let end = if probe.found {
            probe.int8(window_end)
        } else {
            None
        };
        drop(probe);
        pg_sys::PopActiveSnapshot();
        end
    }
}
