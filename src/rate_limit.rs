//! Rate-limit arithmetic, written once and used by both storages (shared memory and the table,
//! `verify/usage.rs`), so that they cannot disagree. The algorithm is a fixed window per key
//! that opens at the first admitted verification: up to `max` verifications are admitted until
//! `window` has passed since it opened (as the calendar counts: `calendar.rs`); the next
//! verification after that opens a new window. Only admitted verifications count, so a refused
//! call never costs allowance; an admission given back (a later check refused the verification,
//! or its transaction rolled back) is returned to the window it was taken in, never to a newer
//! one, and when it had opened that window and nothing else was counted in it, the window it
//! replaced is put back: as if the call had never come, which is what a rolled-back row version
//! is in the table.

/// A key's current window. Times in microseconds (PostgreSQL epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// When the window closes: from then on it admits nothing and the next call opens anew.
    pub end: i64,
    /// Verifications admitted in it so far.
    pub admitted: i32,
}

/// No window at all (a key never counted, or one whose opening was given back).
pub const NONE: Window = Window {
    end: i64::MIN,
    admitted: 0,
};

/// One admission, as much as giving it back needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// The end of the window it was counted in.
    pub window_end: i64,
    /// When it opened that window: the (closed) window it replaced.
    pub replaced: Option<Window>,
}

/// What `admit` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Admitted: the window to store (the same one counted once more, or a new one), and how
    /// to give the admission back.
    Admitted { window: Window, taken: Taken },
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
        Some(w) if w.end > now => Decision::Admitted {
            window: Window {
                admitted: w.admitted.saturating_add(1),
                ..w
            },
            taken: Taken {
                window_end: w.end,
                replaced: None,
            },
        },
        _ => Decision::Admitted {
            window: Window {
                end: opens_until,
                admitted: 1,
            },
            taken: Taken {
                window_end: opens_until,
                replaced: Some(stored.unwrap_or(NONE)),
            },
        },
    }
}

/// The window after giving back one admission: unchanged when the stored window is not the one
/// it was counted in (that one has closed and a new one opened), so a give-back never adds
/// allowance to a window it was not counted in; the replaced window when the admission opened
/// the stored one and was the last counted in it.
pub fn give_back(stored: Window, taken: Taken) -> Window {
    if stored.end != taken.window_end {
        return stored;
    }
    let left = (stored.admitted - 1).max(0);
    match taken.replaced {
        Some(replaced) if left == 0 => replaced,
        _ => Window {
            admitted: left,
            ..stored
        },
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
        let Decision::Admitted { window: w, taken } = admit(None, 2, MIN, 0) else {
            panic!()
        };
        assert_eq!(
            w,
            Window {
                end: MIN,
                admitted: 1
            }
        );
        assert_eq!(
            taken,
            Taken {
                window_end: MIN,
                replaced: Some(NONE)
            }
        );
        let Decision::Admitted { window: w, taken } = admit(Some(w), 2, 2 * MIN, 10) else {
            panic!()
        };
        assert_eq!(
            w,
            Window {
                end: MIN,
                admitted: 2
            }
        );
        assert_eq!(taken.replaced, None);
        assert_eq!(
            admit(Some(w), 2, 2 * MIN, 20),
            Decision::Refused { window_end: MIN }
        );
        // The first call at or after the end opens the next window.
        let Decision::Admitted {
            window: next,
            taken,
        } = admit(Some(w), 2, 2 * MIN, MIN)
        else {
            panic!()
        };
        assert_eq!(
            next,
            Window {
                end: 2 * MIN,
                admitted: 1
            }
        );
        assert_eq!(taken.replaced, Some(w));
    }

    #[test]
    fn a_give_back_returns_to_its_own_window_only() {
        let w = Window {
            end: MIN,
            admitted: 2,
        };
        let counted = Taken {
            window_end: MIN,
            replaced: None,
        };
        assert_eq!(
            give_back(w, counted),
            Window {
                end: MIN,
                admitted: 1
            }
        );
        assert_eq!(
            give_back(
                w,
                Taken {
                    window_end: MIN - 1,
                    replaced: None
                }
            ),
            w
        );
        let empty = Window {
            end: MIN,
            admitted: 0,
        };
        assert_eq!(give_back(empty, counted), empty);
    }

    #[test]
    fn giving_back_the_call_that_opened_a_window_closes_it_again() {
        let Decision::Admitted { window, taken } = admit(None, 1, MIN, 0) else {
            panic!()
        };
        assert_eq!(give_back(window, taken), NONE);
        // With another admission counted after it, the window stays.
        let Decision::Admitted { window: two, .. } = admit(Some(window), 2, 2 * MIN, 5) else {
            panic!()
        };
        assert_eq!(
            give_back(two, taken),
            Window {
                end: MIN,
                admitted: 1
            }
        );
    }

    proptest::proptest! {
        /// Any interleaving of admissions and give-backs, at any spacing in time, leaves an open
        /// window counting exactly the admissions taken in it and not given back, never more
        /// than `max`: the property both storages rely on.
        #[test]
        fn a_window_counts_its_net_admissions_and_never_more_than_max(
            max in 1..6i32,
            steps in proptest::collection::vec((0..3u8, 0..20_000_000i64, proptest::prelude::any::<usize>()), 1..200),
        ) {
            let mut stored: Option<Window> = None;
            let mut now = 0;
            let mut taken: Vec<Taken> = Vec::new(); // admissions not given back
            for (op, dt, pick) in steps {
                now += dt;
                if op == 0 && !taken.is_empty() {
                    let t = taken.swap_remove(pick % taken.len());
                    stored = stored.map(|w| give_back(w, t));
                } else if let Decision::Admitted { window, taken: t } = admit(stored, max, now + MIN, now) {
                    stored = Some(window);
                    taken.push(t);
                }
                if let Some(w) = stored.filter(|w| w.end > now) {
                    let net = taken.iter().filter(|t| t.window_end == w.end).count() as i32;
                    proptest::prop_assert_eq!(w.admitted, net);
                    proptest::prop_assert!(net <= max);
                }
            }
        }

        /// Admitting then giving back at once leaves the window as it was, or closed as it was.
        #[test]
        fn an_admission_given_back_at_once_leaves_no_trace(
            end in -5i64..5, admitted in 0..4i32, max in 1..4i32, now in -5i64..5,
        ) {
            let before = Window { end, admitted };
            if let Decision::Admitted { window, taken } = admit(Some(before), max, now + 10, now) {
                let after = give_back(window, taken);
                if before.end > now {
                    proptest::prop_assert_eq!(after, before);
                } else {
                    proptest::prop_assert!(after.end <= now);
                }
            }
        }
    }
}
