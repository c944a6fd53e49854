//! Credits spent by the current transaction, counted in the analytics only when it commits (or
//! is prepared): a rollback, or `ROLLBACK TO SAVEPOINT` past the verification, gives them back
//! to the key, so they were not spent. Counting moves counts into the store (`super::add`),
//! which cannot raise.

use super::{Bucket, Counts};
use crate::pg::transaction_list::List;

struct Spent {
    bucket: Bucket,
    credits: i64,
}

/// Spent credits remembered per transaction, at most; beyond, they are counted at once (a
/// transaction that verifies that many keys with credits is a batch job, rarely rolled back).
const MAX_SPENT: usize = 4096;

thread_local! {
    static SPENT: &'static List<Spent> = List::new(count, |_| {});
}

/// Remember `credits` spent under `bucket` until the transaction ends.
pub fn credits(bucket: Bucket, credits: i64) {
    if SPENT.with(|s| s.len()) >= MAX_SPENT {
        super::add(
            &bucket,
            Counts {
                verifications: 0,
                credits,
            },
        );
        return;
    }
    SPENT.with(|s| s.push(Spent { bucket, credits }));
}

fn count(spent: Vec<Spent>) {
    for s in spent {
        super::add(
            &s.bucket,
            Counts {
                verifications: 0,
                credits: s.credits,
            },
        );
    }
}
