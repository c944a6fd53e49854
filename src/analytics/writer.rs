//! Writes usage counts to `api_key.usage` as minute rows, owners and configurations taken from
//! the key as it is now, and rolls completed hours up into hour rows and completed days into
//! day rows (`api_key.usage_rollup` says how far; the views add up the rest when read). A
//! minute that arrives after its hour was rolled up (a backend that held it long) goes into
//! the hour and day rows too, so every resolution stays exact. One writer at a time per
//! database (`WriterLock`): rows are added to, never contended for.
//!
//! One row per key and minute is the least that "per key, per minute" can cost; writing the
//! hour and day rows at every flush tripled it, and was most of the analytics' cost.

use super::{local, shmem, Bucket, Counts};
use crate::error::{Error, OrRaise};
use crate::gucs::{USAGE_HOUR_RETENTION, USAGE_MINUTE_RETENTION};
use crate::pg::privileged::as_extension_owner;
use crate::pg::transaction_list::List;
use crate::pg::{bookkeeping, clock, spi};
use pgrx::prelude::*;
use pgrx::Uuid;

// Minute rows; hour and day rows too for minutes already rolled up.
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
      JOIN (VALUES ('minute'::pg_catalog.text), ('hour'), ('day')) AS r(resolution)
        ON r.resolution OPERATOR(pg_catalog.=) 'minute'
        OR (r.resolution OPERATOR(pg_catalog.=) 'hour' AND x.minute OPERATOR(pg_catalog.<) $7)
        OR (r.resolution OPERATOR(pg_catalog.=) 'day'
            AND pg_catalog.date_trunc('hour', x.minute, 'UTC') OPERATOR(pg_catalog.<) $8)
      LEFT JOIN api_key.keys AS k ON k.id OPERATOR(pg_catalog.=) x.key_id
     GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
        ON CONFLICT (resolution, bucket, key_id, code, tags) DO UPDATE
       SET verifications = u.verifications OPERATOR(pg_catalog.+) excluded.verifications,
           credits_spent = u.credits_spent OPERATOR(pg_catalog.+) excluded.credits_spent";

const ROLLED_UP: &str = "
    SELECT COALESCE((SELECT r.through FROM api_key.usage_rollup AS r WHERE r.resolution OPERATOR(pg_catalog.=) 'hour'), '-infinity'),
           COALESCE((SELECT r.through FROM api_key.usage_rollup AS r WHERE r.resolution OPERATOR(pg_catalog.=) 'day'), '-infinity')";

// Rows of resolution $1 in [$2, $3) added up into rows of resolution $4.
const ROLL_UP: &str = "
    INSERT INTO api_key.usage AS u
           (resolution, bucket, key_id, code, tags, reference_type, reference_id, config_id,
            verifications, credits_spent)
    SELECT $4, pg_catalog.date_trunc($4, s.bucket, 'UTC'), s.key_id, s.code, s.tags,
           pg_catalog.max(s.reference_type), pg_catalog.max(s.reference_id), pg_catalog.max(s.config_id),
           pg_catalog.sum(s.verifications), pg_catalog.sum(s.credits_spent)
      FROM api_key.usage AS s
     WHERE s.resolution OPERATOR(pg_catalog.=) $1
       AND s.bucket OPERATOR(pg_catalog.>=) $2 AND s.bucket OPERATOR(pg_catalog.<) $3
     GROUP BY 2, 3, 4, 5
        ON CONFLICT (resolution, bucket, key_id, code, tags) DO UPDATE
       SET verifications = u.verifications OPERATOR(pg_catalog.+) excluded.verifications,
           credits_spent = u.credits_spent OPERATOR(pg_catalog.+) excluded.credits_spent";

const ROLLED_UP_TO: &str = "
    INSERT INTO api_key.usage_rollup AS r (resolution, through) VALUES ($1, $2)
        ON CONFLICT (resolution) DO UPDATE SET through = excluded.through";

const PURGE: &str = "
    DELETE FROM api_key.usage
     WHERE resolution OPERATOR(pg_catalog.=) $1 AND bucket OPERATOR(pg_catalog.<) $2";

/// Hours are rolled up once they ended this long ago (microseconds): the minute counts of an
/// hour reach the table within a flush interval after each minute ends; later ones are added
/// to the hour and day rows directly.
const ROLLUP_LAG: i64 = 120_000_000;
const HOUR: i64 = 3_600_000_000;
const DAY: i64 = 24 * HOUR;

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
                TIMESTAMPTZOID,
                TIMESTAMPTZOID,
            ];
            let (hour_through, day_through) = rolled_up(client)?;
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
                        at(hour_through),
                        at(day_through),
                    ],
                )
                .map_err(spi::failed)?;
            Ok(written.len() as i64)
        })
    })
}

/// How far hour and day rows are rolled up (`i64::MIN`: not at all).
fn rolled_up(client: &mut pgrx::spi::SpiClient<'_>) -> Result<(i64, i64), Error> {
    let statement = spi::statement(client, ROLLED_UP, &[], true)?;
    let rows = client
        .update(&*statement, Some(1), &[])
        .map_err(spi::failed)?;
    let row = rows.first();
    let through = |i: usize| {
        row.get::<pgrx::datum::TimestampWithTimeZone>(i)
            .ok()
            .flatten()
            .map_or(i64::MIN, clock::micros_of)
    };
    Ok((through(1), through(2)))
}

/// A timestamptz argument; `i64::MIN` (nothing rolled up yet) is -infinity.
fn at(micros: i64) -> pgrx::datum::DatumWithOid<'static> {
    clock::timestamptz_arg(Some(micros))
}

/// Rolls completed hours up into hour rows and completed days into day rows, then removes
/// minute and hour rows older than their retention that are rolled up.
fn roll_up_and_purge() -> Result<(), Error> {
    let now = clock::now();
    let minute = 60_000_000i64;
    as_extension_owner(|| {
        Spi::connect_mut(|client| {
            use crate::pg::oids::*;
            let (hour_from, day_from) = rolled_up(client)?;
            let hour_until = (now - ROLLUP_LAG).div_euclid(HOUR) * HOUR;
            let day_until = hour_until.div_euclid(DAY) * DAY;
            let roll = spi::statement(
                client,
                ROLL_UP,
                &[TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID, TEXTOID],
                true,
            )?;
            let mark = spi::statement(client, ROLLED_UP_TO, &[TEXTOID, TIMESTAMPTZOID], true)?;
            for (from, until, source, target) in [
                (hour_from, hour_until, "minute", "hour"),
                (day_from, day_until, "hour", "day"),
            ] {
                if until <= from {
                    continue;
                }
                client
                    .update(
                        &*roll,
                        None,
                        &[source.into(), at(from), at(until), target.into()],
                    )
                    .map_err(spi::failed)?;
                client
                    .update(&*mark, None, &[target.into(), at(until)])
                    .map_err(spi::failed)?;
            }
            let purge = spi::statement(client, PURGE, &[TEXTOID, TIMESTAMPTZOID], true)?;
            for (resolution, kept, rolled_until) in [
                (
                    "minute",
                    USAGE_MINUTE_RETENTION.get(),
                    hour_until.max(hour_from),
                ),
                ("hour", USAGE_HOUR_RETENTION.get(), day_until.max(day_from)),
            ] {
                let before = now.saturating_sub(kept as i64 * minute).min(rolled_until);
                client
                    .update(&*purge, None, &[resolution.into(), at(before)])
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
/// (`shared`: of the minutes before `before`, if given) and in this backend (`own`), then rolls
/// up and applies the retention settings; the rows written. Waits for another writer at most
/// `patience` (None: as long as it takes), and then writes nothing (`Ok(None)`). Counts taken
/// out come back if the transaction rolls back.
pub fn flush(
    shared: bool,
    before: Option<i32>,
    own: bool,
    patience: Option<std::time::Duration>,
) -> Result<Option<i64>, Error> {
    if relations().is_none() {
        if shared {
            let _ = shmem::take(None); // the extension is not (or no longer) here
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
    let mut counts = if shared {
        shmem::take(before)
    } else {
        Vec::new()
    };
    if own {
        counts.extend(local::take_all());
    }
    TAKEN.with(|t| t.push(counts.clone()));
    let written = write(&counts)?;
    roll_up_and_purge()?;
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
    flush(service, None, true, None).or_raise().unwrap_or(0)
}
