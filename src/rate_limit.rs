//! Rate-limit arithmetic, written once and used by both storages (shared memory and the table,
//! `verify/usage.rs`), so that they cannot disagree. The algorithm is a fixed window per key
//! that opens at the first admitted verification: up to `max` verifications are admitted until
//! `window` has passed since it opened (as the calendar counts: `calendar.rs`); the next
//! verification after that opens a new window. Only admitted verifications count, so a refused
//! call never costs allowance; an admission given back (a later check refused the verification,
//! or its transaction rolled back) is returned to the window it was taken in, never to a newer
//! one.

/// A key's current window. Times in microseconds (PostgreSQL epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// When the window closes: from then on it admits nothing and the next call opens anew.
    pub end: i64,
    /// Verifications admitted in it so far.
    pub admitted: i32,
}

/// What `admit` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Admitted: the window to store (the same one counted once more, or a new one).
    Admitted(Window),
    /// Refused: the open window is full until it ends (µs).
    Refused { window_end: i64 },
}

/// Is `stored` still open at `now`?
pub fn is_open(stored: Option<Window>, now: i64) -> bool {
    stored.is_some_and(|w| w.end > now)
}

/// Admit one verification at `now` against the `stored` window (None: the key has none), for a
/// limit of `max` per window; a window opened now closes at `opens_until`.
pub fn admit(stored: Option<Window>, max: i32, opens_until: i64, now: i64) -> Decision {
    match stored {
        Some(w) if w.end > now && w.admitted >= max => Decision::Refused { window_end: w.end },
        Some(w) if w.end > now => Decision::Admitted(Window {
            admitted: w.admitted.saturating_add(1),
            ..w
        }),
        _ => Decision::Admitted(Window {
            end: opens_until,
            admitted: 1,
        }),
    }
}

/// The window after giving back one admission taken in the window that ends at `taken_in`:
/// unchanged when the stored window is another (the one it was taken in has closed and a new
/// one opened), so a give-back never adds allowance to a window it was not counted in.
pub fn give_back(stored: Window, taken_in: i64) -> Window {
    if stored.end == taken_in {
        Window {
            admitted: (stored.admitted - 1).max(0),
            ..stored
        }
    } else {
        stored
    }
}

/// Milliseconds until a window that ends at `window_end` closes, rounded up so that a client
/// that sleeps that long is admitted. Times in microseconds.
pub fn retry_after_ms(window_end: i64, now: i64) -> i64 {
    let left = window_end.saturating_sub(now);
    if left <= 0 {
        0
    } else {
        left / 1000 + i64::from(left % 1000 != 0)
    }
}

/// How many more verifications the current window admits.
pub fn remaining(max: i32, admitted: i32) -> i32 {
    max.saturating_sub(admitted).max(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_and_never_goes_negative() {
        assert_eq!(retry_after_ms(1_000_000, 0), 1000);
        assert_eq!(retry_after_ms(1_000_000, 999_999), 1);
        assert_eq!(retry_after_ms(1_000_000, 999_001), 1);
        assert_eq!(retry_after_ms(1_000_000, 1_000_000), 0);
        assert_eq!(retry_after_ms(1_000_000, 5_000_000), 0);
        assert_eq!(retry_after_ms(i64::MAX, -1), i64::MAX / 1000 + 1);
    }

    #[test]
    fn remaining_is_clamped() {
        assert_eq!(remaining(10, 3), 7);
        assert_eq!(remaining(10, 10), 0);
        assert_eq!(remaining(10, 12), 0);
    }

    const MIN: i64 = 60_000_000;

    #[test]
    fn a_window_opens_at_the_first_call_and_admits_max() {
        let opened = admit(None, 2, MIN, 0);
        assert_eq!(
            opened,
            Decision::Admitted(Window {
                end: MIN,
                admitted: 1
            })
        );
        let Decision::Admitted(w) = opened else {
            unreachable!()
        };
        let Decision::Admitted(w) = admit(Some(w), 2, 2 * MIN, 10) else {
            panic!()
        };
        assert_eq!(
            w,
            Window {
                end: MIN,
                admitted: 2
            }
        );
        assert_eq!(
            admit(Some(w), 2, 2 * MIN, 20),
            Decision::Refused { window_end: MIN }
        );
        // The first call at or after the end opens the next window.
        assert_eq!(
            admit(Some(w), 2, 2 * MIN, MIN),
            Decision::Admitted(Window {
                end: 2 * MIN,
                admitted: 1
            })
        );
    }

    #[test]
    fn a_give_back_returns_to_its_own_window_only() {
        let w = Window {
            end: MIN,
            admitted: 2,
        };
        assert_eq!(
            give_back(w, MIN),
            Window {
                end: MIN,
                admitted: 1
            }
        );
        assert_eq!(give_back(w, MIN - 1), w);
        assert_eq!(
            give_back(
                Window {
                    end: MIN,
                    admitted: 0
                },
                MIN
            ),
            Window {
                end: MIN,
                admitted: 0
            }
        );
    }

    proptest::proptest! {
        /// Any interleaving of admissions and give-backs, at any spacing in time, leaves the
        /// stored window counting exactly the admissions taken in it and not given back, never
        /// more than `max`: the property both storages rely on.
        #[test]
        fn a_window_counts_its_net_admissions_and_never_more_than_max(
            max in 1..6i32,
            steps in proptest::collection::vec((0..3u8, 0..20_000_000i64, proptest::prelude::any::<usize>()), 1..200),
        ) {
            let mut stored: Option<Window> = None;
            let mut now = 0;
            let mut taken: Vec<i64> = Vec::new(); // the windows of admissions not given back
            for (op, dt, pick) in steps {
                now += dt;
                if op == 0 && !taken.is_empty() {
                    let end = taken.swap_remove(pick % taken.len());
                    stored = stored.map(|w| give_back(w, end));
                } else if let Decision::Admitted(w) = admit(stored, max, now + MIN, now) {
                    stored = Some(w);
                    taken.push(w.end);
                }
                if let Some(w) = stored {
                    let net = taken.iter().filter(|&&end| end == w.end).count() as i32;
                    proptest::prop_assert_eq!(w.admitted, net);
                    proptest::prop_assert!(net <= max);
                }
            }
        }
    }
}
