//! Rate-limit admissions counted in shared memory by the current transaction, given back if it
//! rolls back, so that the two storages answer the same: a window counted in the table loses
//! a rolled-back admission with the row version that counted it, and one in shared memory
//! loses it here. A cancelled or timed-out verification, a failed `api_key_authenticate`
//! transaction and `ROLLBACK TO SAVEPOINT` all give back what they took; a committed (or
//! prepared) transaction keeps it.
//!
//! Given back during abort, where nothing may raise: only shared memory is touched
//! (`rate_limit_shmem::give_back`, which cannot raise).

use super::rate_limit_shmem;
use crate::pg::clock;
use crate::pg::transaction_list::List;
use crate::rate_limit::Taken as Admission;

struct Taken {
    key: [u8; 16],
    admission: Admission,
}

thread_local! {
    static TAKEN: &'static List<Taken> = List::new(|_| {}, give_back);
}

/// Remember an admission counted in shared memory, until the transaction ends.
pub fn taken(key: &[u8; 16], admission: Admission) {
    TAKEN.with(|t| {
        t.push(Taken {
            key: *key,
            admission,
        })
    });
}

/// Give back an admission now (a later check refused the verification), and forget it.
pub fn give_back_now(key: &[u8; 16], admission: Admission) {
    TAKEN.with(|t| t.take_newest(|x| x.key == *key && x.admission == admission));
    rate_limit_shmem::give_back(key, admission, clock::now());
}

/// Gives back what a rolled-back transaction or savepoint took.
fn give_back(returned: Vec<Taken>) {
    let now = clock::now();
    // Newest first, so that the admission that opened a window is given back last and can put
    // back the window it replaced.
    for x in returned.into_iter().rev() {
        rate_limit_shmem::give_back(&x.key, x.admission, now);
    }
}
