//! Secrets of keys: making one (the plaintext, shown once, and what is stored of it), storing
//! it in `api_key.key_secrets`, and key ids.

use crate::error::Error;
use crate::hashing::{self, Algorithm};
use crate::key_format;
use crate::key_id;
use crate::pg::clock::timestamptz_arg;
use crate::pg::spi;
use pgrx::prelude::*;
use pgrx::Uuid;
use rand::RngCore;

pub struct NewSecret {
    /// The plaintext: returned to the caller once, never written anywhere.
    pub key: String,
    pub start: String,
    /// What the index finds it by: SHA-256 of the key (sha256) or of its lookup id (argon2id).
    pub lookup: Vec<u8>,
    pub argon2_hash: Option<String>,
}

/// A new key for a prefix and body length (checked by the configuration) and its hashes.
pub fn generate(prefix: &str, body_length: i32, algorithm: &str) -> Result<NewSecret, Error> {
    let algorithm = Algorithm::from_name(algorithm)
        .ok_or_else(|| Error::invalid("hash_algorithm must be sha256 or argon2id"))?;
    let min = match algorithm {
        Algorithm::Sha256 => key_format::MIN_BODY_LEN,
        Algorithm::Argon2id => key_format::MIN_ARGON2_BODY_LEN,
    };
    let body_length = usize::try_from(body_length).unwrap_or(0);
    if !(min..=key_format::MAX_BODY_LEN).contains(&body_length) {
        return Err(Error::invalid(
            "body_length is out of range for the configuration's hash",
        ));
    }
    let new = key_format::generate(prefix, body_length);
    let (lookup, argon2_hash) = match algorithm {
        Algorithm::Sha256 => (hashing::sha256(new.key.as_bytes()), None),
        Algorithm::Argon2id => {
            // A generated key always parses (its checksum was just computed).
            let parsed = key_format::parse(&new.key).expect("a generated key parses");
            (
                hashing::sha256(parsed.lookup_id().as_bytes()),
                Some(hashing::argon2id_hash(&new.key)),
            )
        }
    };
    Ok(NewSecret {
        key: new.key,
        start: new.start,
        lookup: lookup.to_vec(),
        argon2_hash,
    })
}

/// A UUIDv7 id for a key created at `now` (see `key_id.rs`).
pub fn new_key_id(now: i64) -> Uuid {
    Uuid::from_bytes(key_id::new(now, rand::rngs::OsRng.next_u64()))
}

const INSERT_SECRET: &str = "
    INSERT INTO api_key.key_secrets (lookup, key_id, algorithm, argon2_hash, created_at)
    VALUES ($1, $2, $3, $4, $5)";

pub fn store(key_id: Uuid, secret: &NewSecret, algorithm: &str, now: i64) -> Result<(), Error> {
    use crate::pg::oids::*;
    Spi::connect_mut(|client| {
        let statement = spi::statement(
            client,
            INSERT_SECRET,
            &[BYTEAOID, UUIDOID, TEXTOID, TEXTOID, TIMESTAMPTZOID],
            true,
        )?;
        let args = [
            secret.lookup.clone().into(),
            key_id.into(),
            algorithm.into(),
            secret.argon2_hash.clone().into(),
            timestamptz_arg(Some(now)),
        ];
        client
            .update(&*statement, None, &args)
            .map_err(spi::failed)?;
        Ok(())
    })
}
