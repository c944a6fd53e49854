//! Row-level security for reading keys: may the current role, acting for `api_key.actor`, see
//! the keys of `(reference_type, reference_id)`? The policy on `api_key.keys` asks once per
//! row, so the answer for a reference is computed once per statement (one call of
//! `api_key.actor_may`, which may read a membership table or run an authorizer) and
//! remembered while the snapshot stays the same: reading 100,000 keys of one organization asks
//! the membership source once, not 100,000 times, and the next statement (a new snapshot under
//! READ COMMITTED, or a new command id after a change of our own) asks again.

use crate::caller::{is_service_role, local_xid};
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CStr;

/// What identifies the data a statement sees: transaction, snapshot bounds, command id.
type SnapshotTag = (u32, u32, u32, u32);

#[derive(Default)]
struct Answers {
    snapshot: SnapshotTag,
    actor: String,
    by_reference: HashMap<(String, String), bool>,
}

fn snapshot_tag() -> Option<SnapshotTag> {
    // SAFETY: reads the active snapshot, which a policy evaluation always has.
    unsafe {
        if !pg_sys::ActiveSnapshotSet() {
            return None;
        }
        let s = pg_sys::GetActiveSnapshot();
        Some((
            local_xid(),
            (*s).xmin.into_inner(),
            (*s).xmax.into_inner(),
            (*s).curcid,
        ))
    }
}

thread_local! {
    static ANSWERS: RefCell<Answers> = RefCell::new(Answers::default());
}

/// `api_key.actor`, or None when unset or empty.
pub fn current_actor() -> Option<String> {
    // SAFETY: GetConfigOption with missing_ok returns NULL or a string owned by the GUC system,
    // copied at once.
    unsafe {
        let value = pg_sys::GetConfigOption(c"api_key.actor".as_ptr(), true, false);
        if value.is_null() {
            return None;
        }
        let value = CStr::from_ptr(value).to_string_lossy();
        (!value.is_empty()).then(|| value.into_owned())
    }
}

fn actor_may_read(actor: &str, reference_type: &str, reference_id: &str) -> bool {
    let snapshot = snapshot_tag();
    let key = (reference_type.to_owned(), reference_id.to_owned());
    let known = snapshot.and_then(|snapshot| {
        ANSWERS.with(|a| {
            let mut a = a.borrow_mut();
            if a.snapshot != snapshot || a.actor != actor {
                *a = Answers {
                    snapshot,
                    actor: actor.to_owned(),
                    by_reference: HashMap::new(),
                };
            }
            a.by_reference.get(&key).copied()
        })
    });
    if let Some(answer) = known {
        return answer;
    }
    let answer = Spi::get_one_with_args::<bool>(
        "SELECT api_key.actor_may($1, $2, $3, 'read')",
        &[actor.into(), reference_type.into(), reference_id.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false);
    if snapshot.is_some() {
        ANSWERS.with(|a| a.borrow_mut().by_reference.insert(key, answer));
    }
    answer
}

#[pg_schema]
mod api_key {
    use super::*;

    /// Whether the current role and actor may read keys of this reference (the SELECT policy
    /// of `api_key.keys`). No actor: only the service (a role granted api_key_admin) sees keys.
    #[pg_extern(stable, parallel_restricted)]
    pub fn may_read(reference_type: Option<&str>, reference_id: Option<&str>) -> bool {
        let (Some(reference_type), Some(reference_id)) = (reference_type, reference_id) else {
            return false;
        };
        match current_actor() {
            // SAFETY: GetUserId only reads backend state.
            None => is_service_role(unsafe { pg_sys::GetUserId() }),
            Some(actor) if reference_type == "user" => reference_id == actor,
            Some(actor) => actor_may_read(&actor, reference_type, reference_id),
        }
    }
}
