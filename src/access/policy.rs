//! The functions row-level-security policies call. Each answers only for the current role and
//! the current actor: nothing here reveals more than the policies themselves show (no
//! "is user X a member of organization Y" for an arbitrary X).
//!
//! A policy asks once per row, so answers are remembered for one statement and one snapshot:
//! reading 100,000 keys of one organization asks the membership source once, and the next
//! statement asks again (an authorizer may depend on a setting or the clock, not only on the
//! data the snapshot shows), as does a later part of the same statement that sees other data.
//!
//! They may call application code, which runs in a subtransaction: hence PARALLEL UNSAFE
//! (a parallel query cannot start subtransactions). An application failure reads as "no".

use super::{decide, membership, Action, Principal, Reference};
use crate::pg::compat::local_xid;
use crate::pg::privileged::as_extension_owner;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;

/// What an answer is remembered for: one statement (its start time: an authorizer may read a
/// setting or the clock, which the snapshot does not cover) and the data it sees (transaction,
/// snapshot bounds, command id, and the transactions the snapshot sees as running: two
/// snapshots with the same bounds differ when one of those committed in between).
type SnapshotTag = (i64, u32, u32, u32, u32, u64);

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
    // SAFETY: reads the active snapshot, which a policy evaluation always has; its xip and
    // subxip arrays hold xcnt and subxcnt ids.
    unsafe {
        if !pg_sys::ActiveSnapshotSet() {
            return None;
        }
        let s = pg_sys::GetActiveSnapshot();
        let running = |ids: *const pg_sys::TransactionId, n: usize| {
            if ids.is_null() || n == 0 {
                &[][..]
            } else {
                std::slice::from_raw_parts(ids, n)
            }
        };
        let mut hasher = std::hash::DefaultHasher::new();
        for id in running((*s).xip, (*s).xcnt as usize)
            .iter()
            .chain(running((*s).subxip, (*s).subxcnt.max(0) as usize))
        {
            std::hash::Hash::hash(&id.into_inner(), &mut hasher);
        }
        std::hash::Hash::hash(&(*s).suboverflowed, &mut hasher);
        Some((
            pg_sys::GetCurrentStatementStartTimestamp(),
            local_xid(),
            (*s).xmin.into_inner(),
            (*s).xmax.into_inner(),
            (*s).curcid,
            std::hash::Hasher::finish(&hasher),
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

    /// The actor of this transaction (`api_key.actor`), or NULL when there is none or it is
    /// not a valid actor (empty, too long, control characters: what management refuses).
    #[pg_extern(stable, parallel_safe)]
    pub fn actor() -> Option<String> {
        super::super::current_actor().filter(|actor| super::super::id_problem(actor).is_none())
    }

    /// Does the caller act as the service: no actor set, and a superuser or a member of
    /// api_key_admin? False for an invalid actor (empty, too long, control characters), which
    /// management refuses: for the policies that let only the service write.
    #[pg_extern(stable, parallel_safe)]
    pub fn is_service() -> bool {
        Principal::for_policy().is_some_and(|p| p.is_service())
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

    /// Has the creator of this organization key left the organization? NULL for a key that is
    /// not an organization's or has no creator, and unless the current actor may read the
    /// organization's keys. It takes the key, not a user: it answers about the creators of
    /// keys the actor can already see, never "is this user a member".
    #[pg_extern(stable, parallel_unsafe)]
    pub fn creator_left(key_id: Option<pgrx::Uuid>) -> Option<bool> {
        let key_id = key_id?;
        let principal = Principal::for_policy()?;
        let (org, creator) = as_extension_owner(|| key_creator(key_id)).ok().flatten()?;
        let reference = Reference {
            kind: "organization".into(),
            id: org.clone(),
        };
        if !may_for(&principal, reference, Action::Read) {
            return None;
        }
        as_extension_owner(|| {
            Ok(membership::role_of(&org, &creator)
                .ok()
                .map(|r| r.is_none()))
        })
        .ok()
        .flatten()
    }
}

const KEY_CREATOR: &str = "
    SELECT k.reference_id, k.created_by FROM api_key.keys AS k
     WHERE k.id OPERATOR(pg_catalog.=) $1
       AND k.reference_type OPERATOR(pg_catalog.=) 'organization' AND k.created_by IS NOT NULL";

/// The organization and creator of an organization key, if it is one and has a creator.
fn key_creator(key_id: pgrx::Uuid) -> Result<Option<(String, String)>, crate::error::Error> {
    use crate::pg::spi;
    Spi::connect(|client| {
        let statement = spi::statement(client, KEY_CREATOR, &[pg_sys::UUIDOID], false)?;
        let rows = client
            .select(&*statement, Some(1), &[key_id.into()])
            .map_err(spi::failed)?;
        let Some(row) = rows.into_iter().next() else {
            return Ok(None);
        };
        let org = row.get::<String>(1).map_err(spi::failed)?;
        let creator = row.get::<String>(2).map_err(spi::failed)?;
        Ok(org.zip(creator))
    })
}
