//! The management functions. Each is SECURITY INVOKER: it learns who is calling
//! (`access::Principal::of_caller`) before anything else, then does its work as the extension
//! owner (`pg::privileged`), asks `access` whether the principal may, checks its arguments
//! against `rules` and the key's configuration, writes, and audits. Errors are raised last,
//! after every switch of user or setting was undone.

pub mod audit;
pub mod change;
pub mod config;
pub mod configs;
pub mod create;
pub mod credits;
pub mod key_row;
pub mod legacy;
pub mod lifecycle;
pub mod read;
pub mod registry;
pub mod secret;
