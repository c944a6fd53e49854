//! Key ids are UUIDv7 (RFC 9562) carrying the key's `created_at` to the microsecond: 48 bits of
//! Unix milliseconds, then the microseconds within the millisecond in the 12 `rand_a` bits
//! (the RFC's "increased clock precision" method), then 62 random bits.
//!
//! So ids sort in creation order (new keys go to the right edge of the primary-key index),
//! and an id alone says where a key stood in a listing: a paging cursor keeps working after
//! its key is gone. Ids of keys created before 0.2.0 are random (v4) and carry no time.

use crate::calendar::to_unix_micros;

/// A new id for a key created at `created_at` (PostgreSQL microseconds), with `random` bits.
pub fn new(created_at: i64, random: u64) -> [u8; 16] {
    let unix = to_unix_micros(created_at).max(0) as u64;
    let (millis, micros) = (unix / 1000, unix % 1000);
    let sub_ms = micros * 4096 / 1000; // < 4096
    let mut id = [0u8; 16];
    id[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    id[6] = 0x70 | (sub_ms >> 8) as u8;
    id[7] = sub_ms as u8;
    id[8..].copy_from_slice(&random.to_be_bytes());
    id[8] = 0x80 | (id[8] & 0x3f);
    id
}

/// The creation time an id carries (PostgreSQL microseconds), if it is a v7 id.
pub fn created_at(id: &[u8; 16]) -> Option<i64> {
    if id[6] >> 4 != 7 || id[8] >> 6 != 0b10 {
        return None;
    }
    let mut millis = [0u8; 8];
    millis[2..].copy_from_slice(&id[..6]);
    let millis = u64::from_be_bytes(millis);
    let sub_ms = ((id[6] & 0x0f) as u64) << 8 | id[7] as u64;
    // The inverse of `micros * 4096 / 1000`: exact, since each micro maps to a distinct value.
    let micros = (sub_ms * 1000).div_ceil(4096);
    let unix = millis.checked_mul(1000)?.checked_add(micros)?;
    i64::try_from(unix).ok()?.checked_sub(946_684_800_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_comes_back_to_the_microsecond() {
        for t in [0i64, 1, 999, 1000, 123_456_789_012_345, 789_000_000_000_999] {
            for random in [0u64, u64::MAX, 0x1234_5678_9abc_def0] {
                let id = new(t, random);
                assert_eq!(created_at(&id), Some(t), "t = {t}");
                assert_eq!(id[6] >> 4, 7);
                assert_eq!(id[8] >> 6, 0b10);
            }
        }
    }

    #[test]
    fn ids_sort_by_time() {
        let a = new(1_000_000, u64::MAX);
        let b = new(1_000_001, 0);
        assert!(a < b);
    }

    #[test]
    fn random_ids_carry_no_time() {
        let mut v4 = new(5, 7);
        v4[6] = 0x40 | (v4[6] & 0x0f);
        assert_eq!(created_at(&v4), None);
    }
}
