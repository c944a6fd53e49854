//! Calendar arithmetic on PostgreSQL timestamps, in UTC: `timestamp + interval` exactly as
//! PostgreSQL computes it for `timestamp` (months first, clamped to the month's last day; then
//! days; then the time part), with every overflow checked. A month is a calendar month, not
//! 30 days. UTC, not the session's `TimeZone`: a key's windows and refills must not depend on
//! which client's session happens to verify it.
//!
//! Timestamps are microseconds since 2000-01-01 00:00 UTC (PostgreSQL's epoch); `i64::MIN` and
//! `i64::MAX` are `-infinity` and `infinity`. Pure: tested against PostgreSQL by `tests.rs`.

/// A PostgreSQL interval: months, days and microseconds, kept apart as PostgreSQL keeps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Interval {
    pub months: i32,
    pub days: i32,
    pub micros: i64,
}

pub const MICROS_PER_DAY: i64 = 86_400_000_000;
const POSTGRES_EPOCH_JDATE: i64 = 2_451_545; // date2j(2000, 1, 1)
/// The first and one-past-last valid timestamps (4714-11-24 BC and 294277-01-01 AD).
const MIN_TIMESTAMP: i64 = -211_813_488_000_000_000;
const END_TIMESTAMP: i64 = 9_223_371_331_200_000_000;

pub const NEGATIVE_INFINITY: i64 = i64::MIN;
pub const INFINITY: i64 = i64::MAX;

impl Interval {
    pub const fn new(months: i32, days: i32, micros: i64) -> Self {
        Interval {
            months,
            days,
            micros,
        }
    }

    pub const fn years(n: i32) -> Self {
        Interval::new(n * 12, 0, 0)
    }

    /// The length PostgreSQL uses to compare intervals (`interval_cmp`): a month counts as 30
    /// days and a day as 24 hours. Only for ordering and bounds, never for arithmetic.
    pub fn comparable(&self) -> i128 {
        (self.months as i128 * 30 + self.days as i128) * MICROS_PER_DAY as i128
            + self.micros as i128
    }

    /// Strictly positive as PostgreSQL compares intervals (`interval > '0'`).
    pub fn is_positive(&self) -> bool {
        self.comparable() > 0
    }

    /// Does any part (months, days, time) count backwards? `'1 month -30 days'` does: its
    /// length depends on the month it starts in, and is negative from some dates.
    pub fn has_negative_part(&self) -> bool {
        self.months < 0 || self.days < 0 || self.micros < 0
    }

    /// Is this at least as long as `other` whatever date it starts on? A month lasts 28 to 31
    /// days, so `'1 month'` is at least `'28 days'` but not at least `'30 days'`. Sound, and
    /// exact when the months agree. For intervals without negative parts.
    pub fn at_least(&self, other: &Interval) -> bool {
        let rest = |i: &Interval| i.days as i128 * MICROS_PER_DAY as i128 + i.micros as i128;
        let extra = rest(self) - rest(other);
        let months = self.months as i128 - other.months as i128;
        let day = MICROS_PER_DAY as i128;
        if months >= 0 {
            months * 28 * day + extra >= 0
        } else {
            extra >= -months * 31 * day
        }
    }
}

/// Julian day number of a Gregorian date (PostgreSQL's `date2j`).
const fn date2j(year: i64, month: i64, day: i64) -> i64 {
    let (mut y, mut m) = (year, month);
    if m > 2 {
        m += 1;
        y += 4800;
    } else {
        m += 13;
        y += 4799;
    }
    let century = y / 100;
    let mut julian = y * 365 - 32167;
    julian += y / 4 - century + century / 4;
    julian += 7834 * m / 256 + day;
    julian
}

/// Gregorian date of a Julian day number (PostgreSQL's `j2date`).
fn j2date(jd: i64) -> (i64, i64, i64) {
    let mut julian = jd + 32044;
    let mut quad = julian / 146_097;
    let extra = (julian - quad * 146_097) * 4 + 3;
    julian += 60 + quad * 3 + extra / 146_097;
    quad = julian / 1461;
    julian -= quad * 1461;
    let mut y = julian * 4 / 1461;
    julian = if y != 0 {
        (julian + 305) % 365
    } else {
        (julian + 306) % 366
    } + 123;
    y += quad * 4;
    let year = y - 4800;
    let quad = julian * 2141 / 65536;
    let day = julian - 7834 * quad / 256;
    let month = (quad + 10) % 12 + 1;
    (year, month, day)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Splits a finite timestamp into its Julian day and the microseconds into that day.
fn split(ts: i64) -> (i64, i64) {
    let day = ts.div_euclid(MICROS_PER_DAY);
    (day + POSTGRES_EPOCH_JDATE, ts.rem_euclid(MICROS_PER_DAY))
}

fn join(julian: i64, time: i64) -> Option<i64> {
    (julian - POSTGRES_EPOCH_JDATE)
        .checked_mul(MICROS_PER_DAY)?
        .checked_add(time)
}

fn in_range(ts: i64) -> Option<i64> {
    (MIN_TIMESTAMP..END_TIMESTAMP).contains(&ts).then_some(ts)
}

/// `ts + interval` in UTC, or `None` when the result is outside PostgreSQL's timestamp range.
/// Infinite timestamps stay as they are, as in PostgreSQL.
pub fn add(ts: i64, interval: Interval) -> Option<i64> {
    if ts == INFINITY || ts == NEGATIVE_INFINITY {
        return Some(ts);
    }
    in_range(ts)?;
    let mut ts = ts;
    if interval.months != 0 {
        let (julian, time) = split(ts);
        let (year, month, day) = j2date(julian);
        let months = year * 12 + (month - 1) + interval.months as i64;
        let (year, month) = (months.div_euclid(12), months.rem_euclid(12) + 1);
        if !(-4713..=294_277).contains(&year) {
            return None;
        }
        let day = day.min(days_in_month(year, month));
        ts = in_range(join(date2j(year, month, day), time)?)?;
    }
    if interval.days != 0 {
        let (julian, time) = split(ts);
        ts = in_range(join(julian + interval.days as i64, time)?)?;
    }
    in_range(ts.checked_add(interval.micros)?)
}

/// `ts - interval`, as PostgreSQL computes it (adding the negated interval).
pub fn subtract(ts: i64, interval: Interval) -> Option<i64> {
    add(
        ts,
        Interval::new(
            interval.months.checked_neg()?,
            interval.days.checked_neg()?,
            interval.micros.checked_neg()?,
        ),
    )
}

/// `ts + period` for a period that recurs (a rate-limit window, a refill interval). Periods are
/// refused with negative parts when they are set; one stored before that rule (0.1.0) counts
/// months as 30 days, as 0.1.0 did, so that its length does not depend on the date.
pub fn add_period(ts: i64, period: Interval) -> Option<i64> {
    if !period.has_negative_part() {
        return add(ts, period);
    }
    let length = i64::try_from(period.comparable()).ok()?;
    in_range(ts.checked_add(length)?)
}

/// Why `period` cannot be a calendar schedule (refills at `anchor + k × period`), if it cannot:
/// it must be a number of months, or of days and smaller units, not both (a month's length
/// varies, so a mix has no fixed grid), and have no negative part.
pub fn schedule_problem(period: Interval) -> Option<&'static str> {
    if period.has_negative_part() || !period.is_positive() {
        Some("must be positive")
    } else if period.months != 0 && (period.days != 0 || period.micros != 0) {
        Some("must be a number of months, or of days and smaller units, not both, when refill_anchor is set")
    } else {
        None
    }
}

/// The first point of the schedule `anchor + k × period` (k any integer, each point computed
/// from the anchor, so a monthly schedule anchored on the 31st falls on the last day of
/// shorter months and comes back to the 31st) that is strictly after `t`. `None` when it is
/// beyond PostgreSQL's range, or `period` is not a schedule (`schedule_problem`).
pub fn next_point_after(anchor: i64, period: Interval, t: i64) -> Option<i64> {
    if schedule_problem(period).is_some() || [anchor, t].iter().any(|x| in_range(*x).is_none()) {
        return None;
    }
    if period.months == 0 {
        // A fixed length in UTC: the grid is exact. In i128: neither the length of an
        // interval PostgreSQL accepts nor the distance between two timestamps fits i64.
        let length = period.days as i128 * MICROS_PER_DAY as i128 + period.micros as i128;
        if length <= 0 {
            return None;
        }
        let k = (t as i128 - anchor as i128).div_euclid(length) + 1;
        let point = i64::try_from(anchor as i128 + k * length).ok()?;
        return in_range(point);
    }
    let point = |k: i64| -> Option<i64> {
        let months = i32::try_from(k.checked_mul(period.months as i64)?).ok()?;
        add(anchor, Interval::new(months, 0, 0))
    };
    // Point q is in t's month or before it (whole months from the anchor's month to t's,
    // divided by the period), point q - 1 is in an earlier month than t, point q + 1 in a
    // later one: the answer is q or q + 1.
    let (ya, ma, _) = j2date(split(anchor).0);
    let (yt, mt, _) = j2date(split(t).0);
    let q = ((yt * 12 + mt) - (ya * 12 + ma)).div_euclid(period.months as i64);
    match point(q) {
        Some(p) if p > t => Some(p),
        _ => point(q + 1),
    }
}

/// Unix microseconds of a PostgreSQL timestamp.
pub fn to_unix_micros(ts: i64) -> i64 {
    ts.saturating_add(946_684_800_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2024-01-31 12:00 UTC
    const JAN_31_2024_NOON: i64 =
        (date2j(2024, 1, 31) - POSTGRES_EPOCH_JDATE) * MICROS_PER_DAY + 12 * 3_600_000_000;

    fn ymd(ts: i64) -> (i64, i64, i64) {
        j2date(split(ts).0)
    }

    #[test]
    fn epoch_is_2000_01_01() {
        assert_eq!(ymd(0), (2000, 1, 1));
        assert_eq!(date2j(2000, 1, 1), POSTGRES_EPOCH_JDATE);
    }

    #[test]
    fn julian_days_round_trip() {
        for jd in (0..3_000_000).step_by(997) {
            let (y, m, d) = j2date(jd);
            assert_eq!(date2j(y, m, d), jd);
        }
    }

    #[test]
    fn a_month_is_a_calendar_month_clamped_to_its_last_day() {
        let feb = add(JAN_31_2024_NOON, Interval::new(1, 0, 0)).unwrap();
        assert_eq!(ymd(feb), (2024, 2, 29));
        let feb_2023 = add(JAN_31_2024_NOON, Interval::new(-11, 0, 0)).unwrap();
        assert_eq!(ymd(feb_2023), (2023, 2, 28));
        let year = add(JAN_31_2024_NOON, Interval::years(1)).unwrap();
        assert_eq!(ymd(year), (2025, 1, 31));
        assert_eq!(split(feb).1, 12 * 3_600_000_000);
    }

    #[test]
    fn months_then_days_then_time() {
        // PostgreSQL: '2024-01-31' + '1 month 1 day' = '2024-03-01'.
        let t = add(JAN_31_2024_NOON, Interval::new(1, 1, 0)).unwrap();
        assert_eq!(ymd(t), (2024, 3, 1));
        let t = add(JAN_31_2024_NOON, Interval::new(0, 0, 12 * 3_600_000_000)).unwrap();
        assert_eq!(ymd(t), (2024, 2, 1));
    }

    #[test]
    fn overflow_is_none_and_infinity_stays() {
        assert_eq!(add(JAN_31_2024_NOON, Interval::years(300_000)), None);
        assert_eq!(add(JAN_31_2024_NOON, Interval::new(0, i32::MAX, 0)), None);
        assert_eq!(add(JAN_31_2024_NOON, Interval::new(0, 0, i64::MAX)), None);
        assert_eq!(add(INFINITY, Interval::years(1)), Some(INFINITY));
        assert_eq!(
            add(NEGATIVE_INFINITY, Interval::years(1)),
            Some(NEGATIVE_INFINITY)
        );
        assert_eq!(subtract(0, Interval::new(i32::MIN, 0, 0)), None);
    }

    #[test]
    fn at_least_holds_whatever_the_month() {
        let month = Interval::new(1, 0, 0);
        assert!(month.at_least(&Interval::new(0, 28, 0)));
        assert!(!month.at_least(&Interval::new(0, 29, 0)));
        assert!(month.at_least(&month));
        assert!(Interval::new(0, 31, 0).at_least(&month));
        assert!(!Interval::new(0, 30, 0).at_least(&month));
        assert!(Interval::new(2, 0, 0).at_least(&Interval::new(1, 28, 0)));
        assert!(Interval::new(0, 0, 3_600_000_000).at_least(&Interval::new(0, 0, 1)));
        // Checked against the calendar: for every start in 2024 and 2025, a length that
        // `at_least` accepts is never shorter.
        let start0 = add(0, Interval::years(24)).unwrap();
        let candidates = [
            Interval::new(1, 0, 0),
            Interval::new(0, 28, 0),
            Interval::new(0, 31, 0),
            Interval::new(1, 3, 0),
            Interval::new(2, 0, 0),
            Interval::new(0, 59, 0),
            Interval::new(0, 62, 0),
            Interval::new(1, 0, 86_399_999_999),
        ];
        for day in 0..730 {
            let t = start0 + day * MICROS_PER_DAY;
            for a in &candidates {
                for b in &candidates {
                    if a.at_least(b) {
                        assert!(
                            add(t, *a).unwrap() >= add(t, *b).unwrap(),
                            "{a:?} vs {b:?} at day {day}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn periods_with_negative_parts_count_months_as_30_days() {
        let odd = Interval::new(-12, 360, 3_600_000_000);
        assert!(odd.has_negative_part());
        assert_eq!(add_period(0, odd), Some(3_600_000_000));
        assert_eq!(
            add_period(0, Interval::new(1, 0, 0)),
            add(0, Interval::new(1, 0, 0))
        );
    }

    #[test]
    fn comparison_counts_a_month_as_30_days() {
        assert!(Interval::new(0, 365, 0).comparable() > Interval::years(1).comparable());
        assert!(Interval::new(0, 0, 1).is_positive());
        assert!(!Interval::new(1, -30, 0).is_positive());
    }

    fn at(y: i64, m: i64, d: i64, hour: i64) -> i64 {
        (date2j(y, m, d) - POSTGRES_EPOCH_JDATE) * MICROS_PER_DAY + hour * 3_600_000_000
    }

    #[test]
    fn a_monthly_schedule_on_the_31st_clamps_and_comes_back() {
        let anchor = at(2024, 1, 31, 0);
        let month = Interval::new(1, 0, 0);
        assert_eq!(
            next_point_after(anchor, month, at(2024, 2, 1, 0)),
            Some(at(2024, 2, 29, 0))
        );
        assert_eq!(
            next_point_after(anchor, month, at(2024, 2, 29, 0)),
            Some(at(2024, 3, 31, 0))
        );
        assert_eq!(
            next_point_after(anchor, month, at(2024, 4, 15, 0)),
            Some(at(2024, 4, 30, 0))
        );
        assert_eq!(
            next_point_after(anchor, month, at(2024, 5, 1, 0)),
            Some(at(2024, 5, 31, 0))
        );
        // Before the anchor, the schedule runs backwards from it.
        assert_eq!(
            next_point_after(anchor, month, at(2023, 11, 5, 0)),
            Some(at(2023, 11, 30, 0))
        );
        let quarter = Interval::new(3, 0, 0);
        assert_eq!(
            next_point_after(anchor, quarter, at(2024, 6, 1, 0)),
            Some(at(2024, 7, 31, 0))
        );
    }

    #[test]
    fn daily_and_weekly_schedules_are_a_fixed_grid() {
        let midnight = at(2026, 1, 1, 0);
        let day = Interval::new(0, 1, 0);
        assert_eq!(
            next_point_after(midnight, day, at(2026, 11, 29, 23)),
            Some(at(2026, 11, 30, 0))
        );
        assert_eq!(
            next_point_after(midnight, day, at(2026, 11, 30, 0)),
            Some(at(2026, 12, 1, 0))
        );
        let monday = at(2026, 11, 23, 0);
        let week = Interval::new(0, 7, 0);
        assert_eq!(
            next_point_after(monday, week, at(2026, 11, 29, 12)),
            Some(at(2026, 11, 30, 0))
        );
        assert_eq!(
            next_point_after(monday, week, at(1999, 1, 1, 0))
                .map(|p| (p - monday) % (7 * MICROS_PER_DAY)),
            Some(0)
        );
    }

    #[test]
    fn huge_periods_and_distant_times_never_overflow() {
        let huge = Interval::new(0, 106_751_992, i64::MAX - 1_000_000);
        assert_eq!(next_point_after(0, huge, 5), None);
        assert_eq!(
            next_point_after(MIN_TIMESTAMP, Interval::new(0, 0, 1), END_TIMESTAMP - 1),
            None
        );
        let first_month = date2j(-4713, 12, 1);
        let anchor = (first_month - POSTGRES_EPOCH_JDATE) * MICROS_PER_DAY;
        assert!(next_point_after(anchor, Interval::new(1, 0, 0), MIN_TIMESTAMP).is_some());
    }

    #[test]
    fn mixed_or_empty_periods_are_not_schedules() {
        assert!(schedule_problem(Interval::new(1, 1, 0)).is_some());
        assert!(schedule_problem(Interval::new(0, 0, 0)).is_some());
        assert!(schedule_problem(Interval::new(0, 1, 3_600_000_000)).is_none());
        assert_eq!(next_point_after(0, Interval::new(1, 1, 0), 5), None);
    }

    proptest::proptest! {
        /// The next point is after t, on the schedule, and no point lies between t and it.
        #[test]
        fn the_next_point_is_the_first_after_t(
            anchor in -3_000_000_000_000_000i64..3_000_000_000_000_000,
            t in -3_000_000_000_000_000i64..3_000_000_000_000_000,
            months in 1..25i32,
        ) {
            let period = Interval::new(months, 0, 0);
            let next = next_point_after(anchor, period, t).unwrap();
            proptest::prop_assert!(next > t);
            // The point before it (one period back, counted from the anchor) is at or before t.
            let k = {
                let (ya, ma, _) = j2date(split(anchor).0);
                let (yn, mn, _) = j2date(split(next).0);
                ((yn * 12 + mn) - (ya * 12 + ma)) / months as i64
            };
            proptest::prop_assert_eq!(add(anchor, Interval::new((k * months as i64) as i32, 0, 0)), Some(next));
            let before = add(anchor, Interval::new(((k - 1) * months as i64) as i32, 0, 0)).unwrap();
            proptest::prop_assert!(before <= t);
        }
    }
}
