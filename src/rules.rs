//! What a key's settings may be, and what an actor (as opposed to the service) may change.
//! Pure: the management functions gather values, these rules decide.
//!
//! Bounds on durations keep every later computation in range (a verification never overflows
//! a timestamp): lifetimes up to 100 years, periods (rate-limit windows, refill intervals,
//! rotation grace) up to 10 years, both compared as PostgreSQL compares intervals.
//!
//! Credits: `remaining` NULL is unlimited. A refill (`refill_amount` every `refill_interval`)
//! needs credits to refill: given without `remaining`, `remaining` starts at `refill_amount`,
//! at create and at update alike; clearing `remaining` while a refill stays is refused.
//!
//! Usage limits and permissions are the service's to set: an actor may only narrow them,
//! relative to the key as it is (at update) or to its configuration (at create), unless the
//! configuration lists the field in `actor_may_raise`.

use crate::calendar::{self, Interval};
use crate::permissions::Permissions;

pub const MAX_LIFETIME: Interval = Interval::years(100);
pub const MAX_PERIOD: Interval = Interval::years(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refill {
    pub amount: i64,
    pub interval: Interval,
    /// A calendar schedule: refills fall at `anchor + k × interval` (`calendar::next_point_after`)
    /// instead of `interval` after the previous refill. Microseconds.
    pub anchor: Option<i64>,
}

/// When the first refill after `since` (the last refill, or creation) is due: `interval` after
/// it, or on a calendar schedule the first point of `anchor + k × interval` after it. None when
/// that is beyond PostgreSQL's range (never).
pub fn next_refill(interval: Interval, anchor: Option<i64>, since: i64) -> Option<i64> {
    match anchor {
        None => calendar::add_period(since, interval),
        Some(anchor) => calendar::next_point_after(anchor, interval, since),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub max: i32,
    pub window: Interval,
}

/// Why a value is refused; displayed as the whole message (it names the argument).
pub type Problem = String;

/// Whether a duration may be zero: a grace may, a lifetime or a period may not.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Zero {
    Allowed,
    Refused,
}

fn check_duration(
    argument: &str,
    duration: Interval,
    zero: Zero,
    max: Interval,
    what: &str,
    now: i64,
) -> Result<(), Problem> {
    let sign = match zero {
        Zero::Allowed => "zero or positive",
        Zero::Refused => "positive",
    };
    let backwards = duration.has_negative_part();
    let forwards = duration.months > 0 || duration.days > 0 || duration.micros > 0;
    if backwards && !forwards {
        return Err(format!("{argument} must be {sign}"));
    }
    if backwards {
        return Err(format!(
            "{argument} must not have negative parts (its length would depend on the date)"
        ));
    }
    let end = calendar::add(now, duration);
    let limit = calendar::add(now, max);
    if end.is_none() || end > limit {
        return Err(format!("{argument} must be at most {what}"));
    }
    if zero == Zero::Refused && !duration.is_positive() {
        return Err(format!("{argument} must be {sign}"));
    }
    Ok(())
}

/// A lifetime (`expires_in`, a configuration's `*_expires_in`): positive, without negative
/// parts, ending at most 100 years after `now`.
pub fn check_lifetime(argument: &str, lifetime: Interval, now: i64) -> Result<(), Problem> {
    check_duration(
        argument,
        lifetime,
        Zero::Refused,
        MAX_LIFETIME,
        "100 years",
        now,
    )
}

/// A period (`rate_limit_window`, `refill_interval`): positive, without negative parts, at most
/// 10 years (from `now`, as the calendar counts).
pub fn check_period(argument: &str, period: Interval, now: i64) -> Result<(), Problem> {
    check_duration(argument, period, Zero::Refused, MAX_PERIOD, "10 years", now)
}

/// A rotation's grace: zero or positive, without negative parts, at most 10 years.
pub fn check_grace(grace: Interval, now: i64) -> Result<(), Problem> {
    check_duration("grace", grace, Zero::Allowed, MAX_PERIOD, "10 years", now)
}

pub fn check_remaining(argument: &str, remaining: i64) -> Result<(), Problem> {
    if remaining < 0 {
        return Err(format!("{argument} must not be negative"));
    }
    Ok(())
}

/// `refill_amount` and `refill_interval` as given (each possibly absent) into a refill, rolling
/// (no anchor). The interval's bounds are checked where it is given (`check_period`).
pub fn refill_from(
    amount: Option<i64>,
    interval: Option<Interval>,
) -> Result<Option<Refill>, Problem> {
    match (amount, interval) {
        (None, None) => Ok(None),
        (Some(amount), Some(interval)) => {
            if amount <= 0 {
                return Err("refill_amount must be positive".into());
            }
            Ok(Some(Refill {
                amount,
                interval,
                anchor: None,
            }))
        }
        _ => Err("refill_amount and refill_interval go together".into()),
    }
}

/// `refill` on the calendar schedule of `anchor` (None: rolling). An anchor needs a refill, a
/// finite time, and an interval that is a schedule (`calendar::schedule_problem`).
pub fn anchored(refill: Option<Refill>, anchor: Option<i64>) -> Result<Option<Refill>, Problem> {
    let Some(anchor) = anchor else {
        return Ok(refill.map(|r| Refill { anchor: None, ..r }));
    };
    let Some(refill) = refill else {
        return Err("refill_anchor needs a refill (refill_amount and refill_interval)".into());
    };
    if anchor == calendar::INFINITY || anchor == calendar::NEGATIVE_INFINITY {
        return Err("refill_anchor must be a finite time".into());
    }
    if let Some(problem) = calendar::schedule_problem(refill.interval) {
        return Err(format!("refill_interval {problem}"));
    }
    // An interval kept from before periods were bounded (0.1.0) is checked here too.
    if refill.interval.comparable() > MAX_PERIOD.comparable() {
        return Err("refill_interval must be at most 10 years when refill_anchor is set".into());
    }
    Ok(Some(Refill {
        anchor: Some(anchor),
        ..refill
    }))
}

/// `rate_limit_max` and `rate_limit_window` into a rate limit, when enabled. The window's
/// bounds are checked where it is given (`check_period`).
pub fn rate_limit_from(
    enabled: bool,
    max: Option<i32>,
    window: Option<Interval>,
) -> Result<Option<RateLimit>, Problem> {
    if let Some(max) = max {
        if max <= 0 {
            return Err("rate_limit_max must be positive".into());
        }
    }
    match (enabled, max, window) {
        (false, _, _) => Ok(None),
        (true, Some(max), Some(window)) => Ok(Some(RateLimit { max, window })),
        (true, _, _) => Err("a rate limit needs both rate_limit_max and rate_limit_window".into()),
    }
}

/// The one meaning of credits and refill together: a refill without credits starts them at
/// the refill amount.
pub fn credits(remaining: Option<i64>, refill: Option<Refill>) -> Option<i64> {
    remaining.or(refill.map(|r| r.amount))
}

/// What limits a key: everything an actor may narrow but not widen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub enabled: bool,
    pub expires_at: Option<i64>,
    pub permissions: Permissions,
    pub remaining: Option<i64>,
    pub refill: Option<Refill>,
    pub rate_limit: Option<RateLimit>,
}

/// The fields of `Limits`, by the names `actor_may_raise` and messages use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Enabled,
    ExpiresAt,
    Permissions,
    Remaining,
    Refill,
    RateLimit,
}

impl Field {
    pub const ALL: [Field; 6] = [
        Field::Enabled,
        Field::ExpiresAt,
        Field::Permissions,
        Field::Remaining,
        Field::Refill,
        Field::RateLimit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Field::Enabled => "enabled",
            Field::ExpiresAt => "expires_at",
            Field::Permissions => "permissions",
            Field::Remaining => "remaining",
            Field::Refill => "refill",
            Field::RateLimit => "rate_limit",
        }
    }

    pub fn from_name(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Why an actor may not make this change, as the message says it.
    pub fn refusal(self) -> &'static str {
        match self {
            Field::Enabled => "enable a disabled key",
            Field::ExpiresAt => "extend or remove an expiry",
            Field::Permissions => "add permissions",
            Field::Remaining => "add credits or make them unlimited",
            Field::Refill => "add a refill, or make one larger, more frequent or rescheduled",
            Field::RateLimit => "remove or loosen a rate limit",
        }
    }
}

fn wider_refill(before: &Limits, after: &Limits) -> bool {
    match (before.refill, after.refill) {
        (_, None) => false,
        // Unlimited credits before: any refill is a limit.
        (None, Some(_)) => before.remaining.is_some(),
        // On a calendar schedule the points depend on the interval and the anchor together: a
        // longer interval kept on the same anchor can bring the next refill forward. So any
        // change of either counts, whenever a schedule is involved.
        (Some(b), Some(a)) if a.anchor.is_some() || b.anchor.is_some() => {
            a.amount > b.amount || a.interval != b.interval || a.anchor != b.anchor
        }
        (Some(b), Some(a)) => a.amount > b.amount || !a.interval.at_least(&b.interval),
    }
}

fn wider_rate_limit(before: Option<RateLimit>, after: Option<RateLimit>) -> bool {
    match (before, after) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(b), Some(a)) => a.max > b.max || !a.window.at_least(&b.window),
    }
}

/// The fields in which `after` allows more than `before`.
pub fn lifted(before: &Limits, after: &Limits) -> Vec<Field> {
    let mut out = Vec::new();
    if after.enabled && !before.enabled {
        out.push(Field::Enabled);
    }
    if let Some(b) = before.expires_at {
        if after.expires_at.is_none_or(|a| a > b) {
            out.push(Field::ExpiresAt);
        }
    }
    if after
        .permissions
        .pairs()
        .any(|(r, a)| !before.permissions.holds(r, a))
    {
        out.push(Field::Permissions);
    }
    if let Some(b) = before.remaining {
        if after.remaining.is_none_or(|a| a > b) {
            out.push(Field::Remaining);
        }
    }
    if wider_refill(before, after) {
        out.push(Field::Refill);
    }
    if wider_rate_limit(before.rate_limit, after.rate_limit) {
        out.push(Field::RateLimit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::permissions::{Scalar, Token};

    fn perms(entries: &[(&str, &[&str])]) -> Permissions {
        let mut t = vec![Token::BeginObject];
        for (r, actions) in entries {
            t.push(Token::Key(r.to_string()));
            t.push(Token::BeginArray { raw_scalar: false });
            t.extend(
                actions
                    .iter()
                    .map(|a| Token::Scalar(Scalar::String(a.to_string()))),
            );
            t.push(Token::EndArray);
        }
        t.push(Token::EndObject);
        Permissions::parse(t).unwrap()
    }

    fn day(n: i32) -> Interval {
        Interval::new(0, n, 0)
    }

    fn base() -> Limits {
        Limits {
            enabled: true,
            expires_at: Some(1_000),
            permissions: perms(&[("files", &["read", "write"])]),
            remaining: Some(100),
            refill: Some(Refill {
                amount: 100,
                interval: day(1),
                anchor: None,
            }),
            rate_limit: Some(RateLimit {
                max: 10,
                window: day(1),
            }),
        }
    }

    #[test]
    fn narrowing_is_allowed() {
        let before = base();
        let mut after = base();
        after.enabled = false;
        after.expires_at = Some(500);
        after.permissions = perms(&[("files", &["read"])]);
        after.remaining = Some(5);
        after.refill = Some(Refill {
            amount: 50,
            interval: day(7),
            anchor: None,
        });
        after.rate_limit = Some(RateLimit {
            max: 1,
            window: day(2),
        });
        assert_eq!(lifted(&before, &after), vec![]);
        after.refill = None;
        assert_eq!(lifted(&before, &after), vec![]);
    }

    #[test]
    fn widening_is_named_field_by_field() {
        let before = Limits {
            enabled: false,
            ..base()
        };
        let after = Limits {
            enabled: true,
            expires_at: None,
            permissions: perms(&[("files", &["read", "delete"])]),
            remaining: None,
            refill: Some(Refill {
                amount: 100,
                interval: Interval::new(0, 0, 3_600_000_000),
                anchor: None,
            }),
            rate_limit: None,
        };
        assert_eq!(
            lifted(&before, &after),
            vec![
                Field::Enabled,
                Field::ExpiresAt,
                Field::Permissions,
                Field::Remaining,
                Field::Refill,
                Field::RateLimit
            ]
        );
    }

    #[test]
    fn from_nothing_any_limit_narrows_and_finite_credits_cannot_gain_a_refill() {
        let unlimited = Limits {
            enabled: true,
            expires_at: None,
            permissions: Permissions::default(),
            remaining: None,
            refill: None,
            rate_limit: None,
        };
        assert_eq!(lifted(&unlimited, &base()), vec![Field::Permissions]);
        let finite = Limits {
            remaining: Some(10),
            ..unlimited.clone()
        };
        let with_refill = Limits {
            refill: Some(Refill {
                amount: 1,
                interval: day(30),
                anchor: None,
            }),
            ..finite.clone()
        };
        assert_eq!(lifted(&finite, &with_refill), vec![Field::Refill]);
    }

    #[test]
    fn bounds_on_durations() {
        let now = 0; // 2000-01-01
        assert!(check_lifetime("expires_in", Interval::years(100), now).is_ok());
        assert!(check_lifetime("expires_in", Interval::years(101), now).is_err());
        assert!(check_lifetime("expires_in", Interval::new(0, 0, 0), now).is_err());
        assert!(check_period("rate_limit_window", Interval::new(0, 3652, 0), now).is_ok());
        assert!(check_period("rate_limit_window", Interval::new(0, 3654, 0), now).is_err());
        assert!(check_period("rate_limit_window", Interval::years(300_000), now).is_err());
        assert!(check_grace(Interval::new(0, 0, 0), now).is_ok());
        assert!(check_grace(Interval::new(0, -1, 0), now).is_err());
    }

    #[test]
    fn a_duration_running_backwards_is_named_by_its_sign() {
        let back = Interval::new(0, -1, 0);
        assert_eq!(
            check_lifetime("expires_in", back, 0).unwrap_err(),
            "expires_in must be positive"
        );
        assert_eq!(
            check_period("refill_interval", Interval::new(-1, 0, -5), 0).unwrap_err(),
            "refill_interval must be positive"
        );
        assert_eq!(
            check_grace(back, 0).unwrap_err(),
            "grace must be zero or positive"
        );
        assert!(check_grace(Interval::new(1, -1, 0), 0)
            .unwrap_err()
            .contains("negative parts"));
    }

    #[test]
    fn durations_with_negative_parts_are_refused() {
        // Compares equal to 1 hour, yet adds almost minus 5 days to most dates.
        let odd = Interval::new(-12, 360, 3_600_000_000);
        assert!(check_period("rate_limit_window", odd, 0)
            .unwrap_err()
            .contains("negative parts"));
        assert!(check_lifetime("expires_in", Interval::new(3_000_000, -89_999_999, 0), 0).is_err());
        assert!(check_grace(Interval::new(71_582_788, -2_147_483_639, 0), 0).is_err());
    }

    #[test]
    fn a_month_and_thirty_days_are_not_interchangeable() {
        let month = Limits {
            rate_limit: Some(RateLimit {
                max: 1,
                window: Interval::new(1, 0, 0),
            }),
            ..base()
        };
        let thirty = Limits {
            rate_limit: Some(RateLimit {
                max: 1,
                window: Interval::new(0, 30, 0),
            }),
            ..base()
        };
        assert_eq!(lifted(&month, &thirty), vec![Field::RateLimit]);
        assert_eq!(lifted(&thirty, &month), vec![Field::RateLimit]);
    }

    #[test]
    fn refill_and_rate_limit_shapes() {
        assert_eq!(refill_from(None, None), Ok(None));
        assert!(refill_from(Some(5), None).is_err());
        assert!(refill_from(Some(0), Some(day(1))).is_err());
        assert_eq!(
            credits(None, refill_from(Some(5), Some(day(1))).unwrap()),
            Some(5)
        );
        assert_eq!(credits(Some(2), None), Some(2));
        assert!(rate_limit_from(true, Some(5), None).is_err());
        assert_eq!(rate_limit_from(false, Some(5), None), Ok(None));
        assert!(rate_limit_from(false, Some(-1), None).is_err());
    }

    #[test]
    fn any_change_of_a_schedule_is_a_lift() {
        let scheduled = |interval: Interval, anchor: i64| Limits {
            refill: Some(Refill {
                amount: 100,
                interval,
                anchor: Some(anchor),
            }),
            ..base()
        };
        let before = scheduled(day(1), 0);
        // A longer interval on the same anchor moves the points, possibly nearer.
        assert_eq!(
            lifted(&before, &scheduled(Interval::new(0, 1, 3_600_000_000), 0)),
            vec![Field::Refill]
        );
        assert_eq!(lifted(&before, &scheduled(day(1), 1)), vec![Field::Refill]);
        assert_eq!(lifted(&before, &base()), vec![Field::Refill]);
        assert!(lifted(&before, &before).is_empty());
    }
}
