//! Who may do what: the one place that decides access.
//!
//! In: a `Principal` (the service, or an actor named by `api_key.actor`), a `Reference` (the
//! owner of keys: `(reference_type, reference_id)`) and an `Action` (create, read, update,
//! delete). Out: allowed, or a `Refusal` that becomes SQLSTATE 42501. Every management
//! function calls `authorize`; the row-level-security policies call `policy.rs`, which asks
//! `decide` the same question for the current actor. Application code (authorizers,
//! membership tables) is reached only through `application_code`.
//!
//! - the service (a superuser or a role with the privileges of `api_key_admin`, with no actor
//!   set) may do everything;
//! - an actor may act on the keys of the user it is (`'user'`, same id);
//! - on an organization's keys, per its role there (`membership`);
//! - on a custom reference type's keys, when the type's authorizer answers true.

pub mod application_code;
pub mod membership;
pub mod policy;

use crate::error::{shorten, Error};
use crate::pg::privileged::{current_role, is_service_role};
use crate::pg::spi;
use crate::pg::subtransaction::Failure;
use membership::Unreadable;
use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;

/// Longest actor, reference id and reference type, in characters.
pub const MAX_ID_CHARS: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Create,
    Read,
    Update,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Read => "read",
            Action::Update => "update",
            Action::Delete => "delete",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [Action::Create, Action::Read, Action::Update, Action::Delete]
            .into_iter()
            .find(|a| a.as_str() == name)
    }
}

/// Who is acting: the service, or an actor, and the database role calling either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Service { role: Oid },
    Actor { role: Oid, actor: String },
}

/// `api_key.actor`, or None when unset (never set, RESET, or set to DEFAULT/NULL). An empty
/// value is returned as it is, and refused by `Principal::of_caller`: an empty user id from a
/// request must not turn a service-capable role into the service.
///
/// Read from the variable itself, not with `GetConfigOption`: from PostgreSQL 17 on that
/// answers "" for an unset string setting, which would make unset and empty the same.
pub fn current_actor() -> Option<String> {
    crate::gucs::ACTOR
        .get()
        .map(|value| value.to_string_lossy().into_owned())
}

/// Why an identifier (actor, reference id) is not acceptable, if it is not.
pub fn id_problem(value: &str) -> Option<String> {
    if value.is_empty() {
        Some("must not be empty".into())
    } else if value.chars().count() > MAX_ID_CHARS {
        Some(format!("must be at most {MAX_ID_CHARS} characters long"))
    } else if value.chars().any(char::is_control) {
        Some("must not contain control characters".into())
    } else {
        None
    }
}

impl Principal {
    /// The principal of the current call: the actor when `api_key.actor` is set, else the
    /// service when the calling role may be, else 42501.
    pub fn of_caller() -> Result<Principal, Error> {
        let role = current_role();
        match current_actor() {
            Some(actor) => {
                if let Some(problem) = id_problem(&actor) {
                    return Err(Error::invalid(format!("api_key.actor {problem}"))
                        .hint("RESET api_key.actor to act as the service."));
                }
                Ok(Principal::Actor { role, actor })
            }
            None if is_service_role(role) => Ok(Principal::Service { role }),
            None => Err(Error::denied(
                "no actor: set api_key.actor to act for a user, or use a role granted api_key_admin to act as the service",
            )
            .hint("SET LOCAL api_key.actor = '<user id>'; or GRANT api_key_admin TO <service role>;")),
        }
    }

    /// The principal a policy sees, or None when it sees nothing (no actor and not the
    /// service, or an actor value no management call would accept).
    pub fn for_policy() -> Option<Principal> {
        Principal::of_caller().ok()
    }

    pub fn actor(&self) -> Option<&str> {
        match self {
            Principal::Service { .. } => None,
            Principal::Actor { actor, .. } => Some(actor),
        }
    }

    pub fn role(&self) -> Oid {
        match self {
            Principal::Service { role } | Principal::Actor { role, .. } => *role,
        }
    }

    pub fn is_service(&self) -> bool {
        matches!(self, Principal::Service { .. })
    }

    /// 42501 unless this is the service: for configuration, registration and cleanup.
    pub fn require_service(&self, what: &str) -> Result<(), Error> {
        if self.is_service() {
            return Ok(());
        }
        Err(Error::denied(format!(
            "{what} is for the service: a role granted api_key_admin, with no api_key.actor set"
        ))
        .hint("RESET api_key.actor, and GRANT api_key_admin TO <role> if needed."))
    }
}

/// The owner of keys: `(reference_type, reference_id)`, checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    pub kind: String,
    pub id: String,
}

const REFERENCE_TYPE: &str = "
    SELECT t.authorizer::pg_catalog.oid FROM api_key.reference_types AS t
     WHERE t.reference_type OPERATOR(pg_catalog.=) $1";

/// The authorizer of a registered custom reference type (runs as the extension owner).
pub fn authorizer_of(kind: &str) -> Result<Option<Oid>, Error> {
    Spi::connect(|client| {
        let statement = spi::statement(client, REFERENCE_TYPE, &[pg_sys::TEXTOID], false)?;
        let rows = client
            .select(&*statement, Some(1), &[kind.into()])
            .map_err(spi::failed)?;
        Ok(rows
            .into_iter()
            .next()
            .and_then(|r| r.get::<Oid>(1).ok().flatten()))
    })
}

impl Reference {
    /// Checks the arguments of a call: 22004 for NULL, 22023 for a bad id or an unknown type.
    /// Runs as the extension owner (it reads the registered types).
    pub fn checked(kind: Option<&str>, id: Option<&str>) -> Result<Reference, Error> {
        let id = id.ok_or_else(|| Error::null("reference_id"))?;
        let kind = kind.ok_or_else(|| Error::null("reference_type"))?;
        if let Some(problem) = id_problem(id) {
            return Err(Error::invalid(format!("reference_id {problem}")));
        }
        let known = matches!(kind, "user" | "organization") || authorizer_of(kind)?.is_some();
        if !known {
            return Err(Error::invalid(format!(
                "reference_type \"{}\" is not known",
                shorten(kind, 64)
            ))
            .hint("Use 'user', 'organization', or register a type with api_key_register_reference_type()."));
        }
        Ok(Reference {
            kind: kind.to_string(),
            id: id.to_string(),
        })
    }
}

/// Why an actor may not do something.
#[derive(Debug)]
pub enum Refusal {
    NotTheUser,
    NotAMember,
    RoleLacks { role: String },
    AuthorizerSaidNo,
    AuthorizerAnsweredNull,
    ApplicationCodeFailed(Failure),
}

/// May `principal` do `action` to the keys of `reference`? Runs as the extension owner.
/// `Err` is for the extension's own failures; a refusal is `Ok(Err(_))`.
pub fn decide(
    principal: &Principal,
    reference: &Reference,
    action: Action,
) -> Result<Result<(), Refusal>, Error> {
    let Principal::Actor { actor, .. } = principal else {
        return Ok(Ok(()));
    };
    Ok(match reference.kind.as_str() {
        "user" if &reference.id == actor => Ok(()),
        "user" => Err(Refusal::NotTheUser),
        "organization" => match membership::role_of(&reference.id, actor) {
            Err(Unreadable::Internal(e)) => return Err(e),
            Err(Unreadable::Application(failure)) => Err(Refusal::ApplicationCodeFailed(failure)),
            Ok(None) => Err(Refusal::NotAMember),
            Ok(Some(role)) if membership::role_grants(&reference.id, &role, action)? => Ok(()),
            Ok(Some(role)) => Err(Refusal::RoleLacks { role }),
        },
        kind => {
            let Some(authorizer) = authorizer_of(kind)? else {
                // Unregistered since the reference was checked: nobody may act on it.
                return Ok(Err(Refusal::AuthorizerSaidNo));
            };
            match application_code::authorizer_answer(
                authorizer,
                actor,
                &reference.id,
                action.as_str(),
            ) {
                Ok(Some(true)) => Ok(()),
                Ok(Some(false)) => Err(Refusal::AuthorizerSaidNo),
                Ok(None) => Err(Refusal::AuthorizerAnsweredNull),
                Err(failure) => Err(Refusal::ApplicationCodeFailed(failure)),
            }
        }
    })
}

/// The 42501 a refusal is reported as.
pub fn refusal_error(
    principal: &Principal,
    reference: &Reference,
    action: Action,
    refusal: Refusal,
) -> Error {
    let actor = shorten(principal.actor().unwrap_or(""), 256);
    let id = shorten(&reference.id, 256);
    let action = action.as_str();
    match refusal {
        Refusal::NotTheUser => Error::denied(format!(
            "actor \"{actor}\" may not {action} the keys of user \"{id}\""
        )),
        Refusal::NotAMember => Error::denied(format!(
            "actor \"{actor}\" is not a member of organization \"{id}\""
        )),
        Refusal::RoleLacks { role } => Error::denied(format!(
            "actor \"{actor}\" (role \"{}\") lacks permission api_key:{action} in organization \"{id}\"",
            shorten(&role, 64)
        ))
        .hint("Roles and their permissions are in api_key.role_permissions."),
        Refusal::AuthorizerSaidNo => Error::denied(format!(
            "actor \"{actor}\" may not {action} the keys of {} \"{id}\"",
            reference.kind
        )),
        Refusal::AuthorizerAnsweredNull => Error::denied(format!(
            "actor \"{actor}\" may not {action} the keys of {} \"{id}\"",
            reference.kind
        ))
        .detail("The authorizer answered NULL, which refuses."),
        Refusal::ApplicationCodeFailed(failure) => Error::denied(format!(
            "actor \"{actor}\" may not {action} the keys of {} \"{id}\"",
            reference.kind
        ))
        .detail(format!(
            "The {} raised an error, which refuses: {} {}",
            if reference.kind == "organization" {
                "membership table"
            } else {
                "authorizer"
            },
            failure.sqlstate_text(),
            shorten(&failure.message, 200)
        )),
    }
}

/// The work of deciding on an organization, for an answer that needs none (no such key, or a
/// user key of someone else): refusals then take about the same time whatever their reason.
pub fn decoy_decision(principal: &Principal) -> Result<(), Error> {
    if let Principal::Actor { actor, .. } = principal {
        if let Err(Unreadable::Internal(e)) = membership::role_of("", actor) {
            return Err(e);
        }
    }
    Ok(())
}

/// 42501 unless `principal` may do `action` to the keys of `reference`. Runs as the
/// extension owner.
pub fn authorize(
    principal: &Principal,
    reference: &Reference,
    action: Action,
) -> Result<(), Error> {
    decide(principal, reference, action)?
        .map_err(|refusal| refusal_error(principal, reference, action, refusal))
}
