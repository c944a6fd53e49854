//! The functions row-level-security policies call. Each answers only for the current role and
//! the current actor: nothing here reveals more than the policies themselves show (no
//! "is user X a member of organization Y" for an arbitrary X).
//!
//! A policy asks once per row, so answers are remembered while the snapshot stays the same:
//! reading 100,000 keys of one organization asks the membership source once, and the next
//! statement (a new snapshot under READ COMMITTED, or a new command id after a change of our
//! own) asks again.
//!
//! They may call application code, which runs in a subtransaction: hence PARALLEL UNSAFE
//! (a parallel query cannot start subtransactions). An application failure reads as "no".

use super::{decide, membership, Action, Principal, Reference};
use crate::pg::compat::local_xid;
use crate::pg::privileged::as_extension_owner;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;

/// What identifies the data a statement sees: transaction, snapshot bounds, command id.
type SnapshotTag = (u32, u32, u32, u32);

#[derive(Clone, PartialEq, Eq, Hash)]
enum Question {
    May(Reference, Action),
    IsMember(String),
}

#[derive(Default)]
struct Answers {
    snapshot: SnapshotTag,
    principal: Option<Principal>,
    known: HashMap<Question, bool>,
}

thread_local! {
    static ANSWERS: RefCell<Answers> = RefCell::new(Answers::default());
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

/// The remembered answer to `question` for `principal`, or `compute`'s.
fn answer(principal: &Principal, question: Question, compute: impl FnOnce() -> bool) -> bool {
    let snapshot = snapshot_tag();
    let known = snapshot.and_then(|snapshot| {
        ANSWERS.with(|a| {
            let mut a = a.borrow_mut();
            if a.snapshot != snapshot || a.principal.as_ref() != Some(principal) {
                *a = Answers {
                    snapshot,
                    principal: Some(principal.clone()),
                    known: HashMap::new(),
                };
            }
            a.known.get(&question).copied()
        })
    });
    if let Some(known) = known {
        return known;
    }
    let value = compute();
    if snapshot.is_some() {
        ANSWERS.with(|a| a.borrow_mut().known.insert(question, value));
    }
    value
}

fn may_for(principal: &Principal, reference: Reference, action: Action) -> bool {
    if principal.is_service() {
        return true;
    }
    answer(principal, Question::May(reference.clone(), action), || {
        as_extension_owner(|| decide(principal, &reference, action))
            .is_ok_and(|decision| decision.is_ok())
    })
}

fn is_member_for(principal: &Principal, organization_id: &str) -> bool {
    let Some(actor) = principal.actor() else {
        return false;
    };
    answer(
        principal,
        Question::IsMember(organization_id.to_string()),
        || {
            as_extension_owner(|| {
                membership::role_of(organization_id, actor)
                    .map(|role| role.is_some())
                    .or(Ok(false))
            })
            .unwrap_or(false)
        },
    )
}

#[pg_schema]
mod api_key {
    use super::*;

    /// The actor of this transaction (`api_key.actor`), or NULL.
    #[pg_extern(stable, parallel_safe)]
    pub fn actor() -> Option<String> {
        super::super::current_actor()
    }

    /// May the current actor (or the service) `action` the keys of this reference? For
    /// policies; answers for the current actor only.
    #[pg_extern(stable, parallel_unsafe)]
    pub fn may(
        reference_type: Option<&str>,
        reference_id: Option<&str>,
        action: Option<&str>,
    ) -> bool {
        let (Some(kind), Some(id), Some(action)) = (
            reference_type,
            reference_id,
            action.and_then(Action::from_name),
        ) else {
            return false;
        };
        // What a management call would refuse never reaches membership or an authorizer.
        if super::super::id_problem(id).is_some() || super::super::id_problem(kind).is_some() {
            return false;
        }
        let Some(principal) = Principal::for_policy() else {
            return false;
        };
        let reference = Reference {
            kind: kind.to_string(),
            id: id.to_string(),
        };
        may_for(&principal, reference, action)
    }

    /// Is the current actor a member (in any role) of this organization? For the policies on
    /// the membership tables.
    #[pg_extern(stable, parallel_unsafe)]
    pub fn is_member(organization_id: Option<&str>) -> bool {
        match (organization_id, Principal::for_policy()) {
            (Some(org), Some(principal)) if super::super::id_problem(org).is_none() => {
                is_member_for(&principal, org)
            }
            _ => false,
        }
    }

    /// Has the creator of an organization key left the organization? NULL unless the current
    /// actor may read the organization's keys (then it could see its members anyway).
    #[pg_extern(stable, parallel_unsafe)]
    pub fn creator_left(organization_id: Option<&str>, created_by: Option<&str>) -> Option<bool> {
        let (org, creator) = (organization_id?, created_by?);
        if super::super::id_problem(org).is_some() || super::super::id_problem(creator).is_some() {
            return None;
        }
        let principal = Principal::for_policy()?;
        let reference = Reference {
            kind: "organization".into(),
            id: org.to_string(),
        };
        if !may_for(&principal, reference, Action::Read) {
            return None;
        }
        as_extension_owner(|| Ok(membership::role_of(org, creator).ok().map(|r| r.is_none())))
            .ok()
            .flatten()
    }
}
