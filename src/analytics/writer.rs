//! Writes usage counts to `api_key.usage`: each bucket into its minute, hour and day rows at
//! once (so a minute row can be removed after `api_key.usage_minute_retention` with nothing
//! to roll up), owners and configurations taken from the key as it is now. One writer at a
//! time per database (`WriterLock`): rows are added to, never contended for.

use super::{local, shmem, Bucket, Counts};
use crate::error::{Error, OrRaise};
use crate::gucs::{USAGE_HOUR_RETENTION, USAGE_MINUTE_RETENTION};
use crate::pg::privileged::as_extension_owner;
use crate::pg::transaction_list::List;
use crate::pg::{bookkeeping, clock, spi};
use pgrx::prelude::*;
use pgrx::Uuid;

const UPSERT: &str = "
    INSERT INTO api_key.usage AS u
           (resolution, bucket, key_id, code, tags, reference_type, reference_id, config_id,
            verifications, credits_spent)
    SELECT r.resolution, pg_catalog.date_trunc(r.resolution, x.minute, 'UTC'), x.key_id, x.code,
           pg_catalog.string_to_array(x.tags, pg_catalog.chr(31)),
           k.reference_type, k.reference_id, k.config_id,
           pg_catalog.sum(x.verifications), pg_catalog.sum(x.credits)
      FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.uuid[]),
                      pg_catalog.unnest($2::pg_catalog.timestamptz[]),
                      pg_catalog.unnest($3::pg_catalog.text[]),
                      pg_catalog.unnest($4::pg_catalog.text[]),
                      pg_catalog.unnest($5::pg_catalog.int8[]),
                      pg_catalog.unnest($6::pg_catalog.int8[]))
             AS x(key_id, minute, code, tags, verifications, credits)
     CROSS JOIN (VALUES ('minute'::pg_catalog.text), ('hour'), ('day')) AS r(resolution)
      LEFT JOIN api_key.keys AS k ON k.id OPERATOR(pg_catalog.=) x.key_id
     GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
        ON CONFLICT (resolution, bucket, key_id, code, tags) DO UPDATE
       SET verifications = u.verifications OPERATOR(pg_catalog.+) excluded.verifications,
           credits_spent = u.credits_spent OPERATOR(pg_catalog.+) excluded.credits_spent";

const PURGE: &str = "
    DELETE FROM api_key.usage
     WHERE resolution OPERATOR(pg_catalog.=) $1 AND bucket OPERATOR(pg_catalog.<) $2";

/// One writer of usage rows per database: an advisory lock with a field PostgreSQL's SQL
/// functions never use (`objsubid` 0x7573 in `pg_locks`), held to the end of the writing
/// transaction.
fn lock_writer(wait: bool) -> bool {
    let tag = pg_sys::LOCKTAG {
        // SAFETY: reads a backend-global set at connection.
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        locktag_field2: 0,
        locktag_field3: 0,
        locktag_field4: 0x7573,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    };
    // SAFETY: a transaction-level lock of the user lock method, released at transaction end;
    // waiting is interruptible and deadlock-checked, and `dontWait` answers at once.
    let result = unsafe { pg_sys::LockAcquire(&tag, pg_sys::ExclusiveLock as i32, false, !wait) };
    result != pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL
}

/// Adds `counts` to the usage rows in the current transaction (the caller holds the writer
/// lock); the number of rows written.
fn write(counts: &[(Bucket, Counts)]) -> Result<i64, Error> {
    if counts.is_empty() {
        return Ok(0);
    }
    as_extension_owner(|| {
        Spi::connect_mut(|client| {
            use crate::pg::oids::*;
            let keys: Vec<Option<Uuid>> = counts
                .iter()
                .map(|(b, _)| (b.key != [0; 16]).then(|| Uuid::from_bytes(b.key)))
                .collect();
            let minutes = counts
                .iter()
                .map(|(b, _)| Some(b.minute as i64 * 60_000_000))
                .collect();
            let codes: Vec<&str> = counts.iter().map(|(b, _)| b.code.as_str()).collect();
            let tags: Vec<&str> = counts.iter().map(|(b, _)| b.tags.joined()).collect();
            let verifications: Vec<i64> = counts.iter().map(|(_, c)| c.verifications).collect();
            let credits: Vec<i64> = counts.iter().map(|(_, c)| c.credits).collect();
            let types = [
                UUIDARRAYOID,
                TIMESTAMPTZARRAYOID,
                TEXTARRAYOID,
                TEXTARRAYOID,
                INT8ARRAYOID,
                INT8ARRAYOID,
            ];
            let statement = spi::statement(client, UPSERT, &types, true)?;
            let written = client
                .update(
                    &*statement,
                    None,
                    &[
                        keys.into(),
                        clock::timestamptz_array(minutes),
                        codes.into(),
                        tags.into(),
                        verifications.into(),
                        credits.into(),
                    ],
                )
                .map_err(spi::failed)?;
            Ok(written.len() as i64)
        })
    })
}

/// Removes minute and hour rows older than their retention.
fn purge() -> Result<(), Error> {
    let now = clock::now();
    let minute = 60_000_000i64;
    as_extension_owner(|| {
        Spi::connect_mut(|client| {
            use crate::pg::oids::*;
            let statement = spi::statement(client, PURGE, &[TEXTOID, TIMESTAMPTZOID], true)?;
            for (resolution, kept) in [
                ("minute", USAGE_MINUTE_RETENTION.get()),
                ("hour", USAGE_HOUR_RETENTION.get()),
            ] {
                let before = now.saturating_sub(kept as i64 * minute);
                client
                    .update(
                        &*statement,
                        None,
                        &[resolution.into(), clock::timestamptz_arg(Some(before))],
                    )
                    .map_err(spi::failed)?;
            }
            Ok(())
        })
    })
}

/// Writes `counts` on the side of a COMMIT (`pg::bookkeeping`): never raising, and waiting
/// for another writer (or the tables' locks) at most `patience` (none at a COMMIT: a backend
/// that exits may wait a little). What was not written comes back.
pub fn write_quietly(
    counts: Vec<(Bucket, Counts)>,
    patience: std::time::Duration,
) -> Result<(), Vec<(Bucket, Counts)>> {
    let Some((usage, keys)) = relations() else {
        return Ok(()); // the extension was dropped: nothing to write to
    };
    let lock = move || {
        patiently(patience, || {
            // SAFETY: lock requests that answer at once; held to the end of the
            // subtransaction's parent when granted, like any lock a statement takes.
            lock_writer(false)
                && unsafe {
                    pg_sys::ConditionalLockRelationOid(usage, pg_sys::RowExclusiveLock as i32)
                        && pg_sys::ConditionalLockRelationOid(keys, pg_sys::AccessShareLock as i32)
                }
        })
    };
    if bookkeeping::quietly(lock, || write(&counts).map(|_| ())) {
        report_lost();
        Ok(())
    } else {
        Err(counts)
    }
}

/// Tries `lock` until it answers true or `patience` has passed (sleeping 10 ms between tries).
fn patiently(patience: std::time::Duration, lock: impl Fn() -> bool) -> bool {
    let until = std::time::Instant::now() + patience;
    loop {
        if lock() {
            return true;
        }
        if std::time::Instant::now() >= until {
            return false;
        }
        // SAFETY: a plain sleep; interrupts are checked by the caller's next statement.
        unsafe { pg_sys::pg_usleep(10_000) };
    }
}

/// The usage table and the keys table of this database, if the extension is installed here.
fn relations() -> Option<(pg_sys::Oid, pg_sys::Oid)> {
    // SAFETY: catalog lookups by name that answer InvalidOid when absent.
    unsafe {
        let schema = pg_sys::get_namespace_oid(c"api_key".as_ptr(), true);
        let usage = pg_sys::get_relname_relid(c"usage".as_ptr(), schema);
        let keys = pg_sys::get_relname_relid(c"keys".as_ptr(), schema);
        (schema != pg_sys::InvalidOid && usage != pg_sys::InvalidOid && keys != pg_sys::InvalidOid)
            .then_some((usage, keys))
    }
}

/// Counts lost for lack of memory go to the server log (never to a client).
fn report_lost() {
    let lost = local::take_lost();
    if lost > 0 {
        pgrx::log!(
            "api_key: {lost} verifications were not counted in the usage analytics: too many buckets were waiting (see api_key.usage_slots)"
        );
    }
}

thread_local! {
    /// Counts the current transaction took out of memory to write: put back if it rolls back
    /// (the rows it wrote roll back with it).
    static TAKEN: &'static List<Vec<(Bucket, Counts)>> = List::new(|_| {}, |batches| {
        for batch in batches {
            put_back(batch);
        }
    });
}

/// Writes in the current transaction the counts of this database waiting in shared memory
/// (`shared`) and in this backend (`own`), then applies the retention settings; the rows
/// written. Waits for another writer at most `patience` (None: as long as it takes), and
/// then writes nothing (`Ok(None)`). Counts taken out come back if the transaction rolls back.
pub fn flush(
    shared: bool,
    own: bool,
    patience: Option<std::time::Duration>,
) -> Result<Option<i64>, Error> {
    if relations().is_none() {
        if shared {
            let _ = shmem::take(); // the extension is not (or no longer) here
        }
        return Ok(Some(0));
    }
    let locked = match patience {
        None => lock_writer(true),
        Some(patience) => patiently(patience, || lock_writer(false)),
    };
    if !locked {
        return Ok(None);
    }
    let mut counts = if shared { shmem::take() } else { Vec::new() };
    if own {
        counts.extend(local::take_all());
    }
    TAKEN.with(|t| t.push(counts.clone()));
    let written = write(&counts)?;
    purge()?;
    report_lost();
    Ok(Some(written))
}

fn put_back(counts: Vec<(Bucket, Counts)>) {
    for (bucket, c) in counts {
        super::add(&bucket, c);
    }
}

/// Write the usage counts waiting in memory now, instead of at the next flush, and apply the
/// retention settings. Returns the number of rows written (a count goes to its minute, hour
/// and day rows). The service (and superusers) write the counts waiting in shared memory and in
/// their own backend; other callers only their own backend's (without preloading, the
/// verifications this connection made). Waits for a flush in progress. 25006 in a read-only
/// transaction.
#[pg_extern(volatile, parallel_unsafe)]
fn api_key_flush_usage() -> i64 {
    if !bookkeeping::can_write() {
        Error::new(
            PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            "api_key_flush_usage needs a read-write transaction",
        )
        .hint("Call it on the primary, outside READ ONLY transactions.")
        .raise();
    }
    let service = crate::access::Principal::for_policy().is_some_and(|p| p.is_service());
    flush(service, true, None).or_raise().unwrap_or(0)
}
