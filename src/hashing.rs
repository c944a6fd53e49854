//! How a key is stored: a SHA-256 digest (the default: keys carry ≥ 130 bits of entropy, so a
//! fast hash is as safe as a slow one and allows a direct index lookup), or, for
//! configurations that must, Argon2id over the whole key with a SHA-256 of the key's public
//! lookup id as the index entry.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha256,
    Argon2id,
}

impl Algorithm {
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "sha256" => Some(Self::Sha256),
            "argon2id" => Some(Self::Argon2id),
            _ => None,
        }
    }
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Argon2id with the crate's defaults (19 MiB, 2 passes, 1 lane: OWASP's minimum).
pub fn argon2id_hash(key: &str) -> String {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    // The only failure modes are invalid parameters or salt, neither possible with defaults.
    Argon2::default()
        .hash_password(key.as_bytes(), &salt)
        .expect("argon2 defaults are valid")
        .to_string()
}

pub fn argon2id_verify(key: &str, encoded: &str) -> bool {
    match PasswordHash::new(encoded) {
        Ok(parsed) => Argon2::default()
            .verify_password(key.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_known_answer() {
        let d = sha256(b"abc");
        assert_eq!(d[0], 0xba);
        assert_eq!(d[31], 0xad);
    }

    #[test]
    fn argon2_accepts_the_key_and_nothing_else() {
        let h = argon2id_hash("sk_secret");
        assert!(h.starts_with("$argon2id$"));
        assert!(argon2id_verify("sk_secret", &h));
        assert!(!argon2id_verify("sk_secreT", &h));
        assert!(!argon2id_verify("sk_secret", "not a hash"));
    }

    #[test]
    fn algorithm_names() {
        assert_eq!(Algorithm::from_name("sha256"), Some(Algorithm::Sha256));
        assert_eq!(Algorithm::from_name("argon2id"), Some(Algorithm::Argon2id));
        assert_eq!(Algorithm::from_name("md5"), None);
    }
}
