//! Time: which clock each check uses, and timestamps and intervals between PostgreSQL and
//! `calendar`.
//!
//! Every check at verification (expiry, rate-limit windows, refills) reads the wall clock when
//! the verification runs (`GetCurrentTimestamp`, i.e. `clock_timestamp()`), never the start of
//! the transaction: a key that expired half a second ago is expired, however old the
//! transaction verifying it. Management calls read the same clock once per call and use that
//! one reading for every time they write (`created_at`, `updated_at`, `expires_at`).

use crate::calendar::Interval;
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::{self, Datum};
use pgrx::IntoDatum;

/// The wall clock, in microseconds since 2000-01-01 UTC.
pub fn now() -> i64 {
    // SAFETY: reads the system clock.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// A PostgreSQL interval value as `calendar` counts it.
pub fn interval_from(iv: pgrx::datum::Interval) -> Interval {
    Interval::new(iv.months(), iv.days(), iv.micros())
}

/// A palloc'd interval datum: months, days and microseconds as given (PostgreSQL allows
/// mixed signs, which pgrx's constructor refuses).
pub fn interval_datum(iv: Interval) -> Datum {
    // SAFETY: palloc returns memory for one Interval in the current memory context.
    unsafe {
        let ptr =
            pg_sys::palloc(std::mem::size_of::<pg_sys::Interval>()).cast::<pg_sys::Interval>();
        ptr.write(pg_sys::Interval {
            time: iv.micros,
            day: iv.days,
            month: iv.months,
        });
        Datum::from(ptr)
    }
}

/// A timestamptz query argument (NULL for None).
pub fn timestamptz_arg(ts: Option<i64>) -> DatumWithOid<'static> {
    match ts {
        // SAFETY: a timestamptz is an int8 passed by value.
        Some(ts) => unsafe { DatumWithOid::new(ts, pg_sys::TIMESTAMPTZOID) },
        None => DatumWithOid::null_oid(pg_sys::TIMESTAMPTZOID),
    }
}

/// An interval query argument (NULL for None).
pub fn interval_arg(iv: Option<Interval>) -> DatumWithOid<'static> {
    match iv {
        // SAFETY: the datum is a palloc'd Interval, the type named.
        Some(iv) => unsafe {
            DatumWithOid::new(super::RawDatum(interval_datum(iv)), pg_sys::INTERVALOID)
        },
        None => DatumWithOid::null_oid(pg_sys::INTERVALOID),
    }
}

/// A timestamptz result column as microseconds.
pub fn micros_of(ts: pgrx::datum::TimestampWithTimeZone) -> i64 {
    pg_sys::TimestampTz::from(ts)
}

/// Text of a timestamp for messages, as PostgreSQL prints it in the session's time zone.
pub fn display(ts: i64) -> String {
    // SAFETY: timestamptz_out of a by-value timestamptz returns a palloc'd C string.
    unsafe {
        pgrx::direct_function_call::<&std::ffi::CStr>(pg_sys::timestamptz_out, &[ts.into_datum()])
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// Text of an interval for messages, as PostgreSQL prints it.
pub fn display_interval(iv: Interval) -> String {
    // SAFETY: interval_out of a palloc'd interval returns a palloc'd C string.
    unsafe {
        pgrx::direct_function_call::<&std::ffi::CStr>(
            pg_sys::interval_out,
            &[Some(interval_datum(iv))],
        )
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default()
    }
}

/// A `timestamptz[]` argument (pgrx has no IntoDatum for arrays of raw timestamps); a time out
/// of PostgreSQL's range becomes NULL.
pub fn timestamptz_array(times: Vec<Option<i64>>) -> DatumWithOid<'static> {
    let values: Vec<Option<pgrx::datum::TimestampWithTimeZone>> = times
        .into_iter()
        .map(|t| t.and_then(|t| pgrx::datum::TimestampWithTimeZone::try_from(t).ok()))
        .collect();
    values.into()
}
