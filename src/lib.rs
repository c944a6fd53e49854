//! api_key: API keys managed inside PostgreSQL.
//!
//! - Pure logic, with plain tests: `key_format`, `hashing`, `key_id`, `permissions`,
//!   `calendar`, `credits`, `rate_limit`, `rules`, `analytics::tags`.
//! - `access`: who may do what; the only place that decides, and the only one that runs
//!   application code (`access::application_code`).
//! - `manage`: the management functions (create, update, rotate, revoke, list, configurations,
//!   registration), each a thin `#[pg_extern]` over the rules and the access layer.
//! - `verify`: the hot path of `api_key_verify` / `api_key_authenticate`.
//! - `analytics`: verifications counted in memory and written in batches (`api_key.usage`).
//! - `pg`: the few places that touch PostgreSQL internals (privileged execution,
//!   subtransactions, jsonb, clocks, version differences).
//!
//! docs/architecture.md follows one management call and one verification through them.
#![deny(ffi_unwind_calls)]

#[cfg(not(panic = "unwind"))]
compile_error!("api_key needs panic = \"unwind\": pgrx turns panics into Postgres errors");

::pgrx::pg_module_magic!(name, version);

pub mod access;
pub mod analytics;
pub mod calendar;
pub mod credits;
pub mod error;
pub mod gucs;
pub mod hashing;
pub mod key_format;
pub mod key_id;
pub mod manage;
pub mod permissions;
pub mod pg;
pub mod rate_limit;
pub mod rules;
pub mod verify;

#[cfg(any(test, feature = "pg_test"))]
mod tests;

pgrx::extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
pgrx::extension_sql_file!("../sql/security.sql", name = "security", finalize);

#[pgrx::pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::init();
    verify::rate_limit_shmem::init();
    analytics::shmem::init();
    verify::credit_queue::init();
    analytics::worker::register();
    // pgrx's panic hook captures a backtrace when RUST_BACKTRACE is set in the server's
    // environment, and reports it in the DETAIL of the error a client sees. Errors of this
    // extension carry a SQLSTATE and a message written for people: never a backtrace.
    std::panic::set_hook(Box::new(|_| {}));
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
