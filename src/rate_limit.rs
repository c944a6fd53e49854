//! Rate-limit arithmetic. The algorithm is a fixed window per key that opens at the first
//! admitted verification: up to `max` verifications are admitted until `window` has passed
//! since it opened (as the calendar counts: `calendar.rs`); the next verification after that
//! opens a new window. Only admitted verifications count, so a refused call never costs
//! allowance. Counting happens in shared memory or a table (`verify/usage.rs`).

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
}
