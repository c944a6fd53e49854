//! api_key: API keys managed inside PostgreSQL.
//!
//! The pure logic (key format, hashing, permission matching, rate-limit arithmetic) lives in
//! plain modules with ordinary tests; `verify` holds the hot path of `api_key_verify`; the
//! management functions are SQL (`sql/*.sql`) calling the few Rust primitives they need.
#![deny(ffi_unwind_calls)]

use pgrx::prelude::*;

#[cfg(not(panic = "unwind"))]
compile_error!("api_key needs panic = \"unwind\": pgrx turns panics into Postgres errors");

::pgrx::pg_module_magic!(name, version);

pub mod caller;
pub mod context;
pub mod errors;
pub mod gucs;
pub mod hashing;
pub mod key_format;
pub mod last_used;
pub mod lookup;
pub mod permissions;
pub mod primitives;
pub mod rate_limit;
pub mod rate_limit_shmem;
pub mod run_as_owner;
pub mod usage;
pub mod verify;
pub mod visibility;

#[cfg(any(test, feature = "pg_test"))]
mod tests;

extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!(
    "../sql/access.sql",
    name = "access",
    requires = [
        caller::api_key::caller_token,
        caller::api_key::caller_is_service,
        caller::api_key::caller_role,
        primitives::api_key::new_secret,
        primitives::api_key::permissions_problem,
        run_as_owner::api_key::call_authorizer,
        run_as_owner::api_key::member_role_from,
    ]
);
extension_sql_file!("../sql/keys.sql", name = "keys", requires = ["access"]);
extension_sql_file!(
    "../sql/key_changes.sql",
    name = "key_changes",
    requires = ["keys"]
);
extension_sql_file!(
    "../sql/configs.sql",
    name = "configs",
    requires = ["access", "keys"]
);
extension_sql_file!(
    "../sql/security.sql",
    name = "security",
    requires = ["keys", "key_changes", "configs"],
    finalize
);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::init();
    rate_limit_shmem::init();
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
