//! Who is a member of which organization, with which role, and what a role may do.
//!
//! Membership comes from `api_key.members`, or, when the service pointed the extension at one
//! (`api_key_use_membership_table`), from an application table read live through
//! `application_code`. Role permissions are data in `api_key.role_permissions`: rows with
//! `organization_id` NULL are the defaults; an organization that has any row for a role
//! replaces the defaults for that role. Callers run as the extension owner.

use super::application_code::MembershipTable;
use super::Action;
use crate::error::Error;
use crate::pg::spi;
use crate::pg::subtransaction::Failure;
use pgrx::pg_sys;
use pgrx::prelude::*;

const DEFAULT_SOURCE_ROLE: &str = "
    SELECT m.role FROM api_key.members AS m
     WHERE m.organization_id OPERATOR(pg_catalog.=) $1 AND m.user_id OPERATOR(pg_catalog.=) $2";

const SOURCE: &str = "
    SELECT s.relation::pg_catalog.oid, s.organization_column::pg_catalog.text,
           s.user_column::pg_catalog.text, s.role_column::pg_catalog.text
      FROM api_key.membership_source AS s";

const ROLE_PERMISSIONS: &str = "
    SELECT r.organization_id IS NOT NULL, r.role, r.permission FROM api_key.role_permissions AS r
     WHERE (r.organization_id OPERATOR(pg_catalog.=) $1 OR r.organization_id IS NULL)
       AND r.role OPERATOR(pg_catalog.=) ANY ($2)";

/// Why membership could not be read.
pub enum Unreadable {
    Application(Failure),
    Internal(Error),
}

/// The application's membership table, if one is configured.
fn application_table() -> Result<Option<MembershipTable>, Error> {
    Spi::connect(|client| {
        let statement = spi::statement(client, SOURCE, &[], false)?;
        let rows = client
            .select(&*statement, Some(1), &[])
            .map_err(spi::failed)?;
        let Some(row) = rows.into_iter().next() else {
            return Ok(None);
        };
        let text = |n| row.get::<String>(n).ok().flatten().unwrap_or_default();
        Ok(Some(MembershipTable {
            relation: row
                .get::<pg_sys::Oid>(1)
                .map_err(spi::failed)?
                .unwrap_or_default(),
            organization_column: text(2),
            user_column: text(3),
            role_column: text(4),
        }))
    })
}

/// The role (as stored: possibly several, comma-separated) of `user_id` in `organization_id`.
pub fn role_of(organization_id: &str, user_id: &str) -> Result<Option<String>, Unreadable> {
    if let Some(table) = application_table().map_err(Unreadable::Internal)? {
        return table
            .role_of(organization_id, user_id)
            .map_err(Unreadable::Application);
    }
    Spi::connect(|client| {
        let text = pg_sys::TEXTOID;
        let statement = spi::statement(client, DEFAULT_SOURCE_ROLE, &[text, text], false)?;
        let rows = client
            .select(
                &*statement,
                Some(1),
                &[organization_id.into(), user_id.into()],
            )
            .map_err(spi::failed)?;
        Ok(rows
            .into_iter()
            .next()
            .and_then(|r| r.get::<String>(1).ok().flatten()))
    })
    .map_err(Unreadable::Internal)
}

/// The roles in a stored role value: `'admin,member'` (as some auth libraries store several)
/// is two roles.
pub fn split_roles(stored: &str) -> Vec<&str> {
    stored
        .split(',')
        .map(|r| r.trim_matches(' '))
        .filter(|r| !r.is_empty())
        .collect()
}

/// One row of `api_key.role_permissions` that concerns an organization.
pub struct Grant {
    pub organization_specific: bool,
    pub role: String,
    pub permission: String,
}

/// Does any of `roles` grant `permission`? For each role, the organization's own rows for it
/// replace the defaults. Pure.
pub fn grants(rows: &[Grant], roles: &[&str], permission: &str) -> bool {
    roles.iter().any(|role| {
        let own = rows
            .iter()
            .any(|g| g.organization_specific && g.role == *role);
        rows.iter().any(|g| {
            g.organization_specific == own && g.role == *role && g.permission == permission
        })
    })
}

/// Does `stored_role` grant `api_key:<action>` in `organization_id`?
pub fn role_grants(
    organization_id: &str,
    stored_role: &str,
    action: Action,
) -> Result<bool, Error> {
    let roles = split_roles(stored_role);
    if roles.is_empty() {
        return Ok(false);
    }
    let rows = Spi::connect(|client| {
        let statement = spi::statement(
            client,
            ROLE_PERMISSIONS,
            &[pg_sys::TEXTOID, pg_sys::TEXTARRAYOID],
            false,
        )?;
        let args = [organization_id.into(), roles.clone().into()];
        let table = client
            .select(&*statement, None, &args)
            .map_err(spi::failed)?;
        let mut rows = Vec::new();
        for row in table {
            rows.push(Grant {
                organization_specific: row.get::<bool>(1).map_err(spi::failed)?.unwrap_or(false),
                role: row
                    .get::<String>(2)
                    .map_err(spi::failed)?
                    .unwrap_or_default(),
                permission: row
                    .get::<String>(3)
                    .map_err(spi::failed)?
                    .unwrap_or_default(),
            });
        }
        Ok::<_, Error>(rows)
    })?;
    Ok(grants(&rows, &roles, action.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(own: bool, role: &str, permission: &str) -> Grant {
        Grant {
            organization_specific: own,
            role: role.into(),
            permission: permission.into(),
        }
    }

    #[test]
    fn an_organizations_rows_replace_the_defaults_for_that_role() {
        let rows = [
            g(false, "member", "read"),
            g(false, "admin", "create"),
            g(false, "admin", "read"),
            g(true, "member", "create"),
        ];
        assert!(grants(&rows, &["member"], "create"));
        assert!(!grants(&rows, &["member"], "read"));
        assert!(grants(&rows, &["admin"], "read"));
        assert!(!grants(&rows, &["owner"], "read"));
        assert!(grants(&rows, &["owner", "admin"], "create"));
    }

    #[test]
    fn several_roles_in_one_value() {
        assert_eq!(split_roles("admin, member"), ["admin", "member"]);
        assert_eq!(split_roles(" ,"), Vec::<&str>::new());
        assert_eq!(split_roles("owner"), ["owner"]);
    }
}
