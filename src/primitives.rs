//! The Rust primitives that the SQL management functions call: making a key and its hash,
//! and checking a permissions value. They live in schema `api_key` and are executable by no
//! application role (see sql/security.sql): only the SECURITY DEFINER functions use them.

use pgrx::prelude::*;

#[pg_schema]
mod api_key {
    use crate::errors::raise;
    use crate::hashing::{self, Algorithm};
    use crate::key_format;
    use crate::permissions;
    use pgrx::prelude::*;

    /// A new key for `prefix`/`body_length`/`algorithm`: the plaintext (returned to the caller
    /// once), its display start, the index lookup value and, for argon2id, the Argon2 hash.
    #[pg_extern(volatile, parallel_safe)]
    pub fn new_secret(
        prefix: &str,
        body_length: i32,
        algorithm: &str,
    ) -> TableIterator<
        'static,
        (
            name!(key, String),
            name!(start, String),
            name!(lookup, Vec<u8>),
            name!(argon2_hash, Option<String>),
        ),
    > {
        if let Some(problem) = key_format::prefix_problem(prefix) {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("prefix {problem}"),
            );
        }
        let Some(algorithm) = Algorithm::from_name(algorithm) else {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                "hash algorithm must be sha256 or argon2id",
            );
        };
        let min = match algorithm {
            Algorithm::Sha256 => key_format::MIN_BODY_LEN,
            Algorithm::Argon2id => key_format::MIN_ARGON2_BODY_LEN,
        };
        let body_length = body_length as usize;
        if body_length < min || body_length > key_format::MAX_BODY_LEN {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                "body length out of range",
            );
        }
        let new = key_format::generate(prefix, body_length);
        let (lookup, argon2_hash) = match algorithm {
            Algorithm::Sha256 => (hashing::sha256(new.key.as_bytes()), None),
            Algorithm::Argon2id => {
                // SAFETY of unwrap: a generated key always parses.
                let parsed = key_format::parse(&new.key).unwrap();
                (
                    hashing::sha256(parsed.lookup_id().as_bytes()),
                    Some(hashing::argon2id_hash(&new.key)),
                )
            }
        };
        TableIterator::once((new.key, new.start, lookup.to_vec(), argon2_hash))
    }

    /// Why `value` is not a permissions object (`{"resource": ["action", …]}`), or NULL.
    #[pg_extern(immutable, parallel_safe)]
    pub fn permissions_problem(value: pgrx::JsonB) -> Option<String> {
        permissions::shape_problem(&value.0)
    }
}
